// The weights of a checkpoint as one set of named tensors, however they are stored: one
// safetensors file, one PyTorch checkpoint written by torch.save (`.pth`/`.pt`, or any file that
// starts like a ZIP archive; pth_reader.hpp), a Hugging Face directory with `model.safetensors`,
// or a directory whose tensors are split over shards named by `model.safetensors.index.json`
// ({"metadata": {...}, "weight_map": {tensor name: shard file name}}).
//
// Every shard is opened once (its header only: tensors are read on demand, file by file, piece
// by piece, so the set costs no memory beyond the headers). A shard the index names must exist
// in the directory (plain file names only), and must hold every tensor the index maps to it;
// anything else is a FormatError naming the index, the shard and the tensor.
#pragma once

#include <array>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "retnet/io/json_file.hpp"
#include "retnet/io/pth_reader.hpp"
#include "retnet/io/safetensors_reader.hpp"
#include "retnet/io/tensor_file.hpp"
#include "retnet/tensor.hpp"

namespace retnet::io {

class WeightFiles {
 public:
  /// A `.safetensors` or `.pth` file, or a model directory (`model.safetensors`, else the index).
  static WeightFiles open(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code error;
    WeightFiles files;
    if (!fs::is_directory(path, error)) {
      files.name_ = path;
      files.addFile(path, std::nullopt);
      return files;
    }
    files.name_ = path;
    const fs::path dir(path);
    if (fs::exists(dir / "model.safetensors", error)) {
      files.addFile((dir / "model.safetensors").string(), std::nullopt);
      return files;
    }
    const std::string indexPath = (dir / "model.safetensors.index.json").string();
    if (!fs::exists(indexPath, error)) {
      throw FormatError(retnet::detail::concat(
          path, ": no model.safetensors and no model.safetensors.index.json in this directory"));
    }
    const JsonFile index = JsonFile::read(indexPath, kMaxIndexBytes);
    if (!index.has("weight_map") || !index.root().at("weight_map").is_object()) {
      index.fail("'weight_map' must be an object of tensor name -> shard file name");
    }
    std::map<std::string, std::vector<std::string>> byShard;
    const nlohmann::json& map = index.root().at("weight_map");
    for (auto entry = map.begin(); entry != map.end(); ++entry) {
      if (!entry.value().is_string()) {
        index.fail("weight_map entry '", entry.key(), "' must be a file name, got ",
                   entry.value().dump());
      }
      const std::string shard = entry.value().get<std::string>();
      if (shard.empty() || shard == "." || shard == ".." ||
          shard.find_first_of(std::string("/\\\0", 3)) != std::string::npos) {
        index.fail("weight_map entry '", entry.key(), "' names ", entry.value().dump(),
                   ": shards must be plain file names in the model directory");
      }
      byShard[shard].push_back(entry.key());
    }
    if (byShard.empty()) index.fail("weight_map is empty");
    for (const auto& [shard, names] : byShard) {
      const std::string shardPath = (dir / shard).string();
      if (!fs::exists(shardPath, error)) {
        index.fail("shard '", shard, "' (holding '", names.front(), "') is missing from ", path);
      }
      files.addFile(shardPath, names);
    }
    return files;
  }

  /// The path given to open().
  const std::string& name() const { return name_; }
  /// The files, in the order opened.
  const std::vector<std::shared_ptr<const TensorFile>>& files() const { return files_; }
  /// The only file, or the first shard, when it is a safetensors file: its metadata describe a
  /// bare checkpoint. FormatError for a .pth file, which has no metadata.
  const SafetensorsFile& first() const {
    if (!firstSafetensors_) {
      throw FormatError(retnet::detail::concat(
          name_,
          ": a PyTorch (.pth) checkpoint has no safetensors metadata; this reader needs a "
          ".safetensors file"));
    }
    return *firstSafetensors_;
  }
  /// The metadata of first(); none for a .pth file.
  const std::map<std::string, std::string>& metadata() const {
    static const std::map<std::string, std::string> none;
    return firstSafetensors_ ? firstSafetensors_->metadata() : none;
  }
  /// The value of `key` in the metadata of first(); nothing when there is no such key or the
  /// file is a .pth file.
  std::optional<std::string> metadataValue(const std::string& key) const {
    if (!firstSafetensors_) return std::nullopt;
    return firstSafetensors_->metadataValue(key);
  }

  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  /// Every tensor name of the set, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> names;
    for (const auto& [name, file] : where_) names.push_back(name);
    return names;
  }

  /// Tensors read from now on are copies in owned memory, not views of the mapped files
  /// (TensorFile::neverMap; LoadOptions::map).
  void neverMap() const {
    for (const auto& file : files_) file->neverMap();
  }

  /// The file holding `name`; FormatError if none does.
  const TensorFile& fileOf(const std::string& name) const {
    const auto found = where_.find(name);
    if (found == where_.end())
      throw FormatError(retnet::detail::concat(name_, ": missing tensor '", name, "'"));
    return *found->second;
  }
  const TensorInfo& info(const std::string& name) const { return fileOf(name).info(name); }

  template <typename Scalar>
  RowMatrix<Scalar> readMatrix(const std::string& name, Index rows, Index cols) const {
    return fileOf(name).readMatrix<Scalar>(name, rows, cols);
  }
  template <typename Scalar>
  Vector<Scalar> readVector(const std::string& name, Index size) const {
    return fileOf(name).readVector<Scalar>(name, size);
  }
  template <typename Scalar>
  Vector<Scalar> readVector(const std::string& name) const {
    return fileOf(name).readVector<Scalar>(name);
  }

 private:
  /// Whether `path` (not a directory) is read as a PyTorch checkpoint: named `.pth` or `.pt`,
  /// or, unless named `.safetensors`, starting with a ZIP local file header.
  static bool isPthFile(const std::string& path) {
    const std::string extension = std::filesystem::path(path).extension().string();
    if (extension == ".pth" || extension == ".pt") return true;
    if (extension == ".safetensors") return false;
    std::ifstream in(path, std::ios::binary);
    std::array<char, 4> magic{};
    return in.read(magic.data(), 4) && std::string(magic.data(), 4) == std::string("PK\x03\x04");
  }

  /// Opens `path`; its tensors are `names` (checked to be present), or all it holds.
  void addFile(const std::string& path, const std::optional<std::vector<std::string>>& names) {
    std::shared_ptr<const TensorFile> file;
    if (isPthFile(path)) {
      file = std::make_shared<const PthFile>(PthFile::open(path));
    } else {
      auto safetensors = std::make_shared<const SafetensorsFile>(SafetensorsFile::open(path));
      if (files_.empty()) firstSafetensors_ = safetensors;
      file = std::move(safetensors);
    }
    for (const std::string& name : names ? *names : file->names()) {
      if (!file->contains(name)) {
        throw FormatError(retnet::detail::concat(name_,
                                                 ": model.safetensors.index.json maps tensor '",
                                                 name, "' to ", path, ", which does not hold it"));
      }
      where_.emplace(name, file);
    }
    files_.push_back(std::move(file));
  }

  std::string name_;
  std::vector<std::shared_ptr<const TensorFile>> files_;
  std::map<std::string, std::shared_ptr<const TensorFile>> where_;
  std::shared_ptr<const SafetensorsFile> firstSafetensors_;  ///< files_[0] when it is one
};

}  // namespace retnet::io
