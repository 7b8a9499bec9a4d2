// retnet::io::loadTokenizer(path): a tokenizer from its file, or from a model directory that
// holds one. Formats: the RWKV World vocabulary (rwkv_vocab*.txt). A Hugging Face
// `tokenizer.json` or SentencePiece `tokenizer.model` is refused with a FormatError that says
// it is not supported yet (issue 11), never guessed at.
#pragma once

#include <filesystem>
#include <string>

#include "retnet/io/rwkv_world_tokenizer.hpp"
#include "retnet/io/tokenizer.hpp"

namespace retnet::io {

inline Tokenizer loadTokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code error;
  fs::path file(path);
  if (fs::is_directory(file, error)) {
    fs::path found;
    for (const auto& entry : fs::directory_iterator(file, error)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind("rwkv_vocab", 0) == 0 && entry.path().extension() == ".txt") {
        found = entry.path();
        break;
      }
    }
    if (found.empty()) {
      const bool other =
          fs::exists(file / "tokenizer.json", error) || fs::exists(file / "tokenizer.model", error);
      throw FormatError(retnet::detail::concat(
          path, other ? ": tokenizer.json / tokenizer.model are not supported yet (only the RWKV "
                        "World vocabulary, rwkv_vocab*.txt)"
                      : ": no tokenizer in this directory (rwkv_vocab*.txt)"));
    }
    file = found;
  }
  if (file.extension() == ".txt") return Tokenizer(RwkvWorldTokenizer::read(file.string()));
  throw FormatError(retnet::detail::concat(
      file.string(),
      ": not a tokenizer format retnet reads yet (the RWKV World vocabulary, a "
      ".txt file; tokenizer.json and tokenizer.model come with issue 11)"));
}

}  // namespace retnet::io
