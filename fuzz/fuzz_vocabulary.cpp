// libFuzzer target for the RWKV World vocabulary reader
// (include/retnet/io/rwkv_world_tokenizer.hpp) and the tokenizer on top of it.
//
// The input is a vocabulary file's text. Only retnet::FormatError may escape the reader; anything
// else (another exception, a crash, a leak, undefined behaviour) is a finding. A vocabulary that
// is accepted must give a tokenizer that
//   - has an entry for every single byte, so every valid UTF-8 text encodes;
//   - decodes what it encodes back to the same text (here: a fixed mixed text and the input's own
//     longest valid UTF-8 prefix), with ids in [1, vocabSize());
//   - streams the same text through StreamDecoder, whole characters only.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_tokenizer.hpp"
#include "retnet/errors.hpp"
#include "retnet/io/rwkv_world_tokenizer.hpp"

namespace {

[[noreturn]] void broken(const char* what, const std::string& detail) {
  retnet_fuzz::broken("fuzz_vocabulary", what, detail);
}

void checkRoundTrip(const retnet::io::Tokenizer& tokenizer, const std::string& text) {
  const std::vector<std::int64_t> ids = tokenizer.encode(text);
  for (const std::int64_t id : ids) {
    if (id < 1 || id >= tokenizer.vocabSize()) broken("id out of range", std::to_string(id));
  }
  if (tokenizer.decode(ids) != text) broken("decode(encode(text)) != text", text.substr(0, 40));
  const std::string streamed = retnet_fuzz::streamedText("fuzz_vocabulary", tokenizer, ids);
  if (streamed != text) broken("the stream differs from the text", text.substr(0, 40));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::shared_ptr<retnet::io::RwkvWorldTokenizer> model;
  try {
    model = retnet::io::RwkvWorldTokenizer::fromText(text, "<fuzz>");
  } catch (const retnet::FormatError&) {
    return 0;
  }
  const retnet::io::Tokenizer tokenizer(model);
  checkRoundTrip(tokenizer, "Hello, world! caf\xC3\xA9 \xE4\xB8\xAD\xF0\x9F\x99\x82 \x00\x7F\n\t ");
  checkRoundTrip(tokenizer,
                 std::string(text.substr(0, retnet::io::detail::firstInvalidUtf8(text))));
  return 0;
}
