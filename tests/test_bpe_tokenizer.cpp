// Hugging Face tokenizer.json (BPE) files (io/bpe_tokenizer.hpp) against transformers.js:
// tests/data/bpe/<name>/cases.json hold the ids and decodings that @lenml/tokenizers (a fork of
// transformers.js's tokenizers) gives for a corpus of texts, written once by
// scripts/make_bpe_tokenizer_cases.cjs. The files: Mistral-7B-v0.1's (SentencePiece-style, byte
// fallback; fla-hub's models ship the same format), GPT-2's (ByteLevel with its own pattern) and
// OpenAI's cl100k (a Split regex, then ByteLevel). Then streaming decoding of byte-fallback
// pieces, added-token flags, the Split behaviors, and each refusal by its message.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "retnet/io/load_tokenizer.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using retnet::FormatError;
using retnet::InvalidArgument;
using retnet::io::BpeTokenizer;
using retnet::io::JsonFile;
using retnet::io::loadTokenizer;
using retnet::io::StreamDecoder;
using retnet::io::Tokenizer;
using Ids = std::vector<std::int64_t>;

fs::path bpeData(const std::string& name) { return fs::path(RETNET_TEST_DATA_DIR) / "bpe" / name; }

bool hasPcre2() {
#ifdef RETNET_HAVE_PCRE2
  return true;
#else
  return false;
#endif
}

const Tokenizer& mistral() {
  static const Tokenizer tokenizer = loadTokenizer(bpeData("mistral").string());
  return tokenizer;
}

nlohmann::json casesOf(const std::string& name, const std::string& file = "cases.json") {
  std::ifstream in(bpeData(name) / file);
  return nlohmann::json::parse(in);
}

/// Every case of `name` (its `file`): ids without and with special tokens, decoding, streaming;
/// with `lossless` (a pipeline that changes no text), decode(encode(text)) == text as well.
void expectMatchesReference(const std::string& name, const Tokenizer& tokenizer,
                            const std::string& file = "cases.json", bool lossless = true) {
  const nlohmann::json cases = casesOf(name, file);
  ASSERT_GE(cases.at("cases").size(), 30u);
  std::size_t matched = 0;
  for (const auto& c : cases.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    const Ids ids = c.at("ids").get<Ids>();
    const Ids withSpecial = c.at("ids_special").get<Ids>();
    const std::string decoded = c.at("decoded").get<std::string>();
    const Ids got = tokenizer.encode(text, false);
    EXPECT_EQ(got, ids) << name << ": " << text.substr(0, 60);
    EXPECT_EQ(tokenizer.encode(text, true), withSpecial) << name << ": " << text.substr(0, 60);
    EXPECT_EQ(tokenizer.decode(ids), decoded) << name << ": " << text.substr(0, 60);
    if (lossless) {
      EXPECT_EQ(tokenizer.decode(got), text) << name << ": round trip";
    }
    // Streaming gives whole characters, and the same text as decode.
    StreamDecoder stream(tokenizer);
    std::string joined;
    for (const std::int64_t id : ids) {
      const std::string piece = stream.push(id);
      EXPECT_EQ(retnet::io::detail::firstInvalidUtf8(piece), piece.size()) << name;
      joined += piece;
    }
    joined += stream.flush();
    EXPECT_EQ(joined, decoded) << name << ": " << text.substr(0, 60);
    matched += got == ids && tokenizer.decode(ids) == decoded ? 1 : 0;
  }
  std::printf("%s: %zu of %zu cases equal to transformers.js\n", name.c_str(), matched,
              cases.at("cases").size());
}

TEST(MistralTokenizer, MatchesTransformersJs) {
  EXPECT_EQ(mistral().vocabSize(), 32000);
  EXPECT_STREQ(mistral().kind(), "hf-bpe");
  EXPECT_EQ(mistral().encode("Hello", false), (Ids{22557}));
  EXPECT_EQ(mistral().encode("Hello"), (Ids{1, 22557}));  // add_bos_token
  // Not lossless, as in Hugging Face's: "▁" in the text decodes as a space, and the text after a
  // special token gets the normalizer's "▁" in front (the reference's decodings show both).
  expectMatchesReference("mistral", mistral(), "cases.json", /*lossless=*/false);
}

TEST(MistralTokenizer, ReadsTheFileWithoutItsConfig) {
  // tokenizer.json alone: the post-processor's template gives the BOS too.
  const Tokenizer bare(BpeTokenizer::read((bpeData("mistral") / "tokenizer.json").string()));
  EXPECT_EQ(bare.encode("Hello"), (Ids{1, 22557}));
}

