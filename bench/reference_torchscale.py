#!/usr/bin/python3
"""Times the reference implementation (Microsoft's torchscale, PyTorch on the CPU) on the shapes of
bench_forms / bench_decode, so that retnet's figures can be read against it on the same machine.

    bench/reference_torchscale.py --torchscale DIR [--threads 1 2] [--out FILE]       # sweep
    bench/reference_torchscale.py --torchscale DIR --compare build-bench [--rounds 3]  # vs retnet
    bench/reference_torchscale.py --torchscale DIR --compare build-bench-dnnl --dtype bfloat16

Needs PyTorch (Debian: python3-torch, with an optimised BLAS such as libopenblas0-openmp selected
as libblas.so.3) and a checkout of torchscale (github.com/microsoft/torchscale; the golden files
were made at commit 4d1e0e8). Nothing of torchscale is part of retnet: the checkout is only put on
sys.path. torchscale imports fairscale, timm and einops at module level for features these layers do
not use (activation checkpointing, drop path, softmax attention); when they are not installed, inert
stand-ins are registered so the import succeeds (drop_path_rate is 0, checkpointing is off and no
attention layer is built, so they are never called).

What is timed, float32, batch 1, torch.no_grad(), config A (embed 1024, value 2048, heads 4,
FFN 2048, gelu) unless --config B:
  * MultiScaleRetention parallel (T = 512, 2048) and chunkwise (T = 2048, 8192; chunk 64 … 512),
  * DecoderLayer chunkwise (T = 2048, 8192) and parallel (T = 2048),
  * one recurrent decode step of both, after a state has been built (torchscale's state is
    (B, H, dk, dv) whatever the context length, so one context length suffices).
The relative-position tensors (sin/cos and decay masks) are built once, outside the timed region,
as RetNetDecoder.forward builds them once for all layers: this favours the reference.
With --compare, the reference and retnet's bench binaries (built by bench/run.sh into the given
build directory) run the same cases one after the other, round after round, and the speed-ups
retnet / reference are reported per round and as their median: on a noisy machine only
measurements taken side by side compare.
The peer runs at full strength: PyTorch's float products go to the BLAS that libblas.so.3 names
(Debian: OpenBLAS), and Debian's OpenBLAS can misdetect a new CPU and pick a slow kernel (21
instead of 110 GFLOP/s). --blas-core auto (the default) times PyTorch's 1024³ SGEMM on one thread
under each OPENBLAS_CORETYPE candidate (and unset) in a fresh interpreter, then runs the whole
script under the fastest; --blas-core NAME takes one, --blas-core keep leaves the environment as
it is. The BLAS runs as many threads as PyTorch (openblas_set_num_threads, when OpenBLAS is
loaded), and PyTorch's own SGEMM rate at each thread count is recorded in the JSON beside the
cases, as is retnet's (bench_forms' same-run SGEMM, with --compare), so that every speed-up is
read against a peer whose GEMM rate is on record.
PyTorch allocates every intermediate tensor afresh, and glibc hands large blocks back to the
system when they are freed, so each op faults its output's pages in again; on some VMs a first
touch costs 30x a reused page (an elementwise mul on 64 MB tensors at 1 GB/s instead of 30, the
2-vCPU Zen 5 VM of 2026-12-01), which would slow the peer for reasons that are the machine's, not
the method's. --allocator auto (the default) times that mul on fresh outputs under each allocator
present — glibc's; tcmalloc (Debian: libtcmalloc-minimal4) with TCMALLOC_RELEASE_RATE=0;
jemalloc (libjemalloc2) with its decay off — and runs the peer under the fastest (LD_PRELOAD);
--allocator NAME takes one, keep leaves the environment as it is. retnet's binaries keep their
buffers between calls and run under glibc's allocator as they are.
--dtype bfloat16 runs the peer in BF16 (modules, inputs and position tensors cast: PyTorch's BF16
products go to oneDNN, with AMX where the CPU has it) against retnet's layers with BF16 weights
(bench_forms under WEIGHTS=bf16: float32 activations, the BF16 GEMM of a -DRETNET_ONEDNN=ON build
for the projections); the peer's and retnet's GEMM rates are then the BF16 ones (PyTorch's
1024³ torch.mm in BF16; retnet's stages::linear with a BF16 weight).
Each case runs once to warm up, then repeats until --min-time seconds have passed (at least
--min-reps times); the JSON holds the median and the minimum wall time of one call.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types


def install_import_stand_ins():
    """Registers inert fairscale / timm modules when the real ones are missing (see docstring)."""
    try:
        import fairscale.nn  # noqa: F401
    except ImportError:
        fairscale = types.ModuleType("fairscale")
        fairscale_nn = types.ModuleType("fairscale.nn")
        fairscale_nn.checkpoint_wrapper = lambda module, **kwargs: module
        fairscale_nn.wrap = lambda module, **kwargs: module
        fairscale.nn = fairscale_nn
        sys.modules["fairscale"] = fairscale
        sys.modules["fairscale.nn"] = fairscale_nn
    try:
        import timm.models.layers  # noqa: F401
    except ImportError:
        def drop_path(*args, **kwargs):
            raise RuntimeError("drop_path stand-in called: drop_path_rate must be 0")
        names = ["timm", "timm.models", "timm.models.layers"]
        modules = {name: types.ModuleType(name) for name in names}
        modules["timm.models.layers"].drop_path = drop_path
        modules["timm"].models = modules["timm.models"]
        modules["timm.models"].layers = modules["timm.models.layers"]
        sys.modules.update(modules)
    try:
        import einops  # noqa: F401
    except ImportError:
        einops = types.ModuleType("einops")

        def rearrange(*args, **kwargs):
            raise RuntimeError("einops stand-in called: only softmax attention uses it")
        einops.rearrange = rearrange
        sys.modules["einops"] = einops


CONFIGS = {
    "A": dict(embed=1024, value=2048, heads=4, ffn=2048),
    "B": dict(embed=512, value=1024, heads=8, ffn=1024),
}


def time_call(function, min_time, min_reps):
    function()  # warm-up: first-touch allocations, BLAS thread start-up
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        function()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), len(times)


# OpenBLAS core types worth trying on x86-64 (newest first); "" leaves the variable unset, which
# lets OpenBLAS detect the CPU itself.
BLAS_CORE_CANDIDATES = ["", "SAPPHIRERAPIDS", "COOPERLAKE", "SKYLAKEX", "ZEN", "HASWELL"]
SGEMM_PROBE = ("import time, torch\n"
               "torch.set_num_threads(1)\n"
               "a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)\n"
               "torch.mm(a, b)\n"
               "best = min(__import__('timeit').repeat(lambda: torch.mm(a, b), number=3, repeat=5))\n"
               "print(2 * 1024**3 * 3 / best / 1e9)\n")


def probe_sgemm(core):
    """PyTorch's one-thread SGEMM rate (GFLOP/s) in a fresh interpreter with OPENBLAS_CORETYPE =
    core (unset if empty); None if the interpreter fails."""
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env["OPENBLAS_NUM_THREADS"] = "1"
    if core:
        env["OPENBLAS_CORETYPE"] = core
    return run_probe(SGEMM_PROBE, env)


def run_probe(code, env):
    """The number a probe prints last, run in a fresh interpreter with `env`; None if it fails."""
    import subprocess
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


# Allocators that keep freed memory for reuse: the library (LD_PRELOAD) and the settings that stop
# it from handing pages back to the system. glibc's is the default (no preload).
ALLOCATORS = {
    "glibc": ("", {}),
    "tcmalloc": ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                 {"TCMALLOC_RELEASE_RATE": "0"}),
    "jemalloc": ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                 {"MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}),
}
ALLOCATOR_VARIABLES = ["LD_PRELOAD", "TCMALLOC_RELEASE_RATE", "MALLOC_CONF"]
FRESH_MUL_PROBE = ("import time, torch\n"
                   "torch.set_num_threads(1)\n"
                   "x, y = torch.randn(1 << 24), torch.randn(1 << 24)\n"
                   "x * y\n"
                   "best = min(__import__('timeit').repeat(lambda: x * y, number=3, repeat=5))\n"
                   "print(3 * 4 * (1 << 24) * 3 / best / 1e9)\n")


def allocator_env(env, name):
    """env with the allocator `name` set up (and any other's variables removed)."""
    env = {k: v for k, v in env.items() if k not in ALLOCATOR_VARIABLES}
    library, settings = ALLOCATORS[name]
    if library:
        env["LD_PRELOAD"] = library
    env.update(settings)
    return env


def probe_fresh_mul(allocator):
    """GB/s of a one-thread elementwise mul of 64 MB tensors into fresh outputs under `allocator`;
    None where it is not installed or the interpreter fails."""
    library = ALLOCATORS[allocator][0]
    if library and not os.path.exists(library):
        return None
    return run_probe(FRESH_MUL_PROBE, allocator_env(dict(os.environ), allocator))


def pin_peer(blas_choice, allocator_choice):
    """Re-runs this script under the OPENBLAS_CORETYPE that gives PyTorch its fastest SGEMM and the
    allocator that gives it its fastest fresh outputs (auto), or the ones named; returns the trials
    when already pinned. Both must be set before the libraries load, hence the re-execution."""
    if os.environ.get("RETNET_BENCH_PEER_PINNED"):
        return json.loads(os.environ.get("RETNET_BENCH_PEER_TRIALS", "{}"))
    env = dict(os.environ, RETNET_BENCH_PEER_PINNED="1")
    trials = {"blas_core_sgemm_1t_gflops": {}, "allocator_fresh_mul_1t_gbs": {}}
    if allocator_choice == "auto":
        found = trials["allocator_fresh_mul_1t_gbs"]
        for name in ALLOCATORS:
            found[name] = probe_fresh_mul(name)
            print("allocator %-9s PyTorch mul into fresh 64 MB outputs, 1 thread: %s GB/s"
                  % (name, found[name]), flush=True)
        allocator_choice = max((rate or 0, name) for name, rate in found.items())[1]
    if allocator_choice != "keep":
        env = allocator_env(env, allocator_choice)
        print("running with allocator %s" % allocator_choice, flush=True)
    env["RETNET_BENCH_ALLOCATOR"] = allocator_choice
    blas = pin_blas_core(blas_choice, trials["blas_core_sgemm_1t_gflops"])
    if blas != "keep":
        env.pop("OPENBLAS_CORETYPE", None)
        if blas:
            env["OPENBLAS_CORETYPE"] = blas
    env["RETNET_BENCH_PEER_TRIALS"] = json.dumps(trials)
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def pin_blas_core(choice, trials):
    """The OPENBLAS_CORETYPE that gives PyTorch its fastest SGEMM (auto: each candidate timed, the
    rates put in `trials`), the one named, or "keep"; "" for unset."""
    if choice == "keep":
        return choice
    if choice == "auto":
        for core in BLAS_CORE_CANDIDATES:
            # OpenBLAS falls back to another kernel for a core type it does not know (and says so
            # on stderr): only the rate counts.
            trials[core or "(detected)"] = probe_sgemm(core)
            print("blas core %-14s PyTorch SGEMM 1 thread: %s GFLOP/s"
                  % (core or "(detected)", trials[core or "(detected)"]), flush=True)
        best = max((rate or 0, core) for core, rate in trials.items())[1]
        choice = "" if best == "(detected)" else best
    print("running with OPENBLAS_CORETYPE=%s" % (choice or "(unset)"), flush=True)
    return choice


def set_blas_threads(threads):
    """Makes a loaded OpenBLAS run `threads` threads, as PyTorch does (its set_num_threads does
    not reach OpenBLAS's own pool); returns the library's path or None."""
    import ctypes
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps
                        if "openblas" in line.lower() and line.split()[-1].startswith("/")})
    for path in paths:
        try:
            ctypes.CDLL(path).openblas_set_num_threads(threads)
            return path
        except (OSError, AttributeError):
            continue
    return None


