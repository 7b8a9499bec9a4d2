// The RWKV World tokenizer (BlinkDL's `rwkv_vocab_v20230424.txt`, used by the RWKV World and
// Raven-World models): a vocabulary of byte strings, one a line,
//
//   <id> <Python str or bytes literal> <length in bytes>
//
// e.g. `257 '\t\t' 2`, `129 b'\x80' 1`, `9804 '\u2002' 3`. A str literal stands for its UTF-8
// bytes. Encoding is greedy longest match over the text's bytes (at each position the longest
// vocabulary entry that is a prefix of the rest), through a trie; every single byte is an entry,
// so every text encodes. Id 0 (not in the file) is the end-of-text token and decodes to nothing.
// No special tokens are added.
//
// The file is refused (FormatError naming file and line) if a line is not in that form, a
// literal's length differs from its stated length, an id repeats or is outside 1 … N (N the
// number of entries: ids have no gaps, as in BlinkDL's files), two ids stand for the same bytes,
// or a single byte has no entry.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "retnet/io/tokenizer.hpp"

namespace retnet::io {

/// Bounds on a vocabulary file: what a real one needs many times over.
inline constexpr std::uintmax_t kMaxVocabularyBytes = std::uintmax_t(64) << 20;

class RwkvWorldTokenizer final : public TokenizerModel {
 public:
  /// Reads a vocabulary file.
  static std::shared_ptr<RwkvWorldTokenizer> read(const std::string& path) {
    std::error_code error;
    const auto size = std::filesystem::file_size(path, error);
    if (error) throw FormatError(path + ": cannot read the vocabulary file");
    if (size > kMaxVocabularyBytes) {
      throw FormatError(retnet::detail::concat(
          path, ": ", size, " bytes; a vocabulary file has at most ", kMaxVocabularyBytes));
    }
    std::ifstream in(path, std::ios::binary);
    std::string text(static_cast<std::size_t>(size), '\0');
    in.read(text.data(), static_cast<std::streamsize>(size));
    if (!in) throw FormatError(path + ": cannot read the vocabulary file");
    return fromText(text, path);
  }

  /// Parses a vocabulary's text; `name` is used in messages.
  static std::shared_ptr<RwkvWorldTokenizer> fromText(std::string_view text,
                                                      const std::string& name) {
    auto tokenizer = std::shared_ptr<RwkvWorldTokenizer>(new RwkvWorldTokenizer());
    // Ids run 1 … N for N entries (the lines that are not empty): no id can ask for more room.
    forEachLine(text, [&](std::string_view, std::size_t) { ++tokenizer->entries_; });
    tokenizer->pieces_.resize(tokenizer->entries_ + 1);
    forEachLine(
        text, [&](std::string_view row, std::size_t line) { tokenizer->addLine(row, name, line); });
    for (int b = 0; b < 256; ++b) {
      if (tokenizer->nodes_[static_cast<std::size_t>(b)].token == 0) {
        throw FormatError(retnet::detail::concat(name, ": no entry for the single byte ", b,
                                                 ": some texts could not be encoded"));
      }
    }
    return tokenizer;
  }

  std::vector<std::int64_t> encode(std::string_view text, bool) const override {
    std::vector<std::int64_t> ids;
    std::size_t i = 0;
    while (i < text.size()) {
      // The longest entry that is a prefix of text[i..]: walk the trie as far as it goes.
      std::uint32_t node = static_cast<unsigned char>(text[i]);
      std::int64_t token = nodes_[node].token;
      std::size_t end = i + 1;
      for (std::size_t j = i + 1; j < text.size(); ++j) {
        const auto next = edges_.find(edgeKey(node, static_cast<unsigned char>(text[j])));
        if (next == edges_.end()) break;
        node = next->second;
        if (nodes_[node].token != 0) {
          token = nodes_[node].token;
          end = j + 1;
        }
      }
      ids.push_back(token);
      i = end;
    }
    return ids;
  }

  std::string piece(std::int64_t id, bool) const override {
    return pieces_[static_cast<std::size_t>(id)];
  }
  Index vocabSize() const override { return static_cast<Index>(pieces_.size()); }
  const char* kind() const override { return "rwkv-world"; }

 private:
  struct Node {
    std::int64_t token = 0;  // the entry ending here, 0 if none
  };

  RwkvWorldTokenizer() : pieces_(1), nodes_(256) {}

  /// Calls visit(row, line number) for every line that is not empty (without its \r\n).
  template <typename Visit>
  static void forEachLine(std::string_view text, Visit&& visit) {
    std::size_t begin = 0, line = 0;
    while (begin < text.size()) {
      std::size_t end = text.find('\n', begin);
      if (end == std::string_view::npos) end = text.size();
      ++line;
      std::string_view row = text.substr(begin, end - begin);
      if (!row.empty() && row.back() == '\r') row.remove_suffix(1);
      if (!row.empty()) visit(row, line);
      begin = end + 1;
    }
  }

  static std::uint64_t edgeKey(std::uint32_t node, unsigned char byte) {
    return (static_cast<std::uint64_t>(node) << 8) | byte;
  }

