#!/usr/bin/python3
"""Times one training step of the reference implementation (torchscale's RetNetDecoder under
PyTorch autograd, on the CPU) and its peak memory, so that retnet's training figures (issue #15)
can be read against it on the same machine.

    bench/train_torchscale.py --torchscale DIR [--threads 1 2] [--out FILE]            # sweep
    bench/train_torchscale.py --torchscale DIR --compare build-bench [--rounds 2]       # vs retnet

The model is a byte-level RetNetDecoder as retnet's training example builds it: config B (embed
512, value 1024, heads 8, FFN 1024, gelu), 2 layers, vocabulary 256 (an nn.Embedding of 256 x 512
and the output projection RetNetDecoder builds itself), no dropout, float32, in the parallel form
or the chunkwise one (chunk 64 unless --chunk). One step on a batch of B = 4 sequences of T tokens
is zero_grad, forward, F.cross_entropy (mean) against the tokens shifted by one, backward,
clip_grad_norm_(1.0) and torch.optim.AdamW(lr 1e-3, weight decay 0.1).step(). Each case (form x T
x threads) runs in a fresh process (this script with a hidden --case), which reports
  * the median (and minimum) wall time of one step after one warm-up step, and tokens/s = B*T / it,
  * its peak RSS (getrusage ru_maxrss) and the training memory: that peak less the RSS measured
    after the model, the optimiser and the batch were built and before the first step (the
    warm-up step is where the peak is reached: gradients, AdamW's moments and the activations
    saved for the backward all count), plus the same growth read from VmHWM after resetting it
    (/proc/self/clear_refs) as a cross-check,
  * PyTorch's 1024^3 SGEMM rate at the case's thread count, measured in the same process after
    the steps.
The parent process never imports PyTorch, so that the children's ru_maxrss, which Linux carries
over from the parent at fork/exec, is theirs.

With --compare BUILD_DIR, each case is also run by retnet's BUILD_DIR/bench/bench_train, one case
per process (benchmark train/{form}/T:{T}/B:4/thr:{thr}; its real_time is the time of one step,
its counters peak_rss_mb and training_mb the same two memories), reference and retnet one after
the other, round after round (--rounds); the speed-up retnet / torchscale is the median over the
rounds. When the binary is missing the reference runs alone.

PyTorch runs at full strength as in reference_torchscale.py (whose machinery this reuses): the
OpenBLAS core type giving the fastest SGEMM (--blas-core) and the allocator giving the fastest
fresh outputs (--allocator: glibc's, tcmalloc or jemalloc, where installed) are chosen first, and
the BLAS runs as many threads as PyTorch. The reference's memory is then that allocator's.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_torchscale as ref  # noqa: E402

BATCH = 4
VOCAB = 256
LAYERS = 2
RETNET_BINARY = "bench_train"


def rss_mb(field):
    """A field of /proc/self/status (VmRSS, VmHWM) in MB, or None."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_case(options, form, length, threads):
    """Runs in the child process: builds the model, optimiser and batch, measures the baseline RSS,
    times the steps and returns the row."""
    ref.install_import_stand_ins()
    sys.path.insert(0, os.path.abspath(options.torchscale))
    import torch
    import torch.nn.functional as F
    from torchscale.architecture.config import RetNetConfig
    from torchscale.architecture.retnet import RetNetDecoder

    torch.set_num_threads(threads)
    blas_library = ref.set_blas_threads(threads)
    torch.manual_seed(0)
    dims = ref.CONFIGS["B"]
    args = RetNetConfig(decoder_embed_dim=dims["embed"], decoder_value_embed_dim=dims["value"],
                        decoder_retention_heads=dims["heads"], decoder_ffn_embed_dim=dims["ffn"],
                        decoder_layers=LAYERS, activation_fn="gelu", dropout=0.0,
                        activation_dropout=0.0, drop_path_rate=0.0, vocab_size=VOCAB,
                        chunkwise_recurrent=(form == "chunkwise"),
                        recurrent_chunk_size=options.chunk)
    embedding = torch.nn.Embedding(VOCAB, dims["embed"])
    model = RetNetDecoder(args, embed_tokens=embedding).train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.1)
    tokens = torch.randint(0, VOCAB, (BATCH, length + 1))
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    losses = []

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)[0]
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        losses.append(loss.item())

    baseline = rss_mb("VmRSS")
    maxrss_before = maxrss_mb()
    try:  # resets VmHWM to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    median, best, reps = ref.time_call(step, options.min_time, options.min_reps)
    peak = maxrss_mb()
    hwm = rss_mb("VmHWM") if hwm_reset else None
    sgemm = ref.torch_sgemm(torch, threads, options.sgemm_time)
    return dict(impl="torchscale", form=form, T=length, B=BATCH, threads=threads,
                chunk=options.chunk if form == "chunkwise" else None,
                median_s=median, min_s=best, reps=reps, tokens_per_s=BATCH * length / median,
                peak_rss_mb=peak, baseline_rss_mb=baseline, training_mb=peak - baseline,
                maxrss_before_first_step_mb=maxrss_before,
                hwm_training_mb=(hwm - baseline) if hwm is not None else None,
                parameters=sum(p.numel() for p in parameters),
                first_loss=losses[0], last_loss=losses[-1],
                torch_sgemm_gflops=sgemm, torch=torch.__version__,
                torch_threads=torch.get_num_threads(), blas_library=blas_library,
                openblas_coretype=os.environ.get("OPENBLAS_CORETYPE", "(unset)"))


