#!/usr/bin/env bash
# retnet's decode ops against ggml's (issue 12), run by hand, never by CI: the matrix-vector
# product of every weight of a fla-hub retnet-1.3B layer (retnet int8 vs ggml Q8_0, BF16 vs BF16,
# float32 vs float32) and the retention op of its 8 heads (retnet's recurrent step and chunkwise
# form vs ggml_gated_linear_attn). Writes bench/results/ggml.json and prints Markdown tables (see
# bench/README.md, "Against ggml").
#
#   bench/ggml.sh GGML
#
# GGML: ggml's source, a tree or a git directory such as a fetched mirror (then its HEAD is
# exported with git archive into $WORK_DIR/ggml-src). The script builds libggml outside this
# repository, in $WORK_DIR/ggml-build, CPU backend only, with ggml's best CPU settings (Release,
# GGML_NATIVE, GGML_OPENMP, GGML_LLAMAFILE; gcc, the compiler of ggml's CI), or takes
# LIBGGML_DIR=dir holding libggml.so, libggml-base.so and libggml-cpu.so built elsewhere (with the
# headers of GGML). The build's settings are copied from its CMakeCache.txt into the JSON.
#
# Steps: build bench_ggml_ops (retnet's side: Release, -march=native, OpenMP, clang++, -Werror,
# like bench/run.sh) and bench/ggml_driver.cpp (ggml's side, against ggml.h and ggml-cpu.h);
# check that both sides compute the same thing (every output within its format's a-priori error
# bound of the exact result, bench_ggml_ops.cpp states them); then ROUNDS rounds, each running,
# for every (weight type, threads) and for the retention, retnet's binary and ggml's one after the
# other (which goes first alternates by round), so both see the same machine; the best of the
# rounds counts. Each such pair waits until no compiler runs (polls every 60 s, at most 20 minutes
# over the whole run; WAIT_QUIET=0 skips), and runs again once if a compiler started meanwhile
# (pairs disturbed twice are listed in the JSON). The load average is recorded at the start and
# at the end.
#
# Environment: WORK_DIR (default /tmp/ggml-bench), BUILD_DIR (default build-ggmlbench), JOBS
# (build parallelism, default 2), CXX_COMPILER (retnet's, default clang++), GGML_CC / GGML_CXX
# (ggml's and the driver's, default gcc / g++), ROUNDS (default 3), THREADS (default "1 2"),
# TYPES (default "int8 bf16 f32"), MIN_SECONDS (timed seconds per case and binary, default 1),
# MIN_BYTES (stored weight bytes cycled per linear case, default 768e6: 3x the 260 MB L3),
# LAYERS (retention states cycled, default 24), OUT (default bench/results/ggml.json),
# GGML_COMMIT / RETNET_COMMIT (recorded; default: git rev-parse).
set -euo pipefail

