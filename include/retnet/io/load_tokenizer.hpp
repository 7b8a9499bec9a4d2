// retnet::io::loadTokenizer(path): a tokenizer from its file, or from a model directory that
// holds one. Formats: the RWKV World vocabulary (rwkv_vocab*.txt, io/rwkv_world_tokenizer.hpp),
// Hugging Face `tokenizer.json` with a BPE model (io/bpe_tokenizer.hpp) and SentencePiece
// `tokenizer.model` (io/sentencepiece_tokenizer.hpp: with libsentencepiece, else a FormatError
// saying so). tokenizer_config.json beside the file is read too when it exists (add_bos_token /
// add_eos_token). A directory with both tokenizer.json and tokenizer.model (as fla-hub's) is read
// through tokenizer.json, which needs no optional library for SentencePiece-style files.
#pragma once

#include <filesystem>
#include <string>

#include "retnet/io/bpe_tokenizer.hpp"
#include "retnet/io/rwkv_world_tokenizer.hpp"
#include "retnet/io/sentencepiece_tokenizer.hpp"
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
    for (const char* name : {"tokenizer.json", "tokenizer.model"}) {
      if (found.empty() && fs::exists(file / name, error)) found = file / name;
    }
    if (found.empty()) {
      throw FormatError(retnet::detail::concat(
          path,
          ": no tokenizer in this directory (tokenizer.json, tokenizer.model, rwkv_vocab*.txt)"));
    }
    file = found;
  }
  const fs::path config = file.parent_path() / "tokenizer_config.json";
  const std::string configPath =
      file.filename() != "tokenizer_config.json" && fs::is_regular_file(config, error)
          ? config.string()
          : std::string();
  if (file.extension() == ".txt") return Tokenizer(RwkvWorldTokenizer::read(file.string()));
  if (file.extension() == ".json") return Tokenizer(BpeTokenizer::read(file.string(), configPath));
  if (file.extension() == ".model") return readSentencePieceTokenizer(file.string(), configPath);
  throw FormatError(retnet::detail::concat(
      file.string(),
      ": not a tokenizer format retnet reads (a Hugging Face tokenizer.json, a SentencePiece "
      ".model, or the RWKV World vocabulary, a .txt file)"));
}

}  // namespace retnet::io
