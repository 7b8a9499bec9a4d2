// SentencePiece `tokenizer.model` files (a serialized ModelProto: Llama-family, fla-hub's and many
// other checkpoints ship one), through Debian's libsentencepiece, an optional dependency of
// retnet::io (RETNET_HAVE_SENTENCEPIECE, set by CMake when pkg-config finds it). Without it,
// reading such a file is a FormatError that says so.
//
// Encoding is the library's own (unigram or BPE, normalization, byte fallback: whatever the
// model says); with `addSpecial`, BOS is put first when the model has one, as Hugging Face's
// Llama tokenizers and llama.cpp do, and tokenizer_config.json beside the file, when present,
// overrides that with its `add_bos_token` / `add_eos_token`. Decoding is piece by piece, for
// streaming: a control token (<s>, </s>) is no text, a byte piece (<0x0A>) its byte, an unknown
// id the library's " ⁇ ", every other piece its text with "▁" as a space, less the leading space
// of a first piece when the model adds a dummy prefix (probed from the library's own decoding at
// load); as in the library, tokens are first until one has produced text. Tokenizer::decode() of
// any ids equals the library's DecodeIds() where the ids end on whole characters
// (tests/test_sentencepiece.cpp).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "retnet/io/json_file.hpp"
#include "retnet/io/tokenizer.hpp"

#ifdef RETNET_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

namespace retnet::io {

/// The largest tokenizer.model read (Llama's is 0.5 MB, Gemma's 256k-piece model 4 MB).
inline constexpr std::uintmax_t kMaxSentencePieceModelBytes = std::uintmax_t(64) << 20;

/// Whether this build reads SentencePiece models.
inline constexpr bool kHaveSentencePiece =
#ifdef RETNET_HAVE_SENTENCEPIECE
    true;
#else
    false;
#endif

#ifdef RETNET_HAVE_SENTENCEPIECE

class SentencePieceTokenizer final : public TokenizerModel {
 public:
  /// Reads a tokenizer.model, and `configPath` (tokenizer_config.json) when it is not empty.
  static std::shared_ptr<SentencePieceTokenizer> read(const std::string& path,
                                                      const std::string& configPath = "") {
    std::error_code error;
    const auto size = std::filesystem::file_size(path, error);
    if (error) throw FormatError(path + ": cannot read the SentencePiece model");
    if (size > kMaxSentencePieceModelBytes) {
      throw FormatError(retnet::detail::concat(path, ": ", size,
                                               " bytes; a SentencePiece model has at most ",
                                               kMaxSentencePieceModelBytes));
    }
    std::ifstream in(path, std::ios::binary);
    std::string bytes(static_cast<std::size_t>(size), '\0');
    in.read(bytes.data(), static_cast<std::streamsize>(size));
    if (!in) throw FormatError(path + ": cannot read the SentencePiece model");
    std::optional<JsonFile> config;
    if (!configPath.empty()) config = JsonFile::read(configPath, kMaxTokenizerConfigBytes);
    return fromBytes(bytes, path, config ? &*config : nullptr);
  }

  /// Builds the tokenizer from a serialized model; `name` is used in messages.
  static std::shared_ptr<SentencePieceTokenizer> fromBytes(std::string_view bytes,
                                                           const std::string& name,
                                                           const JsonFile* config = nullptr) {
    auto tokenizer = std::shared_ptr<SentencePieceTokenizer>(new SentencePieceTokenizer());
    const auto status = tokenizer->processor_.LoadFromSerializedProto(bytes);
    if (!status.ok())
      throw FormatError(name + ": not a SentencePiece model (" + status.ToString() + ")");
    tokenizer->setUp(name, config);
    return tokenizer;
  }

  std::vector<std::int64_t> encode(std::string_view text, bool addSpecial) const override {
    std::vector<int> pieces;
    const auto status = processor_.Encode(text, &pieces);
    if (!status.ok()) throw InvalidArgument("SentencePiece: " + status.ToString());
    std::vector<std::int64_t> ids;
    ids.reserve(pieces.size() + 2);
    if (addSpecial && addBos_) ids.push_back(processor_.bos_id());
    ids.insert(ids.end(), pieces.begin(), pieces.end());
    if (addSpecial && addEos_) ids.push_back(processor_.eos_id());
    return ids;
  }

