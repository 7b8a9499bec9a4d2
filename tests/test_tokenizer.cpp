// Tokenizers (io/tokenizer.hpp, io/load_tokenizer.hpp): the RWKV World vocabulary against
// BlinkDL's own tokenizer (tests/data/rwkv4/world_tokenizer_cases.json, written by
// scripts/make_world_tokenizer_cases.py from ChatRWKV's TRIE_TOKENIZER), streaming decoding that
// never splits a character, invalid UTF-8 input, and the vocabulary reader's refusals.
#include <gtest/gtest.h>

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
using retnet::io::loadTokenizer;
using retnet::io::RwkvWorldTokenizer;
using retnet::io::StreamDecoder;
using retnet::io::Tokenizer;

fs::path rwkvData() { return fs::path(RETNET_TEST_DATA_DIR) / "rwkv4"; }

const Tokenizer& world() {
  static const Tokenizer tokenizer =
      loadTokenizer((rwkvData() / "rwkv_vocab_v20230424.txt").string());
  return tokenizer;
}

nlohmann::json worldCases() {
  std::ifstream in(rwkvData() / "world_tokenizer_cases.json");
  return nlohmann::json::parse(in);
}

TEST(WorldTokenizer, MatchesBlinkDLsTokenizer) {
  EXPECT_EQ(world().vocabSize(), 65530);  // ids 1 … 65529, and 0 = end of text
  EXPECT_STREQ(world().kind(), "rwkv-world");
  const nlohmann::json cases = worldCases();
  ASSERT_GE(cases.at("cases").size(), 10u);
  for (const auto& c : cases.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    const std::vector<std::int64_t> ids = c.at("ids").get<std::vector<std::int64_t>>();
    EXPECT_EQ(world().encode(text), ids) << text.substr(0, 60);
    EXPECT_EQ(world().decode(ids), text) << text.substr(0, 60);
  }
}

TEST(WorldTokenizer, LoadsFromAModelDirectory) {
  const Tokenizer fromDirectory = loadTokenizer(rwkvData().string());
  EXPECT_EQ(fromDirectory.encode("Hello"), world().encode("Hello"));
}

TEST(WorldTokenizer, EndOfTextDecodesToNothing) {
  EXPECT_EQ(world().decode({0}), "");
  RETNET_EXPECT_THROW_WITH(world().decode({65530}), InvalidArgument, "[0, 65530)", "65530");
  RETNET_EXPECT_THROW_WITH(world().decode({-1}), InvalidArgument, "-1");
}

// Streaming: the pieces concatenate to the text, and each is whole UTF-8 characters, also where
// one character is split over several tokens (4-byte emoji, CJK in byte tokens).
TEST(StreamDecoder, NeverEmitsAPartialCharacter) {
  const nlohmann::json cases = worldCases();
  for (const auto& c : cases.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    StreamDecoder stream(world());
    std::string joined;
    for (const std::int64_t id : c.at("ids").get<std::vector<std::int64_t>>()) {
      const std::string piece = stream.push(id);
      EXPECT_EQ(retnet::io::detail::firstInvalidUtf8(piece), piece.size()) << text.substr(0, 40);
      joined += piece;
    }
    joined += stream.flush();
    EXPECT_EQ(joined, text);
  }
  // Byte tokens of one character (U+1F642 = F0 9F 99 82; ids 241, 160, 154, 131 are the bytes
  // 0xF0, 0x9F, 0x99, 0x82): nothing until the last byte.
  StreamDecoder stream(world());
  EXPECT_EQ(stream.push(241), "");
  EXPECT_EQ(stream.push(160), "");
  EXPECT_EQ(stream.push(154), "");
  EXPECT_EQ(stream.push(131), "\xF0\x9F\x99\x82");
  EXPECT_EQ(stream.push(241), "");
  EXPECT_EQ(stream.flush(), "\xEF\xBF\xBD");  // an unfinished character at the very end
  // A byte that starts no character (a lone continuation byte) becomes U+FFFD at once.
  StreamDecoder other(world());
  EXPECT_EQ(other.push(131), "\xEF\xBF\xBD");
  EXPECT_EQ(other.push(98), "a");
  EXPECT_EQ(world().decode({131, 98}),
            "\x82"
            "a");  // decode() keeps the raw bytes
}

