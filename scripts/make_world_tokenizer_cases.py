#!/usr/bin/env python3
"""Writes tests/data/rwkv4/world_tokenizer_cases.json: texts and their ids under BlinkDL's own
RWKV World tokenizer (TRIE_TOKENIZER of ChatRWKV's tokenizer/rwkv_tokenizer.py), the reference
that tests/test_tokenizer.cpp compares retnet's with. Run by hand:

    scripts/make_world_tokenizer_cases.py PATH_TO_CHATRWKV_CHECKOUT

(rwkv_tokenizer.py and rwkv_vocab_v20230424.txt are read from PATH/tokenizer/; nothing of
ChatRWKV's code is copied into this repository.)
"""
import json
import os
import sys

root = sys.argv[1]
# rwkv_tokenizer.py runs a demo and a benchmark after its classes: take the classes only.
with open(os.path.join(root, "tokenizer", "rwkv_tokenizer.py"), encoding="utf-8") as f:
    source = f.read()
namespace = {}
exec(source[: source.index("# Demo")], namespace)  # noqa: S102 (the reference, run by hand)
TRIE_TOKENIZER = namespace["TRIE_TOKENIZER"]
tokenizer = TRIE_TOKENIZER(os.path.join(root, "tokenizer", "rwkv_vocab_v20230424.txt"))

texts = [
    "Hello",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "\n\n\t  leading whitespace and trailing   \n",
    "中文分词测试：人工智能正在改变世界。",
    "日本語のテキストも、ちゃんと分割されますか？",
    "Emoji 🙂🚀👩‍💻 and symbols ∑∫√ ≤ ≥ ≠ €£¥",
    "def f(x):\n    return x ** 2  # squares\n\nprint(f(3))\n",
    "Ünïcödé äccents: café naïve résumé São Paulo Ελληνικά Русский العربية",
    "\x00\x01\x7f control bytes",
    "",
    "a",
    " " * 200,
    "=" * 100 + "\n" + "-" * 81,
]
# A longer mixed text: many paragraphs of the above, so the trie's long matches are exercised.
texts.append("\n".join(texts[1:9]) * 20)

cases = [{"text": t, "ids": tokenizer.encode(t)} for t in texts]
for c in cases:
    assert tokenizer.decode(c["ids"]) == c["text"]
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "rwkv4",
                   "world_tokenizer_cases.json")
with open(out, "w", encoding="utf-8") as f:
    json.dump({"generator": "BlinkDL ChatRWKV tokenizer/rwkv_tokenizer.py TRIE_TOKENIZER",
               "vocabulary": "rwkv_vocab_v20230424.txt", "cases": cases}, f, ensure_ascii=False,
              indent=1)
print(f"{len(cases)} cases written to {out}")
