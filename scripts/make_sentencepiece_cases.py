#!/usr/bin/env python3
"""Writes tests/data/sentencepiece/: two SentencePiece models trained by Debian's spm_train on
text of this repository (README.md, docs/*.md and the tokenizer test corpus of
tests/data/bpe/mistral/cases.json, all this project's own), and cases.json with the ids that
Debian's spm_encode gives for each line of that corpus and the text spm_decode gives back: the
independent reference of tests/test_sentencepiece.cpp.

  llama_bpe.model: BPE, 600 pieces, byte fallback, digits split, identity normalization, <unk> 0,
                   <s> 1, </s> 2 (the options of Llama's and Mistral's tokenizer.model);
  unigram.model:   unigram, 400 pieces, nmt_nfkc normalization, no byte fallback (rare
                   characters become <unk>).

Needs the sentencepiece package (spm_train, spm_encode, spm_decode). Rerunning writes the same
files (one training thread, no sampling)."""
import glob
import json
import os
import subprocess
import tempfile

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
out = os.path.join(root, "tests", "data", "sentencepiece")
os.makedirs(out, exist_ok=True)

texts = [c["text"] for c in json.load(open(os.path.join(root, "tests/data/bpe/mistral/cases.json"),
                                            encoding="utf-8"))["cases"]]
# spm_encode reads lines: the corpus split into lines, without NUL, each once, in order.
lines = []
for text in texts:
    for line in text.replace("\r\n", "\n").split("\n"):
        if "\0" not in line and "\r" not in line and line not in lines:
            lines.append(line)

with tempfile.TemporaryDirectory() as tmp:
    train = os.path.join(tmp, "train.txt")
    with open(train, "w", encoding="utf-8") as f:
        for path in [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md"))):
            f.write(open(path, encoding="utf-8").read())
        for _ in range(3):
            f.write("\n".join(lines) + "\n")
    models = {
        "llama_bpe": ["--model_type=bpe", "--vocab_size=600", "--byte_fallback=true",
                      "--split_digits=true", "--normalization_rule_name=identity",
                      "--character_coverage=0.9995"],
        "unigram": ["--model_type=unigram", "--vocab_size=400", "--character_coverage=0.98"],
    }
    result = {
        "generator": "scripts/make_sentencepiece_cases.py",
        "reference": "spm_encode / spm_decode, " + subprocess.run(
            ["dpkg-query", "-W", "-f=${Package} ${Version}", "sentencepiece"],
            capture_output=True, text=True).stdout,
        "models": {},
    }
    with open(os.path.join(tmp, "lines.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    for name, options in models.items():
        prefix = os.path.join(out, name)
        subprocess.run(["spm_train", f"--input={train}", f"--model_prefix={prefix}",
                        "--num_threads=1", "--minloglevel=2", "--shuffle_input_sentence=false",
                        *options], check=True)
        os.remove(prefix + ".vocab")
        ids = subprocess.run(["spm_encode", f"--model={prefix}.model", "--output_format=id"],
                             input="\n".join(lines) + "\n", capture_output=True, text=True,
                             check=True).stdout.split("\n")[:len(lines)]
        decoded = subprocess.run(["spm_decode", f"--model={prefix}.model", "--input_format=id"],
                                 input="\n".join(ids) + "\n", capture_output=True, text=True,
                                 check=True).stdout.split("\n")[:len(lines)]
        result["models"][name + ".model"] = {
            "options": options,
            "cases": [{"text": t, "ids": [int(x) for x in i.split()], "decoded": d}
                      for t, i, d in zip(lines, ids, decoded)],
        }
with open(os.path.join(out, "cases.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, ensure_ascii=False, indent=1)
    f.write("\n")
print("written", out, {k: len(v["cases"]) for k, v in result["models"].items()})