// Byte fallback: U+10348 (F0 90 8D 88) is not in the vocabulary, so it is four <0xNN> tokens
// (id 3 + byte). Streaming shows nothing until the character is whole, and the text's first
// token loses the space that the normalizer's "▁" put in front.
TEST(MistralTokenizer, StreamsByteFallbackPiecesAsWholeCharacters) {
  const Ids ids = mistral().encode("\xF0\x90\x8D\x88 ok", false);
  ASSERT_GE(ids.size(), 5u);
  EXPECT_EQ(ids[0], 28705);  // "▁"
  EXPECT_EQ((Ids(ids.begin() + 1, ids.begin() + 5)), (Ids{3 + 0xF0, 3 + 0x90, 3 + 0x8D, 3 + 0x88}));
  StreamDecoder stream(mistral());
  EXPECT_EQ(stream.push(ids[0]), "");  // the first token's leading space is stripped
  EXPECT_EQ(stream.push(ids[1]), "");
  EXPECT_EQ(stream.push(ids[2]), "");
  EXPECT_EQ(stream.push(ids[3]), "");
  EXPECT_EQ(stream.push(ids[4]), "\xF0\x90\x8D\x88");
  std::string rest;
  for (std::size_t i = 5; i < ids.size(); ++i) rest += stream.push(ids[i]);
  EXPECT_EQ(rest + stream.flush(), " ok");
  EXPECT_EQ(mistral().decode(ids), "\xF0\x90\x8D\x88 ok");

  // "Hello world" streamed: "Hello" without a leading space, then " world".
  StreamDecoder words(mistral());
  const Ids hello = mistral().encode("Hello world", false);
  ASSERT_EQ(hello.size(), 2u);
  EXPECT_EQ(words.push(hello[0]), "Hello");
  EXPECT_EQ(words.push(hello[1]), " world");
  // A stray continuation byte from a model: U+FFFD in the stream, the raw byte in decode().
  StreamDecoder stray(mistral());
  EXPECT_EQ(stray.push(3 + 0x88), "\xEF\xBF\xBD");
  EXPECT_EQ(mistral().decode({22557, 3 + 0x88}), "Hello\x88");
}

TEST(MistralTokenizer, SpecialTokensInTheTextAreMatchedFirst) {
  // "<s>" in the text is the BOS token; the text after it is normalized on its own ("▁" in
  // front), as Hugging Face's tokenizers do.
  const Ids ids = mistral().encode("a<s>b", false);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 1);
  EXPECT_EQ(mistral().decode({1}), "<s>");
}

TEST(ByteLevelTokenizers, Gpt2MatchesTransformersJs) {
  if (!hasPcre2()) {
    RETNET_EXPECT_THROW_WITH(loadTokenizer(bpeData("gpt2").string()), FormatError, "PCRE2");
    GTEST_SKIP() << "retnet::io was built without PCRE2";
  }
  const Tokenizer gpt2 = loadTokenizer(bpeData("gpt2").string());
  EXPECT_EQ(gpt2.vocabSize(), 50257);
  EXPECT_EQ(gpt2.encode("Hello world"), (Ids{15496, 995}));
  EXPECT_EQ(gpt2.encode("<|endoftext|>"), (Ids{50256}));
  expectMatchesReference("gpt2", gpt2);
}

bool hasUtf8proc() {
#ifdef RETNET_HAVE_UTF8PROC
  return true;
#else
  return false;
#endif
}

