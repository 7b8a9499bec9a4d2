# Runs examples/retnet_train on a small text of our own: the validation loss falls, a run stopped
# at a step and resumed ends with the same bytes as one that ran through, and retnet_generate
# loads the result with its byte-level tokenizer. Inputs: TRAIN (retnet_train), CLI
# (retnet_generate), WORK_DIR.
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)

# Fails unless every named file is the same in both directories (SHA-256).
function(expect_same_files a b)
  foreach(name ${ARGN})
    file(SHA256 ${a}/${name} ha)
    file(SHA256 ${b}/${name} hb)
    if(NOT ha STREQUAL hb)
      message(FATAL_ERROR "${name} differs between ${a} (straight) and ${b} (resumed)")
    endif()
  endforeach()
endfunction()

# A repetitive text (a model learns it within a few dozen steps), 6 KB.
set(text "")
foreach(i RANGE 60)
  string(APPEND text "the cat sat on the mat. the dog sat on the log. a bird sang in the tree.\n")
endforeach()
file(WRITE ${WORK_DIR}/text.txt "${text}")

set(model --layers 1 --dim 32 --heads 2 --ffn 64 --value-dim 64 --batch 4 --seq 32 --lr 1e-2
          --min-lr 1e-3 --warmup 5 --val-every 10 --val-batches 2 --save-every 10 --threads 1
          --sample-tokens 0)

# Straight through.
run(${TRAIN} 0 out --text ${WORK_DIR}/text.txt --out ${WORK_DIR}/straight --steps 40 ${model})
expect_match("${out}" "saved [^\n]+validation loss" "the run's summary")
file(STRINGS ${WORK_DIR}/straight/log.csv lines)
list(GET lines 10 first)  # step 10: step,lr,train,val,...
list(GET lines 40 last)   # step 40
string(REPLACE "," ";" first "${first}")
string(REPLACE "," ";" last "${last}")
list(GET first 3 firstVal)
list(GET last 3 lastVal)
# ln 256 = 5.55 at the start; after 40 steps on this text the loss must be well below 2.
if(NOT lastVal LESS firstVal OR NOT lastVal LESS 2.0)
  message(FATAL_ERROR "validation loss ${firstVal} at step 10, ${lastVal} at step 40:\n${out}")
endif()
foreach(name model.safetensors optimizer.safetensors tokenizer.json training.json)
  if(NOT EXISTS ${WORK_DIR}/straight/${name})
    message(FATAL_ERROR "retnet_train wrote no ${name}")
  endif()
endforeach()

# Stopped at step 20, resumed: the same model and optimiser state bit for bit.
run(${TRAIN} 0 out --text ${WORK_DIR}/text.txt --out ${WORK_DIR}/resumed --steps 40 --stop-at 20
    ${model})
run(${TRAIN} 0 out --out ${WORK_DIR}/resumed --resume --threads 1 --sample-tokens 0)
expect_match("${out}" "resumed at step 20" "resume")
expect_same_files(${WORK_DIR}/straight ${WORK_DIR}/resumed model.safetensors optimizer.safetensors)

# FLA's family (grouped heads): a Hugging Face directory; stopped and resumed, the same bytes.
set(fla --family fla --kv-heads 1 ${model})
run(${TRAIN} 0 out --text ${WORK_DIR}/text.txt --out ${WORK_DIR}/fla --steps 20 ${fla})
run(${TRAIN} 0 out --text ${WORK_DIR}/text.txt --out ${WORK_DIR}/fla_resumed --steps 20 --stop-at 10
    ${fla})
run(${TRAIN} 0 out --out ${WORK_DIR}/fla_resumed --resume --threads 1 --sample-tokens 0)
expect_same_files(${WORK_DIR}/fla ${WORK_DIR}/fla_resumed model.safetensors optimizer.safetensors
                  config.json)
run(${CLI} 0 out --model ${WORK_DIR}/fla --prompt "the dog" --max-new 8 --threads 1)
expect_match("${out}" "\\(fla: layers 1" "retnet_generate reads the FLA directory")

# The trained model through retnet_generate, text in and text out.
run(${CLI} 0 out --model ${WORK_DIR}/straight --prompt "the cat" --max-new 12 --threads 1)
expect_match("${out}" "generated:" "retnet_generate on the trained model")

# Errors: one line, non-zero exit.
run(${TRAIN} 2 out --out ${WORK_DIR}/x)
expect_match("${out}" "^retnet_train: error: --text is required" "no --text")
run(${TRAIN} 2 out --text ${WORK_DIR}/text.txt --out ${WORK_DIR}/x --form recurrent)
expect_match("${out}" "--form must be chunkwise or parallel" "recurrent form")
file(WRITE ${WORK_DIR}/short.txt "too short")
run(${TRAIN} 1 out --text ${WORK_DIR}/short.txt --out ${WORK_DIR}/x --seq 32)
expect_match("${out}" "^retnet_train: error: .*too few for --seq 32" "short text")
run(${TRAIN} 2 out --text ${WORK_DIR}/text.txt --out ${WORK_DIR}/x --family fla --precision double)
expect_match("${out}" "--family fla saves float32 weights" "fla in double")
run(${TRAIN} 1 out --out ${WORK_DIR}/missing --resume)
expect_match("${out}" "^retnet_train: error: --resume: cannot read" "resume without a run")
