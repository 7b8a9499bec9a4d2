// retnet::io::loadTokenizer(path): a tokenizer from its file, or from a model directory that
// holds one. Formats: the RWKV World vocabulary (rwkv_vocab*.txt, io/rwkv_world_tokenizer.hpp) and
// Hugging Face `tokenizer.json` with a BPE model (io/bpe_tokenizer.hpp; tokenizer_config.json
// beside it is read too when it exists: add_bos_token / add_eos_token). A SentencePiece
// `tokenizer.model` is refused with a FormatError that says it is not supported yet (issue 11),
// never guessed at.
#pragma once

#include <filesystem>
#include <string>

#include "retnet/io/bpe_tokenizer.hpp"
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
    if (found.empty() && fs::exists(file / "tokenizer.json", error))
      found = file / "tokenizer.json";
    if (found.empty()) {
      throw FormatError(retnet::detail::concat(
          path, fs::exists(file / "tokenizer.model", error)
                    ? ": tokenizer.model (SentencePiece) is not supported yet; a tokenizer.json "
                      "or the RWKV World vocabulary (rwkv_vocab*.txt) is"
                    : ": no tokenizer in this directory (tokenizer.json, rwkv_vocab*.txt)"));
    }
    file = found;
  }
  if (file.extension() == ".txt") return Tokenizer(RwkvWorldTokenizer::read(file.string()));
  if (file.extension() == ".json") {
    const fs::path config = file.parent_path() / "tokenizer_config.json";
    const bool hasConfig =
        file.filename() != "tokenizer_config.json" && fs::is_regular_file(config, error);
    return Tokenizer(BpeTokenizer::read(file.string(), hasConfig ? config.string() : ""));
  }
  throw FormatError(retnet::detail::concat(
      file.string(),
      ": not a tokenizer format retnet reads yet (a Hugging Face tokenizer.json, or the RWKV "
      "World vocabulary, a .txt file; tokenizer.model comes with issue 11)"));
}

}  // namespace retnet::io
