// Hugging Face `tokenizer.json` files whose model is BPE: retnet::io::BpeTokenizer, a
// TokenizerModel (io/tokenizer.hpp), read by loadTokenizer (io/load_tokenizer.hpp).
//
// A tokenizer.json describes a pipeline; encoding a text runs it in this order:
//   1. added tokens: the file's `added_tokens` are found in the raw text first (leftmost, longest;
//      `lstrip`/`rstrip` take the whitespace beside a match with them, `single_word` matches only
//      between non-word characters); each becomes its id, the text between them goes on;
//   2. normalizer, on each piece of text between added tokens: null, `Prepend`, `Replace` (a
//      String pattern), the Unicode normal forms `NFC` (GPT-NeoX's file, so RWKV-4 Pile's and
//      Pythia's), `NFD`, `NFKC`, `NFKD` (through libutf8proc, RETNET_HAVE_UTF8PROC: without it
//      such a file is refused saying so), or a `Sequence` of those (SentencePiece-style files:
//      Prepend "▁" and Replace " " → "▁");
//   3. pre-tokenizer, splitting a piece into words: null (the piece is one word), `Split` (the
//      file's regex or string; behaviors Removed, Isolated, MergedWithPrevious, MergedWithNext,
//      Contiguous; `invert`), `ByteLevel` (a space in front if `add_prefix_space`, the GPT-2
//      pattern if `use_regex`, then every byte as its printable stand-in), or a `Sequence` of
//      those with ByteLevel last;
//   4. the BPE model on each word: its characters (byte-level: its bytes) as vocabulary ids, then
//      merges by rank, lowest first, leftmost first among equals (a heap over the word's pairs:
//      O(n log n) for a word of n symbols, never quadratic); `ignore_merges` takes a word that is
//      in the vocabulary as it is; a character not in the vocabulary becomes its bytes' <0xNN>
//      tokens with `byte_fallback`, else `unk_token` (runs fused with `fuse_unk`). Words repeat, so
//      each word's ids are cached;
//   5. with addSpecial, the post-processor's template (`TemplateProcessing`: e.g. BOS in front),
//      or tokenizer_config.json's `add_bos_token`/`add_eos_token` when it has them (as Hugging Face
//      transformers' Llama tokenizers do, they replace the template). `ByteLevel` post-processors
//      change no ids.
// Decoding maps each id to its token and runs the decoder on it, token by token so that it can
// stream: `ByteLevel` (stand-ins back to bytes), `Metaspace` (▁ → space, the first token's leading
// space dropped), or a `Sequence` of `Replace` (String patterns), `ByteFallback` (<0xNN> → the
// byte), `Fuse` and `Strip` (after Fuse: the text's leading characters only, the `first` token's).
//
// Anything else is a FormatError naming it: another model type, normalizer, pre-tokenizer,
// post-processor or decoder, a Regex Replace, BPE dropout, subword prefixes or suffixes, merges
// or added tokens that name no vocabulary entry. The regex pre-tokenizers (Split, and ByteLevel's
// GPT-2 pattern) need PCRE2 (Unicode properties such as \p{L}, \p{N}); retnet::io defines
// RETNET_HAVE_PCRE2 when CMake found libpcre2-8, and without it such a file is refused saying so.
// Patterns are Oniguruma's (Rust tokenizers) syntax; PCRE2 in UTF + UCP mode reads the real files'
// patterns (GPT-2's, cl100k's, Llama 3's) the same way.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "retnet/io/json_file.hpp"
#include "retnet/io/tokenizer.hpp"

#ifdef RETNET_HAVE_PCRE2
#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>
#endif
#ifdef RETNET_HAVE_UTF8PROC
#include <utf8proc.h>

#include <cstdlib>
#endif

