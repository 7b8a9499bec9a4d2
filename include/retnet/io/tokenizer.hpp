// Text in, text out: retnet::io::Tokenizer, loaded from a model directory or a tokenizer file.
//
//   // io/load_tokenizer.hpp: a model directory, or a tokenizer file
//   const auto tokenizer = retnet::io::loadTokenizer("rwkv_vocab_v20230424.txt");
//   std::vector<std::int64_t> ids = tokenizer.encode("Hello");  // InvalidArgument on bad UTF-8
//   std::string text = tokenizer.decode(ids);
//   retnet::io::StreamDecoder stream(tokenizer);                 // for generation
//   std::cout << stream.push(id);  // only whole UTF-8 characters, never a partial one
//   std::cout << stream.flush();   // what is left at the end
//
// Formats: the RWKV World vocabulary (`rwkv_vocab_v20230424.txt`: greedy longest match over
// bytes, io/rwkv_world_tokenizer.hpp), Hugging Face `tokenizer.json` with a BPE model
// (byte-level and SentencePiece-style, io/bpe_tokenizer.hpp) and SentencePiece `tokenizer.model`
// files (io/sentencepiece_tokenizer.hpp, with libsentencepiece).
//
// A token's text can depend on whether it begins the text (a SentencePiece-style decoder drops
// the leading space of the first piece). What counts as first is the format's: Hugging Face's
// decoders take the first token (a tokenizer.json's special tokens are text), SentencePiece's own
// decoder every token until one has produced text (a leading <s> or ▁ does not end it); the
// model says so through stillFirst(), which decode() and StreamDecoder ask after each token.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "retnet/detail/checks.hpp"
#include "retnet/errors.hpp"
#include "retnet/tensor.hpp"