  std::string piece(std::int64_t id, bool first) const override {
    const int i = static_cast<int>(id);
    if (processor_.IsControl(i)) return {};
    if (processor_.IsUnknown(i)) return first ? unknownFirst_ : " \xE2\x81\x87 ";
    std::string text = processor_.IdToPiece(i);
    if (processor_.IsByte(i)) return std::string(1, static_cast<char>(byteOf(text)));
    std::string out;
    out.reserve(text.size());
    for (std::size_t at = 0; at < text.size();) {
      if (text.compare(at, kSpace.size(), kSpace) == 0) {
        out += ' ';
        at += kSpace.size();
      } else {
        out += text[at++];
      }
    }
    if (first && stripFirstSpace_ && !out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }

  /// As the library's decoder: a token is first until one has produced text.
  bool stillFirst(std::int64_t, const std::string& bytes) const override { return bytes.empty(); }
  Index vocabSize() const override { return processor_.GetPieceSize(); }
  const char* kind() const override { return "sentencepiece"; }

 private:
  static constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space

  SentencePieceTokenizer() = default;

  /// The byte of a "<0xNN>" piece.
  static unsigned byteOf(const std::string& piece) {
    return static_cast<unsigned>(std::stoul(piece.substr(3, 2), nullptr, 16));
  }

  void setUp(const std::string& name, const JsonFile* config) {
    const int size = processor_.GetPieceSize();
    if (size <= 0) throw FormatError(name + ": the SentencePiece model has no pieces");
    for (int i = 0; i < size; ++i) {
      if (processor_.IsByte(i)) {
        const std::string text = processor_.IdToPiece(i);
        if (text.size() != 6 || text.compare(0, 3, "<0x") != 0 || text[5] != '>')
          throw FormatError(name + ": byte piece " + std::to_string(i) + " is \"" + text +
                            "\", not <0xNN>");
      }
    }
    // Whether the library drops the leading space of a text's first piece (a model trained
    // with a dummy prefix): asked of its own decoder on the first normal piece that has one.
    for (int i = 0; i < size; ++i) {
      if (processor_.IsControl(i) || processor_.IsUnknown(i) || processor_.IsByte(i) ||
          processor_.IsUnused(i))
        continue;
      const std::string text = processor_.IdToPiece(i);
      if (text.size() > kSpace.size() && text.compare(0, kSpace.size(), kSpace) == 0) {
        stripFirstSpace_ = processor_.DecodeIds({i}).compare(0, 1, " ") != 0;
        break;
      }
    }
    if (processor_.unk_id() >= 0) unknownFirst_ = processor_.DecodeIds({processor_.unk_id()});
    addBos_ = processor_.bos_id() >= 0;
    addEos_ = false;
    if (config != nullptr) {
      if (config->has("add_bos_token")) addBos_ = config->boolean("add_bos_token", addBos_);
      if (config->has("add_eos_token")) addEos_ = config->boolean("add_eos_token", addEos_);
      if (addBos_ && processor_.bos_id() < 0)
        config->fail("add_bos_token is true, but ", name, " has no BOS piece");
      if (addEos_ && processor_.eos_id() < 0)
        config->fail("add_eos_token is true, but ", name, " has no EOS piece");
    }
  }

  sentencepiece::SentencePieceProcessor processor_;
  bool stripFirstSpace_ = true;
  std::string unknownFirst_ = "\xE2\x81\x87 ";
  bool addBos_ = true, addEos_ = false;
};

/// A SentencePiece model as a Tokenizer.
inline Tokenizer readSentencePieceTokenizer(const std::string& path,
                                            const std::string& configPath = "") {
  return Tokenizer(SentencePieceTokenizer::read(path, configPath));
}

#else

inline Tokenizer readSentencePieceTokenizer(const std::string& path, const std::string& = "") {
  throw FormatError(path +
                    ": a SentencePiece model, and this build of retnet has no libsentencepiece "
                    "(install it, Debian: libsentencepiece-dev, and rebuild; or use the "
                    "tokenizer.json beside it)");
}

#endif

}  // namespace retnet::io