namespace retnet::io {

/// The largest tokenizer.json read: 32 MB. Real ones are 2 MB (GPT-2, Mistral) to 10 MB (Llama 3,
/// Qwen 2); Gemma's 256k-token file is 17 MB. Twice the largest common one, and parsed into memory
/// at roughly ten times its size, so a hostile file cannot ask for more than a few hundred MB.
inline constexpr std::uintmax_t kMaxTokenizerJsonBytes = std::uintmax_t(32) << 20;

namespace detail {

/// Appends the UTF-8 bytes of code point `point` (a Unicode scalar value).
inline void appendUtf8(std::string& out, std::uint32_t point) {
  if (point < 0x80) {
    out += static_cast<char>(point);
  } else if (point < 0x800) {
    out += static_cast<char>(0xC0 | (point >> 6));
    out += static_cast<char>(0x80 | (point & 0x3F));
  } else if (point < 0x10000) {
    out += static_cast<char>(0xE0 | (point >> 12));
    out += static_cast<char>(0x80 | ((point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (point & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (point >> 18));
    out += static_cast<char>(0x80 | ((point >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (point & 0x3F));
  }
}

/// Length in bytes of the UTF-8 sequence that `lead` starts (1 for a byte that starts none).
inline std::size_t utf8Length(unsigned char lead) {
  return (lead & 0xE0) == 0xC0 ? 2 : (lead & 0xF0) == 0xE0 ? 3 : (lead & 0xF8) == 0xF0 ? 4 : 1;
}

/// The code point at `text[at]` (valid UTF-8).
inline std::uint32_t codePointAt(std::string_view text, std::size_t at) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[at + k]); };
  const std::size_t length = std::min(utf8Length(byte(0)), text.size() - at);
  if (length == 1) return byte(0);
  std::uint32_t point = byte(0) & (0x7Fu >> length);
  for (std::size_t k = 1; k < length; ++k) point = (point << 6) | (byte(k) & 0x3Fu);
  return point;
}

/// The code point that ends just before `text[end]` (valid UTF-8, end > 0).
inline std::uint32_t codePointBefore(std::string_view text, std::size_t end) {
  std::size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  return codePointAt(text, start);
}

/// Unicode's White_Space property (the same 25 code points since Unicode 4.1), as Rust's
/// char::is_whitespace, which the added tokens' lstrip/rstrip use.
inline bool isWhiteSpace(std::uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

/// GPT-2's byte-level alphabet: byte b stands for itself if it is a printable Latin-1 character
/// ('!'…'~', '¡'…'¬', '®'…'ÿ'), else for U+0100 + its rank among the other bytes. Every byte is
/// one printable character, so any byte string is a text that BPE vocabularies can hold.
inline std::uint32_t byteLevelCodePoint(unsigned char byte) {
  const auto printable = [](unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  if (printable(byte)) return byte;
  std::uint32_t rank = 0;
  for (unsigned b = 0; b < byte; ++b) rank += printable(b) ? 0 : 1;
  return 0x100 + rank;
}

/// Every occurrence of `from` in `text` replaced by `to` (`from` not empty).
/// The Unicode normal forms of tokenizer.json's normalizers.
enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };

/// `text` (valid UTF-8) in normal form `form`, by libutf8proc; ResourceError if it cannot.
inline std::string unicodeNormalized(std::string_view text, NormalForm form) {
#ifdef RETNET_HAVE_UTF8PROC
  if (text.empty()) return {};
  int options = UTF8PROC_STABLE;
  if (form == NormalForm::kNfc || form == NormalForm::kNfkc) options |= UTF8PROC_COMPOSE;
  if (form == NormalForm::kNfd || form == NormalForm::kNfkd) options |= UTF8PROC_DECOMPOSE;
  if (form == NormalForm::kNfkc || form == NormalForm::kNfkd) options |= UTF8PROC_COMPAT;
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t size = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                             static_cast<utf8proc_ssize_t>(text.size()), &out,
                                             static_cast<utf8proc_option_t>(options));
  if (size < 0) {
    std::free(out);
    throw InvalidArgument(
        retnet::detail::concat("Unicode normalization failed: ", utf8proc_errmsg(size)));
  }
  std::string result(reinterpret_cast<const char*>(out), static_cast<std::size_t>(size));
  std::free(out);
  return result;
#else
  (void)form;
  return std::string(text);
#endif
}

inline std::string replaceAll(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  std::size_t at = 0;
  while (true) {
    const std::size_t found = text.find(from, at);
    if (found == std::string_view::npos) break;
    out.append(text.substr(at, found - at));
    out.append(to);
    at = found + from.size();
  }
  out.append(text.substr(at));
  return out;
}

#ifdef RETNET_HAVE_PCRE2
/// A compiled PCRE2 pattern in UTF + UCP mode (\p{L}, \s, \w by Unicode properties), JIT-compiled
/// where PCRE2 supports it. Shared between threads: each search has its own match data.
class Regex {
 public:
  /// `literal`: the pattern is a plain string. A pattern PCRE2 refuses is a FormatError.
  Regex(const std::string& pattern, bool literal, const std::string& where) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    // \C (one byte inside a character) could cut a character in two: refused. (A literal
    // pattern takes no other options.)
    const std::uint32_t options =
        literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     options, &error, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      throw FormatError(retnet::detail::concat(where, ": the pattern ",
                                               nlohmann::json(pattern).dump(),
                                               " does not compile (PCRE2, at offset ", offset,
                                               "): ", reinterpret_cast<const char*>(message)));
    }
    code_ = std::shared_ptr<pcre2_code>(code, CodeDeleter());
    static_cast<void>(pcre2_jit_compile(
        code, PCRE2_JIT_COMPLETE));  // optional: pcre2_match uses it when it worked
  }

  /// Calls visit(begin, end) for each match of the pattern in `text` (valid UTF-8), left to right,
  /// not overlapping; empty matches are skipped.
  template <typename Visit>
  void forEachMatch(std::string_view text, Visit&& visit) const {
    std::unique_ptr<pcre2_match_data, MatchDataDeleter> data(
        pcre2_match_data_create_from_pattern(code_.get(), nullptr));
    if (!data) throw std::bad_alloc();
    std::size_t at = 0;
    while (at < text.size()) {
      // The text was checked once (Tokenizer::encode): no UTF check per call, which would make
      // the scan quadratic.
      const int found = pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(text.data()),
                                    text.size(), at, PCRE2_NO_UTF_CHECK, data.get(), nullptr);
      if (found == PCRE2_ERROR_NOMATCH) return;
      if (found < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(found, message, sizeof message);
        throw InvalidArgument(retnet::detail::concat(
            "BpeTokenizer: the pre-tokenizer's pattern failed on the text (PCRE2): ",
            reinterpret_cast<const char*>(message)));
      }
      const PCRE2_SIZE* span = pcre2_get_ovector_pointer(data.get());
      if (span[1] > span[0]) {
        visit(static_cast<std::size_t>(span[0]), static_cast<std::size_t>(span[1]));
        at = span[1];
      } else {  // an empty match: go on after the next character
        at = span[0] + utf8Length(static_cast<unsigned char>(text[span[0]]));
      }
    }
  }

  /// Whether code point `point` matches the pattern as a whole character (e.g. `\w`).
  bool matchesCharacter(std::uint32_t point) const {
    std::string text;
    appendUtf8(text, point);
    bool matched = false;
    forEachMatch(text, [&](std::size_t begin, std::size_t end) {
      matched = matched || (begin == 0 && end == text.size());
    });
    return matched;
  }

 private:
  struct CodeDeleter {
    void operator()(pcre2_code* code) const { pcre2_code_free(code); }
  };
  struct MatchDataDeleter {
    void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
  };
  std::shared_ptr<pcre2_code> code_;
};
#endif

}  // namespace detail

class BpeTokenizer final : public TokenizerModel {
 public:
  /// Reads a tokenizer.json, and `configPath` (tokenizer_config.json) when it is not empty.
  static std::shared_ptr<BpeTokenizer> read(const std::string& path,
                                            const std::string& configPath = "") {
    const JsonFile file = JsonFile::read(path, kMaxTokenizerJsonBytes);
    std::optional<JsonFile> config;
    if (!configPath.empty()) config = JsonFile::read(configPath, kMaxTokenizerConfigBytes);
    return fromJson(file, config ? &*config : nullptr);
  }

  /// Builds the tokenizer from a parsed tokenizer.json and, if not null, tokenizer_config.json.
  static std::shared_ptr<BpeTokenizer> fromJson(const JsonFile& file, const JsonFile* config) {
    auto tokenizer = std::shared_ptr<BpeTokenizer>(new BpeTokenizer(file.name()));
    tokenizer->build(file.root(), config);
    return tokenizer;
  }

  std::vector<std::int64_t> encode(std::string_view text, bool addSpecial) const override {
    std::vector<std::int64_t> ids;
    if (addSpecial) ids.insert(ids.end(), prefix_.begin(), prefix_.end());
    forEachSegment(text, [&](std::string_view piece, std::int64_t added) {
      if (added >= 0) {
        ids.push_back(added);
      } else {
        encodeText(piece, ids);
      }
    });
    if (addSpecial) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
    return ids;
  }