def reference_case(options, form, length, threads):
    """Runs one reference case in a fresh interpreter; returns its row (or one with an error)."""
    command = [sys.executable, os.path.abspath(__file__), "--torchscale", options.torchscale,
               "--case", "%s,%d,%d" % (form, length, threads), "--chunk", str(options.chunk),
               "--min-time", repr(options.min_time), "--min-reps", str(options.min_reps),
               "--sgemm-time", repr(options.sgemm_time), "--blas-core", "keep"]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return dict(impl="torchscale", form=form, T=length, threads=threads,
                    error="exit %d: %s" % (done.returncode, done.stderr.strip()[-2000:]))
    return json.loads(lines[-1])


def retnet_case(options, form, length, threads):
    """Runs one retnet case (bench_train) in its own process; returns its row."""
    # The contract's name; "/real_time" is accepted too in case the benchmark is registered
    # with UseRealTime().
    pattern = "^train/%s/T:%d/B:%d/thr:%d(/real_time)?$" % (form, length, BATCH, threads)
    row = dict(impl="retnet", form=form, T=length, B=BATCH, threads=threads)
    try:
        bench, seconds, sgemm = ref.retnet_benchmark(options.compare, RETNET_BINARY, pattern,
                                                     options.retnet_min_time)
    except subprocess.CalledProcessError as error:
        row["error"] = "exit %d: %s" % (error.returncode, (error.stderr or "").strip()[-2000:])
        return row
    except (SystemExit, ValueError, KeyError) as error:
        row["error"] = str(error)
        return row
    row.update(median_s=seconds, tokens_per_s=BATCH * length / seconds,
               iterations=bench.get("iterations"), peak_rss_mb=bench.get("peak_rss_mb"),
               training_mb=bench.get("training_mb"), name=bench.get("name"),
               retnet_sgemm_gflops=sgemm.get("sgemm1024_gflops_%dt" % threads))
    return row


def fmt(value, pattern):
    return "-" if value is None else pattern % value