// The Unicode normalizers: GPT-2's file with "normalizer": NFC stands for GPT-NeoX's tokenizer
// (NFC, then byte-level BPE: RWKV-4 Pile's and Pythia's), and with NFKC, NFD and NFKD for the
// other forms; cases_<form>.json hold transformers.js's ids for the corpus plus texts the forms
// change (composed/decomposed accents, Angstrom and Kelvin signs, Hangul jamo, ligatures,
// fullwidth and halfwidth forms).
TEST(ByteLevelTokenizers, UnicodeNormalizersMatchTransformersJs) {
  if (!hasPcre2()) GTEST_SKIP() << "retnet::io was built without PCRE2";
  const std::string text = [] {
    std::ifstream in(bpeData("gpt2") / "tokenizer.json", std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }();
  for (const char* form : {"nfc", "nfkc", "nfd", "nfkd"}) {
    const std::string file = std::string("cases_") + form + ".json";
    const nlohmann::json cases = casesOf("gpt2", file);
    JsonFile json = JsonFile::parse(text, "gpt2/tokenizer.json");
    nlohmann::json root = json.root();
    root["normalizer"] = cases.at("normalizer");
    const JsonFile variant = JsonFile::parse(root.dump(), std::string("gpt2+") + form);
    if (!hasUtf8proc()) {
      RETNET_EXPECT_THROW_WITH(BpeTokenizer::fromJson(variant, nullptr), FormatError,
                               "libutf8proc");
      continue;
    }
    const Tokenizer tokenizer(BpeTokenizer::fromJson(variant, nullptr));
    expectMatchesReference("gpt2", tokenizer, file, /*lossless=*/false);
  }
  if (!hasUtf8proc()) GTEST_SKIP() << "retnet::io was built without libutf8proc";
}

TEST(ByteLevelTokenizers, Cl100kMatchesTransformersJs) {
  if (!hasPcre2()) {
    RETNET_EXPECT_THROW_WITH(loadTokenizer(bpeData("cl100k").string()), FormatError, "PCRE2");
    GTEST_SKIP() << "retnet::io was built without PCRE2";
  }
  const Tokenizer cl100k = loadTokenizer((bpeData("cl100k") / "tokenizer.json").string());
  EXPECT_EQ(cl100k.vocabSize(), 100277);  // ids up to <|endofprompt|> = 100276, with holes
  EXPECT_EQ(cl100k.encode("Hello"), (Ids{9906}));
  expectMatchesReference("cl100k", cl100k);
}

// Encoding 1 MB of mixed text (the corpus repeated) in well under a second (Release builds; the
// sanitizer builds only check that it finishes). bench/bench_tokenizer.cpp measures it properly.
TEST(ByteLevelTokenizers, EncodesAMegabyteQuickly) {
  std::string text;
  const nlohmann::json cases = casesOf("mistral");
  for (const auto& c : cases.at("cases")) text += c.at("text").get<std::string>();
  ASSERT_FALSE(text.empty());
  std::string megabyte;
  while (megabyte.size() < (1u << 20)) megabyte += text;
  for (const char* name : {"mistral", "gpt2", "cl100k"}) {
    if (!hasPcre2() && std::string(name) != "mistral") continue;
    const Tokenizer tokenizer = loadTokenizer(bpeData(name).string());
    const auto start = std::chrono::steady_clock::now();
    const Ids ids = tokenizer.encode(megabyte, false);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%s: %zu bytes -> %zu ids in %.3f s\n", name, megabyte.size(), ids.size(), seconds);
    EXPECT_GT(ids.size(), megabyte.size() / 8) << name;
#ifdef NDEBUG
    EXPECT_LT(seconds, 1.0) << name;
#endif
  }
}

TEST(BpeTokenizer, InvalidUtf8IsRefusedWithItsOffset) {
  RETNET_EXPECT_THROW_WITH(mistral().encode("ab\xC3"), InvalidArgument, "byte offset 2");
  RETNET_EXPECT_THROW_WITH(mistral().encode("\xFF"), InvalidArgument, "byte offset 0", "0xFF");
}

/// A tokenizer from JSON text (a small file written here).
Tokenizer fromText(const std::string& json) {
  return Tokenizer(BpeTokenizer::fromJson(JsonFile::parse(json, "tokenizer.json"), nullptr));
}

/// A small byte-level-free BPE: the letters a, b, c, space, and merges a b -> ab, ab c -> abc.
nlohmann::json smallFile() {
  return nlohmann::json::parse(R"({
    "version": "1.0", "added_tokens": [
      {"id": 9, "content": "<m>", "lstrip": true, "rstrip": false, "single_word": false,
       "normalized": false, "special": true},
      {"id": 10, "content": "<r>", "lstrip": false, "rstrip": true, "single_word": false,
       "normalized": false, "special": true}],
    "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
    "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "fuse_unk": true,
      "byte_fallback": false,
      "vocab": {"<unk>": 0, "a": 1, "b": 2, "c": 3, " ": 4, "ab": 5, "abc": 6, "x": 7, "bc": 8,
                "<m>": 9, "<r>": 10},
      "merges": ["a b", ["ab", "c"], "b c"]}
  })");
}

TEST(BpeTokenizer, MergesByRankAndAddedTokenFlags) {
  const Tokenizer t = fromText(smallFile().dump());
  EXPECT_EQ(t.encode("abc"), (Ids{6}));      // a b first (rank 0), then ab c
  EXPECT_EQ(t.encode("bcab"), (Ids{8, 5}));  // b c (rank 2) where a b cannot happen
  EXPECT_EQ(t.encode("a\xC3\xA9\xC3\xA9"
                     "b"),
            (Ids{1, 0, 2}));                        // unknown run fused into one <unk>
  EXPECT_EQ(t.encode("a  <m>b"), (Ids{1, 9, 2}));   // lstrip: the spaces before <m> go with it
  EXPECT_EQ(t.encode("a<r>  b"), (Ids{1, 10, 2}));  // rstrip: the spaces after <r> go with it
  EXPECT_EQ(t.encode("a <r>"), (Ids{1, 4, 10}));
  EXPECT_EQ(t.decode({6, 4, 9}), "abc <m>");
}