  std::string piece(std::int64_t id, bool first) const override {
    const std::string& bytes = pieces_[static_cast<std::size_t>(id)];
    if (!first || stripFirst_ == 0) return bytes;
    // A fused Strip (or Metaspace's prefix space): the text's first characters go.
    std::size_t from = 0;
    for (int k = 0;
         k < stripFirst_ && bytes.compare(from, stripContent_.size(), stripContent_) == 0; ++k)
      from += stripContent_.size();
    return bytes.substr(from);
  }

  Index vocabSize() const override { return static_cast<Index>(pieces_.size()); }
  const char* kind() const override { return "hf-bpe"; }

  /// The id of a vocabulary entry or added token, or -1.
  std::int64_t tokenId(const std::string& token) const {
    const auto found = vocab_.find(token);
    return found == vocab_.end() ? -1 : found->second;
  }

 private:
  using Json = nlohmann::json;
  using Id = std::int32_t;

  enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

  /// One step of the pre-tokenizer.
  struct PreTokenizer {
    enum class Kind { Split, ByteLevel } kind;
    Behavior behavior = Behavior::Isolated;
    bool invert = false;
    bool addPrefixSpace = false;
#ifdef RETNET_HAVE_PCRE2
    std::shared_ptr<const detail::Regex> regex;
#endif
  };

  struct AddedToken {
    std::string content;
    Id id;
    bool lstrip, rstrip, singleWord;
  };

  explicit BpeTokenizer(std::string name) : name_(std::move(name)) {}

