#!/usr/bin/env python3
"""Writes tests/data/rwkv4/cli_tiny/: a tiny random RWKV-4 model (BlinkDL's names, F32, L=1,
C=8, F=32, V=300) and a RWKV World-format vocabulary of 299 entries (the 256 bytes, then some
English words) for the command-line tool's text-prompt test. Standard library only; seeded, so
rerunning writes the same bytes. Both files are this project's own."""
import json
import os
import random
import struct

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "rwkv4",
                   "cli_tiny")
os.makedirs(out, exist_ok=True)
rng = random.Random(2026)
L, C, F, V = 1, 8, 32, 300
tensors = []


def add(name, shape, values):
    tensors.append((name, shape, values))


def rand(n, scale):
    return [rng.gauss(0.0, scale) for _ in range(n)]


def uniform(n, low, high):
    return [rng.uniform(low, high) for _ in range(n)]


add("emb.weight", [V, C], rand(V * C, 1.0))
add("blocks.0.ln0.weight", [C], uniform(C, 0.9, 1.1))
add("blocks.0.ln0.bias", [C], uniform(C, -0.1, 0.1))
for l in range(L):
    p = f"blocks.{l}."
    for n in ("ln1", "ln2"):
        add(p + n + ".weight", [C], uniform(C, 0.9, 1.1))
        add(p + n + ".bias", [C], uniform(C, -0.1, 0.1))
    add(p + "att.time_decay", [C], uniform(C, -4.0, 1.0))
    add(p + "att.time_first", [C], uniform(C, -1.0, 1.0))
    for n in ("k", "v", "r"):
        add(p + "att.time_mix_" + n, [1, 1, C], uniform(C, 0.0, 1.0))
    for n in ("key", "value", "receptance", "output"):
        add(p + "att." + n + ".weight", [C, C], rand(C * C, C ** -0.5))
    for n in ("k", "r"):
        add(p + "ffn.time_mix_" + n, [1, 1, C], uniform(C, 0.0, 1.0))
    add(p + "ffn.key.weight", [F, C], rand(F * C, C ** -0.5))
    add(p + "ffn.receptance.weight", [C, C], rand(C * C, C ** -0.5))
    add(p + "ffn.value.weight", [C, F], rand(C * F, F ** -0.5))
add("ln_out.weight", [C], uniform(C, 0.9, 1.1))
add("ln_out.bias", [C], uniform(C, -0.1, 0.1))
add("head.weight", [V, C], rand(V * C, C ** -0.5))

header, data = {}, b""
for name, shape, values in tensors:
    blob = struct.pack(f"<{len(values)}f", *values)
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
    data += blob
text = json.dumps(header, separators=(",", ":"))
text += " " * ((8 - (8 + len(text)) % 8) % 8)
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text.encode() + data)

words = ["Hello", " world", " the", " a", " is", " of", " and", " to", " in", " RWKV", " model",
         " text", " token", " stream", "ing", " café", " 中文", " 🙂", ", ", ". ", " retnet",
         " Hello", " World", "ll", "lo", "He", " wo", "rld", " an", " on", " it", " at", " be",
         " as", " by", " or", " we", " he", " so", " no", " up", " do"]
with open(os.path.join(out, "rwkv_vocab_tiny.txt"), "w", encoding="utf-8") as f:
    for b in range(256):
        f.write(f"{b + 1} {bytes([b])!r} 1\n")
    for i, w in enumerate(words):
        f.write(f"{257 + i} {w!r} {len(w.encode('utf-8'))}\n")
print("written", out)
