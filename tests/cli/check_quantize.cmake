# Runs examples/retnet_quantize on a shipped checkpoint file and model directory, then
# retnet_generate on what it wrote: the quantized model generates the same ids as the source
# loaded with the same --weights (same codes). Inputs: CLI (retnet_generate), QUANTIZE, MODEL (a
# torchscale file), FLA_MODEL (an FLA directory), WORK_DIR.
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)

foreach(type int8 bf16 f16)
  foreach(source ${MODEL} ${FLA_MODEL})
    get_filename_component(name ${source} NAME_WE)
    set(target ${WORK_DIR}/${name}_${type})
    if(source MATCHES "\\.safetensors$")
      set(target ${target}.safetensors)
    endif()
    run(${QUANTIZE} 0 out ${source} ${target} --weights ${type})
    expect_match("${out}" "^wrote [^\n]+: [0-9]+ dense weights as ${type}" "retnet_quantize ${type}")
    run(${CLI} 0 original --model ${source} --prompt-ids 1,2,3 --max-new 6 --weights ${type})
    run(${CLI} 0 quantized --model ${target} --prompt-ids 1,2,3 --max-new 6 --weights ${type})
    string(REGEX MATCH "generated:[ 0-9]+" a "${original}")
    string(REGEX MATCH "generated:[ 0-9]+" b "${quantized}")
    if(NOT a STREQUAL b OR a STREQUAL "")
      message(FATAL_ERROR "${name} ${type}: '${a}' from the source, '${b}' from the quantized file")
    endif()
  endforeach()
endforeach()
if(NOT EXISTS ${WORK_DIR}/fla_small_int8/config.json)
  message(FATAL_ERROR "the directory's config.json was not copied")
endif()

# Errors: one line, non-zero exit.
run(${QUANTIZE} 1 out ${MODEL} ${WORK_DIR}/decoder_small_int8.safetensors)
expect_match("${out}" "^retnet_quantize: .*exists already" "existing target")
run(${QUANTIZE} 2 out ${MODEL} ${WORK_DIR}/x.safetensors --weights f32)
expect_match("${out}" "^retnet_quantize: --weights must be int8, bf16 or f16, got \"f32\"" "f32")
run(${QUANTIZE} 2 out ${MODEL})
expect_match("${out}" "need SOURCE and TARGET" "one argument")
run(${QUANTIZE} 1 out ${WORK_DIR}/missing.safetensors ${WORK_DIR}/y.safetensors)
expect_match("${out}" "^retnet_quantize: .*cannot open file" "missing source")