  template <typename... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    throw FormatError(retnet::detail::concat(name_, ": ", std::forward<Parts>(parts)...));
  }

  // ---- reading ----------------------------------------------------------------------------

  const Json& member(const Json& object, const char* key, const char* where) const {
    if (!object.is_object()) fail(where, " must be a JSON object, got ", object.type_name());
    if (!object.contains(key)) fail(where, " has no '", key, "'");
    return object.at(key);
  }
  std::string text(const Json& object, const char* key, const char* where) const {
    const Json& value = member(object, key, where);
    if (!value.is_string()) fail(where, ".", key, " must be a string, got ", value.dump());
    return value.get<std::string>();
  }
  bool flag(const Json& object, const char* key, bool fallback, const char* where) const {
    if (!object.contains(key) || object.at(key).is_null()) return fallback;
    const Json& value = object.at(key);
    if (!value.is_boolean()) fail(where, ".", key, " must be true or false, got ", value.dump());
    return value.get<bool>();
  }
  std::string typeOf(const Json& object, const char* where) const {
    return text(object, "type", where);
  }
  /// A `{"String": "…"}` pattern's string (a `{"Regex": …}` one only where `regexAllowed`).
  std::string stringPattern(const Json& pattern, const char* where, bool* isRegex) const {
    if (!pattern.is_object() || pattern.size() != 1)
      fail(where, ".pattern must be {\"String\": …} or {\"Regex\": …}, got ", pattern.dump());
    const bool regex = pattern.contains("Regex");
    if (!regex && !pattern.contains("String"))
      fail(where, ".pattern must be {\"String\": …} or {\"Regex\": …}, got ", pattern.dump());
    if (regex && isRegex == nullptr)
      fail(where, " with a Regex pattern is not supported (only String patterns)");
    if (isRegex != nullptr) *isRegex = regex;
    const Json& value = pattern.begin().value();
    if (!value.is_string()) fail(where, ".pattern must hold a string, got ", pattern.dump());
    return value.get<std::string>();
  }

  void build(const Json& root, const JsonFile* config) {
    const Json& model = member(root, "model", "tokenizer.json");
    const std::string type =
        model.is_object() && model.contains("type") && model.at("type").is_string()
            ? model.at("type").get<std::string>()
            : std::string();
    if (type != "BPE") {
      fail("model type ", type.empty() ? std::string("(missing)") : "'" + type + "'",
           " is not supported (retnet reads BPE tokenizer.json files)");
    }
    readModel(model);
    readAddedTokens(root.contains("added_tokens") ? root.at("added_tokens") : Json::array());
    readNormalizer(root.contains("normalizer") ? root.at("normalizer") : Json());
    // Added tokens with normalized = true are matched in the raw text, as the others: right
    // only where the normalizer's replacements leave their content as it is.
    for (const std::string& content : normalizedAdded_) {
      for (const Normalizer& n : normalizers_) {
        const bool changes = n.kind == Normalizer::Kind::kReplace
                                 ? content.find(n.from) != std::string::npos
                             : n.kind == Normalizer::Kind::kUnicode
                                 ? detail::unicodeNormalized(content, n.form) != content
                                 : false;
        if (!content.empty() && changes)
          fail("the added token ", Json(content).dump(),
               " is normalized, and the normalizer would change it: not supported");
      }
    }
    readPreTokenizer(root.contains("pre_tokenizer") ? root.at("pre_tokenizer") : Json(), true);
    if (byteLevel_ && byteFallback_)
      fail("model.byte_fallback with a ByteLevel pre-tokenizer is not supported");
    readPostProcessor(root.contains("post_processor") ? root.at("post_processor") : Json());
    if (config != nullptr) readConfig(*config);
    readDecoder(root.contains("decoder") ? root.at("decoder") : Json());
    // The initial symbols a word's characters or bytes become must exist.
    if (byteLevel_) {
      for (int b = 0; b < 256; ++b) {
        std::string symbol;
        detail::appendUtf8(symbol, detail::byteLevelCodePoint(static_cast<unsigned char>(b)));
        const std::int64_t id = tokenId(symbol);
        if (id < 0) fail("byte-level, but the vocabulary has no token for byte ", b);
        byteIds_[static_cast<std::size_t>(b)] = static_cast<Id>(id);
      }
    }
    if (byteFallback_) {
      for (int b = 0; b < 256; ++b) {
        const std::int64_t id = tokenId(byteToken(static_cast<unsigned char>(b)));
        byteIds_[static_cast<std::size_t>(b)] = static_cast<Id>(id);  // -1: not in the vocabulary
      }
    }
  }

  static std::string byteToken(unsigned char byte) {
    const char* digits = "0123456789ABCDEF";
    return std::string("<0x") + digits[byte >> 4] + digits[byte & 15] + ">";
  }

  void setToken(Id id, const std::string& token, const char* what) {
    if (static_cast<std::size_t>(id) >= tokens_.size())
      tokens_.resize(static_cast<std::size_t>(id) + 1);
    std::string& slot = tokens_[static_cast<std::size_t>(id)];
    if (hasToken_.size() < tokens_.size()) hasToken_.resize(tokens_.size(), false);
    if (hasToken_[static_cast<std::size_t>(id)] && slot != token)
      fail(what, " ", Json(token).dump(), " has id ", id, ", which is already ", Json(slot).dump());
    slot = token;
    hasToken_[static_cast<std::size_t>(id)] = true;
  }

  /// An id from the file: an integer in [0, kMaxConfigInteger).
  Id idOf(const Json& value, const char* where) const {
    if (!value.is_number_integer() || value.get<std::int64_t>() < 0 ||
        value.get<std::int64_t>() >= kMaxConfigInteger)
      fail(where, ": ids must be integers in [0, ", kMaxConfigInteger, "), got ", value.dump());
    return static_cast<Id>(value.get<std::int64_t>());
  }

  void readModel(const Json& model) {
    for (auto item = model.begin(); item != model.end(); ++item) {
      static const char* known[] = {"type",
                                    "dropout",
                                    "unk_token",
                                    "continuing_subword_prefix",
                                    "end_of_word_suffix",
                                    "fuse_unk",
                                    "byte_fallback",
                                    "ignore_merges",
                                    "vocab",
                                    "merges"};
      if (std::find_if(std::begin(known), std::end(known),
                       [&](const char* k) { return item.key() == k; }) == std::end(known))
        fail("model.", item.key(), " is not supported");
    }
    if (model.contains("dropout") && !model.at("dropout").is_null() &&
        !(model.at("dropout").is_number() && model.at("dropout").get<double>() == 0.0))
      fail("model.dropout ", model.at("dropout").dump(),
           " is not supported (BPE dropout is for training)");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model.contains(key) && !model.at(key).is_null() &&
          !(model.at(key).is_string() && model.at(key).get<std::string>().empty()))
        fail("model.", key, " ", model.at(key).dump(), " is not supported");
    }
    fuseUnk_ = flag(model, "fuse_unk", false, "model");
    byteFallback_ = flag(model, "byte_fallback", false, "model");
    ignoreMerges_ = flag(model, "ignore_merges", false, "model");

    const Json& vocab = member(model, "vocab", "model");
    if (!vocab.is_object())
      fail("model.vocab must be an object (token -> id), got ", vocab.type_name());
    vocab_.reserve(vocab.size() + 64);
    for (auto item = vocab.begin(); item != vocab.end(); ++item) {
      const Id id = idOf(item.value(), "model.vocab");
      // Ids run nearly densely from 0 (holes are allowed, cl100k has some): no file can size the
      // id -> token table far beyond its own entries.
      if (static_cast<std::size_t>(id) > 2 * vocab.size() + 1024)
        fail("model.vocab: id ", id, " is far beyond the ", vocab.size(), " entries");
      setToken(id, item.key(), "model.vocab: the token");
      vocab_.emplace(item.key(), id);
    }
    if (model.contains("unk_token") && !model.at("unk_token").is_null()) {
      const std::string unk = text(model, "unk_token", "model");
      const std::int64_t id = tokenId(unk);
      if (id < 0) fail("model.unk_token ", Json(unk).dump(), " is not in the vocabulary");
      unk_ = static_cast<Id>(id);
    }

    const Json& merges = member(model, "merges", "model");
    if (!merges.is_array()) fail("model.merges must be an array, got ", merges.type_name());
    merges_.reserve(merges.size());
    Id rank = 0;
    for (const Json& merge : merges) {
      std::string left, right;
      if (merge.is_string()) {  // "a b": the one space separates (tokens hold no plain spaces)
        const std::string& both = merge.get_ref<const std::string&>();
        const std::size_t space = both.find(' ');
        if (space == std::string::npos || both.find(' ', space + 1) != std::string::npos)
          fail("model.merges[", rank, "] must be two tokens separated by one space, got ",
               merge.dump());
        left = both.substr(0, space);
        right = both.substr(space + 1);
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
                 merge[1].is_string()) {
        left = merge[0].get<std::string>();
        right = merge[1].get<std::string>();
      } else {
        fail("model.merges[", rank, "] must be \"a b\" or [\"a\", \"b\"], got ", merge.dump());
      }
      const std::int64_t a = tokenId(left), b = tokenId(right), ab = tokenId(left + right);
      if (a < 0 || b < 0 || ab < 0)
        fail("model.merges[", rank, "] ", merge.dump(), ": ",
             a < 0   ? Json(left).dump()
             : b < 0 ? Json(right).dump()
                     : Json(left + right).dump(),
             " is not in the vocabulary");
      // The first of two equal merges wins (its rank is lower), as in Hugging Face's tokenizers.
      merges_.emplace(pairKey(static_cast<Id>(a), static_cast<Id>(b)),
                      Merge{rank, static_cast<Id>(ab)});
      ++rank;
    }
  }

  void readAddedTokens(const Json& added) {
    if (!added.is_array()) fail("added_tokens must be an array, got ", added.type_name());
    for (const Json& token : added) {
      const char* where = "added_tokens[]";
      const std::string content = text(token, "content", where);
      if (content.empty()) fail("an added token has empty content");
      const Id id = idOf(member(token, "id", where), "added_tokens");
      if (static_cast<std::size_t>(id) > 2 * (vocab_.size() + added.size()) + 1024)
        fail("added_tokens: id ", id, " is far beyond the vocabulary's ", vocab_.size(),
             " entries");
      setToken(id, content, "the added token");
      vocab_.emplace(content, id);
      AddedToken entry{content, id, flag(token, "lstrip", false, where),
                       flag(token, "rstrip", false, where),
                       flag(token, "single_word", false, where)};
      normalizedAdded_.push_back(flag(token, "normalized", false, where) ? content : std::string());
      if (entry.singleWord) {
#ifdef RETNET_HAVE_PCRE2
        if (!wordCharacter_) wordCharacter_ = std::make_shared<detail::Regex>("\\w", false, name_);
#else
        fail("the added token ", Json(content).dump(),
             " is single_word, which needs PCRE2 (Unicode word characters); retnet::io was built "
             "without it");
#endif
      }
      // Into the trie of added tokens.
      std::uint32_t node = 0;
      for (const char c : content) {
        const std::uint64_t key = (std::uint64_t{node} << 8) | static_cast<unsigned char>(c);
        auto found = addedEdges_.find(key);
        if (found == addedEdges_.end()) {
          found = addedEdges_.emplace(key, static_cast<std::uint32_t>(addedEnd_.size())).first;
          addedEnd_.push_back(-1);
        }
        node = found->second;
      }
      addedEnd_[node] = static_cast<std::int64_t>(added_.size());
      added_.push_back(std::move(entry));
    }
  }

  void readNormalizer(const Json& normalizer) {
    if (normalizer.is_null()) return;
    const std::string type = typeOf(normalizer, "normalizer");
    if (type == "Sequence") {
      const Json& list = member(normalizer, "normalizers", "normalizer");
      if (!list.is_array()) fail("normalizer.normalizers must be an array");
      for (const Json& item : list) readNormalizer(item);
    } else if (type == "Prepend") {
      normalizers_.push_back(
          {Normalizer::Kind::kPrepend, text(normalizer, "prepend", "normalizer Prepend"), ""});
    } else if (type == "Replace") {
      const std::string from = stringPattern(member(normalizer, "pattern", "normalizer Replace"),
                                             "normalizer Replace", nullptr);
      if (from.empty()) fail("normalizer Replace: the pattern is empty");
      normalizers_.push_back(
          {Normalizer::Kind::kReplace, from, text(normalizer, "content", "normalizer Replace")});
    } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
#ifndef RETNET_HAVE_UTF8PROC
      fail("normalizer '", type,
           "' needs libutf8proc, which this build of retnet lacks (install it, Debian: "
           "libutf8proc-dev, and rebuild)");
#endif
      const detail::NormalForm form = type == "NFC"    ? detail::NormalForm::kNfc
                                      : type == "NFD"  ? detail::NormalForm::kNfd
                                      : type == "NFKC" ? detail::NormalForm::kNfkc
                                                       : detail::NormalForm::kNfkd;
      normalizers_.push_back({Normalizer::Kind::kUnicode, "", "", form});
    } else {
      fail("normalizer '", type,
           "' is not supported (Prepend, Replace, NFC, NFD, NFKC, NFKD and Sequence are)");
    }
  }

  void readPreTokenizer(const Json& pre, bool top) {
    if (pre.is_null() && top) return;
    const std::string type = typeOf(pre, "pre_tokenizer");
    if (!preTokenizers_.empty() && preTokenizers_.back().kind == PreTokenizer::Kind::ByteLevel)
      fail("pre_tokenizer: '", type, "' after ByteLevel is not supported (ByteLevel must be last)");
    if (type == "Sequence" && top) {
      const Json& list = member(pre, "pretokenizers", "pre_tokenizer");
      if (!list.is_array()) fail("pre_tokenizer.pretokenizers must be an array");
      for (const Json& item : list) readPreTokenizer(item, false);
      return;
    }
    PreTokenizer step{};
    if (type == "ByteLevel") {
      step.kind = PreTokenizer::Kind::ByteLevel;
      step.addPrefixSpace = flag(pre, "add_prefix_space", true, "pre_tokenizer ByteLevel");
      byteLevel_ = true;
      if (flag(pre, "use_regex", true, "pre_tokenizer ByteLevel")) {
        // GPT-2's pattern: contractions, letters, digits, other symbols (each with one space in
        // front), whitespace runs (but not the space in front of a word).
        addRegex(
            step,
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
            false, "pre_tokenizer ByteLevel");
      }
    } else if (type == "Split") {
      step.kind = PreTokenizer::Kind::Split;
      bool isRegex = false;
      const std::string pattern = stringPattern(member(pre, "pattern", "pre_tokenizer Split"),
                                                "pre_tokenizer Split", &isRegex);
      const std::string behavior = text(pre, "behavior", "pre_tokenizer Split");
      static const std::pair<const char*, Behavior> behaviors[] = {
          {"Removed", Behavior::Removed},
          {"Isolated", Behavior::Isolated},
          {"MergedWithPrevious", Behavior::MergedWithPrevious},
          {"MergedWithNext", Behavior::MergedWithNext},
          {"Contiguous", Behavior::Contiguous}};
      const auto found = std::find_if(std::begin(behaviors), std::end(behaviors),
                                      [&](const auto& b) { return behavior == b.first; });
      if (found == std::end(behaviors))
        fail("pre_tokenizer Split: behavior '", behavior, "' is not supported");
      step.behavior = found->second;
      step.invert = flag(pre, "invert", false, "pre_tokenizer Split");
      if (pattern.empty()) fail("pre_tokenizer Split: the pattern is empty");
      addRegex(step, pattern, !isRegex, "pre_tokenizer Split");
    } else {
      fail("pre_tokenizer '", type, "' is not supported (ByteLevel, Split and Sequence are)");
    }
    preTokenizers_.push_back(std::move(step));
  }

  void addRegex([[maybe_unused]] PreTokenizer& step, [[maybe_unused]] const std::string& pattern,
                [[maybe_unused]] bool literal, const char* where) {
#ifdef RETNET_HAVE_PCRE2
    step.regex = std::make_shared<detail::Regex>(pattern, literal, name_ + ": " + where);
#else
    fail(where,
         " needs PCRE2 for its pattern (Unicode categories such as \\p{L}); retnet::io "
         "was built without it (install libpcre2-dev and configure again)");
#endif
  }

  std::vector<Id> specialIds(const Json& special, const std::string& name) const {
    if (!special.contains(name))
      fail("post_processor: the template names '", name, "', which special_tokens lacks");
    const Json& ids = member(special.at(name), "ids", "post_processor.special_tokens entry");
    if (!ids.is_array()) fail("post_processor.special_tokens['", name, "'].ids must be an array");
    std::vector<Id> out;
    for (const Json& id : ids) {
      const Id value = idOf(id, "post_processor.special_tokens");
      if (static_cast<std::size_t>(value) >= tokens_.size() ||
          !hasToken_[static_cast<std::size_t>(value)])
        fail("post_processor: special token id ", value, " is not in the vocabulary");
      out.push_back(value);
    }
    return out;
  }

  void readPostProcessor(const Json& post) {
    if (post.is_null()) return;
    const std::string type = typeOf(post, "post_processor");
    if (type == "ByteLevel") return;  // offsets only: the ids stay as they are
    if (type == "Sequence") {
      const Json& list = member(post, "processors", "post_processor");
      if (!list.is_array()) fail("post_processor.processors must be an array");
      for (const Json& item : list) readPostProcessor(item);
      return;
    }
    if (type != "TemplateProcessing")
      fail("post_processor '", type,
           "' is not supported (TemplateProcessing, ByteLevel and Sequence are)");
    const Json& single = member(post, "single", "post_processor");
    if (!single.is_array()) fail("post_processor.single must be an array");
    const Json& special =
        post.contains("special_tokens") ? post.at("special_tokens") : Json::object();
    bool seenSequence = false;
    for (const Json& item : single) {
      if (item.is_object() && item.contains("SpecialToken")) {
        const std::string name = text(item.at("SpecialToken"), "id", "post_processor SpecialToken");
        const std::vector<Id> ids = specialIds(special, name);
        (seenSequence ? suffix_ : prefix_)
            .insert((seenSequence ? suffix_ : prefix_).end(), ids.begin(), ids.end());
      } else if (item.is_object() && item.contains("Sequence")) {
        if (seenSequence) fail("post_processor.single holds the sequence twice");
        seenSequence = true;
      } else {
        fail("post_processor.single: unknown item ", item.dump());
      }
    }
    if (!seenSequence) fail("post_processor.single has no Sequence item");
  }

  void readConfig(const JsonFile& config) {
    const bool bos = config.has("add_bos_token"), eos = config.has("add_eos_token");
    if (!bos && !eos) return;
    const auto special = [&](const char* key) -> std::vector<Id> {
      const Json& value = config.root().at(key);
      std::string token;
      if (value.is_string()) {
        token = value.get<std::string>();
      } else if (value.is_object() && value.contains("content") &&
                 value.at("content").is_string()) {
        token = value.at("content").get<std::string>();
      } else {
        config.fail("key '", key, "' must be a token (a string or {\"content\": …}), got ",
                    value.dump());
      }
      const std::int64_t id = tokenId(token);
      if (id < 0) config.fail("the ", key, " ", Json(token).dump(), " is not a token of ", name_);
      return {static_cast<Id>(id)};
    };
    // As transformers' Llama tokenizers: these flags rebuild the template.
    prefix_.clear();
    suffix_.clear();
    if (config.boolean("add_bos_token", false)) {
      if (!config.has("bos_token")) config.fail("add_bos_token is true, but there is no bos_token");
      prefix_ = special("bos_token");
    }
    if (config.boolean("add_eos_token", false)) {
      if (!config.has("eos_token")) config.fail("add_eos_token is true, but there is no eos_token");
      suffix_ = special("eos_token");
    }
  }

  void readDecoder(const Json& decoder) {
    std::vector<const Json*> steps;
    if (!decoder.is_null()) {
      if (typeOf(decoder, "decoder") == "Sequence") {
        const Json& list = member(decoder, "decoders", "decoder");
        if (!list.is_array()) fail("decoder.decoders must be an array");
        for (const Json& item : list) steps.push_back(&item);
      } else {
        steps.push_back(&decoder);
      }
    }
    bool fused = false;
    std::vector<std::pair<std::string, std::string>> replaces;
    bool byteLevel = false, byteFallback = false;
    for (const Json* step : steps) {
      const std::string type = typeOf(*step, "decoder");
      if (type == "ByteLevel") {
        byteLevel = true;
      } else if (type == "Replace") {
        const std::string from =
            stringPattern(member(*step, "pattern", "decoder Replace"), "decoder Replace", nullptr);
        if (from.empty()) fail("decoder Replace: the pattern is empty");
        replaces.emplace_back(from, text(*step, "content", "decoder Replace"));
      } else if (type == "ByteFallback") {
        byteFallback = true;
      } else if (type == "Fuse") {
        fused = true;
      } else if (type == "Strip") {
        const std::string content = text(*step, "content", "decoder Strip");
        const Json& start = member(*step, "start", "decoder Strip");
        const Json& stop = member(*step, "stop", "decoder Strip");
        if (!start.is_number_unsigned() || !stop.is_number_unsigned() ||
            start.get<std::uint64_t>() > 64)
          fail("decoder Strip: start and stop must be small counts, got ", start.dump(), ", ",
               stop.dump());
        // Streaming decodes token by token: after Fuse, only the text's start can be stripped.
        if (!fused || stop.get<std::uint64_t>() != 0)
          fail(
              "decoder Strip is supported after Fuse with stop 0 only (it strips the text's "
              "start)");
        stripContent_ = content;
        stripFirst_ = static_cast<int>(start.get<std::uint64_t>());
      } else if (type == "Metaspace") {
        const std::string replacement = text(*step, "replacement", "decoder Metaspace");
        if (replacement.empty()) fail("decoder Metaspace: the replacement is empty");
        replaces.emplace_back(replacement, " ");
        std::string scheme =
            step->contains("prepend_scheme") && step->at("prepend_scheme").is_string()
                ? step->at("prepend_scheme").get<std::string>()
                : (flag(*step, "add_prefix_space", true, "decoder Metaspace") ? "always" : "never");
        if (scheme != "always" && scheme != "first" && scheme != "never")
          fail("decoder Metaspace: prepend_scheme '", scheme, "' is not supported");
        if (scheme != "never") {
          stripContent_ = " ";
          stripFirst_ = 1;
        }
      } else {
        fail("decoder '", type,
             "' is not supported (ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip "
             "and Sequence are)");
      }
    }
    // Each token's bytes, decoded once.
    pieces_.assign(tokens_.size(), std::string());
    std::unordered_map<std::uint32_t, unsigned char> fromByteLevel;
    if (byteLevel) {
      for (int b = 0; b < 256; ++b)
        fromByteLevel.emplace(detail::byteLevelCodePoint(static_cast<unsigned char>(b)),
                              static_cast<unsigned char>(b));
    }
    for (std::size_t id = 0; id < tokens_.size(); ++id) {
      std::string token = tokens_[id];
      if (byteLevel) {  // every character a byte's stand-in, else the token as it is
        std::string bytes;
        bool all = true;
        for (std::size_t at = 0; at < token.size() && all;
             at += detail::utf8Length(static_cast<unsigned char>(token[at]))) {
          const auto found = fromByteLevel.find(detail::codePointAt(token, at));
          if (found == fromByteLevel.end()) {
            all = false;
          } else {
            bytes += static_cast<char>(found->second);
          }
        }
        if (all) token = std::move(bytes);
      }
      for (const auto& [from, to] : replaces) token = detail::replaceAll(token, from, to);
      if (byteFallback && token.size() == 6 && token.compare(0, 3, "<0x") == 0 && token[5] == '>') {
        const auto hex = [](char h) {
          return h >= '0' && h <= '9' ? h - '0' : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
        };
        const int high = hex(token[3]), low = hex(token[4]);
        if (high >= 0 && low >= 0) token = std::string(1, static_cast<char>(high * 16 + low));
      }
      pieces_[id] = std::move(token);
    }
  }

  // ---- encoding ---------------------------------------------------------------------------

  /// Calls visit(text, -1) for each stretch of text between added tokens and visit({}, id) for
  /// each added token, in order.
  template <typename Visit>
  void forEachSegment(std::string_view text, Visit&& visit) const {
    std::size_t start = 0, at = 0;
    while (at < text.size() && !added_.empty()) {
      // The longest added token starting at `at` (that passes its single_word test).
      std::int64_t best = -1;
      std::size_t bestEnd = 0;
      std::uint32_t node = 0;
      for (std::size_t k = at; k < text.size(); ++k) {
        const auto next =
            addedEdges_.find((std::uint64_t{node} << 8) | static_cast<unsigned char>(text[k]));
        if (next == addedEdges_.end()) break;
        node = next->second;
        const std::int64_t token = addedEnd_[node];
        if (token >= 0 && singleWordOk(added_[static_cast<std::size_t>(token)], text, at, k + 1)) {
          best = token;
          bestEnd = k + 1;
        }
      }
      if (best < 0) {
        ++at;
        continue;
      }
      const AddedToken& token = added_[static_cast<std::size_t>(best)];
      std::size_t before = at, after = bestEnd;
      if (token.lstrip) {
        while (before > start && detail::isWhiteSpace(detail::codePointBefore(text, before))) {
          --before;  // back to the lead byte of that character
          while (before > start && (static_cast<unsigned char>(text[before]) & 0xC0) == 0x80)
            --before;
        }
      }
      if (token.rstrip) {
        while (after < text.size() && detail::isWhiteSpace(detail::codePointAt(text, after)))
          after += detail::utf8Length(static_cast<unsigned char>(text[after]));
      }
      if (before > start) visit(text.substr(start, before - start), std::int64_t{-1});
      visit(std::string_view(), static_cast<std::int64_t>(token.id));
      start = at = after;
    }
    if (start < text.size()) visit(text.substr(start), std::int64_t{-1});
  }

  bool singleWordOk([[maybe_unused]] const AddedToken& token,
                    [[maybe_unused]] std::string_view text, [[maybe_unused]] std::size_t begin,
                    [[maybe_unused]] std::size_t end) const {
#ifdef RETNET_HAVE_PCRE2
    if (!token.singleWord) return true;
    if (begin > 0 && wordCharacter_->matchesCharacter(detail::codePointBefore(text, begin)))
      return false;
    if (end < text.size() && wordCharacter_->matchesCharacter(detail::codePointAt(text, end)))
      return false;
#endif
    return true;
  }

  void encodeText(std::string_view raw, std::vector<std::int64_t>& ids) const {
    std::string text(raw);
    for (const Normalizer& n : normalizers_) {
      switch (n.kind) {
        case Normalizer::Kind::kPrepend:
          if (!text.empty()) text.insert(0, n.from);
          break;
        case Normalizer::Kind::kReplace:
          text = detail::replaceAll(text, n.from, n.to);
          break;
        case Normalizer::Kind::kUnicode:
          text = detail::unicodeNormalized(text, n.form);
          break;
      }
    }
    std::vector<std::string> words;
    words.push_back(std::move(text));
    for (const PreTokenizer& step : preTokenizers_) words = preTokenize(step, words);
    for (const std::string& word : words) encodeWord(word, ids);
  }

  std::vector<std::string> preTokenize(const PreTokenizer& step,
                                       const std::vector<std::string>& words) const {
    std::vector<std::string> out;
    out.reserve(words.size());
    for (const std::string& original : words) {
      const std::string* word = &original;
      std::string prefixed;
      if (step.kind == PreTokenizer::Kind::ByteLevel && step.addPrefixSpace && !original.empty() &&
          original[0] != ' ') {
        prefixed = " " + original;
        word = &prefixed;
      }
#ifdef RETNET_HAVE_PCRE2
      if (step.regex) {
        splitWord(step, *word, out);
        continue;
      }
#endif
      if (!word->empty()) out.push_back(*word);
    }
    return out;
  }

