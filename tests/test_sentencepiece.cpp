// SentencePiece tokenizer.model files (io/sentencepiece_tokenizer.hpp) against Debian's
// spm_encode and spm_decode: tests/data/sentencepiece/cases.json holds, for two models trained by
// spm_train on this repository's text (scripts/make_sentencepiece_cases.py: a Llama-style BPE
// with byte fallback and a unigram with NFKC normalization and <unk>), the ids spm_encode gives
// for each line of the tokenizer corpus and the text spm_decode gives back. Encoding is the
// library's; what is ours is the piece-by-piece decoding for streaming, the special tokens and
// tokenizer_config.json, loading and refusals. Without libsentencepiece, loading is refused with
// a message saying so.
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
using retnet::io::loadTokenizer;
using retnet::io::StreamDecoder;
using retnet::io::Tokenizer;
using Ids = std::vector<std::int64_t>;

fs::path spmData() { return fs::path(RETNET_TEST_DATA_DIR) / "sentencepiece"; }

nlohmann::json cases() {
  std::ifstream in(spmData() / "cases.json");
  return nlohmann::json::parse(in);
}

std::string streamed(const Tokenizer& tokenizer, const Ids& ids) {
  StreamDecoder stream(tokenizer);
  std::string text;
  for (const std::int64_t id : ids) text += stream.push(id);
  return text + stream.flush();
}

TEST(SentencePiece, MatchesSpmEncodeAndDecode) {
  if (!retnet::io::kHaveSentencePiece) GTEST_SKIP() << "built without libsentencepiece";
  const nlohmann::json all = cases();
  ASSERT_EQ(all.at("models").size(), 2u);
  for (const auto& [file, model] : all.at("models").items()) {
    SCOPED_TRACE(file);
    const Tokenizer tokenizer = loadTokenizer((spmData() / file).string());
    EXPECT_EQ(tokenizer.kind(), std::string("sentencepiece"));
    ASSERT_GE(model.at("cases").size(), 30u);
    std::size_t withUnknown = 0, withBytes = 0;
    for (const auto& c : model.at("cases")) {
      const std::string text = c.at("text").get<std::string>();
      SCOPED_TRACE(text);
      const Ids ids = c.at("ids").get<Ids>();
      const std::string decoded = c.at("decoded").get<std::string>();
      EXPECT_EQ(tokenizer.encode(text, false), ids);
      // BOS (id 1 in both models) first with special tokens; it decodes to no text, and the
      // piece after it is still the text's first (as leading "▁" pieces are: "▁underscore…").
      Ids withBos = ids;
      withBos.insert(withBos.begin(), 1);
      EXPECT_EQ(tokenizer.encode(text, true), withBos);
      EXPECT_EQ(tokenizer.decode(ids), decoded);
      EXPECT_EQ(tokenizer.decode(withBos), decoded);
      EXPECT_EQ(streamed(tokenizer, withBos), decoded);
      for (const std::int64_t id : ids) {
        withUnknown += id == 0;
        withBytes += id >= 3 && id < 3 + 256 && tokenizer.piece(id).size() == 1;
      }
    }
    // The corpus reaches the paths that matter: <unk> (unigram), byte pieces (BPE).
    if (file == "unigram.model") {
      EXPECT_GT(withUnknown, 10u);
    } else {
      EXPECT_GT(withBytes, 20u);
    }
  }
}

TEST(SentencePiece, StreamsWholeCharactersFromBytePieces) {
  if (!retnet::io::kHaveSentencePiece) GTEST_SKIP() << "built without libsentencepiece";
  const Tokenizer tokenizer = loadTokenizer((spmData() / "llama_bpe.model").string());
  // "🙂" is not a piece of this small model: four byte pieces, streamed as one character.
  const Ids ids = tokenizer.encode("🙂", false);
  ASSERT_GE(ids.size(), 4u);
  StreamDecoder stream(tokenizer);
  std::string text;
  for (std::size_t i = 0; i + 1 < ids.size(); ++i) text += stream.push(ids[i]);
  EXPECT_EQ(text.find("\xF0"), std::string::npos) << "a partial character was streamed";
  text += stream.push(ids.back());  // (two statements: the order of push and flush matters)
  text += stream.flush();
  EXPECT_EQ(text, tokenizer.decode(ids));
  EXPECT_NE(text.find("🙂"), std::string::npos);
}

TEST(SentencePiece, TokenizerConfigAndDirectories) {
  if (!retnet::io::kHaveSentencePiece) GTEST_SKIP() << "built without libsentencepiece";
  const retnet::testing::TempDir dir("spm");
  fs::copy_file(spmData() / "llama_bpe.model", dir.path() / "tokenizer.model");
  const Tokenizer plain = loadTokenizer(dir.path().string());
  const Ids hello = plain.encode("Hello", false);
  EXPECT_EQ(plain.encode("Hello").front(), 1);
  EXPECT_EQ(plain.vocabSize(), 600);
  std::ofstream(dir.path() / "tokenizer_config.json")
      << "{\"add_bos_token\": false, \"add_eos_token\": true}";
  Ids withEos = hello;
  withEos.push_back(2);
  EXPECT_EQ(loadTokenizer(dir.path().string()).encode("Hello"), withEos);
  std::ofstream(dir.path() / "tokenizer_config.json") << "{\"add_bos_token\": \"yes\"}";
  RETNET_EXPECT_THROW_WITH(loadTokenizer(dir.path().string()), FormatError, "add_bos_token");
}

TEST(SentencePiece, RefusesDamagedModels) {
  const retnet::testing::TempDir dir("spm");
  std::ifstream in(spmData() / "llama_bpe.model", std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const fs::path cut = dir.path() / "cut.model";
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  RETNET_EXPECT_THROW_WITH(
      loadTokenizer(cut.string()), FormatError, "cut.model",
      retnet::io::kHaveSentencePiece ? "not a SentencePiece model" : "no libsentencepiece");
  const fs::path empty = dir.path() / "empty.model";
  std::ofstream(empty, std::ios::binary).flush();
  RETNET_EXPECT_THROW_WITH(loadTokenizer(empty.string()), FormatError, "empty.model");
  RETNET_EXPECT_THROW_WITH(loadTokenizer((dir.path() / "missing.model").string()), FormatError,
                           "cannot read");
}

}  // namespace