namespace retnet::io {

/// The largest tokenizer_config.json read (real ones are a few KB; chat templates make some 50 KB).
inline constexpr std::uintmax_t kMaxTokenizerConfigBytes = std::uintmax_t(4) << 20;

/// What a tokenizer format implements (ids are what the model's embedding takes).
class TokenizerModel {
 public:
  virtual ~TokenizerModel() = default;
  /// Ids of valid UTF-8 `text` (checked by the caller), with the format's special tokens if
  /// `addSpecial`.
  virtual std::vector<std::int64_t> encode(std::string_view text, bool addSpecial) const = 0;
  /// The bytes token `id` adds to a decoded text (`first`: it begins the text, see stillFirst).
  virtual std::string piece(std::int64_t id, bool first) const = 0;
  /// Whether the token after a first token `id` that gave `bytes` is still first.
  virtual bool stillFirst(std::int64_t /*id*/, const std::string& /*bytes*/) const { return false; }
  /// Ids are in [0, vocabSize()).
  virtual Index vocabSize() const = 0;
  /// The format, for messages ("rwkv-world").
  virtual const char* kind() const = 0;
};

namespace detail {

/// Byte offset of the first invalid UTF-8 sequence of `text` (overlong forms, surrogates and
/// code points beyond U+10FFFF are invalid), or text.size() if it is all valid.
inline std::size_t firstInvalidUtf8(std::string_view text) {
  std::size_t i = 0;
  const auto byte = [&](std::size_t at) { return static_cast<unsigned char>(text[at]); };
  while (i < text.size()) {
    const unsigned char lead = byte(i);
    std::size_t length = 0;
    std::uint32_t minimum = 0, point = 0;
    if (lead < 0x80) {
      ++i;
      continue;
    } else if ((lead & 0xE0) == 0xC0) {
      length = 2, minimum = 0x80, point = lead & 0x1Fu;
    } else if ((lead & 0xF0) == 0xE0) {
      length = 3, minimum = 0x800, point = lead & 0x0Fu;
    } else if ((lead & 0xF8) == 0xF0) {
      length = 4, minimum = 0x10000, point = lead & 0x07u;
    } else {
      return i;
    }
    if (text.size() - i < length) return i;
    for (std::size_t k = 1; k < length; ++k) {
      if ((byte(i + k) & 0xC0) != 0x80) return i;
      point = (point << 6) | (byte(i + k) & 0x3Fu);
    }
    if (point < minimum || point > 0x10FFFF || (point >= 0xD800 && point <= 0xDFFF)) return i;
    i += length;
  }
  return text.size();
}

/// Length of the longest prefix of `bytes` that does not end inside a UTF-8 sequence that the
/// following bytes could still complete (an invalid sequence counts as complete: it is emitted).
inline std::size_t completeUtf8Prefix(std::string_view bytes) {
  // Look back at most 3 bytes for the lead byte of an unfinished sequence.
  for (std::size_t back = 1; back <= 3 && back <= bytes.size(); ++back) {
    const auto c = static_cast<unsigned char>(bytes[bytes.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: keep looking for the lead
    const std::size_t need = (c & 0xE0) == 0xC0   ? 2
                             : (c & 0xF0) == 0xE0 ? 3
                             : (c & 0xF8) == 0xF0 ? 4
                                                  : 1;
    return need > back ? bytes.size() - back : bytes.size();
  }
  return bytes.size();
}

}  // namespace detail

class Tokenizer {
 public:
  explicit Tokenizer(std::shared_ptr<const TokenizerModel> model) : model_(std::move(model)) {
    retnet::detail::require(model_ != nullptr, "Tokenizer", "a tokenizer model is needed");
  }

  /// Ids of `text`, which must be valid UTF-8 (InvalidArgument with the byte offset if not).
  std::vector<std::int64_t> encode(std::string_view text, bool addSpecial = true) const {
    const std::size_t bad = detail::firstInvalidUtf8(text);
    if (bad != text.size()) {
      throw InvalidArgument(retnet::detail::concat(
          "Tokenizer::encode: the text is not valid UTF-8 at byte offset ", bad, " (byte 0x",
          hex(static_cast<unsigned char>(text[bad])), ")"));
    }
    return model_->encode(text, addSpecial);
  }

  /// The text of `ids` (raw bytes: invalid UTF-8 only if the ids split a character).
  std::string decode(const std::vector<std::int64_t>& ids) const {
    std::string text;
    bool first = true;
    for (const std::int64_t id : ids) {
      const std::string bytes = piece(id, first);
      first = first && model_->stillFirst(id, bytes);
      text += bytes;
    }
    return text;
  }

  /// The bytes of one token (checked id).
  std::string piece(std::int64_t id, bool first = false) const {
    retnet::detail::require(id >= 0 && id < model_->vocabSize(), "Tokenizer::decode",
                            "token ids must be in [0, ", model_->vocabSize(), "), got ", id);
    return model_->piece(id, first);
  }

  Index vocabSize() const { return model_->vocabSize(); }
  const char* kind() const { return model_->kind(); }
  /// Whether the token after a first token `id` (as piece() gave it) is still first.
  bool stillFirst(std::int64_t id, const std::string& bytes) const {
    retnet::detail::require(id >= 0 && id < model_->vocabSize(), "Tokenizer::stillFirst",
                            "token ids must be in [0, ", model_->vocabSize(), "), got ", id);
    return model_->stillFirst(id, bytes);
  }

 private:
  static std::string hex(unsigned char c) {
    const char* digits = "0123456789ABCDEF";
    return {digits[c >> 4], digits[c & 15]};
  }

  std::shared_ptr<const TokenizerModel> model_;
};

/// Decodes a stream of generated ids into text as it comes: push() returns the complete UTF-8
/// characters so far (a character split over tokens waits for its last byte), with every byte
/// that cannot be part of a character (a model may generate any byte) replaced by U+FFFD, so the
/// stream is always valid UTF-8; flush() returns what is left (an incomplete character at the
/// very end, also as U+FFFD). decode() of the same ids gives the raw bytes instead.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}

  std::string push(std::int64_t id) {
    const std::string bytes = tokenizer_->piece(id, first_);
    first_ = first_ && tokenizer_->stillFirst(id, bytes);
    pending_ += bytes;
    const std::size_t ready = detail::completeUtf8Prefix(pending_);
    std::string out = valid(std::string_view(pending_).substr(0, ready));
    pending_.erase(0, ready);
    return out;
  }
  std::string flush() { return valid(std::exchange(pending_, std::string())); }

 private:
  /// `bytes` with each byte that starts no valid character replaced by U+FFFD.
  static std::string valid(std::string_view bytes) {
    std::string out;
    while (!bytes.empty()) {
      const std::size_t good = detail::firstInvalidUtf8(bytes);
      out.append(bytes.substr(0, good));
      if (good == bytes.size()) break;
      out += "\xEF\xBF\xBD";
      bytes.remove_prefix(good + 1);
    }
    return out;
  }

  const Tokenizer* tokenizer_;
  std::string pending_;
  bool first_ = true;
};

}  // namespace retnet::io