TEST(BpeTokenizer, WithoutUnkOrByteFallbackAnUnknownCharacterIsAnError) {
  nlohmann::json file = smallFile();
  file["model"]["unk_token"] = nullptr;
  const Tokenizer t = fromText(file.dump());
  RETNET_EXPECT_THROW_WITH(t.encode("a\xC3\xA9"), InvalidArgument, "U+e9", "no token");
}

#ifdef RETNET_HAVE_PCRE2
// The Split behaviors on "a b" split at " " (ids: the words and spaces as tokens, with
// ignore_merges taking a word that is in the vocabulary as a whole).
TEST(BpeTokenizer, SplitBehaviors) {
  const auto split = [](const std::string& behavior, bool invert) {
    nlohmann::json file = smallFile();
    file["model"]["ignore_merges"] = true;
    file["model"]["vocab"]["a "] = 11;
    file["model"]["vocab"][" b"] = 12;
    file["model"]["vocab"]["  "] = 13;
    file["pre_tokenizer"] = {{"type", "Split"},
                             {"pattern", {{"String", " "}}},
                             {"behavior", behavior},
                             {"invert", invert}};
    return fromText(file.dump()).encode("a b", false);
  };
  EXPECT_EQ(split("Removed", false), (Ids{1, 2}));
  EXPECT_EQ(split("Isolated", false), (Ids{1, 4, 2}));
  EXPECT_EQ(split("MergedWithPrevious", false), (Ids{11, 2}));
  EXPECT_EQ(split("MergedWithNext", false), (Ids{1, 12}));
  EXPECT_EQ(split("Contiguous", false), (Ids{1, 4, 2}));
  EXPECT_EQ(split("Removed", true), (Ids{4}));  // inverted: the spaces are the words
}
#endif

