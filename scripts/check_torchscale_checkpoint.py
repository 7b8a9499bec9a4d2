#!/usr/bin/python3
"""Loads a checkpoint written by retnet (io::saveTorchscaleModel, examples/retnet_train) into
Microsoft torchscale's RetNetDecoder with load_state_dict(strict=True), then generates greedily
from a prompt, so that the ids can be compared with retnet_generate's:

    scripts/check_torchscale_checkpoint.py --torchscale /path/to/torchscale \\
        --model RUN_DIR/model.safetensors --prompt-ids 116,104,101 --max-new 16
    retnet_generate --model RUN_DIR --prompt-ids 116,104,101 --max-new 16   # same ids

The decoder's arguments come from the file's metadata (embed_dim, value_dim, heads, ffn_dim,
layers, vocab, layernorm_eps, activation_fn, embed_scale, share_decoder_input_output_embed).
Needs PyTorch and safetensors' format only (the file is parsed here, not with the safetensors
package); torchscale's optional imports (fairscale, timm, einops) are stood in for as in
bench/reference_torchscale.py. Float64 throughout."""

import argparse
import json
import math
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
import reference_torchscale  # noqa: E402  (the import stand-ins)


def read_safetensors(path, torch):
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    metadata = header.pop("__metadata__", {})
    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16}
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        raw = bytearray(data[8 + length + begin:8 + length + end])
        tensor = torch.frombuffer(raw, dtype=dtypes[info["dtype"]]) if raw else \
            torch.zeros(0, dtype=dtypes[info["dtype"]])
        tensors[name] = tensor.reshape(info["shape"]).to(torch.float64)
    return tensors, metadata


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torchscale", required=True, help="a checkout of microsoft/torchscale")
    parser.add_argument("--model", required=True, help="a .safetensors file retnet wrote")
    parser.add_argument("--prompt-ids", required=True)
    parser.add_argument("--max-new", type=int, default=16)
    args = parser.parse_args()

    reference_torchscale.install_import_stand_ins()
    sys.path.insert(0, os.path.abspath(args.torchscale))
    import torch
    from torchscale.architecture.config import RetNetConfig
    from torchscale.architecture.retnet import RetNetDecoder

    torch.set_default_dtype(torch.float64)
    tensors, meta = read_safetensors(args.model, torch)
    embed_dim = int(meta["embed_dim"])
    scale = float(meta.get("embed_scale", "1"))
    if scale not in (1.0, math.sqrt(embed_dim)):
        raise SystemExit(f"embed_scale {scale}: torchscale has only 1 and sqrt(embed_dim)")
    tied = meta.get("share_decoder_input_output_embed", "False") == "True"
    config = RetNetConfig(
        decoder_embed_dim=embed_dim, decoder_value_embed_dim=int(meta["value_dim"]),
        decoder_retention_heads=int(meta["heads"]), decoder_ffn_embed_dim=int(meta["ffn_dim"]),
        decoder_layers=int(meta["layers"]), vocab_size=int(meta["vocab"]),
        layernorm_eps=float(meta["layernorm_eps"]), activation_fn=meta["activation_fn"],
        no_scale_embedding=(scale == 1.0), share_decoder_input_output_embed=tied,
        layernorm_embedding=(meta.get("layernorm_embedding", "False") == "True"),
        dropout=0.0, drop_path_rate=0.0)
    embed = torch.nn.Embedding(int(meta["vocab"]), embed_dim)
    model = RetNetDecoder(config, embed_tokens=embed).eval()
    state = {name: value for name, value in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=True)
    print(f"load_state_dict(strict=True): {len(state)} tensors, missing {list(missing)}, "
          f"unexpected {list(unexpected)}")

    ids = [int(x) for x in args.prompt_ids.split(",")]
    generated = []
    with torch.no_grad():
        for _ in range(args.max_new):
            logits, _ = model(torch.tensor([ids + generated]))
            generated.append(int(logits[0, -1].argmax()))
    print("generated:", " ".join(str(i) for i in generated))


if __name__ == "__main__":
    main()