#ifdef RETNET_HAVE_PCRE2
  /// Splits `word` by the step's pattern into stretches (the matches and the text between them;
  /// with `invert` the matches are the words, not the delimiters), then keeps, drops or joins the
  /// delimiters as the behavior says, exactly as Hugging Face's tokenizers
  /// (SplitDelimiterBehavior).
  void splitWord(const PreTokenizer& step, const std::string& word,
                 std::vector<std::string>& out) const {
    std::vector<std::pair<std::size_t, bool>> stretches;  // (end, whether it is a delimiter)
    std::size_t last = 0;
    step.regex->forEachMatch(word, [&](std::size_t begin, std::size_t end) {
      if (begin > last) stretches.emplace_back(begin, step.invert);
      stretches.emplace_back(end, !step.invert);
      last = end;
    });
    if (last < word.size()) stretches.emplace_back(word.size(), step.invert);
    std::vector<std::pair<std::size_t, std::size_t>> pieces;  // [begin, end)
    std::size_t begin = 0;
    bool previous = false;
    if (step.behavior != Behavior::MergedWithNext) {
      for (const auto& [end, delimiter] : stretches) {
        const bool join =
            !pieces.empty() &&
            ((step.behavior == Behavior::MergedWithPrevious && delimiter && !previous) ||
             (step.behavior == Behavior::Contiguous && delimiter == previous));
        if (step.behavior == Behavior::Removed && delimiter) {
          // dropped
        } else if (join) {
          pieces.back().second = end;
        } else {
          pieces.emplace_back(begin, end);
        }
        previous = delimiter;
        begin = end;
      }
    } else {  // from the end: a delimiter joins the stretch after it unless that is a delimiter
      for (std::size_t k = stretches.size(); k-- > 0;) {
        const std::size_t end = stretches[k].first, from = k > 0 ? stretches[k - 1].first : 0;
        const bool delimiter = stretches[k].second;
        if (delimiter && !previous && !pieces.empty()) {
          pieces.back().first = from;
        } else {
          pieces.emplace_back(from, end);
        }
        previous = delimiter;
      }
      std::reverse(pieces.begin(), pieces.end());
    }
    for (const auto& [from, to] : pieces) out.push_back(word.substr(from, to - from));
  }