def summarise(cases, rows, compare):
    """Per case: medians over the rounds; returns the summary rows and prints a markdown table."""
    summary = []
    for form, length, threads in cases:
        entry = dict(form=form, T=length, threads=threads)
        for impl in ("torchscale", "retnet"):
            mine = [r for r in rows if r["impl"] == impl and r["form"] == form
                    and r["T"] == length and r["threads"] == threads and "error" not in r]
            if not mine:
                continue
            entry[impl] = dict(
                median_s=statistics.median(r["median_s"] for r in mine),
                tokens_per_s=statistics.median(r["tokens_per_s"] for r in mine),
                peak_rss_mb=max((r["peak_rss_mb"] for r in mine
                                 if r.get("peak_rss_mb") is not None), default=None),
                training_mb=max((r["training_mb"] for r in mine
                                 if r.get("training_mb") is not None), default=None),
                rounds=len(mine))
            if impl == "torchscale":
                entry[impl]["sgemm_gflops"] = statistics.median(r["torch_sgemm_gflops"]
                                                                for r in mine)
        speedups = []
        for round_index in sorted({r["round"] for r in rows}):
            pair = {r["impl"]: r for r in rows if r["round"] == round_index and r["form"] == form
                    and r["T"] == length and r["threads"] == threads and "error" not in r}
            if "torchscale" in pair and "retnet" in pair:
                speedups.append(pair["torchscale"]["median_s"] / pair["retnet"]["median_s"])
        if speedups:
            entry["speedup_per_round"] = speedups
            entry["speedup"] = statistics.median(speedups)
        summary.append(entry)

    header = ("| form | T | thr | torchscale s/step | torchscale tok/s | torchscale peak RSS MB "
              "| torchscale training MB |")
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if compare:
        header += (" retnet s/step | retnet tok/s | retnet peak RSS MB | retnet training MB "
                   "| speed-up |")
        rule += "---:|---:|---:|---:|---:|"
    print("\n" + header + "\n" + rule)
    for entry in summary:
        t = entry.get("torchscale", {})
        line = "| %s | %d | %d | %s | %s | %s | %s |" % (
            entry["form"], entry["T"], entry["threads"], fmt(t.get("median_s"), "%.3f"),
            fmt(t.get("tokens_per_s"), "%.0f"), fmt(t.get("peak_rss_mb"), "%.0f"),
            fmt(t.get("training_mb"), "%.0f"))
        if compare:
            r = entry.get("retnet", {})
            line += " %s | %s | %s | %s | %s |" % (
                fmt(r.get("median_s"), "%.3f"), fmt(r.get("tokens_per_s"), "%.0f"),
                fmt(r.get("peak_rss_mb"), "%.0f"), fmt(r.get("training_mb"), "%.0f"),
                fmt(entry.get("speedup"), "%.2fx"))
        print(line)

    # How the training memory grows with T (the chunkwise backward's should be linear).
    lengths = sorted({entry["T"] for entry in summary})
    if len(lengths) > 1:
        print()
        for impl in ("torchscale", "retnet") if compare else ("torchscale",):
            for form, threads in sorted({(e["form"], e["threads"]) for e in summary}):
                memory = {e["T"]: e[impl]["training_mb"] for e in summary
                          if e["form"] == form and e["threads"] == threads and impl in e
                          and e[impl].get("training_mb") is not None}
                if len(memory) > 1:
                    low, high = min(memory), max(memory)
                    print("%s %s thr %d: training memory x%.2f from T=%d to T=%d (T x%g)"
                          % (impl, form, threads, memory[high] / max(memory[low], 1e-9), low,
                             high, high / low))
    print(flush=True)
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torchscale", required=True, help="path of a torchscale checkout")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048],
                        help="sequence lengths T (default 512 2048)")
    parser.add_argument("--forms", nargs="+", choices=["parallel", "chunkwise"],
                        default=["parallel", "chunkwise"])
    parser.add_argument("--chunk", type=int, default=64, help="torchscale's chunk (chunkwise)")
    parser.add_argument("--quick", action="store_true", help="T = 128 only (smoke test)")
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="seconds of timed steps per case (after one warm-up step)")
    parser.add_argument("--min-reps", type=int, default=3, help="timed steps per case, at least")
    parser.add_argument("--sgemm-time", type=float, default=0.5,
                        help="seconds of PyTorch's SGEMM timing per case")
    parser.add_argument("--compare", metavar="BUILD_DIR", default=None,
                        help="alternate with retnet's BUILD_DIR/bench/" + RETNET_BINARY)
    parser.add_argument("--retnet-min-time", type=float, default=None,
                        help="--benchmark_min_time of " + RETNET_BINARY + " (default --min-time)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds over all cases (default 2 with --compare, else 1)")
    parser.add_argument("--out", default=None, help="JSON output file (default: stdout only)")
    parser.add_argument("--blas-core", default="auto",
                        help="OPENBLAS_CORETYPE for PyTorch's BLAS: auto (the fastest SGEMM of "
                             "the candidates), keep (the environment's), or a name")
    parser.add_argument("--allocator", default="auto",
                        choices=["auto", "keep"] + sorted(ref.ALLOCATORS),
                        help="PyTorch's allocator: auto (the fastest mul into fresh outputs of "
                             "those installed), keep (the environment's), or a name")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.retnet_min_time is None:
        options.retnet_min_time = options.min_time

    if options.case:  # child: one case, one JSON line on stdout
        form, length, threads = options.case.split(",")
        row = run_case(options, form, int(length), int(threads))
        print(json.dumps(row), flush=True)
        return

    trials = ref.pin_peer(options.blas_core, options.allocator)
    lengths = [128] if options.quick else options.lengths
    rounds = options.rounds or (2 if options.compare else 1)
    cases = [(form, length, threads) for threads in options.threads
             for form in options.forms for length in lengths]
    compare = options.compare is not None
    if compare:
        binary = os.path.join(options.compare, "bench", RETNET_BINARY)
        if not os.access(binary, os.X_OK):
            print("NOTE: %s is missing (or not executable): timing the reference only"
                  % binary, flush=True)
            compare = False

    context = dict(python=platform.python_version(), machine=platform.machine(),
                   cpu=cpu_model(), cpus=os.cpu_count(), config="B", dims=ref.CONFIGS["B"],
                   layers=LAYERS, vocab=VOCAB, batch=BATCH, chunk=options.chunk,
                   date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                   loadavg_start=open("/proc/loadavg").read().split()[:3],
                   openblas_coretype=os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
                   blas_core_trials_sgemm_1t_gflops=trials.get("blas_core_sgemm_1t_gflops"),
                   allocator=os.environ.get("RETNET_BENCH_ALLOCATOR", "keep"),
                   allocator_trials_fresh_mul_1t_gbs=trials.get("allocator_fresh_mul_1t_gbs"),
                   retnet_binary=(os.path.join(options.compare, "bench", RETNET_BINARY)
                                  if compare else None),
                   rounds=rounds, min_time=options.min_time, min_reps=options.min_reps)
    rows = []
    for round_index in range(rounds):
        for form, length, threads in cases:
            for impl in ("torchscale", "retnet") if compare else ("torchscale",):
                run = reference_case if impl == "torchscale" else retnet_case
                row = run(options, form, length, threads)
                row["round"] = round_index
                rows.append(row)
                if "error" in row:
                    print("%s %s T=%d thr %d failed: %s"
                          % (impl, form, length, threads, row["error"]), flush=True)
                else:
                    print(json.dumps(row), flush=True)

    good = [r for r in rows if r["impl"] == "torchscale" and "error" not in r]
    if good:
        context.update(torch=good[0]["torch"], blas_library=good[0]["blas_library"])
    context["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    sgemm = {}
    for threads in options.threads:
        rates = [r["torch_sgemm_gflops"] for r in good if r["threads"] == threads]
        if rates:
            sgemm[str(threads)] = statistics.median(rates)
            print("PyTorch SGEMM 1024^3, %d thread(s): %.1f GFLOP/s (median over its cases)"
                  % (threads, sgemm[str(threads)]))
    context["torch_sgemm_gflops_by_threads"] = sgemm
    print("torch %s, %s, OPENBLAS_CORETYPE=%s" % (context.get("torch"), context["cpu"],
                                                  context["openblas_coretype"]))
    summary = summarise(cases, rows, compare)
    if options.out:
        with open(options.out, "w") as handle:
            json.dump(dict(context=context, runs=rows, summary=summary), handle, indent=1)


if __name__ == "__main__":
    main()
