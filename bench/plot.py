#!/usr/bin/python3
"""Turns the benchmark JSON of bench/run.sh into PNG plots and a markdown summary.

Usage: bench/plot.py [--cpu-time] [RESULTS_DIR]   (default: bench/results next to this script)

Reads forms.json, decode.json, baselines.json and stages.json (whichever exist) from
RESULTS_DIR, writes forms_time_vs_T.png, forms_sgemm_fraction_vs_T.png, decode_latency_vs_L.png
and memory_vs_L.png there, and prints markdown tables of the key results to stdout. --cpu-time re-expresses the
single-thread figures by the benchmark thread's CPU time (for a machine shared with other jobs)
and adds a _cpu suffix to the plots whose numbers change.
"""

import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
CONFIG_NAMES = {0: "A (D1024 V2048 H4 F2048)", 1: "B (D512 V1024 H8 F1024)"}
LAYERS = ["Retention", "MSR", "Block"]
FORMS = ["parallel", "chunkwise", "recurrent"]


def load(directory, name):
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def parse_runs(data, cpu_time=False):
    """Benchmark entries as dicts: family parts, integer arguments, seconds and counters.

    With cpu_time, single-thread entries are re-expressed by the main thread's CPU time instead of
    wall time (rates scaled by real/cpu, fractions divided by the CPU-time limits of the same
    binary): on a machine shared with other jobs this removes the time the benchmark thread was
    descheduled. Two-thread entries stay wall-clock."""
    runs = []
    if data is None:
        return runs
    context = data.get("context", {})
    for b in data.get("benchmarks", []):
        if b.get("run_type", "iteration") != "iteration" or b.get("error_occurred"):
            continue
        parts = b["name"].split("/")
        family = [p for p in parts if ":" not in p and p != "real_time"]
        args = {}
        for p in parts:
            m = re.fullmatch(r"(\w+):(-?\d+)", p)
            if m:
                args[m.group(1)] = int(m.group(2))
        run = dict(b)
        run["family"] = family
        run["args"] = args
        unit = UNIT_SECONDS[b.get("time_unit", "ns")]
        run["seconds"] = b["real_time"] * unit
        run["clock"] = "wall"
        if cpu_time and args.get("thr", 1) == 1 and b.get("cpu_time", 0) > 0:
            f = b["real_time"] / b["cpu_time"]
            run["seconds"] = b["cpu_time"] * unit
            run["clock"] = "cpu"
            for key in ("tokens/s", "GFLOP/s", "bytes_per_second"):
                if key in run:
                    run[key] *= f
            if "s/token" in run:
                run["s/token"] /= f
            for key, limit in (("sgemm_fraction", "sgemm1024_gflops_1t"),
                               ("bandwidth_fraction", "read_bandwidth_gbs_1t")):
                if key in run and limit in context and limit + "_cpu" in context:
                    run[key] *= f * float(context[limit]) / float(context[limit + "_cpu"])
        runs.append(run)
    return runs


def select(runs, family, **args):
    out = []
    for r in runs:
        if r["family"] != family:
            continue
        if all(r["args"].get(k) == v for k, v in args.items()):
            out.append(r)
    return out


def series(runs, family, x, **args):
    """(xs, runs) sorted by argument x."""
    rs = sorted(select(runs, family, **args), key=lambda r: r["args"][x])
    return [r["args"][x] for r in rs], rs


def human(n, unit=""):
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def human_bytes(n):
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.3g} {suffix}"
    return f"{n:.0f} B"


# ------------------------------------------------------------------------------------------------
# Plots


def plot_forms(runs, directory, suffix="", batch=1, threads=1):
    if not runs:
        return
    chunks = sorted({r["args"]["chunk"] for r in runs if "chunk" in r["args"]})
    cmap = plt.get_cmap("viridis")
    for metric, filename, ylabel in (
        ("seconds", f"forms_time_vs_T{suffix}.png", "time per call [s]"),
        ("sgemm_fraction", f"forms_sgemm_fraction_vs_T{suffix}.png",
         "GFLOP/s / same-binary SGEMM"),
    ):
        fig, axes = plt.subplots(len(LAYERS), 2, figsize=(12, 13), squeeze=False)
        for row, layer in enumerate(LAYERS):
            for col, cfg in enumerate((0, 1)):
                ax = axes[row][col]
                common = dict(B=batch, cfg=cfg, thr=threads)
                xs, rs = series(runs, [layer, "parallel"], "T", **common)
                if xs:
                    ax.plot(xs, [r[metric] for r in rs], "o-", color="tab:red", label="parallel")
                for i, c in enumerate(chunks):
                    xs, rs = series(runs, [layer, "chunkwise"], "T", chunk=c, **common)
                    if xs:
                        color = cmap(i / max(1, len(chunks) - 1) * 0.85)
                        ax.plot(xs, [r[metric] for r in rs], "s-", color=color, ms=4,
                                label=f"chunkwise C={c}")
                xs, rs = series(runs, [layer, "recurrent"], "T", **common)
                if xs:
                    ax.plot(xs, [r[metric] for r in rs], "^-", color="tab:blue",
                            label="recurrent")
                ax.set_xscale("log", base=2)
                if metric == "seconds":
                    ax.set_yscale("log")
                else:
                    ax.set_ylim(0, 1.05)
                ax.set_title(f"{layer}, config {CONFIG_NAMES[cfg]}, B={batch}, {threads} thread(s)",
                             fontsize=9)
                ax.set_xlabel("sequence length T")
                ax.set_ylabel(ylabel)
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(directory, filename), dpi=110)
        plt.close(fig)