if [[ $# -ne 1 ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
  exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build-ggmlbench}
work=${WORK_DIR:-/tmp/ggml-bench}
jobs=${JOBS:-2}
rounds=${ROUNDS:-3}
threads=${THREADS:-1 2}
types=${TYPES:-int8 bf16 f32}
min_seconds=${MIN_SECONDS:-1}
min_bytes=${MIN_BYTES:-768e6}
layers=${LAYERS:-24}
out=${OUT:-$root/bench/results/ggml.json}
mkdir -p "$work"

# ggml's source tree: as given, or HEAD of a git directory exported into $work/ggml-src.
ggml_src=$(cd "$1" && pwd)
ggml_commit=${GGML_COMMIT:-$(git -C "$ggml_src" rev-parse HEAD 2>/dev/null || echo unknown)}
if [[ "$(git -C "$ggml_src" rev-parse --is-bare-repository 2>/dev/null)" == true ]]; then
  tree=$work/ggml-src
  if [[ "$(cat "$tree/.commit" 2>/dev/null)" != "$ggml_commit" ]]; then
    echo "== export ggml $ggml_commit into $tree"
    rm -rf "$tree" && mkdir -p "$tree"
    git -C "$ggml_src" archive HEAD | tar -x -C "$tree"
    echo "$ggml_commit" >"$tree/.commit"
  fi
  ggml_src=$tree
fi
[[ -f "$ggml_src/include/ggml.h" ]] || { echo "no include/ggml.h in $ggml_src" >&2; exit 1; }

# libggml: LIBGGML_DIR as given, or built here, outside the repository.
if [[ -n "${LIBGGML_DIR:-}" ]]; then
  libdir=$(cd "$LIBGGML_DIR" && pwd)
  cache=$libdir/../CMakeCache.txt
else
  ggml_build=$work/ggml-build
  echo "== build libggml (CPU backend) in $ggml_build"
  cmake -S "$ggml_src" -B "$ggml_build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_COMPILER="${GGML_CC:-gcc}" -DCMAKE_CXX_COMPILER="${GGML_CXX:-g++}" \
    -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DGGML_LLAMAFILE=ON \
    -DGGML_CCACHE=OFF -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF >"$work/ggml-configure.log"
  nice -n 19 cmake --build "$ggml_build" -j"$jobs" --target ggml >"$work/ggml-build.log" 2>&1 ||
    { tail -30 "$work/ggml-build.log" >&2; exit 1; }
  libdir=$(dirname "$(find "$ggml_build" -name 'libggml-cpu.so' -print -quit)")
  cache=$ggml_build/CMakeCache.txt
fi
for lib in libggml.so libggml-base.so libggml-cpu.so; do
  [[ -f "$libdir/$lib" ]] || { echo "no $libdir/$lib" >&2; exit 1; }
done

echo "== build bench_ggml_ops ($build) and the ggml driver"
cmake -S "$root" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_COMPILER="${CXX_COMPILER:-clang++}" \
  -DRETNET_NATIVE=ON -DRETNET_OPENMP=ON -DRETNET_WERROR=ON \
  -DRETNET_BUILD_BENCHMARKS=ON -DRETNET_BUILD_TESTS=OFF -DRETNET_BUILD_EXAMPLES=OFF >/dev/null
nice -n 19 cmake --build "$build" -j"$jobs" --target bench_ggml_ops
ours=$build/bench/bench_ggml_ops
theirs=$build/bench/ggml_driver
"${GGML_CXX:-g++}" -O2 -std=c++17 -Wall -Wextra -Werror -I"$ggml_src/include" \
  "$root/bench/ggml_driver.cpp" -o "$theirs" -L"$libdir" -lggml -lggml-base -lggml-cpu \
  -Wl,-rpath,"$libdir"

python=/usr/bin/python3
runs=$work/runs
rm -rf "$runs" "$work/check" && mkdir -p "$runs" "$work/check"
echo "== the same results on both sides (every output within its format's bound of the exact one)"
"$ours" --kind check --check-dir "$work/check"
"$theirs" --kind check --check-dir "$work/check"
$python - "$work/check" "$runs/check.json" <<'EOF'
import json, os, sys
import numpy as np
d, out = sys.argv[1], sys.argv[2]
def load(name):
    return np.fromfile(os.path.join(d, name + '.f64'), dtype=np.float64)
result, failed = {'linear': {}, 'retention': {}}, []
def compare(key, exact, sides):
    scale = np.abs(exact).max()
    row = {}
    for side, (values, bound) in sides.items():
        err = np.abs(values - exact)
        row[side] = {'max_error_over_max_exact': float(err.max() / scale),
                     'max_error_over_bound': float((err / bound).max())}
        if not np.all(err <= bound):
            failed.append(f'{key} {side}')
    a, b = list(sides.values())[0][0], list(sides.values())[-1][0]
    row['max_retnet_minus_ggml_over_max_exact'] = float(np.abs(a - b).max() / scale)
    return row
for case in ('qkvg', 'o', 'ffn_in', 'ffn_out'):
    exact = load(f'exact_linear_{case}')
    for t in ('f32', 'bf16', 'int8'):
        result['linear'][f'{t}/{case}'] = compare(f'{t}/{case}', exact, {
            'retnet': (load(f'retnet_linear_{t}_{case}'), load(f'bound_linear_{t}_retnet_{case}')),
            'ggml': (load(f'ggml_linear_{t}_{case}'), load(f'bound_linear_{t}_ggml_{case}'))})
for T in (1, 64):
    for part in ('out', 'state'):
        exact, bound = load(f'exact_gla_T{T}_{part}'), load(f'bound_gla_T{T}_{part}')
        sides = {'retnet recurrent': (load(f'retnet_gla_T{T}_recurrent_{part}'), bound)}
        if T > 1:
            sides['retnet chunkwise'] = (load(f'retnet_gla_T{T}_chunkwise_{part}'), bound)
        sides['ggml'] = (load(f'ggml_gla_T{T}_{part}'), bound)
        result['retention'][f'T{T}/{part}'] = compare(f'T{T}/{part}', exact, sides)
json.dump(result, open(out, 'w'), indent=2)
for kind, rows in result.items():
    for key, row in rows.items():
        sides = ', '.join(f'{s} {v["max_error_over_max_exact"]:.1e} ({v["max_error_over_bound"]:.2f} of its bound)'
                          for s, v in row.items() if isinstance(v, dict))
        print(f'{kind} {key}: error/max|exact|: {sides}; retnet-ggml {row["max_retnet_minus_ggml_over_max_exact"]:.1e}')
if failed:
    sys.exit('outside the bound: ' + ', '.join(failed))
EOF

# wait_quiet: until no compiler runs (polling every 60 s), at most 20 minutes over the whole run
# (WAIT_QUIET=0: never).
waited=0
wait_quiet() {
  [[ "${WAIT_QUIET:-1}" != 0 ]] || return 0
  while pgrep -f 'cc1plus|clang' >/dev/null; do
    if ((waited >= 20)); then
      echo "== a compiler still runs after 20 minutes of waiting: timing anyway"
      return 0
    fi
    echo "== a compiler is running (load $(cut -d' ' -f1-3 /proc/loadavg)): waiting 60 s"
    sleep 60
    waited=$((waited + 1))
  done
}

load_average() { cut -d' ' -f1-3 /proc/loadavg; }
start_load=$(load_average)
echo "== timing: $rounds round(s), load average at start $start_load"
# run_pair ROUND TAG ARGS...: both sides, the first alternating by round, after waiting for a
# quiet machine; run again (once) if a compiler started meanwhile, and named in disturbed.txt if
# one ran at the end of the second try too.
run_pair() {
  local round=$1 tag=$2 side bin
  shift 2
  local sides=(retnet ggml)
  ((round % 2 == 1)) || sides=(ggml retnet)
  for _ in 1 2; do
    wait_quiet
    for side in "${sides[@]}"; do
      bin=$ours
      [[ $side == ggml ]] && bin=$theirs
      OMP_NUM_THREADS=$t "$bin" "$@" --threads "$t" --min-seconds "$min_seconds" \
        --json "$runs/r${round}_${tag}_${t}_${side}.json"
    done
    pgrep -f 'cc1plus|clang' >/dev/null || return 0
    echo "   (a compiler ran meanwhile)"
  done
  echo "r${round}_${tag}_${t}" >>"$runs/disturbed.txt"
}
for round in $(seq 1 "$rounds"); do
  for t in $threads; do
    for type in $types; do
      echo "-- round $round, $t thread(s), linear $type (load $(load_average))"
      run_pair "$round" "linear-$type" --kind linear --type "$type" --min-bytes "$min_bytes"
    done
    echo "-- round $round, $t thread(s), retention (load $(load_average))"
    run_pair "$round" retention --kind gla --layers "$layers"
  done
done
end_load=$(load_average)
echo "== load average at the end: $end_load"

retnet_commit=${RETNET_COMMIT:-$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)}
mkdir -p "$(dirname "$out")"
export ggml_commit retnet_commit cache start_load end_load rounds min_seconds min_bytes layers
export retnet_cxx=${CXX_COMPILER:-clang++} ggml_cxx=${GGML_CXX:-g++}
$python - "$runs" "$out" <<'EOF'
import glob, json, os, re, statistics, subprocess, sys
runs_dir, out = sys.argv[1], sys.argv[2]
E = os.environ

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
            'GGML_LLAMAFILE', 'GGML_OPENMP', 'GGML_AVX512', 'GGML_AVX512_BF16', 'GGML_AVX512_VNNI',
            'GGML_AVX_VNNI', 'GGML_BLAS', 'GGML_CPU_AARCH64', 'BUILD_SHARED_LIBS')
    for line in open(E['cache']):
        m = re.match(r'^([A-Z0-9_]+):[A-Z]+=(.*)$', line.strip())
        if m and m.group(1) in keys:
            build[m.group(1)] = m.group(2)

