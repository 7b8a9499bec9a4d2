// Saving a checkpoint with its dense weights stored in a reduced type, so that it loads without
// rounding again (and, for BF16/F16/int8 kept as such, straight from the mapped file).
//
//   io::saveQuantized("fla-hub/retnet-1.3B-100B", "retnet-1.3B-int8", WeightType::kInt8);
//   auto model = io::loadModel<float>("retnet-1.3B-int8", {WeightType::kInt8});
//
// The convention (any family; the names stay the family's own):
//   - every dense weight — each non-empty floating-point (or int8) tensor of rank 2:
//     projections, FFN, embedding, head; none of the four families keeps anything else in a
//     rank-2 tensor — is stored as the type asks:
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
#include <exception>
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
/// checks them: shapes, finite values; an I8 tensor must be an int8 weight; a tensor named as the
/// scales of a weight being quantized is refused) or a target that cannot be written (nothing
/// is left of it then).
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
  const auto fail = [&](const std::string& name, const std::string& what) {
    throw FormatError(retnet::detail::concat(files.name(), ": tensor '", name, "': ", what));
  };

  SafetensorsWriter writer;
  QuantizeSummary summary;
  for (const std::string& name : files.names()) {
    const TensorFile& file = files.fileOf(name);
    const TensorInfo& info = file.info(name);
    const bool rank2 = info.shape.size() == 2;
    // The scales of an int8 source weight travel with it.
    const std::string suffix = ".scales";
    if (name.size() > suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      const std::string base = name.substr(0, name.size() - suffix.size());
      if (files.contains(base) && files.info(base).dtype == Dtype::I8 &&
          files.info(base).shape.size() == 2)
        continue;
    }
    if (info.dtype == Dtype::I8 && !rank2)
      fail(name, "an I8 tensor must be an int8 weight (rank 2, with its scales)");
    const bool dense = rank2 && info.dtype != Dtype::I64 && info.numel() > 0;
    if (!dense) {  // copied as stored (a copy: the source is not mapped for these)
      const StoredTensor bytes = file.stored(name, /*mapping=*/false);
      writer.addEncoded(name, info.dtype, info.shape, bytes.data);
      ++summary.otherTensors;
      continue;
    }
    if (type == WeightType::kInt8 && files.contains(int8ScalesName(name)) &&
        info.dtype != Dtype::I8) {
      fail(name, "its int8 scales would be '" + int8ScalesName(name) +
                     "', a tensor the source holds already");
    }
    const Index rows = info.shape[0], cols = info.shape[1];
    const LinearWeight<float> w = readLinearWeight<float>(file, name, rows, cols, type);
    summary.sourceBytes += info.end - info.begin;
    if (info.dtype == Dtype::I8) {
      const TensorInfo& scales = file.info(int8ScalesName(name));
      summary.sourceBytes += scales.end - scales.begin;
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

  // The target: written whole, or removed again.
  try {
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
  } catch (const std::exception& e) {
    fs::remove_all(target, error);
    if (dynamic_cast<const FormatError*>(&e) != nullptr) throw;
    throw FormatError(retnet::detail::concat(target, ": cannot be written: ", e.what()));
  }
  return summary;
}

}  // namespace retnet::io
