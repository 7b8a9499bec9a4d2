// libFuzzer target for the safetensors reader (include/retnet/io/safetensors.hpp).
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

#include "retnet/errors.hpp"
#include "retnet/io/safetensors.hpp"

namespace {

using retnet::io::Dtype;
using retnet::io::SafetensorsFile;
using retnet::io::SafetensorsWriter;
using retnet::io::TensorInfo;

[[noreturn]] void broken(const char* what, const std::string& name) {
  std::fprintf(stderr, "fuzz_safetensors: invariant broken: %s (tensor '%s')\n", what,
               name.c_str());
  std::abort();
}

void check(bool condition, const char* what, const std::string& name) {
  if (!condition) broken(what, name);
}

/// Equal as values read from a file: same bits, or both NaN (NaN payloads may change in
/// float <-> double conversions).
bool sameValue(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::memcmp(&a, &b, sizeof a) == 0;
}

template <typename Range>
void checkAgainstFlat(const Range& values, const std::vector<double>& flat, const char* what,
                      const std::string& name) {
  check(static_cast<std::size_t>(values.size()) == flat.size(), what, name);
  const auto* data = values.data();
  for (std::size_t i = 0; i < flat.size(); ++i) check(sameValue(data[i], flat[i]), what, name);
}

/// readTensor<double, Rank> when the tensor has that rank (Rank 0..4), compared with `flat`.
template <int Rank>
void readTensorOfRank(const SafetensorsFile& file, const TensorInfo& info,
                      const std::vector<double>& flat) {
  if constexpr (Rank <= 4) {
    if (info.shape.size() == static_cast<std::size_t>(Rank)) {
      const auto tensor = file.readTensor<double, Rank>(info.name);
      check(tensor.size() == info.numel(), "readTensor size", info.name);
      for (int axis = 0; axis < Rank; ++axis) {
        check(tensor.dimension(axis) == info.shape[static_cast<std::size_t>(axis)],
              "readTensor dimension", info.name);
      }
      checkAgainstFlat(tensor, flat, "readTensor values", info.name);
      // The shape-checked overload must accept the tensor's own shape.
      std::array<Eigen::Index, static_cast<std::size_t>(Rank)> expected{};
      for (int axis = 0; axis < Rank; ++axis) {
        expected[static_cast<std::size_t>(axis)] = info.shape[static_cast<std::size_t>(axis)];
      }
      (void)file.readTensor<double, Rank>(info.name, expected);
    } else {
      readTensorOfRank<Rank + 1>(file, info, flat);
    }
  }
}

/// Runs `read`, which must be refused with one of the errors the reader documents.
template <typename Read>
void requireRefused(Read read, const char* what, const std::string& name) {
  try {
    read();
  } catch (const retnet::FormatError&) {
    return;
  } catch (const retnet::InvalidArgument&) {
    return;
  }
  broken(what, name);
}

/// `dataSize`: bytes after the header, which every tensor's span must stay within.
void exercise(const SafetensorsFile& file, std::size_t dataSize) {
  for (const auto& item : file.metadata()) {
    check(file.metadataValue(item.first) == item.second, "metadataValue", item.first);
  }
  (void)file.metadataValue("");
  check(file.displayName() == "fuzz-input", "displayName", "");

  const std::vector<std::string>& names = file.names();
  std::size_t previousBegin = 0;
  std::vector<std::vector<double>> flats;
  std::vector<std::vector<std::int64_t>> integerTensors;
  for (const std::string& name : names) {
    check(file.contains(name), "names() lists an unknown tensor", name);
    const TensorInfo& info = file.info(name);
    check(info.name == name, "info().name", name);
    check(info.begin >= previousBegin, "names() out of data-offset order", name);
    previousBegin = info.begin;
    check(info.begin <= info.end && info.end <= dataSize, "span outside the data section", name);
    check(info.end - info.begin ==
              static_cast<std::size_t>(info.numel()) * retnet::io::dtypeSize(info.dtype),
          "span size != numel * dtypeSize", name);
    file.requireShape(name, info.shape);
    std::vector<Eigen::Index> otherShape = info.shape;
    otherShape.push_back(1);
    requireRefused([&] { file.requireShape(name, otherShape); }, "requireShape(wrong shape)", name);

    const std::vector<double> flat = file.readFlat<double>(name);
    check(flat.size() == static_cast<std::size_t>(info.numel()), "readFlat size", name);
    const std::vector<float> flatFloat = file.readFlat<float>(name);
    check(flatFloat.size() == flat.size(), "readFlat<float> size", name);

    if (info.dtype == Dtype::I64) {
      const std::vector<std::int64_t> integers = file.readIntegers(name);
      check(integers.size() == flat.size(), "readIntegers size", name);
      for (std::size_t i = 0; i < flat.size(); ++i) {
        check(static_cast<double>(integers[i]) == flat[i], "readIntegers vs readFlat", name);
      }
      integerTensors.push_back(integers);
    } else {
      requireRefused([&] { (void)file.readIntegers(name); }, "readIntegers(not I64)", name);
      integerTensors.emplace_back();
    }

    if (info.shape.size() == 1) {
      checkAgainstFlat(file.readVector<double>(name), flat, "readVector values", name);
      (void)file.readVector<double>(name, info.shape[0]);
    } else {
      requireRefused([&] { (void)file.readVector<double>(name); }, "readVector(rank != 1)", name);
    }
    if (info.shape.size() == 2) {
      checkAgainstFlat(file.readMatrix<double>(name), flat, "readMatrix values", name);
      (void)file.readMatrix<float>(name, info.shape[0], info.shape[1]);
    } else {
      requireRefused([&] { (void)file.readMatrix<double>(name); }, "readMatrix(rank != 2)", name);
    }
    readTensorOfRank<0>(file, info, flat);
    if (info.shape.size() > 4) {
      requireRefused([&] { (void)file.readTensor<double, 4>(name); }, "readTensor<4>(rank > 4)",
                     name);
    }
    flats.push_back(flat);
  }
  // Not UTF-8, so no JSON key can name it.
  requireRefused([&] { (void)file.info("\xff no such tensor"); }, "info(missing)", "");

  // Every value read back is exact in its dtype, so a rewrite reproduces it. Whatever the reader
  // accepted the writer must accept too, so here even retnet's own errors are findings.
  try {
    SafetensorsWriter writer;
    for (const auto& item : file.metadata()) writer.addMetadata(item.first, item.second);
    for (std::size_t t = 0; t < names.size(); ++t) {
      const TensorInfo& info = file.info(names[t]);
      if (info.dtype == Dtype::I64) {
        writer.addIntegers(names[t], info.shape, integerTensors[t].data());
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