  template <typename... Parts>
  [[noreturn]] static void fail(const std::string& name, std::size_t line, Parts&&... parts) {
    throw FormatError(retnet::detail::concat(name, ":", line, ": ", std::forward<Parts>(parts)...));
  }

  void addLine(std::string_view row, const std::string& name, std::size_t line) {
    const std::size_t firstSpace = row.find(' '), lastSpace = row.rfind(' ');
    if (firstSpace == std::string_view::npos || lastSpace == firstSpace)
      fail(name, line, "expected '<id> <literal> <length>'");
    const std::int64_t id = number(row.substr(0, firstSpace), name, line, "id");
    const std::int64_t length = number(row.substr(lastSpace + 1), name, line, "length");
    if (id < 1 || id > static_cast<std::int64_t>(entries_))
      fail(name, line, "id ", id, " is outside [1, ", entries_,
           "]: ids run from 1 to the number of entries");
    const std::string bytes =
        literal(row.substr(firstSpace + 1, lastSpace - firstSpace - 1), name, line);
    if (static_cast<std::int64_t>(bytes.size()) != length || bytes.empty())
      fail(name, line, "the literal has ", bytes.size(), " bytes, the line says ", length);
    if (!pieces_[static_cast<std::size_t>(id)].empty()) fail(name, line, "id ", id, " repeats");
    pieces_[static_cast<std::size_t>(id)] = bytes;
    // Into the trie.
    std::uint32_t node = static_cast<unsigned char>(bytes[0]);
    for (std::size_t k = 1; k < bytes.size(); ++k) {
      const std::uint64_t key = edgeKey(node, static_cast<unsigned char>(bytes[k]));
      auto found = edges_.find(key);
      if (found == edges_.end()) {
        found = edges_.emplace(key, static_cast<std::uint32_t>(nodes_.size())).first;
        nodes_.emplace_back();
      }
      node = found->second;
    }
    Node& end = nodes_[node];
    if (end.token != 0) fail(name, line, "the entry of id ", id, " repeats id ", end.token);
    end.token = id;
  }

  static std::int64_t number(std::string_view digits, const std::string& name, std::size_t line,
                             const char* what) {
    if (digits.empty() || digits.size() > 9) fail(name, line, "the ", what, " must be a number");
    std::int64_t value = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') fail(name, line, "the ", what, " must be a number");
      value = value * 10 + (c - '0');
    }
    return value;
  }

  static void appendUtf8(std::string& out, std::uint32_t point) {
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

  /// The bytes of a Python str ('…' or "…", UTF-8) or bytes (b'…') literal.
  static std::string literal(std::string_view s, const std::string& name, std::size_t line) {
    const bool isBytes = !s.empty() && s[0] == 'b';
    if (isBytes) s.remove_prefix(1);
    if (s.size() < 2 || (s[0] != '\'' && s[0] != '"') || s.back() != s[0])
      fail(name, line, "expected a quoted Python str or bytes literal");
    const char quote = s[0];
    s = s.substr(1, s.size() - 2);
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
      const char c = s[i];
      if (c == quote) fail(name, line, "an unescaped quote inside the literal");
      if (c != '\\') {
        if (isBytes && static_cast<unsigned char>(c) >= 0x80)
          fail(name, line, "a non-ASCII character in a bytes literal");
        out += c;
        continue;
      }
      if (++i == s.size()) fail(name, line, "the literal ends with a backslash");
      const auto hexDigits = [&](std::size_t count) {
        if (s.size() - i - 1 < count) fail(name, line, "a short escape in the literal");
        std::uint32_t value = 0;
        for (std::size_t k = 0; k < count; ++k) {
          const char h = s[++i];
          const int digit = h >= '0' && h <= '9'   ? h - '0'
                            : h >= 'a' && h <= 'f' ? h - 'a' + 10
                            : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                                   : -1;
          if (digit < 0) fail(name, line, "a bad hexadecimal digit in an escape");
          value = value * 16 + static_cast<std::uint32_t>(digit);
        }
        return value;
      };
      switch (s[i]) {
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case 'x': {
          const std::uint32_t value = hexDigits(2);
          if (isBytes) {
            out += static_cast<char>(value);
          } else {
            appendUtf8(out, value);  // in a str, \xHH is the code point U+00HH
          }
          break;
        }
        case 'u':
        case 'U': {
          if (isBytes) fail(name, line, "\\u in a bytes literal");
          const std::uint32_t point = hexDigits(s[i] == 'u' ? 4 : 8);
          if (point > 0x10FFFF || (point >= 0xD800 && point <= 0xDFFF))
            fail(name, line, "the escape names no Unicode scalar value");
          appendUtf8(out, point);
          break;
        }
        default:
          fail(name, line, "an unsupported escape '\\", s[i], "'");
      }
    }
    if (!isBytes && detail::firstInvalidUtf8(out) != out.size())
      fail(name, line, "the str literal is not valid UTF-8");
    return out;
  }

  std::size_t entries_ = 0;          // N: ids are 1 … N
  std::vector<std::string> pieces_;  // id -> bytes; id 0 (end of text) is empty
  std::vector<Node> nodes_;          // the trie: nodes 0…255 are the first bytes
  std::unordered_map<std::uint64_t, std::uint32_t> edges_;  // (node, byte) -> node
};

}  // namespace retnet::io