def torch_sgemm(torch, threads, min_time, dtype=None):
    """PyTorch's 1024³ GEMM rate (float32 unless `dtype`) at `threads` threads (GFLOP/s), median of
    the repetitions."""
    torch.set_num_threads(threads)
    set_blas_threads(threads)
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    seconds = time_call(lambda: torch.mm(a, b), min_time, 5)[0]
    return 2 * 1024**3 / seconds / 1e9


class Reference:
    """torchscale's MultiScaleRetention and DecoderLayer at one configuration; each method returns
    a zero-argument callable that runs one case on prepared inputs."""

    def __init__(self, torchscale_dir, dims, dtype_name="float32"):
        install_import_stand_ins()
        sys.path.insert(0, os.path.abspath(torchscale_dir))
        import torch
        from torchscale.architecture.config import RetNetConfig
        from torchscale.architecture.retnet import DecoderLayer, RetNetRelPos
        self.torch, self.RetNetConfig, self.RetNetRelPos = torch, RetNetConfig, RetNetRelPos
        self.dims = dims
        self.dtype = getattr(torch, dtype_name)
        torch.manual_seed(0)
        self.layer = DecoderLayer(self.args(64), depth=0).eval().to(self.dtype)
        self.msr = self.layer.retention

    def cast(self, value):
        """Floating tensors (in tuples, lists) in the run's dtype."""
        if isinstance(value, (tuple, list)):
            return type(value)(self.cast(v) for v in value)
        if self.torch.is_tensor(value) and value.is_floating_point():
            return value.to(self.dtype)
        return value

    def args(self, chunk):
        d = self.dims
        return self.RetNetConfig(decoder_embed_dim=d["embed"], decoder_value_embed_dim=d["value"],
                                 decoder_retention_heads=d["heads"],
                                 decoder_ffn_embed_dim=d["ffn"], activation_fn="gelu",
                                 recurrent_chunk_size=chunk, chunkwise_recurrent=True,
                                 dropout=0.0, drop_path_rate=0.0, decoder_layers=1)

    def rel_pos(self, length, chunk, mode):
        relpos = self.RetNetRelPos(self.args(chunk))
        return self.cast(relpos(length, activate_recurrent=(mode == "recurrent"),
                                chunkwise_recurrent=(mode == "chunkwise")))

    def sequence(self, module, length, chunk=None):
        """The whole-sequence case: parallel when chunk is None, else chunkwise."""
        x = self.torch.randn(1, length, self.dims["embed"], dtype=self.dtype)
        mode = "parallel" if chunk is None else "chunkwise"
        rel_pos = self.rel_pos(length, chunk or 64, mode)
        if module == "msr":
            return lambda: self.msr(x, rel_pos, chunkwise_recurrent=(chunk is not None))
        return lambda: self.layer(x, retention_rel_pos=rel_pos,
                                  chunkwise_recurrent=(chunk is not None))

    def decode_step(self, module):
        """One recurrent step after a few, so the state exists (its size does not depend on the
        context length)."""
        x = self.torch.randn(1, 1, self.dims["embed"], dtype=self.dtype)
        rel_pos = self.rel_pos(513, 64, "recurrent")
        state = {}
        if module == "msr":
            step = lambda: self.msr(x, rel_pos, incremental_state=state)  # noqa: E731
        else:
            step = lambda: self.layer(x, incremental_state=state,  # noqa: E731
                                      retention_rel_pos=rel_pos)
        for _ in range(3):
            step()
        return step