TEST(BpeTokenizer, RefusesWhatItDoesNotImplement) {
  const auto refuse = [](const nlohmann::json& file, const std::vector<std::string>& parts) {
    try {
      fromText(file.dump());
      ADD_FAILURE() << "accepted: " << file.dump().substr(0, 200);
    } catch (const FormatError& error) {
      const std::string message = error.what();
      for (const std::string& part : parts)
        EXPECT_NE(message.find(part), std::string::npos) << message << " lacks " << part;
    }
  };
  nlohmann::json f = smallFile();
  f["model"]["type"] = "WordPiece";
  refuse(f, {"tokenizer.json", "model type 'WordPiece' is not supported"});
  f = smallFile();
  f["model"].erase("type");
  refuse(f, {"model type (missing)"});
  f = smallFile();
  f["normalizer"] = {{"type", "Lowercase"}};
  refuse(f, {"normalizer 'Lowercase' is not supported", "NFC"});
  f = smallFile();
  f["normalizer"] = {{"type", "Replace"}, {"pattern", {{"Regex", "\\s+"}}}, {"content", " "}};
  refuse(f, {"normalizer Replace with a Regex pattern is not supported"});
  f = smallFile();
  f["pre_tokenizer"] = {{"type", "Whitespace"}};
  refuse(f, {"pre_tokenizer 'Whitespace' is not supported"});
  f = smallFile();
  f["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}};
  refuse(f, {"pre_tokenizer 'Metaspace' is not supported"});
  f = smallFile();
  f["decoder"] = {{"type", "WordPiece"}};
  refuse(f, {"decoder 'WordPiece' is not supported"});
  f = smallFile();
  f["decoder"] = {{"type", "Sequence"},
                  {"decoders", {{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  refuse(f, {"decoder Strip is supported after Fuse"});
  f = smallFile();
  f["post_processor"] = {{"type", "BertProcessing"}};
  refuse(f, {"post_processor 'BertProcessing' is not supported"});
  f = smallFile();
  f["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single",
                          {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                           {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                         {"special_tokens", nlohmann::json::object()}};
  refuse(f, {"the template names '<s>'"});
  f = smallFile();
  f["model"]["dropout"] = 0.1;
  refuse(f, {"model.dropout 0.1 is not supported"});
  f = smallFile();
  f["model"]["continuing_subword_prefix"] = "##";
  refuse(f, {"model.continuing_subword_prefix \"##\" is not supported"});
  f = smallFile();
  f["model"]["merges"].push_back("a z");
  refuse(f, {"model.merges[3]", "\"z\" is not in the vocabulary"});
  f = smallFile();
  f["model"]["merges"].push_back("c a");
  refuse(f, {"\"ca\" is not in the vocabulary"});
  f = smallFile();
  f["model"]["merges"].push_back("abc");
  refuse(f, {"two tokens separated by one space"});
  f = smallFile();
  f["model"]["vocab"]["d"] = 3;
  refuse(f, {"has id 3, which is already"});
  f = smallFile();
  f["model"]["vocab"]["d"] = 100000000;
  refuse(f, {"ids must be integers in [0, 16777216)"});
  f = smallFile();
  f["model"]["vocab"]["d"] = 5000;
  refuse(f, {"id 5000 is far beyond the"});
  f = smallFile();
  f["model"]["unk_token"] = "<nope>";
  refuse(f, {"model.unk_token \"<nope>\" is not in the vocabulary"});
  f = smallFile();
  f["model"]["something"] = 1;
  refuse(f, {"model.something is not supported"});
  f = smallFile();
  f["added_tokens"][0]["content"] = "";
  refuse(f, {"empty content"});
#ifdef RETNET_HAVE_PCRE2
  f = smallFile();
  f["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "(a"}}}, {"behavior", "Isolated"}};
  refuse(f, {"does not compile (PCRE2"});
  f = smallFile();
  f["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Odd"}};
  refuse(f, {"behavior 'Odd' is not supported"});
  f = smallFile();
  f["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}};
  refuse(f, {"byte-level, but the vocabulary has no token for byte 0"});
  f = smallFile();
  f["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "ByteLevel"}, {"use_regex", false}},
        {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Isolated"}}}}};
  refuse(f, {"'Split' after ByteLevel is not supported"});
#else
  f = smallFile();
  f["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Isolated"}};
  refuse(f, {"needs PCRE2"});
#endif
}

TEST(BpeTokenizer, RefusesDamagedFiles) {
  const retnet::testing::TempDir dir("bpe");
  const fs::path file = dir.path() / "tokenizer.json";
  std::ofstream(file) << "{\"model\": {\"type\": \"BPE\", ";
  RETNET_EXPECT_THROW_WITH(loadTokenizer(dir.path().string()), FormatError, "tokenizer.json",
                           "not valid JSON");
  std::ofstream(file) << "[1, 2]";
  RETNET_EXPECT_THROW_WITH(loadTokenizer(file.string()), FormatError, "expected a JSON object");
  std::ofstream(file) << "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], "
                         "\"vocab\": {}}}";
  RETNET_EXPECT_THROW_WITH(loadTokenizer(file.string()), FormatError, "duplicate key");
  std::ofstream(file) << "{\"added_tokens\": []}";
  RETNET_EXPECT_THROW_WITH(loadTokenizer(file.string()), FormatError, "has no 'model'");
  // Larger than the cap: refused before reading (a sparse file).
  std::ofstream(file) << "{}";
  fs::resize_file(file, retnet::io::kMaxTokenizerJsonBytes + 1);
  RETNET_EXPECT_THROW_WITH(loadTokenizer(file.string()), FormatError, "more than the");
  // A broken tokenizer_config.json beside a good tokenizer.json.
  fs::copy_file(bpeData("mistral") / "tokenizer.json", file, fs::copy_options::overwrite_existing);
  std::ofstream(dir.path() / "tokenizer_config.json")
      << "{\"add_bos_token\": true, \"bos_token\": 7}";
  RETNET_EXPECT_THROW_WITH(loadTokenizer(dir.path().string()), FormatError, "tokenizer_config.json",
                           "bos_token");
  std::ofstream(dir.path() / "tokenizer_config.json") << "{\"add_bos_token\": false, "
                                                         "\"add_eos_token\": true, \"eos_token\": "
                                                         "{\"content\": \"</s>\"}}";
  EXPECT_EQ(loadTokenizer(dir.path().string()).encode("Hello"), (Ids{22557, 2}));
  // With a tokenizer.model beside it, tokenizer.json is the one read (it needs no optional
  // library); alone, tokenizer.model is read through libsentencepiece (test_sentencepiece.cpp).
  fs::remove(dir.path() / "tokenizer_config.json");
  std::ofstream(dir.path() / "tokenizer.model") << "x";
  EXPECT_EQ(loadTokenizer(dir.path().string()).kind(), std::string("hf-bpe"));
}

}  // namespace