times, medians, meta, bandwidth, ggml_cpu, simd = {}, {}, {}, {}, None, None
disturbed_path = os.path.join(runs_dir, 'disturbed.txt')
disturbed = open(disturbed_path).read().split() if os.path.exists(disturbed_path) else []
for path in sorted(glob.glob(os.path.join(runs_dir, 'r*_*.json'))):
    r = json.load(open(path))
    side, t = r['side'], r['threads']
    if 'read_bandwidth_gbs' in r:
        bandwidth[t] = max(bandwidth.get(t, 0.0), r['read_bandwidth_gbs'])
    ggml_cpu = r.get('ggml_cpu', ggml_cpu)
    simd = r.get('simd', simd)
    for row in r['rows']:
        name = row['name'] if row['op'] == 'linear' else f"T{row['tokens']}/{row['way']}"
        key = (row['op'], row['type'], name, t, side)
        times[key] = min(times.get(key, 1e300), row['seconds_best'])
        medians.setdefault(key, []).append(row['seconds_median'])
        meta[key] = row

rows = []
for key in sorted(times):
    op, typ, name, t, side = key
    m = meta[key]
    row = {'op': op, 'type': typ, 'case': name, 'threads': t, 'side': side, 'way': m['way'],
           'ms_best': 1e3 * times[key], 'ms_median_of_rounds': 1e3 * statistics.median(medians[key]),
           'cycled': m['count']}
    if op == 'linear':
        row.update({'out': m['out'], 'in': m['in'], 'stored_bytes': m['stored_bytes'],
                    'gbs': m['stored_bytes'] / times[key] / 1e9})
        if t in bandwidth:
            row['bandwidth_fraction'] = row['gbs'] / bandwidth[t]
    else:
        row['tokens'] = m['tokens']
    rows.append(row)
