// libFuzzer target for Hugging Face tokenizer.json files with a BPE model
// (include/retnet/io/bpe_tokenizer.hpp) and the tokenizer on top of it.
//
// The input is a tokenizer.json's text. Only retnet::FormatError may escape the reader; anything
// else (another exception, a crash, a leak, undefined behaviour) is a finding. A file that is
// accepted must give a tokenizer whose encode, on a fixed mixed text and on the input's own
// longest valid UTF-8 prefix, either returns ids in [0, vocabSize()) or refuses with
// retnet::InvalidArgument (a character with no token and no unk_token or byte fallback; a
// pattern that hits PCRE2's match limit), and whose decoding of those ids streams through
// StreamDecoder in whole UTF-8 characters, equal to decode() wherever decode() is valid UTF-8.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_tokenizer.hpp"
#include "retnet/errors.hpp"
#include "retnet/io/bpe_tokenizer.hpp"

namespace {

[[noreturn]] void broken(const char* what, const std::string& detail) {
  retnet_fuzz::broken("fuzz_tokenizer_json", what, detail);
}

void check(const retnet::io::Tokenizer& tokenizer, const std::string& text) {
  std::vector<std::int64_t> ids;
  try {
    ids = tokenizer.encode(text, true);
  } catch (const retnet::InvalidArgument&) {
    return;
  }
  for (const std::int64_t id : ids) {
    if (id < 0 || id >= tokenizer.vocabSize()) broken("id out of range", std::to_string(id));
  }
  const std::string decoded = tokenizer.decode(ids);
  const std::string streamed = retnet_fuzz::streamedText("fuzz_tokenizer_json", tokenizer, ids);
  if (retnet::io::detail::firstInvalidUtf8(decoded) == decoded.size() && streamed != decoded)
    broken("the stream differs from decode()", decoded.substr(0, 40));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::shared_ptr<retnet::io::BpeTokenizer> model;
  try {
    model = retnet::io::BpeTokenizer::fromJson(
        retnet::io::JsonFile::parse(text, "<fuzz>/tokenizer.json"), nullptr);
  } catch (const retnet::FormatError&) {
    return 0;
  }
  const retnet::io::Tokenizer tokenizer(model);
  check(tokenizer,
        "Hello, world! I'm caf\xC3\xA9 \xE4\xB8\xAD\xF0\x9F\x99\x82  \t\r\n 12345 <s></s> x");
  check(tokenizer, text.substr(0, retnet::io::detail::firstInvalidUtf8(text)).substr(0, 512));
  return 0;
}
