// What the tokenizer fuzz targets share: streaming ids through StreamDecoder with the invariant
// that every piece it returns is whole UTF-8.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "retnet/io/tokenizer.hpp"

namespace retnet_fuzz {

/// Reports a broken invariant of target `target` and aborts (a finding).
[[noreturn]] inline void broken(const char* target, const char* what, const std::string& detail) {
  std::fprintf(stderr, "%s: invariant broken: %s: %s\n", target, what, detail.c_str());
  std::abort();
}

/// The text StreamDecoder gives for `ids`, pushed one by one then flushed; every piece it
/// returns must be whole UTF-8, else a finding of `target`.
inline std::string streamedText(const char* target, const retnet::io::Tokenizer& tokenizer,
                                const std::vector<std::int64_t>& ids) {
  retnet::io::StreamDecoder stream(tokenizer);
  std::string streamed;
  for (const std::int64_t id : ids) {
    const std::string piece = stream.push(id);
    if (retnet::io::detail::firstInvalidUtf8(piece) != piece.size())
      broken(target, "a streamed piece is not whole UTF-8", piece);
    streamed += piece;
  }
  streamed += stream.flush();
  return streamed;
}

}  // namespace retnet_fuzz