DECODE = [
    ("MSR", "RetNet MSR step", "tab:blue", "o"),
    ("Block", "RetNet block step", "tab:green", "s"),
    ("TransformerAttention", "Transformer attention step", "tab:orange", "v"),
    ("TransformerLayer", "Transformer layer step", "tab:red", "^"),
]


def save_log_log(fig, ax, ylabel, title, path):
    """Finishes a log-log plot over the context length L and writes it as PNG."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length L")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_decode(runs, directory, suffix=""):
    if not runs:
        return
    threads = sorted({r["args"]["thr"] for r in runs})
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, label, color, marker in DECODE:
        for thr in threads:
            xs, rs = series(runs, ["decode", name], "L", thr=thr)
            if xs:
                ax.plot(xs, [r["seconds"] * 1e3 for r in rs], marker=marker, color=color,
                        linestyle="-" if thr == 1 else "--", label=f"{label}, {thr} thr")
    save_log_log(fig, ax, "latency per token [ms]", "Decode latency, config A, batch 1",
                 os.path.join(directory, f"decode_latency_vs_L{suffix}.png"))

    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs, rs = series(runs, ["decode", "MSR"], "L", thr=threads[0])
    if xs:
        ax.plot(xs, [r["memory_bytes"] / 2**20 for r in rs], "o-", color="tab:blue",
                label="RetNet state (H·dk·dv·4 B)")
        ax.axhline(rs[0]["bytes_read"] / 2**20 - rs[0]["memory_bytes"] / 2**20, color="tab:blue",
                   linestyle=":", label="RetNet MSR weights")
    xs, rs = series(runs, ["decode", "TransformerAttention"], "L", thr=threads[0])
    if xs:
        ax.plot(xs, [r["memory_bytes"] / 2**20 for r in rs], "^-", color="tab:red",
                label="Transformer KV cache (L·(D+V)·4 B)")
        ax.axhline(rs[0]["bytes_read"] / 2**20 - rs[0]["memory_bytes"] / 2**20, color="tab:red",
                   linestyle=":", label="Transformer attention weights")
    save_log_log(fig, ax, "MiB per layer (batch 1)", "Decode memory per layer, config A",
                 os.path.join(directory, "memory_vs_L.png"))


# ------------------------------------------------------------------------------------------------
# Tables


def print_machine(baselines, contexts):
    print("## Machine limits (same binaries)\n")
    for name, ctx in contexts:
        keys = sorted(k for k in ctx if k.startswith(("sgemm1024", "read_bandwidth")))
        if keys:
            print(f"- {name} startup: " + ", ".join(f"{k} = {float(ctx[k]):.1f}" for k in keys))
        if "load_avg" in ctx:
            print(f"  (load average at start of {name}: {ctx['load_avg']})")
    if baselines:
        print("\n| baseline | args | time | GFLOP/s | GB/s |")
        print("|---|---|---|---|---|")
        for r in baselines:
            args = " ".join(f"{k}={v}" for k, v in r["args"].items())
            gflops = f"{r['GFLOP/s']:.1f}" if "GFLOP/s" in r else ""
            gbs = f"{r['bytes_per_second'] / 1e9:.1f}" if "bytes_per_second" in r else ""
            print(f"| {'/'.join(r['family'][1:])} | {args} | {r['seconds'] * 1e3:.3g} ms | "
                  f"{gflops} | {gbs} |")
    print()


def print_forms(runs, lengths=(2048, 8192)):
    if not runs:
        return
    chunks = sorted({r["args"]["chunk"] for r in runs if "chunk" in r["args"]})
    for batch, threads in sorted({(r["args"]["B"], r["args"]["thr"]) for r in runs}):
        columns = [(cfg, t) for cfg in (0, 1) for t in lengths]
        cells = {}
        for layer in LAYERS:
            for form in FORMS:
                for chunk in chunks if form == "chunkwise" else [None]:
                    extra = {"chunk": chunk} if chunk else {}
                    row = []
                    for cfg, t in columns:
                        rs = select(runs, [layer, form], T=t, B=batch, cfg=cfg, thr=threads,
                                    **extra)
                        if rs:
                            r = rs[0]
                            row.append(f"{human(r['tokens/s'])} · {r['GFLOP/s']:.1f} · "
                                       f"{r['sgemm_fraction']:.2f}")
                        else:
                            row.append("")
                    if any(row):
                        label = f"{layer} {form}" + (f" C={chunk}" if chunk else "")
                        cells[label] = row
        if not cells:
            continue
        print(f"## Forms, B={batch}, {threads} thread(s): tokens/s · GFLOP/s · SGEMM fraction\n")
        print("| layer / form | " + " | ".join(f"{'AB'[cfg]} T={t}" for cfg, t in columns) + " |")
        print("|---|" + "---|" * len(columns))
        for label, row in cells.items():
            print(f"| {label} | " + " | ".join(row) + " |")
        print()


def print_decode(runs):
    if not runs:
        return
    for thr in sorted({r["args"]["thr"] for r in runs}):
        print(f"## Decode, config A, batch 1, {thr} thread(s): latency per token "
              "(bandwidth fraction)\n")
        names = [n for n, *_ in DECODE]
        print("| L | " + " | ".join(names) + " | RetNet state | KV cache |")
        print("|---|" + "---|" * (len(names) + 2))
        for L in sorted({r["args"]["L"] for r in runs}):
            row = []
            for n in names:
                rs = select(runs, ["decode", n], L=L, thr=thr)
                row.append(f"{rs[0]['seconds'] * 1e6:.0f} µs ({rs[0]['bandwidth_fraction']:.2f})"
                           if rs else "")
            state = select(runs, ["decode", "MSR"], L=L, thr=thr)
            cache = select(runs, ["decode", "TransformerAttention"], L=L, thr=thr)
            row.append(human_bytes(state[0]["memory_bytes"]) if state else "")
            row.append(human_bytes(cache[0]["memory_bytes"]) if cache else "")
            print(f"| {L} | " + " | ".join(row) + " |")
        print()


STAGES = ["embed", "rmsnorm", "linear_in", "rotary_table", "rotary", "retention_parallel",
          "retention_chunkwise", "retention_recurrent", "groupnorm_gate", "linear_out", "ffn"]


def print_stages(runs, threads=1):
    """Each stage timed alone (bench_stages): µs per call and per token, GFLOP/s and share of the
    same-binary SGEMM for the products, GB/s and share of the read bandwidth."""
    if not runs:
        return
    # the rows of one config and length (stages/linear_weights has neither: bench/README.md)
    runs = [r for r in runs if "cfg" in r["args"] and "T" in r["args"]]
    for cfg in sorted({r["args"]["cfg"] for r in runs}):
        for T in sorted({r["args"]["T"] for r in runs}):
            rs = {r["family"][1]: r for r in runs if r["args"].get("T") == T
                  and r["args"].get("cfg") == cfg and r["args"].get("thr", 1) == threads}
            if not rs:
                continue
            what = "decode step (T=1)" if T == 1 else f"prefill T={T}"
            print(f"## Stages alone, config {'AB'[cfg]}, {what}, {threads} thread(s)\n")
            print("| stage | µs per call | µs/token | GFLOP/s | sgemm fraction | GB/s "
                  "| bandwidth fraction |")
            print("|---|---|---|---|---|---|---|")
            for name in STAGES + sorted(set(rs) - set(STAGES)):
                r = rs.get(name)
                if r is None:
                    continue
                cells = [name, f"{r['seconds'] * 1e6:.2f}", f"{r['seconds'] * 1e6 / T:.3f}"]
                for key, fmt in (("GFLOP/s", "{:.1f}"), ("sgemm_fraction", "{:.2f}"),
                                 ("bytes_per_second", "{:.1f}"), ("bandwidth_fraction", "{:.2f}")):
                    value = r.get(key)
                    if value is not None and key == "bytes_per_second":
                        value /= 1e9
                    cells.append(fmt.format(value) if value is not None else "")
                print("| " + " | ".join(cells) + " |")
            print()


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    cpu_time = "--cpu-time" in sys.argv[1:]
    directory = args[0] if args else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results")
    names = ("forms", "decode", "baselines", "stages")
    data = {name: load(directory, f"{name}.json") for name in names}
    if not any(data.values()):
        sys.exit(f"no forms.json, decode.json, baselines.json or stages.json in {directory}")
    forms = parse_runs(data["forms"], cpu_time)
    decode = parse_runs(data["decode"], cpu_time)
    baselines = parse_runs(data["baselines"], cpu_time)
    stages = parse_runs(data["stages"], cpu_time)
    suffix = "_cpu" if cpu_time else ""
    if cpu_time:
        print("_Single-thread figures by CPU time of the benchmark thread (--cpu-time); "
              "two-thread figures by wall time._\n")

    plot_forms(forms, directory, suffix)
    plot_decode(decode, directory, suffix)

    contexts = [(n, d.get("context", {})) for n, d in data.items() if d]
    print_machine(baselines, contexts)
    print_forms(forms)
    print_decode(decode)
    print_stages(stages)
    print(f"Plots written to {directory}.", file=sys.stderr)


if __name__ == "__main__":
    main()
