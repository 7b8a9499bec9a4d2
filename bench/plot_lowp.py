#!/usr/bin/python3
"""Plots and tables of the weight-type run of bench/real_size.sh.

Usage: bench/plot_lowp.py [RESULTS_JSON]   (default: bench/results/lowp_weights.json)

Reads the runs of `WEIGHTS="f32 bf16 f16 int8" bench/real_size.sh` and writes, next to the JSON,
lowp_decode.png (decode ms/token per weight type and thread count, with the roofline: stored
bytes a step streams over the same run's read bandwidth) and lowp_batched.png (batched decode
tokens/s against the batch; needs matplotlib, python3-matplotlib), after printing markdown tables of decode, batched decode, prefill, load
time and peak memory per weight type.
"""

import json
import os
import sys

TYPES = ["f32", "bf16", "f16", "int8"]


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "lowp_weights.json")
    with open(path) as f:
        data = json.load(f)
    speed = {}  # (weights, threads) -> run with prefill/decode
    loads = {}  # (weights, threads, cold) -> run
    for run in data["runs"]:
        key = (run.get("weights", "f32"), run["threads"])
        if "decode" in run:
            speed[key] = run
        else:
            loads[key + (run["load"]["cold_cache"],)] = run
    threads = sorted({t for (_, t) in speed})
    types = [w for w in TYPES if any((w, t) in speed for t in threads)]
    out_dir = os.path.dirname(os.path.abspath(path))
    machine = data.get("machine", {}).get("cpu", "?")

    print("| weights | threads | decode ms/token | roofline ms | fraction | prefill T=2048 tok/s "
          "(vs f32) | B=1 / 4 / 16 / 64 tok/s | B=16 / B=1 |")
    print("|---|---|---|---|---|---|---|---|")
    for w in types:
        for t in threads:
            run = speed[(w, t)]
            d = run["decode"]
            ms = d["ms_per_token"]["mean"]
            roof = 1e3 * d["bytes_per_step"] / 1e9 / d["read_bandwidth_gb_per_s"]
            pre = max(p["tokens_per_s"] for p in run["prefill"])
            base = max(p["tokens_per_s"] for p in speed[("f32", t)]["prefill"])
            batched = {r["batch"]: r["tokens_per_s"] for r in d.get("batched", [])}
            bs = " / ".join(f"{batched[b]:.1f}" for b in sorted(batched))
            ratio = batched.get(16, 0) / batched[1] if 1 in batched else 0
            print(f"| {w} | {t} | {ms:.1f} | {roof:.1f} | {roof / ms:.2f} | {pre:.1f} "
                  f"({pre / base:.2f}) | {bs} | {ratio:.1f} |")
    print()
    print("| weights | kept GB | load s (1 thr / 2 thr / cold) | peak RSS GB | peak / kept |")
    print("|---|---|---|---|---|")
    for w in types:
        runs = [loads.get((w, t, False)) for t in threads] + [loads.get((w, 1, True))]
        first = next(r for r in runs if r)
        kept = first["model"]["converted_weight_bytes"] / 1e9
        peak = max(r["load"]["memory_after"]["vm_hwm_bytes"] for r in runs if r) / 1e9
        secs = " / ".join(f"{r['load']['seconds']:.1f}" if r else "-" for r in runs)
        print(f"| {w} | {kept:.2f} | {secs} | {peak:.2f} | {peak / kept:.2f} |")
    plot(speed, types, threads, out_dir, machine)


def plot(speed, types, threads, out_dir, machine):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Decode latency and its roofline.
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(threads)
    for i, t in enumerate(threads):
        xs = [k + i * width for k in range(len(types))]
        ms = [speed[(w, t)]["decode"]["ms_per_token"]["mean"] for w in types]
        roof = [1e3 * speed[(w, t)]["decode"]["bytes_per_step"] / 1e9 /
                speed[(w, t)]["decode"]["read_bandwidth_gb_per_s"] for w in types]
        ax.bar(xs, ms, width, label=f"{t} thread{'s' if t > 1 else ''}")
        ax.scatter(xs, roof, color="black", marker="_", s=400, zorder=3,
                   label="roofline (stored bytes / read bandwidth)" if i == 0 else None)
    ax.set_xticks([k + width * (len(threads) - 1) / 2 for k in range(len(types))])
    ax.set_xticklabels(types)
    ax.set_ylabel("decode ms / token (batch 1)")
    ax.set_title(f"fla-hub 1.3B shape, decode per weight type\n{machine}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "lowp_decode.png"), dpi=110)

    # Batched decode.
    fig, ax = plt.subplots(figsize=(7, 4))
    for w in types:
        for t in threads:
            rows = speed[(w, t)]["decode"].get("batched", [])
            if not rows:
                continue
            ax.plot([r["batch"] for r in rows], [r["tokens_per_s"] for r in rows], marker="o",
                    linestyle="-" if t == threads[-1] else "--", label=f"{w}, {t} thr")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequences decoded together (B)")
    ax.set_ylabel("tokens / s (all sequences)")
    ax.set_title(f"fla-hub 1.3B shape, batched decode\n{machine}", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "lowp_batched.png"), dpi=110)


if __name__ == "__main__":
    main()
