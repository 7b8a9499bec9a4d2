# What the command-line checks share: running a tool with an expected exit code, matching output.

# Runs `tool` with the remaining arguments; fails unless it exits with `expected_code`. Its
# standard output and error go to `out_var` and `err_var`.
function(run_tool tool expected_code out_var err_var)
  execute_process(COMMAND ${tool} ${ARGN} RESULT_VARIABLE code OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT code STREQUAL expected_code)
    get_filename_component(name ${tool} NAME)
    message(FATAL_ERROR "${name} ${ARGN}: exit ${code}, expected ${expected_code}\n${out}\n${err}")
  endif()
  set(${out_var} "${out}" PARENT_SCOPE)
  set(${err_var} "${err}" PARENT_SCOPE)
endfunction()

function(expect_match text regex what)
  if(NOT text MATCHES "${regex}")
    message(FATAL_ERROR "${what}: output does not match '${regex}':\n${text}")
  endif()
endfunction()

# run_tool with standard output and error together in `out_var`.
function(run tool expected_code out_var)
  run_tool(${tool} ${expected_code} out err ${ARGN})
  set(${out_var} "${out}${err}" PARENT_SCOPE)
endfunction()
