#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for a bounded time from its seed corpus.
# Exits non-zero on any finding (crash, sanitizer report, leak, timeout, allocation over the
# limits below); the input that caused it is saved under <build dir>/fuzz-run/<target>/artifacts/.
#
#   fuzz/run.sh [build dir [target...]]   default build-fuzz and every target:
#                                         safetensors pth model_config weight_index state_file
#                                         vocabulary tokenizer_json
#
#   FUZZ_SECONDS          seconds for fuzz_safetensors (default 60)
#   FUZZ_SECONDS_READERS  seconds for each of the other targets (default 20)
#   FUZZ_BUILD_JOBS       parallel compile jobs (default 1)
#
# A target's seed corpus is fuzz/corpus/<target>/ plus a fresh make_corpus output; both are
# copied into a scratch directory (the first copy also collects the new inputs libFuzzer finds),
# so the run never touches the source tree. The reproducers of open findings in
# fuzz/crashes/<target>/ (fuzz/crashes/README.md) are replayed first, as regression inputs.
# The harnesses' temporary model directories go to <build dir>/fuzz-run/tmp (TMPDIR).
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-fuzz}"
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(safetensors pth model_config weight_index state_file vocabulary tokenizer_json)
jobs="${FUZZ_BUILD_JOBS:-1}"

cmake -S . -B "$build" -DRETNET_BUILD_FUZZERS=ON -DRETNET_BUILD_TESTS=OFF \
  -DRETNET_BUILD_EXAMPLES=OFF -DRETNET_BUILD_BENCHMARKS=OFF -DCMAKE_CXX_COMPILER=clang++
cmake --build "$build" -j"$jobs" --target fuzz_seed_corpus "${targets[@]/#/fuzz_}"

generated="$build/fuzz/seed_corpus"
if ! diff -rq fuzz/corpus "$generated" >/dev/null; then
  echo "note: fuzz/corpus differs from make_corpus output; refresh with:" \
    "rm -rf fuzz/corpus && $build/fuzz/make_corpus fuzz/corpus tests/data" >&2
fi
scratch="$build/fuzz-run"
rm -rf "$scratch"
mkdir -p "$scratch/tmp"

failed=()
for target in "${targets[@]}"; do
  if [ "$target" = safetensors ]; then
    seconds="${FUZZ_SECONDS:-60}"
  else
    seconds="${FUZZ_SECONDS_READERS:-20}"
  fi
  fuzzer="$build/fuzz/fuzz_$target"
  run="$scratch/$target"
  mkdir -p "$run/corpus" "$run/generated" "$run/artifacts"
  [ ! -d "fuzz/corpus/$target" ] || cp -R "fuzz/corpus/$target/." "$run/corpus/"
  cp -R "$generated/$target/." "$run/generated/"
  env=(TMPDIR="$scratch/tmp"
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
    UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}")
  limits=(-rss_limit_mb=512 -malloc_limit_mb=256 -timeout=10)

  status=0
  reproducers=()
  if [ -d "fuzz/crashes/$target" ]; then
    while IFS= read -r -d '' file; do reproducers+=("$file"); done \
      < <(find "fuzz/crashes/$target" -type f -print0 | sort -z)
  fi
  if [ "${#reproducers[@]}" -gt 0 ]; then
    echo "fuzz_$target: replaying ${#reproducers[@]} reproducer(s) from fuzz/crashes/$target"
    for file in "${reproducers[@]}"; do
      if ! env "${env[@]}" "$fuzzer" "${limits[@]}" "$file" >"$run/replay.log" 2>&1; then
        echo "fuzz_$target: FINDING: $file still fails:" >&2
        grep -E "runtime error|ERROR|invariant broken|SUMMARY" "$run/replay.log" | head -5 >&2 || true
        status=1
      fi
    done
  fi

  dict=()
  [ ! -f "fuzz/$target.dict" ] || dict=(-dict="fuzz/$target.dict")
  echo "fuzz_$target: fuzzing for ${seconds}s"
  env "${env[@]}" "$fuzzer" "$run/corpus" "$run/generated" "${dict[@]}" "${limits[@]}" \
    -artifact_prefix="$run/artifacts/" -print_final_stats=1 -max_total_time="$seconds" ||
    status=$?

  if [ "$status" -ne 0 ] || [ -n "$(ls -A "$run/artifacts")" ]; then
    echo "fuzz_$target: FINDING (exit status $status); inputs in $run/artifacts:" >&2
    ls -l "$run/artifacts" >&2
    failed+=("$target")
  else
    echo "fuzz_$target: no findings in ${seconds}s"
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz/run.sh: findings in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz/run.sh: no findings (${targets[*]})"
