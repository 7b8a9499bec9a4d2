# Configures, builds and runs tests/packaging/consumer in one of its modes (a CTest script), then
# configures it again with nlohmann_json hidden: the core alone must still configure, and (in the
# find_package mode) asking for the io component must fail and say why.
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

# Without nlohmann_json: the core needs only Eigen.
set(consumer_args -S ${SOURCE_DIR}/tests/packaging/consumer -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DRETNET_CONSUME=${MODE} -DRETNET_SOURCE_DIR=${SOURCE_DIR}
    -DFETCHCONTENT_FULLY_DISCONNECTED=ON -DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=ON ${extra_args})
execute_process(COMMAND ${CMAKE_COMMAND} ${consumer_args} -B ${WORK_DIR}/build_core
                        -DRETNET_CONSUMER_IO=OFF
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the ${MODE} consumer of the core alone failed to configure without "
                      "nlohmann_json (${rc}):\n${out}")
endif()
if(MODE STREQUAL "find_package")
  execute_process(COMMAND ${CMAKE_COMMAND} ${consumer_args} -B ${WORK_DIR}/build_missing_io
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  string(REGEX REPLACE "[ \n]+" " " flat "${out}")  # CMake wraps long messages
  if(rc EQUAL 0 OR NOT flat MATCHES "component io \\(retnet::io\\) needs nlohmann_json")
    message(FATAL_ERROR "find_package(retnet COMPONENTS io) without nlohmann_json should fail and "
                        "say so (${rc}):\n${out}")
  endif()
endif()
