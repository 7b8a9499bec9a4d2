// Writes tests/data/bpe/<name>/cases.json: the ids that an independent implementation,
// transformers.js (npm @lenml/tokenizers, a no-dependency fork of its tokenizers), gives for a
// corpus of texts, with and without special tokens, and its decoding of them. The C++ test
// (tests/test_bpe_tokenizer.cpp) compares retnet::io::Tokenizer against these files.
//
// Run by hand, once, after changing the corpus:
//   npm install --prefix /tmp/bpe-ref @lenml/tokenizers@3.7.2
//   NODE_PATH=/tmp/bpe-ref/node_modules node scripts/make_bpe_tokenizer_cases.cjs
// (from the repository's top directory; it reads tests/data/bpe/*/tokenizer.json and
// tokenizer_config.json and writes cases.json beside them).
"use strict";
const fs = require("fs");
const path = require("path");
const { TokenizerLoader } = require("@lenml/tokenizers");

// The package's version, from its package.json (the package does not export that file).
const version = JSON.parse(fs.readFileSync(
  path.join(path.dirname(require.resolve("@lenml/tokenizers")), "..", "package.json"), "utf8"))
  .version;

// The corpus: each kind of text the issue names. Kept in one place so every tokenizer sees it.
const corpus = [
  "",
  "Hello",
  "Hello, world! This is a plain ASCII sentence.",
  " leading space",
  "trailing space ",
  "   three leading spaces and two trailing  ",
  "multiple    spaces     between words",
  "tabs\tand\t\ttabs\nnewlines\n\nand\r\nCRLF\r\n",
  "\n\n\n",
  " ",
  "\t",
  "Numbers: 0 7 42 1234567890 3.14159 -12,345.67 1e10 2024-11-30",
  "Contractions: I'm, you're, he's, we've, they'll, I'd, don't. SHOULDN'T HE'S We'Ve",
  "Кириллица: Привет, как дела? Съешь же ещё этих мягких французских булок.",
  "Ελληνικά: Γειά σου κόσμε, ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
  "中文：你好，世界！我们今天学习分词器。日本語：こんにちは世界。한국어: 안녕하세요",
  "ไทย: สวัสดีชาวโลก ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ",
  "العربية: مرحبا بالعالم. עברית: שלום עולם.",
  "हिन्दी: नमस्ते दुनिया, यह एक परीक्षण है।",
  "Combining marks: e\u0301 a\u0308 n\u0303 \u0915\u093F Z\u0351\u0364\u036B",
  "Emoji: 🙂 😀👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 flags 🇫🇷🇯🇵🇺🇸 ❤️",
  "Fullwidth: ＡＢＣ　ｄｅｆ　１２３！？",
  "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
  "int main() {\n\tstd::vector<int> v{1, 2, 3};\n\treturn v.size() == 3 ? 0 : 1; // ok\n}\n",
  "URLs: https://huggingface.co/mistralai/Mistral-7B-v0.1?x=1&y=%20 and mailto:a@b.org",
  "Special-looking: <s> </s> <unk> <|endoftext|> <0x41> <|fim_prefix|> [INST] hi [/INST]",
  "text<s>glued</s>to<|endoftext|>tokens",
  "Supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis " +
    "a".repeat(300) + " " + "ab".repeat(200),
  "▁underscore▁lookalike ▁ ▁▁",
  "Mixed: naïve café résumé Zürich Øre São Paulo ﬁ ß ẞ İstanbul",
  "Punctuation!!! ??? ... --- *** ((( ))) \"quotes\" 'single' «guillemets» „Anführung“",
  "\u00a0nbsp\u2009thin\u3000ideographic space\u200bzero-width",
  "Rare: \u{1F9EC} \u{10348} \u{1D11E} \uFFFD \u0000 \u007F",
  "The quick brown fox jumps over the lazy dog. 1 2 3\n" +
    "The quick brown fox jumps over the lazy dog. 1 2 3\n",
];

// Texts that the Unicode normal forms change: composed and decomposed accents, the Angstrom and
// Kelvin signs, Hangul jamo, ligatures, circled and fullwidth and halfwidth forms, superscripts.
const normalizationCorpus = [
  "e\u0301 vs \u00e9, A\u030a vs \u00c5 vs \u212b, \u212a (Kelvin) and K",
  "\u1100\u1161\u11a8 \uac01 \u110b\u1173\u11af \uc744",
  "\ufb01nance \ufb02ow \u2460\u2461 \u00bd x\u00b2 \u2126 \u00b5",
  "\uff76\uff9e\uff97 \uff21\uff22 \u3000 \u2163 \u33a1",
  "o\u0308\u0301 q\u0323\u0307 \u1e0b\u0323 \u0958 \u0915\u093c",
];

// Variants of a file with another normalizer, written to cases_<suffix>.json beside its cases:
// GPT-2's with NFC stands for GPT-NeoX's tokenizer (byte-level BPE after NFC: RWKV-4 Pile's and
// Pythia's), and with NFKC, NFD and NFKD for the other forms. The C++ test builds the same
// variant from the same tokenizer.json.
const variants = {
  gpt2: [
    { suffix: "nfc", normalizer: { type: "NFC" } },
    { suffix: "nfkc", normalizer: { type: "NFKC" } },
    { suffix: "nfd", normalizer: { type: "NFD" } },
    { suffix: "nfkd", normalizer: { type: "NFKD" } },
  ],
};

function makeCases(name, variant) {
  const dir = path.join("tests", "data", "bpe", name);
  const tokenizerJSON = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
  if (variant) tokenizerJSON.normalizer = variant.normalizer;
  const tokenizerConfig = JSON.parse(
    fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
  const tokenizer = TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });
  const texts = variant ? corpus.concat(normalizationCorpus) : corpus;
  const cases = texts.map((text) => {
    const ids = Array.from(tokenizer.encode(text, { add_special_tokens: false }));
    const idsSpecial = Array.from(tokenizer.encode(text, { add_special_tokens: true }));
    // (transformers.js refuses to decode no ids; their text is the empty string.)
    const decoded = ids.length === 0 ? "" : tokenizer.decode(ids, {
      skip_special_tokens: false,
      clean_up_tokenization_spaces: false,
    });
    return { text, ids, ids_special: idsSpecial, decoded };
  });
  const out = {
    generator: "scripts/make_bpe_tokenizer_cases.cjs",
    reference: `@lenml/tokenizers ${version} (transformers.js tokenizers)`,
    ...(variant ? { normalizer: variant.normalizer } : {}),
    cases,
  };
  const file = variant ? `cases_${variant.suffix}.json` : "cases.json";
  fs.writeFileSync(path.join(dir, file), JSON.stringify(out, null, 1) + "\n");
  console.log(`${name}/${file}: ${cases.length} cases`);
}

for (const name of process.argv.slice(2).length ? process.argv.slice(2) :
  ["mistral", "gpt2", "cl100k"]) {
  makeCases(name);
  for (const variant of variants[name] || []) makeCases(name, variant);
}
