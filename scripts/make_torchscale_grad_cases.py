#!/usr/bin/python3
"""Writes gradient golden files in the format of tests/data/grad (the README there) for shapes the
six shared files do not cover: one head with value_dim = embed_dim, eight heads, the swish FFN,
layernorm_eps 1e-5, batch 3, T = 1, a three-layer decoder, decoders whose length leaves a partial
last chunk (torchscale pads it), a tied and scaled embedding with its norm. Run from the
repository root:

    scripts/make_torchscale_grad_cases.py --torchscale /path/to/torchscale --out tests/data/grad

Everything goes through Microsoft torchscale's own modules (MultiScaleRetention, DecoderLayer,
RetNetDecoder) and torch.autograd in float64, as the shared files were made: the decay buffer is
recomputed in float64 with torchscale's formula and torchscale's x.float() casts (RMSNorm, GLU)
are made no-ops while the cases run. Weights, inputs and targets come from torch.Generator seeds
of this script, so the files are this project's own data. Parallel and chunkwise gradients are
stored (retnet trains those forms); the recurrent output is stored for msr and layer files as the
forward format has it. Needs PyTorch; torchscale's optional imports (fairscale, timm, einops) are
stood in for as in bench/reference_torchscale.py."""

import argparse
import json
import math
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
import reference_torchscale  # noqa: E402  (the import stand-ins)

TORCHSCALE_COMMIT = "4d1e0e82e5adf86dd424f1463192635b73fc8efc"

# name, kind and shape of each case: D, V, heads, FFN, activation, eps, T, chunk, batch, (decoder)
# layers, vocab, embedding options. msr and layer cases need T to be a multiple of the chunk
# (torchscale's MultiScaleRetention reshapes into chunks); the decoder pads.
CASES = [
    dict(case="msr_one_head_grad", kind="msr", D=32, V=32, H=1, eps=1e-6, T=12, C=4, B=2,
         seed=2101),
    dict(case="msr_eight_heads_b3_grad", kind="msr", D=64, V=64, H=8, eps=1e-5, T=12, C=6, B=3,
         seed=2102),
    dict(case="msr_t1_grad", kind="msr", D=32, V=64, H=2, eps=1e-6, T=1, C=1, B=3, seed=2103),
    dict(case="layer_swish_grad", kind="layer", D=32, V=64, H=4, F=48, act="swish", eps=1e-5,
         T=16, C=4, B=2, seed=2104),
    dict(case="layer_t1_b3_grad", kind="layer", D=32, V=64, H=2, F=64, act="gelu", eps=1e-6,
         T=1, C=1, B=3, seed=2105),
    dict(case="layer_one_head_grad", kind="layer", D=32, V=32, H=1, F=40, act="gelu", eps=1e-6,
         T=9, C=3, B=2, seed=2106),
    dict(case="decoder_three_layers_grad", kind="decoder", D=32, V=32, H=1, F=48, act="swish",
         eps=1e-6, T=13, C=4, B=3, layers=3, vocab=37, seed=2107),
    dict(case="decoder_t1_tied_grad", kind="decoder", D=32, V=64, H=2, F=64, act="gelu",
         eps=1e-5, T=1, C=8, B=2, layers=2, vocab=29, tied=True, scale_embedding=True,
         layernorm_embedding=True, seed=2108),
    dict(case="decoder_eight_heads_eps0_grad", kind="decoder", D=32, V=32, H=8, F=48,
         act="gelu", eps=1e-24, T=10, C=4, B=2, layers=2, vocab=23, seed=2109),
]

GAINS = {"q_proj": 1.0, "k_proj": 1.0, "v_proj": 1.0, "g_proj": 1.0, "out_proj": 0.8,
         "fc1": 1.0, "gate": 1.0, "fc2": 0.6, "output_projection": 1.0}


def write_safetensors(path, tensors, metadata, torch):
    """tensors: name -> float64 or int64 tensor; written in insertion order, row-major."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        dtype = {torch.float64: "F64", torch.int64: "I64"}[tensor.dtype]
        data = tensor.numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": dtype, "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def make_config(RetNetConfig, c, chunkwise):
    return RetNetConfig(
        decoder_embed_dim=c["D"], decoder_value_embed_dim=c["V"], decoder_retention_heads=c["H"],
        decoder_ffn_embed_dim=c.get("F", 2 * c["D"]), activation_fn=c.get("act", "gelu"),
        decoder_layers=c.get("layers", 1), vocab_size=c.get("vocab", 1), layernorm_eps=c["eps"],
        recurrent_chunk_size=c["C"], chunkwise_recurrent=chunkwise, dropout=0.0,
        drop_path_rate=0.0, no_scale_embedding=not c.get("scale_embedding", False),
        layernorm_embedding=c.get("layernorm_embedding", False),
        share_decoder_input_output_embed=c.get("tied", False))


def float64_rel_pos(relpos, heads, torch):
    """torchscale's decay buffer in float64 (its formula asks for float32)."""
    relpos.decay = torch.log(1 - 2 ** (-5 - torch.arange(heads, dtype=torch.float64)))


