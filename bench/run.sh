#!/usr/bin/env bash
# Builds and runs the retnet benchmark suite, writing Google Benchmark JSON to bench/results/.
#
#   bench/run.sh                      # full suite (~6-8 minutes on 2 cores)
#   QUICK=1 bench/run.sh              # smoke test: reduced grids, min time 0.05 s
#   bench/run.sh --benchmark_filter=MSR   # extra arguments go to every binary
#
# Environment: BUILD_DIR (default build-bench), RESULTS_DIR (default bench/results, or
# bench/results/quick with QUICK=1), JOBS (build parallelism, default 1), CXX_COMPILER
# (default clang++), BENCHES (default "baselines forms decode stages rwkv4"), MIN_TIME (overrides the
# per-binary minimum time per benchmark), ONEDNN (ON: build with RETNET_ONEDNN, the BF16 GEMM that
# WEIGHTS=bf16 runs use; default OFF). Then: bench/plot.py "$RESULTS_DIR".
#
# The build is Release, -march=native (RETNET_NATIVE) and OpenMP (RETNET_OPENMP), so the thr=2
# rows use two threads for retnet's batch x heads loops and Eigen's GEMMs. Timings are wall
# clock: on a shared machine, check the load average recorded in each JSON's context.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build-bench}
quick=${QUICK:-0}
if [[ "$quick" != "0" && -n "$quick" ]]; then
  results=${RESULTS_DIR:-$root/bench/results/quick}
else
  quick=0
  results=${RESULTS_DIR:-$root/bench/results}
fi
export QUICK=$quick

cmake -S "$root" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_COMPILER="${CXX_COMPILER:-clang++}" \
  -DRETNET_NATIVE=ON -DRETNET_OPENMP=ON -DRETNET_WERROR=ON -DRETNET_ONEDNN="${ONEDNN:-OFF}" \
  -DRETNET_BUILD_BENCHMARKS=ON -DRETNET_BUILD_TESTS=OFF -DRETNET_BUILD_EXAMPLES=OFF
cmake --build "$build" -j"${JOBS:-1}" --target bench_baselines bench_forms bench_decode bench_stages \
  bench_rwkv4

mkdir -p "$results"
echo "load average before running: $(cut -d' ' -f1-3 /proc/loadavg)"

# Minimum time per benchmark: long enough for stable medians of the short cases; the long cases
# (T = 16384 of a block takes seconds) run a single iteration anyway.
min_time_for() {
  if [[ -n "${MIN_TIME:-}" ]]; then
    echo "$MIN_TIME"
  elif [[ "$quick" != "0" ]]; then
    echo 0.05
  else
    case "$1" in
      forms) echo 0.15 ;;
      rwkv4) echo 0.2 ;;
      stages) echo 0.3 ;;
      *) echo 0.5 ;;
    esac
  fi
}

for bench in ${BENCHES:-baselines forms decode stages rwkv4}; do
  echo "== bench_$bench =="
  "$build/bench/bench_$bench" \
    --benchmark_min_time="$(min_time_for "$bench")" \
    --benchmark_out="$results/$bench.json" --benchmark_out_format=json \
    "$@"
done
echo "JSON written to $results; plot with: $root/bench/plot.py $results"
