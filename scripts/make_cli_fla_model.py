#!/usr/bin/env python3
"""Writes tests/data/cli/fla_text_tiny/: a tiny random RetNet in fla-hub's exact layout (FLA's
config.json keys and tensor names, BF16, tied head: /work/shared/golden/fla/README.md §1) whose
vocabulary is the size of the tokenizer fla-hub's models ship (32 000 ids, <s> = 1, </s> = 2:
the Mistral-7B-v0.1 tokenizer.json of tests/data/bpe/mistral has that format and size), so that
`retnet_generate --model DIR --prompt "text"` runs end to end with a real tokenizer beside the
weights (the CLI test copies it there; the README passes it with --tokenizer). 1 layer,
hidden 8, 2 heads. Standard library only; seeded, so rerunning writes the same bytes. The
weights are this project's own."""
import json
import os
import random
import struct

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "cli",
                   "fla_text_tiny")
os.makedirs(out, exist_ok=True)
rng = random.Random(20261130)
layers, hidden, heads, vocab = 1, 8, 2, 32000
expand_v, hidden_ratio = 2, 2
# FLA's RetNetMLP: intermediate = 256 * ceil(int(hidden * hidden_ratio * 2 / 3) / 256).
intermediate = 256 * ((int(hidden * hidden_ratio * 2 / 3) + 255) // 256)
value_dim = hidden * expand_v


def bf16(x):
    """float -> BF16 bits, rounded to nearest even from float32."""
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


tensors = []


def add(name, shape, scale=None, around=0.0):
    n = 1
    for s in shape:
        n *= s
    values = [around + rng.gauss(0.0, scale) for _ in range(n)]
    tensors.append((name, shape, values))


add("model.embeddings.weight", [vocab, hidden], 1.0)
for l in range(layers):
    p = f"model.layers.{l}."
    add(p + "attn_norm.weight", [hidden], 0.2, 1.0)
    add(p + "attn.q_proj.weight", [hidden, hidden], 1.5 / hidden ** 0.5)
    add(p + "attn.k_proj.weight", [hidden, hidden], 1.5 / hidden ** 0.5)
    add(p + "attn.v_proj.weight", [value_dim, hidden], hidden ** -0.5)
    add(p + "attn.g_proj.weight", [value_dim, hidden], hidden ** -0.5)
    add(p + "attn.o_proj.weight", [hidden, value_dim], value_dim ** -0.5)
    add(p + "attn.g_norm_swish_gate.weight", [value_dim // heads], 0.2, 1.0)
    add(p + "mlp_norm.weight", [hidden], 0.2, 1.0)
    add(p + "mlp.gate_proj.weight", [intermediate, hidden], hidden ** -0.5)
    add(p + "mlp.up_proj.weight", [intermediate, hidden], hidden ** -0.5)
    add(p + "mlp.down_proj.weight", [hidden, intermediate], intermediate ** -0.5)
add("model.norm.weight", [hidden], 0.2, 1.0)

header, data = {"__metadata__": {"format": "pt"}}, bytearray()
for name, shape, values in tensors:
    blob = struct.pack(f"<{len(values)}H", *(bf16(v) for v in values))
    header[name] = {"dtype": "BF16", "shape": shape,
                    "data_offsets": [len(data), len(data) + len(blob)]}
    data += blob
text = json.dumps(header, separators=(",", ":"))
text += " " * ((8 - (8 + len(text)) % 8) % 8)
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text.encode() + bytes(data))

config = {
    "_name_or_path": "retnet/fla_text_tiny",
    "architectures": ["RetNetForCausalLM"],
    "attn": None,
    "attn_mode": "chunk",
    "bos_token_id": 1,
    "conv_size": 4,
    "elementwise_affine": True,
    "eos_token_id": 2,
    "expand_k": 1,
    "expand_v": expand_v,
    "feature_map": None,
    "fuse_cross_entropy": True,
    "fuse_norm": True,
    "hidden_act": "swish",
    "hidden_ratio": hidden_ratio,
    "hidden_size": hidden,
    "initializer_range": 0.02,
    "intermediate_size": None,
    "max_position_embeddings": 2048,
    "model_type": "retnet",
    "norm_eps": 1e-06,
    "num_heads": heads,
    "num_hidden_layers": layers,
    "num_kv_heads": None,
    "rms_norm_eps": 1e-06,
    "share_conv_kernel": True,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.2",
    "use_cache": True,
    "use_output_gate": True,
    "use_short_conv": False,
    "vocab_size": vocab,
}
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
print("written", out)