def find(op, typ, name, t, side):
    return next((r for r in rows if (r['op'], r['type'], r['case'], r['threads'], r['side']) == (op, typ, name, t, side)), None)

result = {
    'context': {
        'cpu': lscpu('Model name'), 'cpus': os.cpu_count(), 'l3': lscpu('L3 cache'),
        'flags': [f for f in lscpu('Flags').split() if f.startswith(('avx', 'f16c', 'fma', 'amx'))],
        'retnet_commit': E['retnet_commit'], 'retnet_compiler': version(E['retnet_cxx']),
        'retnet_flags': 'Release, -march=native (RETNET_NATIVE), OpenMP (RETNET_OPENMP)',
        'retnet_simd': simd, 'ggml_commit': E['ggml_commit'], 'ggml_build': build,
        'ggml_compiler': version(E['ggml_cxx']), 'ggml_cpu': ggml_cpu,
        'rounds': int(E['rounds']), 'min_seconds_per_case': float(E['min_seconds']),
        'min_bytes_cycled': float(E['min_bytes']), 'retention_layers_cycled': int(E['layers']),
        'load_average_start': E['start_load'], 'load_average_end': E['end_load'],
        'read_bandwidth_gbs': {f'{t}t': v for t, v in sorted(bandwidth.items())},
        'disturbed_runs': disturbed,
        'timing': 'per op: a pass over every copy of W (or every layer\'s state) timed, over its op count; best pass of each run, best over the rounds (ms_best); ms_median_of_rounds: the median of the runs\' median passes',
        'shapes': 'fla-hub retnet-1.3B: hidden 2048, 8 heads, dk 256, dv 512, MLP 2816; W as retnet stacks it (qkvg 12288x2048, o 2048x4096, ffn_in = gate|up 5632x2048, ffn_out 2048x2816)',
    },
    'agreement': json.load(open(os.path.join(runs_dir, 'check.json'))),
    'rows': rows,
}
json.dump(result, open(out, 'w'), indent=2)

threads = sorted({r['threads'] for r in rows})
labels = {'int8': 'int8 / Q8_0', 'bf16': 'BF16', 'f32': 'F32'}
print(f"\n### Matrix-vector y = W x (one row), ms per op, best of {E['rounds']} rounds\n")
print('| W | shape | threads | retnet ms (GB/s) | ggml ms (GB/s) | retnet / ggml time |')
print('|---|---|---|---|---|---|')
for typ in ('int8', 'bf16', 'f32'):
    for case in ('qkvg', 'o', 'ffn_in', 'ffn_out'):
        for t in threads:
            a, b = find('linear', typ, case, t, 'retnet'), find('linear', typ, case, t, 'ggml')
            if not a or not b:
                continue
            print(f"| {labels[typ]} | {case} {a['out']}x{a['in']} | {t} | {a['ms_best']:.3f} ({a['gbs']:.1f}) | "
                  f"{b['ms_best']:.3f} ({b['gbs']:.1f}) | **{a['ms_best'] / b['ms_best']:.2f}** |")
print(f"\n### Retention of 8 heads (state 8 x 256 x 512), ms per op, best of {E['rounds']} rounds\n")
print('| T | threads | retnet recurrent | retnet chunkwise | ggml gated_linear_attn | retnet best / ggml time |')
print('|---|---|---|---|---|---|')
for T in (1, 64):
    for t in threads:
        rec = find('gla', 'f32', f'T{T}/recurrent', t, 'retnet')
        chk = find('gla', 'f32', f'T{T}/chunkwise', t, 'retnet')
        g = find('gla', 'f32', f'T{T}/gated_linear_attn', t, 'ggml')
        if not rec or not g:
            continue
        best = min(x['ms_best'] for x in (rec, chk) if x)
        chunkwise = f"{chk['ms_best']:.3f}" if chk else '—'
        print(f"| {T} | {t} | {rec['ms_best']:.3f} | {chunkwise} | {g['ms_best']:.3f} | "
              f"**{best / g['ms_best']:.2f}** |")
print(f"\nread bandwidth (1 GiB sum): {result['context']['read_bandwidth_gbs']}; load {E['start_load']} -> {E['end_load']}")
print(f'written to {out}')
EOF
