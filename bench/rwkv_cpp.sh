#!/usr/bin/env bash
# retnet's RWKV-4 against rwkv.cpp (issue 13), run by hand, never by CI. Both sides run the same
# random float32 RWKV-4 weights at BlinkDL's 169M and 430M shapes, written once as a BlinkDL .pth:
# retnet loads the .pth itself (bench_rwkv4_file), rwkv.cpp loads what its own converter makes of
# it (bench/rwkv_cpp_driver.c, through rwkv.h). Writes bench/results/rwkv_cpp.json and prints
# Markdown tables (see bench/README.md, "Against rwkv.cpp").
#
#   bench/rwkv_cpp.sh RWKV_CPP [GGML]
#
# RWKV_CPP: rwkv.cpp's source, a tree (with rwkv.h) or a git directory such as a fetched mirror
# (then its HEAD is exported with git archive). GGML: ggml's source, tree or git directory, needed
# when RWKV_CPP's ggml/ submodule is empty: the commit rwkv.cpp pins is exported into it. The script
# builds librwkv.so outside this repository, in $WORK_DIR/rwkv.cpp-build, with rwkv.cpp's best CPU
# settings (Release, RWKV_NATIVE, RWKV_AVX512, GGML_NATIVE, GGML_LLAMAFILE, GGML_OPENMP; gcc, the
# compiler its CI uses), or takes LIBRWKV=path/librwkv.so built elsewhere. The build's settings
# are copied from its CMakeCache.txt into the JSON.
#
# Steps: build bench_rwkv4_file (Release, -march=native, OpenMP, clang++, like bench/run.sh) and
# the driver; write the .pth files (/usr/bin/python3 with Debian's python3-torch) and convert them
# with rwkv.cpp's converter to FP32 (and FP16: an informative extra, retnet is float32 only); check
# that both sides give the same logits; then ROUNDS rounds of every case, each round running
# retnet then rwkv.cpp for the same (shape, threads, kind) one after the other, so both see the
# same machine; the best of the rounds counts. Run it on a quiet machine: the load average is
# recorded at the start and at the end.
#
# Environment: BUILD_DIR (default build-rwkvbench), WORK_DIR (weights and per-run JSON, default
# /tmp/rwkv4-bench; the .pth and converted files are reused when present), JOBS (default 1),
# CXX_COMPILER (default clang++), CC (for the driver, default cc), ROUNDS (default 3), THREADS
# (default "1 2"), SHAPES (default "169M 430M"), LENGTHS (default "64 256 1024"), LOOP_LENGTHS
# (the token-by-token loop, default LENGTHS), FP16 (default 1: also time rwkv.cpp's FP16 file for
# prefill and decode), DECODE_STEPS (default 64), OUT (default bench/results/rwkv_cpp.json),
# RWKV_CPP_COMMIT / GGML_COMMIT / RETNET_COMMIT (recorded; default: git rev-parse in the source
# trees, if any).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
  exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build-rwkvbench}
