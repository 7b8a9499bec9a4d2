#!/usr/bin/python3
"""Draws the loss curve of a retnet_train run from its log.csv: the training loss (each step, and
its moving average) and the validation loss, in bits per byte, against the step.

    scripts/plot_training.py RUN_DIR/log.csv --out docs/images/train_kjv.png [--title TEXT]

Needs matplotlib (Debian: python3-matplotlib)."""

import argparse
import csv
import math


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", help="a retnet_train log.csv")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--title", default=None)
    parser.add_argument("--smooth", type=int, default=50, help="moving-average window (steps)")
    args = parser.parse_args()

    steps, train, val_steps, val = [], [], [], []
    tokens_per_s, seconds = [], []
    with open(args.log, newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            steps.append(step)
            train.append(float(row["train_loss"]) / math.log(2))
            if row["val_loss"]:
                val_steps.append(step)
                val.append(float(row["val_loss"]) / math.log(2))
            tokens_per_s.append(float(row["tokens_per_s"]))
            seconds.append(float(row["seconds"]))
    if not steps:
        raise SystemExit(f"{args.log}: no rows")

    window = max(1, min(args.smooth, len(train)))
    average, total = [], 0.0
    for i, value in enumerate(train):
        total += value
        if i >= window:
            total -= train[i - window]
        average.append(total / min(i + 1, window))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot(steps, train, color="#b0c4de", linewidth=0.6, label="training batch")
    ax.plot(steps, average, color="#1f4e8c", linewidth=1.6,
            label=f"training, {window}-step average")
    ax.plot(val_steps, val, "o-", color="#c0392b", markersize=3.5, linewidth=1.4,
            label="validation (held-out text)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (bits per byte)")
    ax.set_ylim(bottom=max(0.0, min(average + val) - 0.3), top=min(8.0, max(train[:5]) + 0.2))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    subtitle = (f"{len(steps)} steps in {seconds[-1] / 60:.1f} min, "
                f"{sum(tokens_per_s) / len(tokens_per_s):,.0f} tokens/s; "
                f"final validation {val[-1]:.3f} bits/byte" if val else "")
    ax.set_title((args.title + "\n" if args.title else "") + subtitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
