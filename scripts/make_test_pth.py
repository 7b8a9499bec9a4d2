#!/usr/bin/python3
"""Writes the PyTorch checkpoints of tests/data/pth/ with torch.save, and their expected values.

Run by hand with the system Python and Debian's PyTorch (apt-get install python3-torch):

    /usr/bin/python3 scripts/make_test_pth.py [output dir, default tests/data/pth]

Files (tests/test_pth.cpp reads them; tests/data/pth/README.md describes them):
  state_dict.pth   an nn.Linear's state_dict() (an OrderedDict with _metadata, so BUILD) and more
                   tensors in F32, BF16, F16, F64 and I64, rank 0 to 3, an empty one, and views
                   of one storage at storage offsets 0, 6, 9 and 18, saved sharing that storage
  parameter.pth    a plain dict holding an nn.Parameter (torch._utils._rebuild_parameter)
  transposed.pth   a transposed (non-contiguous) tensor: must be refused
  legacy.pth       torch.save's legacy (pre-1.6) format: must be refused
  rwkv4_model_small.pth
                   the weights of tests/data/rwkv4/rwkv4_model_small.safetensors (BlinkDL's names,
                   float64) as BlinkDL saves a checkpoint: torch.save of the state dict
  expected.json    every tensor of state_dict.pth and parameter.pth: dtype (safetensors spelling),
                   shape and values as float64 (exact: every value is a small dyadic rational)
"""
import collections
import json
import os
import struct
import sys

import torch

DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
    torch.int64: "I64",
}


def ramp(count, scale=1.0 / 8, start=-3.0):
    """count exact values start/8, (start+1)/8, ...: representable in every dtype used here."""
    return (torch.arange(count, dtype=torch.float64) + start) * scale


def expected_entry(tensor):
    return {
        "dtype": DTYPES[tensor.dtype],
        "shape": list(tensor.shape),
        "values": [float(v) for v in tensor.detach().double().reshape(-1).tolist()],
    }


def read_safetensors(path):
    """name -> tensor of a safetensors file (without the safetensors package)."""
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    dtypes = {"F64": torch.float64, "F32": torch.float32, "I64": torch.int64}
    tensors = collections.OrderedDict()
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        raw = bytearray(data[8 + length + begin:8 + length + end])
        tensors[name] = torch.frombuffer(raw, dtype=dtypes[entry["dtype"]]).reshape(entry["shape"])
    return tensors


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "pth")
    os.makedirs(out, exist_ok=True)

    linear = torch.nn.Linear(4, 3)
    with torch.no_grad():
        linear.weight.copy_(ramp(12).reshape(3, 4))
        linear.bias.copy_(ramp(3, start=5.0))
    state = linear.state_dict()  # OrderedDict with _metadata: pickled with BUILD
    state["bf16.matrix"] = ramp(10, scale=0.25, start=-4.0).reshape(2, 5).to(torch.bfloat16)
    state["f16.vector"] = ramp(6, scale=0.5).to(torch.float16)
    state["f64.scalar"] = torch.tensor(-2.5, dtype=torch.float64)
    state["i64.counts"] = torch.tensor([0, 7, -3, 2**40], dtype=torch.int64)
    state["f32.cube"] = ramp(24, scale=1.0 / 16).reshape(2, 3, 4).float()
    state["empty"] = torch.zeros(0, 3)
    # Views of one storage (8 x 3 float32), saved sharing it: storage offsets 0, 9, 18 and 6.
    table = ramp(24, scale=0.125, start=0.0).reshape(8, 3).float()
    state["table"] = table
    state["table.rows3to5"] = table[3:5]
    state["table.row6"] = table[6]
    state["table.row2"] = table[2:3]  # (1, 3): the extent-1 axis's stride does not matter
    torch.save(state, os.path.join(out, "state_dict.pth"))

    parameter = {"p": torch.nn.Parameter(ramp(4).reshape(2, 2).float())}
    torch.save(parameter, os.path.join(out, "parameter.pth"))

    torch.save({"weight.T": ramp(6).reshape(2, 3).float().t()},
               os.path.join(out, "transposed.pth"))
    torch.save({"w": ramp(3).float()}, os.path.join(out, "legacy.pth"),
               _use_new_zipfile_serialization=False)

    # An RWKV-4 checkpoint as BlinkDL saves one: the golden model's weights under their names.
    golden = read_safetensors(os.path.join(out, "..", "rwkv4", "rwkv4_model_small.safetensors"))
    weights = collections.OrderedDict(
        (name, tensor) for name, tensor in golden.items()
        if name.startswith(("emb.", "blocks.", "ln_out.", "head.")))
    torch.save(weights, os.path.join(out, "rwkv4_model_small.pth"))

    # Check what was written, with torch's own loader.
    loaded = torch.load(os.path.join(out, "state_dict.pth"))
    assert loaded["table.rows3to5"].storage_offset() == 9
    assert loaded["table.row6"].storage_offset() == 18
    assert loaded["table.row2"].storage_offset() == 6
    assert not torch.load(os.path.join(out, "transposed.pth"))["weight.T"].is_contiguous()

    expected = {"torch": torch.__version__, "state_dict.pth": {}, "parameter.pth": {}}
    for name, tensor in state.items():
        expected["state_dict.pth"][name] = expected_entry(tensor)
    for name, tensor in parameter.items():
        expected["parameter.pth"][name] = expected_entry(tensor)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