work=${WORK_DIR:-/tmp/rwkv4-bench}
mkdir -p "$work"
is_git_dir() { [[ "$(git -C "$1" rev-parse --is-bare-repository 2>/dev/null)" == true ]]; }
# export_tree GIT_DIR COMMIT DEST: the commit's files into DEST. A fetched snapshot may lack its
# largest blobs (test models, for rwkv.cpp): those are skipped and named, nothing else is.
export_tree() {
  local git_dir=$1 commit=$2 dest=$3 mode type object path
  mkdir -p "$dest"
  git -C "$git_dir" ls-tree -r -z "$commit" | while IFS= read -r -d '' line; do
    read -r mode type object <<<"${line%%$'\t'*}"
    path=${line#*$'\t'}
    [[ "$type" == blob ]] || continue
    if ! git -C "$git_dir" cat-file -e "$object" 2>/dev/null; then
      echo "   (absent from the snapshot, skipped: $path)"
      continue
    fi
    mkdir -p "$dest/$(dirname "$path")"
    git -C "$git_dir" cat-file blob "$object" >"$dest/$path"
    [[ "$mode" != 100755 ]] || chmod +x "$dest/$path"
  done
}

# rwkv.cpp's source tree: as given, or exported from a git directory (with ggml beside it).
rwkv_src=$(cd "$1" && pwd)
rwkv_commit_default=$(git -C "$rwkv_src" rev-parse HEAD 2>/dev/null || echo unknown)
if is_git_dir "$rwkv_src"; then
  tree=$work/rwkv.cpp-src
  if [[ "$(cat "$tree/.commit" 2>/dev/null)" != "$rwkv_commit_default" ]]; then
    echo "== export rwkv.cpp $rwkv_commit_default into $tree"
    rm -rf "$tree" && mkdir -p "$tree"
    export_tree "$rwkv_src" HEAD "$tree"
    echo "$rwkv_commit_default" >"$tree/.commit"
  fi
  ggml_pin=$(git -C "$rwkv_src" ls-tree HEAD ggml | awk '$2 == "commit" { print $3 }')
  rwkv_src=$tree
fi
[[ -f "$rwkv_src/rwkv.h" ]] || { echo "no rwkv.h in $rwkv_src" >&2; exit 1; }
ggml_commit_default=$(git -C "$rwkv_src/ggml" rev-parse HEAD 2>/dev/null || echo unknown)
if [[ ! -f "$rwkv_src/ggml/CMakeLists.txt" ]]; then
  [[ $# -eq 2 ]] || { echo "$rwkv_src/ggml is empty: give ggml's source as the second argument" >&2; exit 1; }
  ggml_src=$(cd "$2" && pwd)
  if is_git_dir "$ggml_src"; then
    pin=${ggml_pin:-HEAD}
    echo "== export ggml $pin (the commit rwkv.cpp pins) into $rwkv_src/ggml"
    mkdir -p "$rwkv_src/ggml"
    export_tree "$ggml_src" "$pin" "$rwkv_src/ggml"
    ggml_commit_default=$(git -C "$ggml_src" rev-parse "$pin")
  else
    cp -a "$ggml_src/." "$rwkv_src/ggml/"
    ggml_commit_default=$(git -C "$ggml_src" rev-parse HEAD 2>/dev/null || echo unknown)
  fi
fi
converter=$rwkv_src/python/convert_pytorch_to_ggml.py
[[ -f "$converter" ]] || { echo "no $converter" >&2; exit 1; }

# librwkv.so: LIBRWKV as given, or built here, outside the repository.
if [[ -n "${LIBRWKV:-}" ]]; then
  librwkv=$(cd "$(dirname "$LIBRWKV")" && pwd)/$(basename "$LIBRWKV")
else
  rwkv_build=$work/rwkv.cpp-build
  echo "== build librwkv.so in $rwkv_build"
  cmake -S "$rwkv_src" -B "$rwkv_build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_COMPILER="${RWKV_CC:-gcc}" -DCMAKE_CXX_COMPILER="${RWKV_CXX:-g++}" \
    -DRWKV_STANDALONE=ON -DRWKV_BUILD_SHARED_LIBRARY=ON -DRWKV_NATIVE=ON -DRWKV_AVX512=ON \
    -DGGML_NATIVE=ON -DGGML_LLAMAFILE=ON -DGGML_OPENMP=ON -DGGML_CCACHE=OFF \
    -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF >/dev/null
  nice -n 19 cmake --build "$rwkv_build" -j"${JOBS:-1}" --target rwkv >"$work/rwkv.cpp-build.log" 2>&1 ||
    { tail -30 "$work/rwkv.cpp-build.log" >&2; exit 1; }
  librwkv=$(find "$rwkv_build" -name 'librwkv.so' -print -quit)
fi
[[ -f "$librwkv" ]] || { echo "no library $librwkv" >&2; exit 1; }
rounds=${ROUNDS:-3}
threads=${THREADS:-1 2}
shapes=${SHAPES:-169M 430M}
lengths=${LENGTHS:-64 256 1024}
loop_lengths=${LOOP_LENGTHS:-$lengths}
fp16=${FP16:-1}
steps=${DECODE_STEPS:-64}
out=${OUT:-$root/bench/results/rwkv_cpp.json}
python=/usr/bin/python3
comma() { echo "$*" | tr ' ' ','; }

echo "== build bench_rwkv4_file ($build) and the rwkv.cpp driver"
cmake -S "$root" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_COMPILER="${CXX_COMPILER:-clang++}" \
  -DRETNET_NATIVE=ON -DRETNET_OPENMP=ON -DRETNET_WERROR=ON \
  -DRETNET_BUILD_BENCHMARKS=ON -DRETNET_BUILD_TESTS=OFF -DRETNET_BUILD_EXAMPLES=OFF >/dev/null
nice -n 19 cmake --build "$build" -j"${JOBS:-1}" --target bench_rwkv4_file
ours=$build/bench/bench_rwkv4_file
theirs=$build/bench/rwkv_cpp_driver
"${CC:-cc}" -O2 -std=c11 -Wall -Wextra -Werror -I"$rwkv_src" "$root/bench/rwkv_cpp_driver.c" \
  -o "$theirs" -L"$(dirname "$librwkv")" -l:"$(basename "$librwkv")" \
  -Wl,-rpath,"$(dirname "$librwkv")"

mkdir -p "$work/runs"
rm -f "$work"/runs/*.json
declare -A dims=([169M]="12 768 3072 50277" [430M]="24 1024 4096 50277")
for shape in $shapes; do
  [[ -n "${dims[$shape]:-}" ]] || { echo "unknown shape $shape (169M or 430M)" >&2; exit 1; }
  pth=$work/rwkv4-$shape.pth
  if [[ ! -f "$pth" ]]; then
    echo "== write $pth (L C F V = ${dims[$shape]})"
    # BlinkDL's names and shapes (docs/semantics/rwkv4.md §2), float32: matrices uniform with
    # std 1/sqrt(in), LayerNorm weights 1 ± 0.1 and biases ± 0.1, time_decay in [-6, 1],
    # time_first in [-1, 1], time_mix in [0, 1] (bench_rwkv4.cpp's recipe).
    read -r -a dim <<<"${dims[$shape]}"
    $python - "$pth" "${dim[@]}" <<'EOF'
import sys
import torch

path, L, C, F, V = sys.argv[1], *map(int, sys.argv[2:])
g = torch.Generator().manual_seed(20230513 + L)
def uniform(shape, low, high):
    return low + (high - low) * torch.rand(shape, generator=g)
def matrix(rows, cols):
    a = (3.0 / cols) ** 0.5
    return uniform((rows, cols), -a, a)
def norm(prefix):
    return {prefix + '.weight': uniform((C,), 0.9, 1.1), prefix + '.bias': uniform((C,), -0.1, 0.1)}
sd = {'emb.weight': matrix(V, C)}
for l in range(L):
    b = f'blocks.{l}.'
    sd.update(norm(b + 'ln1'))
    sd.update(norm(b + 'ln2'))
    if l == 0:
        sd.update(norm(b + 'ln0'))
    sd[b + 'att.time_decay'] = uniform((C,), -6.0, 1.0)
    sd[b + 'att.time_first'] = uniform((C,), -1.0, 1.0)
    for m in 'kvr':
        sd[b + 'att.time_mix_' + m] = uniform((1, 1, C), 0.0, 1.0)
    for m in ('key', 'value', 'receptance', 'output'):
        sd[b + f'att.{m}.weight'] = matrix(C, C)
    for m in 'kr':
        sd[b + 'ffn.time_mix_' + m] = uniform((1, 1, C), 0.0, 1.0)
    sd[b + 'ffn.key.weight'] = matrix(F, C)
    sd[b + 'ffn.receptance.weight'] = matrix(C, C)
    sd[b + 'ffn.value.weight'] = matrix(C, F)
sd.update(norm('ln_out'))
sd['head.weight'] = matrix(V, C)
torch.save(sd, path)
print(f'{sum(t.numel() for t in sd.values())} parameters')
EOF
  fi
  for type in FP32 $([[ "$fp16" != 0 ]] && echo FP16); do
    bin=$work/rwkv4-$shape-$type.bin
    if [[ ! -f "$bin" ]]; then
      echo "== convert to $bin with rwkv.cpp's converter"
      $python "$converter" "$pth" "$bin" "$type" >/dev/null
    fi
  done

  echo "== $shape: the same logits on both sides (FP32, 64-token prompt, then one decode step)"
  "$ours" "$pth" --kind check --logits "$work/check-ours-$shape.f32" --json /dev/null
  "$theirs" "$work/rwkv4-$shape-FP32.bin" --kind check --logits "$work/check-theirs-$shape.f32" \
    --json /dev/null
  $python - "$work/check-ours-$shape.f32" "$work/check-theirs-$shape.f32" \
    "$work/runs/check_$shape.json" "$shape" <<'EOF'
import json, sys
import numpy as np
a = np.fromfile(sys.argv[1], dtype=np.float32).reshape(2, -1).astype(np.float64)
b = np.fromfile(sys.argv[2], dtype=np.float32).reshape(2, -1).astype(np.float64)
rows = [float(np.abs(a[i] - b[i]).max() / np.abs(b[i]).max()) for i in range(2)]
same = [bool(a[i].argmax() == b[i].argmax()) for i in range(2)]
json.dump({'shape': sys.argv[4], 'max_abs_diff_over_max_abs_logit': {'prefill64': rows[0], 'decode': rows[1]},
           'same_argmax': {'prefill64': same[0], 'decode': same[1]},
           'logit_std': float(b.std())}, open(sys.argv[3], 'w'))
print(f'max |ours - theirs| / max |logit|: prefill {rows[0]:.2e}, decode step {rows[1]:.2e}; '
      f'same argmax: {same}; logit std {b.std():.2f}')
if max(rows) > 1e-3:
    sys.exit('the two sides disagree')
EOF
done

load_average() { cut -d' ' -f1-3 /proc/loadavg; }
start_load=$(load_average)
echo "== timing: $rounds round(s), load average at start $start_load"
for round in $(seq 1 "$rounds"); do
  for shape in $shapes; do
    for t in $threads; do
      for kind in prefill loop decode; do
        case $kind in
          loop) ls=$(comma "$loop_lengths") ;;
          *) ls=$(comma "$lengths") ;;
        esac
        tag="r${round}_${shape}_${t}_${kind}"
        echo "-- round $round, $shape, $t thread(s), $kind (load $(load_average))"
        OMP_NUM_THREADS=$t "$ours" "$work/rwkv4-$shape.pth" --threads "$t" --kind "$kind" \
          --lengths "$ls" --decode-steps "$steps" --json "$work/runs/${tag}_retnet.json"
        OMP_NUM_THREADS=$t "$theirs" "$work/rwkv4-$shape-FP32.bin" --threads "$t" --kind "$kind" \
          --lengths "$ls" --decode-steps "$steps" --json "$work/runs/${tag}_rwkvcpp-FP32.json"
        if [[ "$fp16" != 0 && "$kind" != loop ]]; then
          OMP_NUM_THREADS=$t "$theirs" "$work/rwkv4-$shape-FP16.bin" --threads "$t" \
            --kind "$kind" --lengths "$ls" --decode-steps "$steps" \
            --json "$work/runs/${tag}_rwkvcpp-FP16.json"
        fi
      done
    done
  done
done
end_load=$(load_average)
echo "== load average at the end: $end_load"

rwkv_commit=${RWKV_CPP_COMMIT:-$rwkv_commit_default}
ggml_commit=${GGML_COMMIT:-$ggml_commit_default}
retnet_commit=${RETNET_COMMIT:-$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)}
cache=$(dirname "$librwkv")/CMakeCache.txt
mkdir -p "$(dirname "$out")"
export rwkv_commit ggml_commit retnet_commit cache librwkv start_load end_load rounds steps
export retnet_cxx=${CXX_COMPILER:-clang++}
$python - "$work/runs" "$out" <<'EOF'
import glob, json, os, re, subprocess, sys
runs_dir, out = sys.argv[1], sys.argv[2]
E = os.environ
rounds, steps = int(E['rounds']), int(E['steps'])

def lscpu(field):
    for line in subprocess.run(['lscpu'], capture_output=True, text=True).stdout.splitlines():
        if line.startswith(field + ':'):
            return line.split(':', 1)[1].strip()
    return '?'
def version(tool):
    try:
        return subprocess.run([tool, '--version'], capture_output=True, text=True).stdout.splitlines()[0]
    except Exception:
        return '?'
build = {}
if os.path.exists(E['cache']):
    keys = ('CMAKE_BUILD_TYPE', 'CMAKE_C_COMPILER', 'CMAKE_CXX_COMPILER', 'GGML_NATIVE',
            'GGML_LLAMAFILE', 'GGML_OPENMP', 'GGML_AVX', 'GGML_AVX2', 'GGML_AVX512', 'GGML_FMA',
            'GGML_BLAS', 'RWKV_NATIVE', 'RWKV_AVX512', 'RWKV_BUILD_SHARED_LIBRARY')
    for line in open(E['cache']):
        m = re.match(r'^([A-Z0-9_]+):[A-Z]+=(.*)$', line.strip())
        if m and m.group(1) in keys:
            build[m.group(1)] = m.group(2)

cases, decode, bandwidth, system_info, loads = {}, {}, {}, None, {}
for path in sorted(glob.glob(os.path.join(runs_dir, 'r*_*.json'))):
    name = os.path.basename(path)[:-5]
    rnd, shape, threads, kind, side = name.split('_', 4)
    r = json.load(open(path))
    threads = int(threads)
    side = 'retnet' if side == 'retnet' else side.replace('rwkvcpp', 'rwkv.cpp')
    loads.setdefault((side, shape), []).append(r['load_seconds'])
    system_info = r.get('system_info', system_info)
    for row in r.get('prefill', []):
        key = (shape, threads, side, row['way'], row['T'])
        cases[key] = max(cases.get(key, 0.0), row['tokens_per_second'])
    if 'decode' in r:
        key = (shape, threads, side)
        ms = r['decode']['ms_per_token']['median']
        decode[key] = min(decode.get(key, 1e300), ms)
    if 'read_bandwidth_gbs' in r:
        key = (shape, threads)
        bandwidth[key] = max(bandwidth.get(key, 0.0), r['read_bandwidth_gbs'])

checks = {os.path.basename(p)[6:-5]: json.load(open(p))
          for p in glob.glob(os.path.join(runs_dir, 'check_*.json'))}
result = {
    'context': {
        'cpu': lscpu('Model name'), 'cpus': os.cpu_count(), 'flags_avx512f': 'avx512f' in lscpu('Flags'),
        'retnet_commit': E['retnet_commit'], 'retnet_compiler': version(E['retnet_cxx']),
        'retnet_flags': 'Release, -march=native (RETNET_NATIVE), OpenMP (RETNET_OPENMP)',
        'rwkv_cpp_commit': E['rwkv_commit'], 'ggml_commit': E['ggml_commit'],
        'librwkv': E['librwkv'], 'rwkv_cpp_build': build, 'rwkv_cpp_system_info': system_info,
        'rounds': rounds, 'load_average_start': E['start_load'], 'load_average_end': E['end_load'],
        'weights': 'random float32, BlinkDL .pth (bench/rwkv_cpp.sh); rwkv.cpp: its converter, FP32 (and FP16)',
        'best_of': 'prefill: highest tokens/s over the rounds (each round: best of up to 5 runs after a warm-up); decode: lowest median ms/token over the rounds',
        'read_bandwidth_gbs': {f'{s}/{t}t': v for (s, t), v in sorted(bandwidth.items())},
        'load_seconds': {f'{side}/{s}': min(v) for (side, s), v in sorted(loads.items())},
    },
    'agreement': checks,
    'prefill': [{'shape': s, 'threads': t, 'side': side, 'way': w, 'T': T, 'tokens_per_second': v}
                for (s, t, side, w, T), v in sorted(cases.items())],
    'decode': [{'shape': s, 'threads': t, 'side': side, 'ms_per_token_median': v}
               for (s, t, side), v in sorted(decode.items())],
}
json.dump(result, open(out, 'w'), indent=2)

def get(s, t, side, way, T):
    return cases.get((s, t, side, way, T))
def fmt(v, digits=0):
    return '—' if v is None else f'{v:,.{digits}f}'
shapes = sorted({k[0] for k in cases} | {k[0] for k in decode}, key=lambda s: int(s[:-1]))
threads = sorted({k[1] for k in cases} | {k[1] for k in decode})
lengths = sorted({k[4] for k in cases})
T = max(lengths) if lengths else 0
print(f'\n### Prefill at T = {T}, tokens/s (best of {rounds} rounds; higher is better)\n')
print('| shape | threads | retnet chunkwise 16 / 64 | retnet recurrent | rwkv.cpp FP32 sequence 16 / 32 / 64 | ratio best chunkwise / rwkv.cpp\'s recommended sequence 16 (goal ≥ 3) | ratio / its best sequence | rwkv.cpp FP16 best sequence |')
print('|---|---|---|---|---|---|---|---|')
for s in shapes:
    for t in threads:
        ours = [get(s, t, 'retnet', f'chunkwise{c}', T) for c in (16, 64)]
        rec = get(s, t, 'retnet', 'recurrent', T)
        seq = [get(s, t, 'rwkv.cpp-FP32', f'sequence{c}', T) for c in (16, 32, 64)]
        seq16 = [get(s, t, 'rwkv.cpp-FP16', f'sequence{c}', T) for c in (16, 32, 64)]
        best_ours = max([v for v in ours if v] or [0]); best_seq = max([v for v in seq if v] or [0])
        ratio = f'**{best_ours / best_seq:.2f}×**' if best_ours and best_seq else '—'
        ratio16 = f'**{best_ours / seq[0]:.2f}×**' if best_ours and seq[0] else '—'
        best16 = max([v for v in seq16 if v] or [0]) or None
        print(f'| {s} | {t} | {fmt(ours[0])} / {fmt(ours[1])} | {fmt(rec)} | '
              f'{" / ".join(fmt(v) for v in seq)} | {ratio16} | {ratio} | {fmt(best16)} |')
print(f'\n### Decode, ms/token (median of {steps} steps, best of {rounds} rounds; lower is better)\n')
print('| shape | threads | retnet | rwkv.cpp FP32 | ratio retnet / rwkv.cpp (goal ≤ 1.10) | rwkv.cpp FP16 | read bandwidth (GB/s, 256 MiB sum) |')
print('|---|---|---|---|---|---|---|')
for s in shapes:
    for t in threads:
        a, b, c = (decode.get((s, t, side)) for side in ('retnet', 'rwkv.cpp-FP32', 'rwkv.cpp-FP16'))
        ratio = f'**{a / b:.2f}**' if a and b else '—'
        print(f'| {s} | {t} | {fmt(a, 1)} | {fmt(b, 1)} | {ratio} | {fmt(c, 1)} | {fmt(bandwidth.get((s, t)), 1)} |')
print('\n### Every prefill case, tokens/s\n')
ways = [('retnet', 'chunkwise16'), ('retnet', 'chunkwise64'), ('retnet', 'recurrent'),
        ('retnet', 'decode_loop'), ('rwkv.cpp-FP32', 'sequence16'), ('rwkv.cpp-FP32', 'sequence32'),
        ('rwkv.cpp-FP32', 'sequence64'), ('rwkv.cpp-FP32', 'serial_loop'),
        ('rwkv.cpp-FP16', 'sequence16'), ('rwkv.cpp-FP16', 'sequence32'), ('rwkv.cpp-FP16', 'sequence64')]
print('| shape | threads | T | ' + ' | '.join(f'{side} {w}' for side, w in ways) + ' |')
print('|---|---|---|' + '---|' * len(ways))
for s in shapes:
    for t in threads:
        for L in lengths:
            print(f'| {s} | {t} | {L} | ' + ' | '.join(fmt(get(s, t, side, w, L)) for side, w in ways) + ' |')
print(f'\nwritten to {out}')
EOF