# --compare: (label, reference case, T, reference chunks (None: parallel / decode), retnet
# binary, Google Benchmark name without "/real_time", with {thr}). The reference's best chunk is
# taken in each round; retnet runs its default chunk 128.
COMPARISONS = [
    ("MSR parallel T=2048", "msr", 2048, [None], "bench_forms",
     "MSR/parallel/T:2048/B:1/cfg:0/thr:{thr}"),
    ("block parallel T=2048", "layer", 2048, [None], "bench_forms",
     "Block/parallel/T:2048/B:1/cfg:0/thr:{thr}"),
    ("MSR chunkwise T=8192", "msr", 8192, [64, 128, 256], "bench_forms",
     "MSR/chunkwise/T:8192/B:1/cfg:0/thr:{thr}/chunk:128"),
    ("block chunkwise T=8192", "layer", 8192, [64, 128, 256], "bench_forms",
     "Block/chunkwise/T:8192/B:1/cfg:0/thr:{thr}/chunk:128"),
    ("MSR decode step", "msr", 1, ["decode"], "bench_decode", "decode/MSR/L:8192/thr:{thr}"),
    ("block decode step", "layer", 1, ["decode"], "bench_decode", "decode/Block/L:8192/thr:{thr}"),
]


def retnet_benchmark(build_dir, binary, benchmark_filter, min_time, weights="f32"):
    """Runs the one benchmark of a retnet bench binary that benchmark_filter (a regular
    expression) selects; returns its JSON row, its wall time per iteration in seconds and the
    binary's own SGEMM rates (GFLOP/s by context key)."""
    import subprocess
    path = os.path.join(build_dir, "bench", binary)
    output = subprocess.run([path, "--benchmark_filter=" + benchmark_filter,
                             "--benchmark_min_time=%g" % min_time, "--benchmark_format=json"],
                            check=True, capture_output=True, text=True,
                            env=dict(allocator_env(dict(os.environ), "glibc"),
                                     OPENBLAS_NUM_THREADS="1", BLIS_NUM_THREADS="1",
                                     WEIGHTS=weights)).stdout
    report = json.loads(output)
    rows = report["benchmarks"]
    if len(rows) != 1:
        raise SystemExit("expected one benchmark matching %s in %s, got %d"
                         % (benchmark_filter, binary, len(rows)))
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[rows[0]["time_unit"]]
    # bench_forms measures its own 1024³ SGEMM first (context sgemm1024_gflops_<n>t)
    context = report.get("context", {})
    sgemm = {key: float(value) for key, value in context.items()
             if ("gemm1024_gflops_" in key) and not key.endswith("_cpu")}
    # (bench_decode's products have one row: the BF16 GEMM is for prefill, not for them.)
    if weights == "bf16" and binary == "bench_forms" and context.get("retnet_bf16_gemm") != "on":
        print("note: %s runs BF16 weights without the BF16 GEMM (no RETNET_ONEDNN build, or a "
              "CPU where it is not faster: neither AMX nor AMD's AVX512-BF16): float32 products "
              "on decoded panels" % binary, flush=True)
    return rows[0], rows[0]["real_time"] * scale, sgemm


