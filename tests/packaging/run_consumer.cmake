# Configures, builds and runs tests/packaging/consumer in one of its modes (a CTest script).
# Inputs: MODE, SOURCE_DIR (retnet), BINARY_DIR (retnet's build), WORK_DIR, CXX_COMPILER.
file(REMOVE_RECURSE ${WORK_DIR})
set(extra_args "")
if(MODE STREQUAL "find_package")
  # Stage an install of this build, as a package manager would lay it out.
  execute_process(COMMAND ${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${WORK_DIR}/stage
                  RESULT_VARIABLE rc OUTPUT_QUIET)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "cmake --install failed (${rc})")
  endif()
  if(NOT EXISTS ${WORK_DIR}/stage/include/retnet/retnet.hpp)
    message(FATAL_ERROR "the staged install lacks include/retnet/retnet.hpp")
  endif()
  set(extra_args -DCMAKE_PREFIX_PATH=${WORK_DIR}/stage)
endif()
execute_process(
  COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/packaging/consumer -B ${WORK_DIR}/build
          -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DRETNET_CONSUME=${MODE}
          -DRETNET_SOURCE_DIR=${SOURCE_DIR} -DFETCHCONTENT_FULLY_DISCONNECTED=ON ${extra_args}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the ${MODE} consumer failed (${rc})")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "building the ${MODE} consumer failed (${rc})")
endif()
execute_process(COMMAND ${WORK_DIR}/build/consumer RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the ${MODE} consumer failed (${rc})")
endif()