def init_parameters(module, generator, torch):
    """Linear weights N(0, (gain/sqrt(in))^2); norm weights 1 + N(0, 0.1^2); embedding N(0, 1)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.split(".")[-2] if name.endswith(".weight") else name
            if p.dim() == 2 and "embed_tokens" not in name:
                gain = GAINS.get(leaf, 1.0)
                p.copy_(torch.randn(p.shape, generator=generator) * gain / math.sqrt(p.shape[1]))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=generator))
            else:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))


def file_tensors(inputs, module, buffers, output_prefix, outputs, upstream, losses, grads):
    """The file's tensors in the shared files' order: inputs, parameters, buffers, each form's
    output, the upstream gradient or targets, the losses, then every gradient by name."""
    tensors = dict(inputs)
    for name, p in module.named_parameters():
        tensors[name] = p.detach()
    tensors.update(buffers)
    for form, output in outputs.items():
        tensors[output_prefix + form] = output
    tensors.update(upstream)
    for form in ("parallel", "chunkwise"):
        tensors["loss_" + form] = losses[form]
    for form in ("parallel", "chunkwise"):
        for name in sorted(grads[form]):
            tensors["grad_%s.%s" % (form, name)] = grads[form][name]
    return tensors


def run_layer_case(c, torch, RetNetConfig, DecoderLayer, RetNetRelPos):
    g = torch.Generator().manual_seed(c["seed"])
    layer = DecoderLayer(make_config(RetNetConfig, c, True), depth=0).eval()
    module = layer.retention if c["kind"] == "msr" else layer
    init_parameters(module, g, torch)
    relpos = RetNetRelPos(make_config(RetNetConfig, c, True))
    float64_rel_pos(relpos, c["H"], torch)
    B, T, D = c["B"], c["T"], c["D"]
    x = torch.randn(B, T, D, generator=g)
    dy = torch.randn(B, T, D, generator=g)

    def call(inp, rel_pos, chunkwise=False, state=None):
        if c["kind"] == "msr":
            return module(inp, rel_pos, chunkwise_recurrent=chunkwise, incremental_state=state)
        return module(inp, incremental_state=state, chunkwise_recurrent=chunkwise,
                      retention_rel_pos=rel_pos)[0]

    outputs, losses, grads = {}, {}, {}
    for form in ("parallel", "chunkwise"):
        module.zero_grad(set_to_none=True)
        xf = x.clone().requires_grad_(True)
        rel_pos = relpos(T, chunkwise_recurrent=(form == "chunkwise"))
        out = call(xf, rel_pos, chunkwise=(form == "chunkwise"))
        loss = (out * dy).sum()
        loss.backward()
        outputs[form], losses[form] = out.detach(), loss.detach().reshape(1)
        grads[form] = {"x": xf.grad.detach()}
        for name, p in module.named_parameters():
            grads[form][name] = p.grad.detach().clone()
    with torch.no_grad():
        state, steps = {}, []
        for t in range(T):
            steps.append(call(x[:, t:t + 1], relpos(t + 1, activate_recurrent=True), state=state))
        outputs["recurrent"] = torch.cat(steps, dim=1)

    buffers = {"angle": relpos.angle, "decay": relpos.decay}
    return file_tensors({"x": x}, module, buffers, "out_", outputs, {"dy": dy}, losses, grads)


def run_decoder_case(c, torch, RetNetConfig, RetNetDecoder):
    g = torch.Generator().manual_seed(c["seed"])
    config = make_config(RetNetConfig, c, False)
    embed = torch.nn.Embedding(c["vocab"], c["D"])
    model = RetNetDecoder(config, embed_tokens=embed).eval()
    init_parameters(model, g, torch)
    float64_rel_pos(model.retnet_rel_pos, c["H"], torch)
    B, T = c["B"], c["T"]
    tokens = torch.randint(0, c["vocab"], (B, T), generator=g)
    targets = torch.randint(0, c["vocab"], (B, T), generator=g)
    logits, losses, grads = {}, {}, {}
    for form in ("parallel", "chunkwise"):
        model.chunkwise_recurrent = form == "chunkwise"
        model.zero_grad(set_to_none=True)
        out, _ = model(tokens)
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, c["vocab"]), targets.reshape(-1))
        loss.backward()
        logits[form], losses[form] = out.detach(), loss.detach().reshape(1)
        grads[form] = {name: p.grad.detach().clone() for name, p in model.named_parameters()
                       if p.grad is not None}
    buffers = {"retnet_rel_pos.angle": model.retnet_rel_pos.angle,
               "retnet_rel_pos.decay": model.retnet_rel_pos.decay}
    return file_tensors({"tokens": tokens}, model, buffers, "logits_", logits,
                        {"targets": targets}, losses, grads)


def metadata(c, torch):
    D, V, H = c["D"], c["V"], c["H"]
    m = {"kind": c["kind"], "case": c["case"], "embed_dim": str(D), "value_dim": str(V),
         "heads": str(H), "key_dim": str(D // H), "head_dim": str(V // H), "gate_fn": "swish",
         "layernorm_eps": repr(c["eps"]), "group_norm_eps": repr(c["eps"]),
         "chunk_size": str(c["C"]), "seq_len": str(c["T"]), "batch": str(c["B"]),
         "normalize_before": "True", "deepnorm": "False", "seed": str(c["seed"]),
         "dtype": "float64",
         "layout": "row-major, PyTorch order; activations (batch, seq_len, features); Linear "
                   "weights (out_features, in_features), y = x W^T",
         "init": "Linear weights ~ N(0, (gain/sqrt(in_features))^2) with gain out_proj=0.8, "
                 "fc2=0.6, else 1; RMSNorm weights 1 + N(0, 0.1^2); embedding N(0, 1)",
         "precision": "float64 throughout: decay buffer recomputed in float64 with torchscale's "
                      "formula; torchscale's x.float() casts in RMSNorm and GLU made no-ops",
         "torchscale_commit": TORCHSCALE_COMMIT,
         "generator": "retnet scripts/make_torchscale_grad_cases.py: torchscale's own modules, "
                      "torch.autograd in float64",
         "grad_forms": "parallel,chunkwise", "grad_forms_computed": "parallel,chunkwise",
         "grad_detached": "as torchscale's detach() calls make them: the parallel form's "
                          "clamp(sum|row|, 1, 5e4), the chunkwise form's inner row sums, the "
                          "state's max-column-sum scale and their max",
         "grad_precision": "float64; torch %s; torch threads %d" % (torch.__version__,
                                                                    torch.get_num_threads())}
    if c["kind"] != "msr":
        m["ffn_dim"] = str(c["F"])
        m["activation_fn"] = c["act"]
    if c["kind"] == "decoder":
        scaled = c.get("scale_embedding", False)
        m.update({"layers": str(c["layers"]), "vocab": str(c["vocab"]),
                  "no_scale_embedding": str(not scaled),
                  "embed_scale": repr(math.sqrt(D) if scaled else 1.0),
                  "layernorm_embedding": str(c.get("layernorm_embedding", False)),
                  "share_decoder_input_output_embed": str(c.get("tied", False)),
                  "padded_len_chunkwise": str(-(-c["T"] // c["C"]) * c["C"]),
                  "loss_kind": "mean_cross_entropy",
                  "loss": "L_f = (1/(B*T)) * sum over (b,t) of [logsumexp_v logits_f[b,t,v] - "
                          "logits_f[b,t,targets[b,t]]]",
                  "grad_wrt": "every parameter (torchscale state_dict names)"})
    else:
        m.update({"loss_kind": "sum_dy_dot_out",
                  "loss": "L_f = sum over (b,t,d) of dy[b,t,d] * out_f[b,t,d]",
                  "grad_wrt": "x and every parameter (torchscale state_dict names)"})
    return m


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torchscale", required=True, help="a checkout of microsoft/torchscale")
    parser.add_argument("--out", default="tests/data/grad")
    parser.add_argument("--case", action="append", help="only these cases (default: all)")
    args = parser.parse_args()

    reference_torchscale.install_import_stand_ins()
    sys.path.insert(0, os.path.abspath(args.torchscale))
    import torch
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    torch.Tensor.float = lambda self, *a, **k: self  # torchscale's casts: no-ops in float64
    from torchscale.architecture.config import RetNetConfig
    from torchscale.architecture.retnet import DecoderLayer, RetNetDecoder, RetNetRelPos

    for c in CASES:
        if args.case and c["case"] not in args.case:
            continue
        if c["kind"] == "decoder":
            tensors = run_decoder_case(c, torch, RetNetConfig, RetNetDecoder)
        else:
            tensors = run_layer_case(c, torch, RetNetConfig, DecoderLayer, RetNetRelPos)
        path = os.path.join(args.out, c["case"] + ".safetensors")
        write_safetensors(path, tensors, metadata(c, torch), torch)
        sizes = [float(t.abs().max()) for n, t in tensors.items() if n.startswith("grad_")]
        print("%s: %d tensors, %d bytes; smallest gradient tensor %.1e of the largest" %
              (path, len(tensors), os.path.getsize(path), min(sizes) / max(sizes)))


if __name__ == "__main__":
    main()