TEST(Tokenizer, InvalidUtf8IsRefusedWithItsOffset) {
  RETNET_EXPECT_THROW_WITH(world().encode("abc\xFF"), InvalidArgument, "byte offset 3", "0xFF");
  RETNET_EXPECT_THROW_WITH(world().encode("\xC0\xAF"), InvalidArgument,
                           "byte offset 0");  // overlong
  RETNET_EXPECT_THROW_WITH(world().encode("x\xED\xA0\x80"), InvalidArgument,
                           "byte offset 1");  // surrogate
  RETNET_EXPECT_THROW_WITH(world().encode("ok \xE4\xB8"), InvalidArgument, "byte offset 3");  // cut
  RETNET_EXPECT_THROW_WITH(world().encode("\xF4\x90\x80\x80"), InvalidArgument,
                           "byte offset 0");  // > U+10FFFF
}

/// A vocabulary with every single byte (ids 1 … 256), then `extra` lines.
std::string byteVocabulary(const std::string& extra) {
  std::string text;
  for (int b = 0; b < 256; ++b) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "%02x", b);
    text += std::to_string(b + 1) + " b'\\x" + hex + "' 1\n";
  }
  return text + extra;
}

TEST(WorldVocabulary, ReadsStrAndBytesLiterals) {
  const Tokenizer t(RwkvWorldTokenizer::fromText(
      byteVocabulary("257 'ab' 2\n258 \"it's\" 4\n259 '\\u00e9t\\xe9' 5\n260 'abc' 3\n"), "v"));
  EXPECT_EQ(t.encode("abcab"), (std::vector<std::int64_t>{260, 257}));  // longest match first
  EXPECT_EQ(t.encode("it's"), (std::vector<std::int64_t>{258}));
  EXPECT_EQ(t.encode("\xC3\xA9t\xC3\xA9"), (std::vector<std::int64_t>{259}));  // "été"
  EXPECT_EQ(t.decode({259}), "\xC3\xA9t\xC3\xA9");
}

TEST(WorldVocabulary, RefusesMalformedFiles) {
  const auto refuse = [](const std::string& text, const std::string& part) {
    RETNET_EXPECT_THROW_WITH(RwkvWorldTokenizer::fromText(text, "vocab.txt"), FormatError,
                             "vocab.txt", part);
  };
  refuse("1 'a' 1\n", "no entry for the single byte 0");
  refuse(byteVocabulary("257 'ab' 3\n"), "the literal has 2 bytes, the line says 3");
  refuse(byteVocabulary("257 'ab 2\n"), "quoted");
  refuse(byteVocabulary("12 'zz' 2\n"), "id 12 repeats");
  refuse(byteVocabulary("x1 'ab' 2\n"), "the id must be a number");
  refuse(byteVocabulary("257 'ab'\n"), "expected '<id> <literal> <length>'");
  refuse(byteVocabulary("257 '\\q' 1\n"), "unsupported escape");
  refuse(byteVocabulary("257 b'\\u0041' 1\n"), "\\u in a bytes literal");
  refuse(byteVocabulary("257 '\\xZZ' 1\n"), "hexadecimal");
  refuse(byteVocabulary("257 'a' 1\n"), "repeats id 98");  // the same bytes as the entry of 'a'
  refuse(byteVocabulary("999999999 'ab' 2\n"), "id 999999999 is outside [1, 257]");
  refuse(byteVocabulary("257 '\\ud800' 3\n"), "no Unicode scalar value");
}

TEST(LoadTokenizer, SaysWhatItCannotRead) {
  const retnet::testing::TempDir dir("tokenizer");
  // A damaged tokenizer.model: the library's refusal, or (without it) that the build lacks it.
  std::ofstream(dir.path() / "tokenizer.model") << "x";
  RETNET_EXPECT_THROW_WITH(
      loadTokenizer(dir.path().string()), FormatError, "tokenizer.model",
      retnet::io::kHaveSentencePiece ? "not a SentencePiece model" : "no libsentencepiece");
  std::ofstream(dir.path() / "vocab.bin") << "x";
  RETNET_EXPECT_THROW_WITH(loadTokenizer((dir.path() / "vocab.bin").string()), FormatError,
                           "not a tokenizer format retnet reads");
  fs::remove(dir.path() / "tokenizer.model");
  // tokenizer.json is read (test_bpe_tokenizer.cpp); an empty object is refused for what it lacks.
  std::ofstream(dir.path() / "tokenizer.json") << "{}";
  RETNET_EXPECT_THROW_WITH(loadTokenizer(dir.path().string()), FormatError, "has no 'model'");
  RETNET_EXPECT_THROW_WITH(loadTokenizer((dir.path() / "missing.txt").string()), FormatError,
                           "cannot read");
}

}  // namespace
