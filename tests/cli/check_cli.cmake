# Runs examples/retnet_generate on the shipped test checkpoint: its output, save/load round trip,
# and the one-line errors and exit codes of bad arguments and bad files; then on the FLA and
# syncdoth model directories. Inputs: CLI, MODEL, DATA (tests/data), WORK_DIR.
file(MAKE_DIRECTORY ${WORK_DIR})

include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)

function(run_cli expected_code out_var err_var)
  run_tool(${CLI} ${expected_code} out err ${ARGN})
  set(${out_var} "${out}" PARENT_SCOPE)
  set(${err_var} "${err}" PARENT_SCOPE)
endfunction()

# Greedy generation: ids, speeds, state size.
run_cli(0 out err --model ${MODEL} --prompt-ids 1,2,3 --max-new 5)
expect_match("${out}" "generated:( [0-9]+)( [0-9]+)( [0-9]+)( [0-9]+)( [0-9]+)\n" "greedy")
expect_match("${out}" "prefill: [0-9.]+ ms \\([0-9]+ tokens/s\\)" "prefill speed")
expect_match("${out}" "decode: [0-9.]+ ms per token \\([0-9]+ tokens/s\\)" "decode speed")
expect_match("${out}" "state: 16384 bytes" "state size (2 layers x 4 heads x 16 x 32 float32)")
string(REGEX MATCH "generated:[ 0-9]+" greedy "${out}")

# Same seed, same tokens; a pause with --save-state and a resume with --load-state continue the
# uninterrupted run exactly.
run_cli(0 whole err --model ${MODEL} --prompt-ids 4,5,6 --max-new 8 --temperature 0.9 --top-p 0.9 --seed 11)
run_cli(0 again err --model ${MODEL} --prompt-ids 4,5,6 --max-new 8 --temperature 0.9 --top-p 0.9 --seed 11)
string(REGEX MATCH "generated:[ 0-9]+" whole_ids "${whole}")
string(REGEX MATCH "generated:[ 0-9]+" again_ids "${again}")
if(NOT whole_ids STREQUAL again_ids)
  message(FATAL_ERROR "same seed, different tokens: '${whole_ids}' vs '${again_ids}'")
endif()
run_cli(0 first err --model ${MODEL} --prompt-ids 4,5,6 --max-new 3 --temperature 0.9 --top-p 0.9 --seed 11
        --save-state ${WORK_DIR}/state.bin)
string(REGEX MATCH "--prompt-ids ([0-9]+)" hint "${first}")
set(last_token ${CMAKE_MATCH_1})
run_cli(0 second err --model ${MODEL} --prompt-ids ${last_token} --max-new 5 --temperature 0.9 --top-p 0.9
        --seed 11 --load-state ${WORK_DIR}/state.bin)
string(REGEX MATCH "generated:([ 0-9]+)" first_ids "${first}")
set(first_ids "${CMAKE_MATCH_1}")
string(REGEX MATCH "generated:([ 0-9]+)" second_ids "${second}")
set(second_ids "${CMAKE_MATCH_1}")
if(NOT "generated:${first_ids}${second_ids}" STREQUAL "${whole_ids}")
  message(FATAL_ERROR "resumed run '${first_ids}' + '${second_ids}' differs from '${whole_ids}'")
endif()

# --weights: the dense weights kept in each reduced type (the stored bytes named), and generation
# runs.
foreach(type bf16 f16 int8)
  run_cli(0 reduced err --model ${MODEL} --prompt-ids 1,2,3 --max-new 5 --weights ${type})
  expect_match("${reduced}" "\nweights: ${type}, [0-9.]+ MB as stored; kernels: [a-z0-9]+\n" "--weights ${type}")
  expect_match("${reduced}" "generated:( [0-9]+)( [0-9]+)( [0-9]+)( [0-9]+)( [0-9]+)\n" "--weights ${type} generates")
