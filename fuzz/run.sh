#!/usr/bin/env bash
# Builds the libFuzzer target for the safetensors reader with clang and runs it for a bounded
# time from the seed corpus. Exits non-zero on any finding (crash, sanitizer report, leak, timeout,
# allocation over the limits below); the input that caused it is saved under
# <build dir>/fuzz-run/artifacts/.
#
#   fuzz/run.sh [build dir]      default build-fuzz; FUZZ_SECONDS (default 60) bounds the run
#
# The seed corpus is fuzz/corpus/ plus a fresh make_corpus output; both are copied into a
# scratch directory (the first copy also collects the new inputs libFuzzer finds), so the run
# never touches the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-fuzz}"
seconds="${FUZZ_SECONDS:-60}"

cmake -S . -B "$build" -DRETNET_BUILD_FUZZERS=ON -DRETNET_BUILD_TESTS=OFF \
  -DRETNET_BUILD_EXAMPLES=OFF -DRETNET_BUILD_BENCHMARKS=OFF -DCMAKE_CXX_COMPILER=clang++
cmake --build "$build" -j1 --target fuzz_safetensors fuzz_seed_corpus

generated="$build/fuzz/seed_corpus"
if ! diff -rq fuzz/corpus "$generated" >/dev/null; then
  echo "note: fuzz/corpus differs from make_corpus output; refresh with: $generated/../make_corpus fuzz/corpus" >&2
fi
scratch="$build/fuzz-run"
rm -rf "$scratch"
mkdir -p "$scratch/corpus" "$scratch/generated" "$scratch/artifacts"
cp fuzz/corpus/* "$scratch/corpus/"
cp "$generated"/* "$scratch/generated/"

status=0
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}" \
UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
  "$build/fuzz/fuzz_safetensors" "$scratch/corpus" "$scratch/generated" \
  -dict=fuzz/safetensors.dict -artifact_prefix="$scratch/artifacts/" -print_final_stats=1 \
  -max_total_time="$seconds" -rss_limit_mb=512 -malloc_limit_mb=256 -timeout=10 || status=$?

if [ "$status" -ne 0 ] || [ -n "$(ls -A "$scratch/artifacts")" ]; then
  echo "fuzz_safetensors: FINDING (exit status $status); inputs in $scratch/artifacts:" >&2
  ls -l "$scratch/artifacts" >&2
  exit 1
fi
echo "fuzz_safetensors: no findings in ${seconds}s"