#endif

  /// Appends the ids of one word (before its byte-level mapping), cached.
  void encodeWord(const std::string& word, std::vector<std::int64_t>& ids) const {
    if (word.empty()) return;
    constexpr std::size_t kCachedWordBytes = 256, kCacheEntries = 1 << 16;
    const bool cacheable = word.size() <= kCachedWordBytes;
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cacheMutex_);
      const auto found = cache_.find(word);
      if (found != cache_.end()) {
        ids.insert(ids.end(), found->second.begin(), found->second.end());
        return;
      }
    }
    std::vector<Id> out = mergeWord(word);
    ids.insert(ids.end(), out.begin(), out.end());
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cacheMutex_);
      if (cache_.size() >= kCacheEntries) cache_.clear();  // bounded; real texts refill it fast
      cache_.emplace(word, std::move(out));
    }
  }

  /// The initial symbols of a word, then BPE merges by rank.
  std::vector<Id> mergeWord(const std::string& word) const {
    std::vector<Id> symbols;
    symbols.reserve(word.size());
    if (byteLevel_) {
      if (ignoreMerges_) {
        std::string mapped;
        for (const char c : word)
          detail::appendUtf8(mapped, detail::byteLevelCodePoint(static_cast<unsigned char>(c)));
        const std::int64_t whole = tokenId(mapped);
        if (whole >= 0) return {static_cast<Id>(whole)};
      }
      for (const char c : word) symbols.push_back(byteIds_[static_cast<unsigned char>(c)]);
    } else {
      if (ignoreMerges_) {
        const std::int64_t whole = tokenId(word);
        if (whole >= 0) return {static_cast<Id>(whole)};
      }
      bool previousUnk = false;
      std::string character;
      for (std::size_t at = 0; at < word.size();) {
        const std::size_t length =
            std::min(detail::utf8Length(static_cast<unsigned char>(word[at])), word.size() - at);
        character.assign(word, at, length);
        const std::int64_t id = tokenId(character);
        bool unknown = id < 0;
        if (id >= 0) {
          symbols.push_back(static_cast<Id>(id));
        } else if (byteFallback_ &&
                   std::all_of(
                       word.begin() + static_cast<std::ptrdiff_t>(at),
                       word.begin() + static_cast<std::ptrdiff_t>(at + length),
                       [&](char c) { return byteIds_[static_cast<unsigned char>(c)] >= 0; })) {
          for (std::size_t k = at; k < at + length; ++k)
            symbols.push_back(byteIds_[static_cast<unsigned char>(word[k])]);
          unknown = false;
        } else if (unk_ >= 0) {
          if (!(fuseUnk_ && previousUnk)) symbols.push_back(unk_);
        } else {
          throw InvalidArgument(retnet::detail::concat(
              "BpeTokenizer: the character U+", std::hex, detail::codePointAt(word, at),
              " has no token in ", name_, ", which has neither byte_fallback nor unk_token"));
        }
        previousUnk = unknown;
        at += length;
      }
    }
    if (symbols.size() < 2 || merges_.empty()) return symbols;

    // Linked symbols and a min-heap of candidate merges (rank, left position): the lowest rank
    // first, the leftmost among equal ranks. A candidate is stale once either side has changed.
    const std::size_t n = symbols.size();
    std::vector<std::int32_t> next(n), previous(n);
    for (std::size_t i = 0; i < n; ++i) {
      next[i] = i + 1 < n ? static_cast<std::int32_t>(i + 1) : -1;
      previous[i] = static_cast<std::int32_t>(i) - 1;
    }
    struct Candidate {
      Id rank;
      std::int32_t left, right;
      Id leftId, rightId;
      bool operator>(const Candidate& other) const {
        return rank != other.rank ? rank > other.rank : left > other.left;
      }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
    const auto consider = [&](std::int32_t left) {
      if (left < 0) return;
      const std::int32_t right = next[static_cast<std::size_t>(left)];
      if (right < 0) return;
      const Id a = symbols[static_cast<std::size_t>(left)],
               b = symbols[static_cast<std::size_t>(right)];
      const auto found = merges_.find(pairKey(a, b));
      if (found != merges_.end()) heap.push({found->second.rank, left, right, a, b});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) consider(static_cast<std::int32_t>(i));
    std::vector<bool> alive(n, true);
    while (!heap.empty()) {
      const Candidate c = heap.top();
      heap.pop();
      const auto left = static_cast<std::size_t>(c.left), right = static_cast<std::size_t>(c.right);
      if (!alive[left] || !alive[right] || next[left] != c.right || symbols[left] != c.leftId ||
          symbols[right] != c.rightId)
        continue;
      symbols[left] = merges_.at(pairKey(c.leftId, c.rightId)).id;
      alive[right] = false;
      next[left] = next[right];
      if (next[right] >= 0) previous[static_cast<std::size_t>(next[right])] = c.left;
      consider(previous[left]);
      consider(c.left);
    }
    std::vector<Id> out;
    out.reserve(n);
    for (std::int32_t i = 0; i >= 0; i = next[static_cast<std::size_t>(i)])
      out.push_back(symbols[static_cast<std::size_t>(i)]);
    return out;
  }

  static std::uint64_t pairKey(Id a, Id b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) |
           static_cast<std::uint32_t>(b);
  }

  struct Merge {
    Id rank, id;
  };
  struct Normalizer {
    enum class Kind { kPrepend, kReplace, kUnicode };
    Kind kind;  // Prepend `from`, Replace `from` by `to`, or the normal form `form`
    std::string from, to;
    detail::NormalForm form = detail::NormalForm::kNfc;
  };

  std::string name_;
  std::unordered_map<std::string, Id> vocab_;  // token (and added token) -> id
  std::vector<std::string> tokens_;            // id -> token ("" for an unused id)
  std::vector<bool> hasToken_;
  std::vector<std::string> pieces_;  // id -> decoded bytes
  std::unordered_map<std::uint64_t, Merge> merges_;
  Id unk_ = -1;
  bool fuseUnk_ = false, byteFallback_ = false, ignoreMerges_ = false, byteLevel_ = false;
  std::int32_t byteIds_[256] = {};  // byte -> its byte-level symbol or <0xNN> token (-1: none)

  std::vector<AddedToken> added_;
  std::vector<std::string> normalizedAdded_;  // content of the normalized ones, "" for the others
  std::unordered_map<std::uint64_t, std::uint32_t> addedEdges_;  // trie: (node, byte) -> node
  std::vector<std::int64_t> addedEnd_{-1};                       // node -> added token, -1 if none
#ifdef RETNET_HAVE_PCRE2
  std::shared_ptr<const detail::Regex> wordCharacter_;
#endif

  std::vector<Normalizer> normalizers_;
  std::vector<PreTokenizer> preTokenizers_;
  std::vector<Id> prefix_, suffix_;  // the template's ids around the text (addSpecial)
  std::string stripContent_;
  int stripFirst_ = 0;

  mutable std::mutex cacheMutex_;
  mutable std::unordered_map<std::string, std::vector<Id>> cache_;
};

}  // namespace retnet::io