endforeach()
# --no-mmap: the weights kept in the file's own type (the FLA directory's BF16, kept as bf16) are
# read into owned memory instead of used in place in the mapped file; the same tokens.
run_cli(0 mapped err --model ${DATA}/fla/fla_small --prompt-ids 1,2,3 --max-new 5 --weights bf16)
run_cli(0 copied err --model ${DATA}/fla/fla_small --prompt-ids 1,2,3 --max-new 5 --weights bf16 --no-mmap)
string(REGEX MATCH "generated:[ 0-9]+" mapped_ids "${mapped}")
string(REGEX MATCH "generated:[ 0-9]+" copied_ids "${copied}")
if(mapped_ids STREQUAL "" OR NOT mapped_ids STREQUAL copied_ids)
  message(FATAL_ERROR "--no-mmap generated '${copied_ids}', mapped '${mapped_ids}'")
endif()

# Errors: one line on stderr, a non-zero exit, never a crash.
function(expect_error code regex)
  run_cli(${code} out err ${ARGN})
  expect_match("${err}" "^retnet_generate: error: ${regex}[^\n]*\n$" "error for ${ARGN}")
endfunction()
expect_error(2 "--model is required" --prompt-ids 1)
expect_error(2 "unknown argument \"--bogus\"" --model ${MODEL} --prompt-ids 1 --bogus 3)
expect_error(2 "--prompt-ids expects comma-separated integers" --model ${MODEL} --prompt-ids 1,x)
expect_error(2 "--max-new expects a number" --model ${MODEL} --prompt-ids 1 --max-new ten)
expect_error(2 "--precision must be float or double" --model ${MODEL} --prompt-ids 1 --precision half)
expect_error(2 "--seed needs a value" --model ${MODEL} --prompt-ids 1 --seed)
expect_error(2 "--prefill must be chunkwise or parallel" --model ${MODEL} --prompt-ids 1 --prefill x)
expect_error(2 "--weights must be f32, bf16, f16 or int8, got \"q4\"" --model ${MODEL} --prompt-ids 1 --weights q4)
expect_error(1 ".*cannot open file" --model ${WORK_DIR}/missing.safetensors --prompt-ids 1)
expect_error(1 ".*token ids must be in \\[0, 50\\), got 50" --model ${MODEL} --prompt-ids 1,50)
expect_error(1 ".*temperature must be finite and >= 0" --model ${MODEL} --prompt-ids 1 --temperature -1)
expect_error(1 ".*chunkSize must be >= 1" --model ${MODEL} --prompt-ids 1 --chunk 0)
file(WRITE ${WORK_DIR}/garbage.bin "not a state")
expect_error(1 ".*garbage.bin: " --model ${MODEL} --prompt-ids 1 --load-state ${WORK_DIR}/garbage.bin)
file(WRITE ${WORK_DIR}/garbage.safetensors "\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
expect_error(1 ".*garbage.safetensors" --model ${WORK_DIR}/garbage.safetensors --prompt-ids 1)

# A state file is read no further than a state of this model can be long: /dev/zero is refused
# at once (it used to be read without end).
if(EXISTS /dev/zero)
  expect_error(1 ".*/dev/zero: not a retnet state file" --model ${MODEL} --prompt-ids 1
               --load-state /dev/zero)
endif()

# Hugging Face model directories of the other families and an RWKV-4 file: --model, the family
# named, a generation, and a save/resume round trip through a state of that model.
foreach(dir fla/fla_small fla/fla_sharded_fused_tied syncdoth/sd_small
        rwkv4/rwkv4_model_small.safetensors)
  string(REGEX MATCH "^[a-z0-9]+" family "${dir}")
  run_cli(0 out err --model ${DATA}/${dir} --prompt-ids 1,2,3 --max-new 6 --seed 3 --temperature 0.7)
  expect_match("${out}" "\\(${family}: layers [0-9]+" "family of ${dir}")
  string(REGEX MATCH "generated:[ 0-9]+" whole_ids "${out}")
  run_cli(0 first err --model ${DATA}/${dir} --prompt-ids 1,2,3 --max-new 2 --seed 3 --temperature 0.7
          --save-state ${WORK_DIR}/state_${family}.bin)
  string(REGEX MATCH "--prompt-ids ([0-9]+)" hint "${first}")
  run_cli(0 second err --model ${DATA}/${dir} --prompt-ids ${CMAKE_MATCH_1} --max-new 4 --seed 3
          --temperature 0.7 --load-state ${WORK_DIR}/state_${family}.bin)
  string(REGEX MATCH "generated:([ 0-9]+)" first_ids "${first}")
  set(first_ids "${CMAKE_MATCH_1}")
  string(REGEX MATCH "generated:([ 0-9]+)" second_ids "${second}")
  if(NOT "generated:${first_ids}${CMAKE_MATCH_1}" STREQUAL "${whole_ids}")
    message(FATAL_ERROR "${dir}: resumed '${first_ids}' + '${CMAKE_MATCH_1}' != '${whole_ids}'")
  endif()
endforeach()
# syncdoth's generate path: the prompt in the parallel form.
run_cli(0 out err --model ${DATA}/syncdoth/sd_small --prompt-ids 1,2,3 --max-new 4 --prefill parallel)
expect_match("${out}" "generated:( [0-9]+)( [0-9]+)( [0-9]+)( [0-9]+)\n" "parallel prefill")
# A state of one family's model is refused by another's.
expect_error(1 ".*state_fla.bin: the state belongs to another model" --model ${DATA}/syncdoth/sd_small
             --prompt-ids 1 --load-state ${WORK_DIR}/state_fla.bin)
expect_error(1 ".*state_fla.bin: the state belongs to a model of another family"
             --model ${DATA}/rwkv4/rwkv4_model_small.safetensors --prompt-ids 1
             --load-state ${WORK_DIR}/state_fla.bin)
expect_error(1 ".*state_rwkv4.bin: the state belongs to a model of another family"
             --model ${DATA}/fla/fla_small --prompt-ids 1 --load-state ${WORK_DIR}/state_rwkv4.bin)
expect_error(1 ".*no model.safetensors and no model.safetensors.index.json" --model ${WORK_DIR}
             --prompt-ids 1)

# A text prompt with the model directory's tokenizer (an RWKV World-format vocabulary): encoded,
# the text streamed, and the same tokens as the prompt's ids ("Hello" 257, " world" 258).
run_cli(0 text err --model ${DATA}/rwkv4/cli_tiny --prompt "Hello world" --max-new 6 --seed 5
        --temperature 0.8)
expect_match("${text}" "tokenizer: rwkv-world, 299 tokens; prompt: 2 tokens\n" "text prompt")
expect_match("${text}" "text: Hello world" "streamed text")
run_cli(0 ids err --model ${DATA}/rwkv4/cli_tiny --prompt-ids 257,258 --max-new 6 --seed 5
        --temperature 0.8)
string(REGEX MATCH "generated:[ 0-9]+" text_ids "${text}")
string(REGEX MATCH "generated:[ 0-9]+" id_ids "${ids}")
if(NOT text_ids STREQUAL id_ids)
  message(FATAL_ERROR "--prompt and --prompt-ids of its encoding differ: '${text_ids}' vs '${id_ids}'")
endif()
file(WRITE ${WORK_DIR}/prompt.txt "Hello world")
run_cli(0 from_file err --model ${DATA}/rwkv4/cli_tiny --prompt-file ${WORK_DIR}/prompt.txt
        --tokenizer ${DATA}/rwkv4/cli_tiny/rwkv_vocab_tiny.txt --max-new 6 --seed 5 --temperature 0.8)
string(REGEX MATCH "generated:[ 0-9]+" file_ids "${from_file}")
if(NOT file_ids STREQUAL id_ids)
  message(FATAL_ERROR "--prompt-file differs from --prompt-ids: '${file_ids}' vs '${id_ids}'")
endif()
expect_error(1 "a text prompt needs --tokenizer" --model ${DATA}/rwkv4/rwkv4_model_small.safetensors
             --prompt hi)
expect_error(2 "give exactly one of --prompt-ids, --prompt and --prompt-file" --model ${MODEL}
             --prompt-ids 1 --prompt hi)

# A model directory in fla-hub's layout whose vocabulary is that of the tokenizer fla-hub's models
# ship (tests/data/cli/fla_text_tiny: 32 000 ids), with a real tokenizer.json beside the weights
# (Mistral-7B-v0.1's: the same format and size): the directory's tokenizer is found, the text
# streamed, and the tokens are those of the prompt's ids ("<s> Hello" = 1, 22557).
set(text_model ${WORK_DIR}/fla_text_tiny)
file(REMOVE_RECURSE ${text_model})
file(COPY ${DATA}/cli/fla_text_tiny/ DESTINATION ${text_model})
file(COPY ${DATA}/bpe/mistral/tokenizer.json ${DATA}/bpe/mistral/tokenizer_config.json
     DESTINATION ${text_model})
run_cli(0 text err --model ${text_model} --prompt "Hello" --max-new 12 --seed 2 --temperature 0.9)
expect_match("${text}" "tokenizer: hf-bpe, 32000 tokens; prompt: 2 tokens\n" "fla text prompt")
expect_match("${text}" "text: Hello" "fla streamed text")
run_cli(0 ids err --model ${text_model} --prompt-ids 1,22557 --max-new 12 --seed 2 --temperature 0.9)
string(REGEX MATCH "generated:[ 0-9]+" text_ids "${text}")
string(REGEX MATCH "generated:[ 0-9]+" id_ids "${ids}")
if(NOT text_ids STREQUAL id_ids)
  message(FATAL_ERROR "fla: --prompt and --prompt-ids of its encoding differ: '${text_ids}' vs '${id_ids}'")
endif()
# A tokenizer that is not the model's is named as the cause.
expect_error(1 ".*the tokenizer \\(hf-bpe, 32000 tokens\\) gave token 22557, outside the model's vocabulary of 97"
             --model ${DATA}/fla/fla_small --tokenizer ${DATA}/bpe/mistral --prompt "Hello")

# --interactive: lines from standard input, one reply each, the state kept between turns. One
# turn "Hello" leaves exactly the state of --prompt-file "Hello\n" (the same tokens fed: the
# files are byte for byte the same); two turns move further on.
function(run_cli_input input expected_code out_var)
  file(WRITE ${WORK_DIR}/input.txt "${input}")
  execute_process(COMMAND ${CLI} ${ARGN} INPUT_FILE ${WORK_DIR}/input.txt RESULT_VARIABLE code
                  OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT code STREQUAL expected_code)
    message(FATAL_ERROR "retnet_generate ${ARGN} < '${input}': exit ${code}, expected ${expected_code}\n${out}\n${err}")
  endif()
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()
run_cli_input("Hello\n" 0 chat --model ${text_model} --interactive --max-new 5 --seed 4
              --temperature 0.9 --save-state ${WORK_DIR}/chat1.bin)
expect_match("${chat}" "^model: [^\n]*\nweights: [^\n]*\nthreads: [^\n]*\ntokenizer: hf-bpe, 32000 tokens\n> " "chat start")
expect_match("${chat}" "\n\\[turn 1: 3 prompt tokens, 5 generated, [0-9]+ ms; position 7\\]\n> \n" "chat turn")
file(WRITE ${WORK_DIR}/hello.txt "Hello\n")
run_cli(0 once err --model ${text_model} --prompt-file ${WORK_DIR}/hello.txt --max-new 5 --seed 4
        --temperature 0.9 --save-state ${WORK_DIR}/once.bin)
file(SHA256 ${WORK_DIR}/chat1.bin chat_hash)
file(SHA256 ${WORK_DIR}/once.bin once_hash)
if(NOT chat_hash STREQUAL once_hash)
  message(FATAL_ERROR "--interactive's state after one turn differs from --prompt-file's")
endif()
run_cli_input("Hello\nHow are you?\r\n" 0 chat2 --model ${text_model} --interactive --max-new 5
              --seed 4 --temperature 0.9)
expect_match("${chat2}" "\\[turn 1: [^\n]*position 7\\]\n> .*\\[turn 2: [0-9]+ prompt tokens, 5 generated, [0-9]+ ms; position [0-9]+\\]\n> \n"
             "two turns")
# After a prompt given on the command line, the conversation continues from its state.
run_cli_input("Hi\n" 0 after --model ${text_model} --prompt "Hello" --interactive --max-new 3)
expect_match("${after}" "generated:( [0-9]+)( [0-9]+)( [0-9]+)\n.*\\[turn 1: [0-9]+ prompt tokens, 3 generated" "prompt, then a turn")
expect_error(1 "--interactive needs --tokenizer" --model ${DATA}/rwkv4/rwkv4_model_small.safetensors
             --interactive)
