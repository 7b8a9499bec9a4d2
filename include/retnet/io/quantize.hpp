// Saving a checkpoint with its dense weights stored in a reduced type, so that it loads without
// rounding again (and, for BF16/F16/int8 kept as such, straight from the mapped file).
//
//   io::saveQuantized("fla-hub/retnet-1.3B-100B", "retnet-1.3B-int8", WeightType::kInt8);
//   auto model = io::loadModel<float>("retnet-1.3B-int8", {WeightType::kInt8});
//
// The convention (any family; the names stay the family's own):
//   - every dense weight — each floating-point tensor of rank 2: projections, FFN, embedding,
//     head; no family keeps anything else in a rank-2 tensor — is stored as the type asks:
//       bf16 / f16: a BF16 / F16 tensor of the same name and shape;
//       int8:       an I8 tensor of the same name and shape (the codes q, row-major) and an F32
//                   tensor `<name>.scales` of shape (rows, ⌈cols/32⌉): w = s·q, s of row j and
//                   columns [32g, 32g + 32) at (j, g) (linear_weight.hpp; ggml Q8_0's grouping,
//                   with float32 scales);
//   - every other tensor (norms, decays, buffers) is copied as stored;
//   - the metadata are the source's (its first file's) plus "retnet.weights": "bf16", "f16" or
//     "int8-g32";
//   - one model.safetensors file, tensors ordered by element size (8, 4, 2, 1 bytes) so that
//     each lies at an offset aligned to its size (mapped in place when loaded);
//   - a model directory becomes a directory with the source's other files (config.json,
//     tokenizer files) copied beside it; a file becomes a file.
// The values are those loadModel<float>(source, {type}) keeps: the file's values read as float,
// rounded once (int8: per group, from the group's max |w|). The file is built in memory (the
// reduced weights, once) and written tensor by tensor.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "retnet/errors.hpp"
#include "retnet/io/linear_weight_file.hpp"
#include "retnet/io/safetensors_writer.hpp"
#include "retnet/io/weight_files.hpp"
#include "retnet/linear_weight.hpp"

namespace retnet::io {

/// "bf16", "f16", "int8-g32": the value of kWeightsMetadataKey for `type`.
inline std::string weightsMetadataValue(WeightType type) {
  if (type == WeightType::kInt8)
    return std::string("int8-g") + std::to_string(retnet::detail::kInt8Group);
  return weightTypeName(type);
}

/// What saveQuantized wrote.
struct QuantizeSummary {
  Index denseWeights = 0;          ///< tensors stored as the type (int8: each with its scales)
  Index otherTensors = 0;          ///< tensors copied as stored
  std::size_t sourceBytes = 0;     ///< the dense weights' bytes in the source
  std::size_t quantizedBytes = 0;  ///< … and in the target (int8: codes and scales)
  std::string weightsFile;         ///< the safetensors file written
};

/// Writes the checkpoint at `source` (a model directory, a .safetensors or .pth file) to `target`
/// (a directory for a directory, else a file), every dense weight stored as `type` (kBf16, kF16
/// or kInt8), by the convention above. InvalidArgument for kFull or an existing target;
/// FormatError for what the source's reading finds wrong (its tensors are checked as loading
/// checks them: shapes, finite values).
inline QuantizeSummary saveQuantized(const std::string& source, const std::string& target,
                                     WeightType type) {
  namespace fs = std::filesystem;
  const char* where = "io::saveQuantized";
  retnet::detail::require(type != WeightType::kFull, where,
                          "the type must be bf16, f16 or int8, got ", weightTypeName(type));
  std::error_code error;
  retnet::detail::require(!fs::exists(target, error), where, "the target ", target,
                          " exists already; it is not overwritten");
  const WeightFiles files = WeightFiles::open(source);
  const bool directory = fs::is_directory(source, error);

  SafetensorsWriter writer;
  QuantizeSummary summary;
  for (const std::string& name : files.names()) {
    const TensorFile& file = files.fileOf(name);
    const TensorInfo& info = file.info(name);
    // The scales of an int8 source weight travel with it.
    if (name.size() > 7 && name.compare(name.size() - 7, 7, ".scales") == 0) {
      const std::string base = name.substr(0, name.size() - 7);
      if (files.contains(base) && files.info(base).dtype == Dtype::I8) continue;
    }
    const bool dense = info.shape.size() == 2 && info.dtype != Dtype::I64;
    if (!dense) {
      const StoredTensor bytes = file.stored(name);
      writer.addEncoded(name, info.dtype, info.shape, bytes.data);
      ++summary.otherTensors;
      continue;
    }
    const Index rows = info.shape[0], cols = info.shape[1];
    const LinearWeight<float> w = readLinearWeight<float>(file, name, rows, cols, type);
    summary.sourceBytes += info.end - info.begin;
    if (info.dtype == Dtype::I8) {
      summary.sourceBytes +=
          file.info(int8ScalesName(name)).end - file.info(int8ScalesName(name)).begin;
    }
    summary.quantizedBytes += w.storedBytes();
    ++summary.denseWeights;
    const auto& codes = w.parts().front().codes;  // one part: read from one tensor
    if (type == WeightType::kInt8) {
      writer.addEncoded(name, Dtype::I8, info.shape, codes.data);
      writer.addEncoded(int8ScalesName(name), Dtype::F32, {rows, w.scaleGroups()}, codes.scales);
    } else {
      writer.addEncoded(name, type == WeightType::kBf16 ? Dtype::BF16 : Dtype::F16, info.shape,
                        codes.data);
    }
  }
  for (const auto& [key, value] : files.metadata())
    if (key != kWeightsMetadataKey) writer.addMetadata(key, value);
  writer.addMetadata(kWeightsMetadataKey, weightsMetadataValue(type));
  writer.sortByElementSize();

  if (directory) {
    fs::create_directories(target);
    for (const auto& entry : fs::directory_iterator(source)) {
      const std::string file = entry.path().filename().string();
      const std::string extension = entry.path().extension().string();
      if (!entry.is_regular_file() || extension == ".safetensors" || extension == ".pth" ||
          extension == ".pt" || extension == ".bin" || file == "model.safetensors.index.json")
        continue;
      fs::copy_file(entry.path(), fs::path(target) / file);
    }
    summary.weightsFile = (fs::path(target) / "model.safetensors").string();
  } else {
    summary.weightsFile = target;
  }
  writer.write(summary.weightsFile);
  return summary;
}

}  // namespace retnet::io
