#!/usr/bin/env bash
# Real size: a synthetic checkpoint in the exact fla-hub retnet-1.3B-100B layout (config.json +
# one BF16 model.safetensors, 2.7 GB), loaded with retnet::io::loadModel<float>, then prefill and
# decode timed. Writes bench/results/real_size.json (see bench/README.md, "Real size").
#
#   bench/real_size.sh               # full size (~15 minutes on 2 cores, 2.7 GB of disk in /tmp)
#   SMALL=1 bench/real_size.sh       # the same layout at d = 256, 2 layers: a smoke test
#   WEIGHTS="f32 bf16 f16 int8" OUT=bench/results/lowp_weights.json bench/real_size.sh
#                                    # every weight type (io::LoadOptions), one after another
#
# Steps: build make_fla_checkpoint and bench_real_size (Release, -march=native, OpenMP, -Werror,
# like bench/run.sh); check on a small checkpoint that the streamed file is byte for byte the one
# retnet::io::SafetensorsWriter builds; write the checkpoint unless CHECKPOINT_DIR already holds
# one; then, for each thread count, the load alone in a process of its own (so its peak resident
# memory is the load's), one cold-cache load (page cache dropped for the file), and a process
# that loads and times prefill and decode. Extra arguments go to the speed runs (e.g.
# --chunks 128 --lengths 512).
#
# Environment: CHECKPOINT_DIR (default /tmp/fla-1.3b-synthetic; /tmp/fla-small-synthetic with
# SMALL=1), BUILD_DIR (default build-bench), JOBS (build parallelism, default 1), CXX_COMPILER
# (default clang++), THREADS (default "1 2"), WEIGHTS (default "f32"), OUT (default
# bench/results/real_size.json; bench/results/quick/real_size.json with SMALL=1), ONEDNN (ON: build
# with RETNET_ONEDNN, so that BF16 weights prefill through the BF16 GEMM; pass --bf16-gemm never to
# time them without it; default OFF).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build-bench}
small=${SMALL:-0}
[[ "$small" == "0" || -z "$small" ]] && small=0
if [[ "$small" != "0" ]]; then
  checkpoint=${CHECKPOINT_DIR:-/tmp/fla-small-synthetic}
  out=${OUT:-$root/bench/results/quick/real_size.json}
  make_args=(--small)
else
  checkpoint=${CHECKPOINT_DIR:-/tmp/fla-1.3b-synthetic}
  out=${OUT:-$root/bench/results/real_size.json}
  make_args=()
fi
threads=${THREADS:-1 2}
weights=${WEIGHTS:-f32}

cmake -S "$root" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_COMPILER="${CXX_COMPILER:-clang++}" \
  -DRETNET_NATIVE=ON -DRETNET_OPENMP=ON -DRETNET_WERROR=ON -DRETNET_ONEDNN="${ONEDNN:-OFF}" \
  -DRETNET_BUILD_BENCHMARKS=ON -DRETNET_BUILD_TESTS=OFF -DRETNET_BUILD_EXAMPLES=OFF
cmake --build "$build" -j"${JOBS:-1}" --target make_fla_checkpoint bench_real_size
make=$build/bench/make_fla_checkpoint
bench=$build/bench/bench_real_size

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== the streamed file against retnet::io::SafetensorsWriter's (small layout)"
"$make" "$work/streamed" --small >/dev/null
"$make" "$work/writer" --small --via-writer >/dev/null
cmp "$work/streamed/model.safetensors" "$work/writer/model.safetensors"
cmp "$work/streamed/config.json" "$work/writer/config.json"
rm -rf "$work/streamed" "$work/writer"
echo "identical"

echo "== checkpoint $checkpoint"
if [[ -f "$checkpoint/model.safetensors" && -f "$checkpoint/config.json" ]]; then
  echo "present, reused (delete the directory to write it again)"
else
  "$make" "$checkpoint" "${make_args[@]}"
fi

load_average() { cut -d' ' -f1-3 /proc/loadavg; }
start_load=$(load_average)
echo "load average before running: $start_load"

runs=()
for w in $weights; do
  for t in $threads; do
    echo "== load only, weights $w, OMP_NUM_THREADS=$t"
    OMP_NUM_THREADS=$t "$bench" "$checkpoint" --weights "$w" --mode load --json "$work/load_${w}_$t.json"
    runs+=("$work/load_${w}_$t.json")
  done
  echo "== load only, weights $w, cold page cache, OMP_NUM_THREADS=1"
  OMP_NUM_THREADS=1 "$bench" "$checkpoint" --weights "$w" --mode load --cold \
    --json "$work/load_${w}_cold.json"
  runs+=("$work/load_${w}_cold.json")
  for t in $threads; do
    echo "== load + prefill + decode, weights $w, OMP_NUM_THREADS=$t (load average $(load_average))"
    OMP_NUM_THREADS=$t "$bench" "$checkpoint" --weights "$w" --mode speed \
      --json "$work/speed_${w}_$t.json" "$@"
    runs+=("$work/speed_${w}_$t.json")
  done
done

mkdir -p "$(dirname "$out")"
cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
{
  printf '{\n  "machine": {"cpu": "%s", "cpus": %s, "kernel": "%s", "mem_total_kb": %s},\n' \
    "$cpu" "$(nproc)" "$(uname -r)" "$(awk '/^MemTotal/ {print $2}' /proc/meminfo)"
  commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "?")
  printf '  "date": "%s",\n  "commit": "%s",\n  "compiler": "%s",\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$commit" "$("${CXX_COMPILER:-clang++}" --version | head -1)"
  printf '  "checkpoint": "%s",\n  "load_average_start": "%s",\n  "load_average_end": "%s",\n' \
    "$checkpoint" "$start_load" "$(load_average)"
  printf '  "runs": [\n'
  for i in "${!runs[@]}"; do
    [[ $i -gt 0 ]] && printf ',\n'
    cat "${runs[$i]}"
  done
  printf '\n  ]\n}\n'
} >"$out"
echo "JSON written to $out"
