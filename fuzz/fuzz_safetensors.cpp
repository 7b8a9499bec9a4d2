// libFuzzer target for the safetensors reader (include/retnet/io/safetensors.hpp). The reading
// checks are shared with fuzz_pth (fuzz_tensor_file.hpp).
//
// Parses the input with SafetensorsFile::fromBytes and, when that succeeds, reads every tensor
// through every reading method whose rank fits, and the metadata. Only retnet::FormatError and
// retnet::InvalidArgument are expected; anything else (another exception, a crash, a leak,
// undefined behaviour, an allocation far beyond the input size) is a finding. Beyond "does not
// crash", a few invariants the reader promises are checked and abort when broken:
//   - every tensor's byte span lies inside the input and matches numel() * dtypeSize();
//   - names() lists every tensor once, in data-offset order;
//   - readFlat/readMatrix/readVector/readTensor/readIntegers agree element for element, and the
//     reads that do not fit (wrong rank, dtype, shape or name) are refused with a FormatError;
//   - writing what was read with SafetensorsWriter and reading it back gives the same tensors.
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "fuzz_tensor_file.hpp"
#include "retnet/errors.hpp"
#include "retnet/io/linear_weight_file.hpp"
#include "retnet/io/safetensors.hpp"

namespace {

using retnet::io::Dtype;
using retnet::io::SafetensorsFile;
using retnet::io::SafetensorsWriter;
using retnet::io::TensorInfo;
using retnet_fuzz::broken;
using retnet_fuzz::check;
using retnet_fuzz::checkAgainstFlat;

/// `dataSize`: bytes after the header, which every tensor's span must stay within.
void exercise(const SafetensorsFile& file, std::size_t dataSize) {
  for (const auto& item : file.metadata()) {
    check(file.metadataValue(item.first) == item.second, "metadataValue", item.first);
  }
  (void)file.metadataValue("");
  check(file.displayName() == "fuzz-input", "displayName", "");

  const std::vector<std::string>& names = file.names();
  std::size_t previousBegin = 0;
  for (const std::string& name : names) {
    check(file.contains(name), "names() lists an unknown tensor", name);
    check(file.info(name).begin >= previousBegin, "names() out of data-offset order", name);
    previousBegin = file.info(name).begin;
  }
  const retnet_fuzz::ReadBack read = retnet_fuzz::exerciseTensors(file, dataSize);
  // Every rank-2 tensor as a dense weight in every storage (I8 ones with their scales): refused
  // with a FormatError or read, and a weight read has the tensor's shape.
  for (const std::string& name : names) {
    const TensorInfo& info = file.info(name);
    if (info.shape.size() != 2) continue;
    for (const retnet::WeightType type : {retnet::WeightType::kFull, retnet::WeightType::kBf16,
                                          retnet::WeightType::kF16, retnet::WeightType::kInt8}) {
      try {
        const auto w =
            retnet::io::readLinearWeight<float>(file, name, info.shape[0], info.shape[1], type);
        check(w.outputs() == info.shape[0] && w.inputs() == info.shape[1] && w.type() == type,
              "readLinearWeight: shape or type", name);
      } catch (const retnet::FormatError&) {
      }
    }
  }
  const std::vector<std::vector<double>>& flats = read.flats;
  const std::vector<std::vector<std::int64_t>>& integerTensors = read.integers;

  // Every value read back is exact in its dtype, so a rewrite reproduces it. Whatever the reader
  // accepted the writer must accept too, so here even retnet's own errors are findings.
  try {
    SafetensorsWriter writer;
    for (const auto& item : file.metadata()) writer.addMetadata(item.first, item.second);
    for (std::size_t t = 0; t < names.size(); ++t) {
      const TensorInfo& info = file.info(names[t]);
      if (info.dtype == Dtype::I64) {
        writer.addIntegers(names[t], info.shape, integerTensors[t].data());
      } else if (info.dtype == Dtype::I8) {  // codes: written as they are stored
        std::vector<std::int8_t> codes(flats[t].size());
        for (std::size_t i = 0; i < codes.size(); ++i)
          codes[i] = static_cast<std::int8_t>(flats[t][i]);
        writer.addEncoded(names[t], Dtype::I8, info.shape, codes.data());
      } else {
        writer.addTensor(names[t], info.dtype, info.shape, flats[t].data());
      }
    }
    const SafetensorsFile again = SafetensorsFile::fromBytes(writer.bytes(), "rewritten");
    check(again.names().size() == names.size(), "rewrite: tensor count", "");
    check(again.metadata() == file.metadata(), "rewrite: metadata", "");
    for (std::size_t t = 0; t < names.size(); ++t) {
      const TensorInfo& before = file.info(names[t]);
      const TensorInfo& after = again.info(names[t]);
      check(after.dtype == before.dtype && after.shape == before.shape, "rewrite: dtype/shape",
            names[t]);
      checkAgainstFlat(again.readFlat<double>(names[t]), flats[t], "rewrite: values", names[t]);
    }
  } catch (const std::exception& error) {
    broken("rewriting an accepted file threw", error.what());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<unsigned char> bytes(data, data + size);
  try {
    const SafetensorsFile file = SafetensorsFile::fromBytes(std::move(bytes), "fuzz-input");
    // Parsing succeeded, so the input holds an 8-byte header length that fits in it.
    std::uint64_t headerLength = 0;
    for (int i = 0; i < 8; ++i) headerLength |= std::uint64_t{data[i]} << (8 * i);
    exercise(file, size - 8 - static_cast<std::size_t>(headerLength));
  } catch (const retnet::FormatError&) {
  } catch (const retnet::InvalidArgument&) {
  }
  return 0;
}