def retnet_seconds(build_dir, binary, name, min_time, weights="f32"):
    """Runs one retnet benchmark and returns its wall time per iteration in seconds."""
    import re
    _, seconds, sgemm = retnet_benchmark(build_dir, binary,
                                         "^" + re.escape(name) + "/real_time$", min_time, weights)
    return seconds, sgemm


def compare(reference, options):
    """Alternates reference and retnet runs of the same cases, round after round, so both see
    the same machine; reports each round's speed-up and their median."""
    torch = reference.torch
    bf16 = options.dtype == "bfloat16"
    weights, gemm = ("bf16", "bf16gemm1024_gflops_") if bf16 else ("f32", "sgemm1024_gflops_")
    rows = []
    for threads in options.threads:
        peer_sgemm = torch_sgemm(torch, threads, options.min_time, reference.dtype)
        print("PyTorch %s GEMM 1024^3, %d thread(s): %.1f GFLOP/s"
              % (options.dtype, threads, peer_sgemm), flush=True)
        speedups = {label: [] for label, *_ in COMPARISONS}
        for round_index in range(options.rounds):
            for label, module, length, chunks, binary, name in COMPARISONS:
                with torch.no_grad():
                    best = None
                    for chunk in chunks:
                        call = (reference.decode_step(module) if chunk == "decode"
                                else reference.sequence(module, length, chunk))
                        seconds = time_call(call, 0.0, 20 if chunk == "decode" else 2)[0]
                        if best is None or seconds < best[0]:
                            best = (seconds, chunk)
                ours, ours_sgemm = retnet_seconds(options.compare, binary,
                                                  name.format(thr=threads), options.min_time,
                                                  weights)
                speedups[label].append(best[0] / ours)
                row = dict(label=label, threads=threads, round=round_index,
                           reference_s=best[0], reference_chunk=best[1], retnet_s=ours,
                           speedup=best[0] / ours, dtype=options.dtype,
                           reference_sgemm_gflops=peer_sgemm,
                           retnet_sgemm_gflops=ours_sgemm.get("%s%dt" % (gemm, threads)))
                rows.append(row)
                print(json.dumps(row), flush=True)
        for label, values in speedups.items():
            print("%-24s threads %d: speed-up over the reference %.2fx (median of %d rounds; %s)"
                  % (label, threads, statistics.median(values), len(values),
                     ", ".join("%.2f" % v for v in values)), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torchscale", required=True, help="path of a torchscale checkout")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="A")
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument("--min-reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="short sequences only (smoke test)")
    parser.add_argument("--compare", metavar="BUILD_DIR", default=None,
                        help="alternate with retnet's bench binaries from BUILD_DIR (config A)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --compare")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="the peer's dtype; bfloat16: against retnet's BF16 weights")
    parser.add_argument("--out", default=None, help="JSON output file (default: stdout only)")
    parser.add_argument("--blas-core", default="auto",
                        help="OPENBLAS_CORETYPE for PyTorch's BLAS: auto (the fastest SGEMM of "
                             "the candidates), keep (the environment's), or a name")
    parser.add_argument("--allocator", default="auto",
                        choices=["auto", "keep"] + sorted(ALLOCATORS),
                        help="PyTorch's allocator: auto (the fastest mul into fresh outputs of "
                             "those installed), keep (the environment's), or a name")
    options = parser.parse_args()
    trials = pin_peer(options.blas_core, options.allocator)

    dims = CONFIGS[options.config]
    reference = Reference(options.torchscale, dims, options.dtype)
    torch = reference.torch
    context = dict(torch=torch.__version__, python=platform.python_version(),
                   machine=platform.machine(), processor=platform.processor(),
                   config=options.config, dims=dims, date=time.strftime("%Y-%m-%d"),
                   dtype=options.dtype,
                   loadavg=open("/proc/loadavg").read().split()[:3],
                   torch_config=torch.__config__.show(),
                   openblas_coretype=os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
                   blas_core_trials_sgemm_1t_gflops=trials.get("blas_core_sgemm_1t_gflops"),
                   allocator=os.environ.get("RETNET_BENCH_ALLOCATOR", "keep"),
                   allocator_trials_fresh_mul_1t_gbs=trials.get("allocator_fresh_mul_1t_gbs"),
                   blas_library=set_blas_threads(1))
    if options.compare:
        if options.config != "A":
            raise SystemExit("--compare runs config A (the shapes of bench_forms' comparisons)")
        rows = compare(reference, options)
        if options.out:
            with open(options.out, "w") as handle:
                json.dump(dict(context=context, comparisons=rows), handle, indent=1)
        return

    lengths = {"parallel": [512, 2048], "chunkwise": [2048, 8192], "layer_parallel": [2048]}
    chunks = [64, 128, 256, 512]
    if options.quick:
        lengths = {"parallel": [256], "chunkwise": [512], "layer_parallel": [256]}
        chunks = [64, 128]

    results = []

    def record(name, threads, length, chunk, call, min_reps):
        seconds, best, reps = time_call(call, options.min_time, min_reps)
        row = dict(name=name, threads=threads, T=length, chunk=chunk, median_s=seconds, min_s=best,
                   reps=reps, tokens_per_s=length / seconds)
        results.append(row)
        print(json.dumps(row), flush=True)

    for threads in options.threads:
        torch.set_num_threads(threads)
        set_blas_threads(threads)
        with torch.no_grad():
            a = torch.randn(1024, 1024, dtype=reference.dtype)
            b = torch.randn(1024, 1024, dtype=reference.dtype)
            seconds, best, reps = time_call(lambda: torch.mm(a, b), options.min_time, 5)
            row = dict(name="sgemm1024", threads=threads, median_s=seconds, min_s=best, reps=reps,
                       gflops=2 * 1024**3 / seconds / 1e9)
            results.append(row)
            print(json.dumps(row), flush=True)
            for length in lengths["parallel"]:
                record("msr_parallel", threads, length, None,
                       reference.sequence("msr", length), options.min_reps)
            for length in lengths["layer_parallel"]:
                record("layer_parallel", threads, length, None,
                       reference.sequence("layer", length), options.min_reps)
            for length in lengths["chunkwise"]:
                for chunk in chunks:
                    record("msr_chunkwise", threads, length, chunk,
                           reference.sequence("msr", length, chunk), options.min_reps)
                    record("layer_chunkwise", threads, length, chunk,
                           reference.sequence("layer", length, chunk), options.min_reps)
            record("msr_decode", threads, 1, None, reference.decode_step("msr"), 20)
            record("layer_decode", threads, 1, None, reference.decode_step("layer"), 20)

    if options.out:
        with open(options.out, "w") as handle:
            json.dump(dict(context=context, results=results), handle, indent=1)


if __name__ == "__main__":
    main()
