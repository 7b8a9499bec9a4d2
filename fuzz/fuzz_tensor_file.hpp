// What the libFuzzer targets of the tensor-file readers (fuzz_safetensors, fuzz_pth) share:
// reading every tensor of a file that parsed through every method whose rank fits, checking the
// invariants TensorFile promises, and aborting when one breaks. fuzz_pth's archive around a raw
// pickle is here too, so make_corpus writes seeds that fit it.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "pth_builder.hpp"
#include "retnet/errors.hpp"
#include "retnet/io/tensor_file.hpp"

namespace retnet_fuzz {

[[noreturn]] inline void broken(const char* what, const std::string& name) {
  std::fprintf(stderr, "fuzz: invariant broken: %s (tensor '%s')\n", what, name.c_str());
  std::abort();
}

inline void check(bool condition, const char* what, const std::string& name) {
  if (!condition) broken(what, name);
}

/// Equal as values read from a file: same bits, or both NaN (NaN payloads may change in
/// float <-> double conversions).
inline bool sameValue(double a, double b) {
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
void readTensorOfRank(const retnet::io::TensorFile& file, const retnet::io::TensorInfo& info,
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

/// What exerciseTensors read, in names() order: every tensor as doubles, and the I64 ones as
/// integers (empty for the others).
struct ReadBack {
  std::vector<std::vector<double>> flats;
  std::vector<std::vector<std::int64_t>> integers;
};

/// Reads every tensor of `file` every way that fits its rank and dtype, checks that the ways
/// agree and that the ways that do not fit are refused, and that each tensor's span lies within
/// the first `dataSize` bytes its offsets count from and holds numel * dtypeSize bytes.
inline ReadBack exerciseTensors(const retnet::io::TensorFile& file, std::size_t dataSize) {
  using retnet::io::Dtype;
  using retnet::io::TensorInfo;
  ReadBack read;
  for (const std::string& name : file.names()) {
    check(file.contains(name), "names() lists an unknown tensor", name);
    const TensorInfo& info = file.info(name);
    check(info.name == name, "info().name", name);
    check(info.begin <= info.end && info.end <= dataSize, "span outside the data", name);
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
      read.integers.push_back(integers);
    } else {
      requireRefused([&] { (void)file.readIntegers(name); }, "readIntegers(not I64)", name);
      read.integers.emplace_back();
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
    read.flats.push_back(flat);
  }
  // Not UTF-8, so no JSON key can name it (a pickled name can: then it is not missing).
  const std::string missing = "\xff no such tensor";
  if (!file.contains(missing)) {
    requireRefused([&] { (void)file.info(missing); }, "info(missing)", "");
  }
  return read;
}

// ---- fuzz_pth: the archive around a raw pickle ------------------------------------------------

/// The storages fuzz_pth puts next to a raw pickle: "0" 24 F32 values 0..23 (96 bytes), "2"
/// empty, and "1", "3", "4", "5" of 16 bytes (8 BF16 or F16, 4 F32, 2 F64 or I64 elements; one
/// storage has one dtype, so the seeds give each dtype its own).
inline std::vector<std::pair<std::string, retnet::pth_builder::Bytes>> pthFuzzStorages() {
  retnet::pth_builder::Bytes sixteen;
  for (int i = 0; i < 16; ++i) sixteen.push_back(static_cast<unsigned char>(0x3F ^ (i * 37)));
  return {{"0", retnet::pth_builder::floatStorage(24)},
          {"1", sixteen},
          {"2", {}},
          {"3", sixteen},
          {"4", sixteen},
          {"5", sixteen}};
}

/// torch.save's archive ("archive/data.pkl", the storages, "archive/version") around `pickle`.
inline retnet::pth_builder::Bytes pthFuzzArchive(const retnet::pth_builder::Bytes& pickle) {
  return retnet::pth_builder::zip(retnet::pth_builder::archiveEntries(pickle, pthFuzzStorages()));
}

}  // namespace retnet_fuzz
