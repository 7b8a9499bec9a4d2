// A dense layer's weight read from a tensor file in the storage the model keeps
// (linear_weight.hpp): the one place where a file's tensor becomes a LinearWeight.
//
// A BF16 or F16 tensor kept in its own type is used in place: the file is memory-mapped
// (TensorFile::stored) and the weight points into the mapping, which it keeps alive; loading it
// costs no copy and no memory beyond the page cache's pages of the file. Its codes are checked
// finite (an exponent of all ones is infinity or NaN), which reads them once. Any other
// combination is read as Scalar and rounded once to the storage, tensor by tensor, so a load
// holds one tensor in full precision at a time. int8 weights saved by quantize.hpp (I8 codes and a
// float32 scales tensor beside them) are used in place the same way.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "retnet/errors.hpp"
#include "retnet/io/tensor_file.hpp"
#include "retnet/linear_weight.hpp"
#include "retnet/tensor.hpp"

namespace retnet::io {

/// Whether a tensor of `dtype` kept as `storage` is used as stored (no conversion).
inline bool storedAsIs(Dtype dtype, WeightType storage) {
  return (dtype == Dtype::BF16 && storage == WeightType::kBf16) ||
         (dtype == Dtype::F16 && storage == WeightType::kF16);
}

/// The metadata key naming how a quantized file (quantize.hpp) stores its dense weights; their
/// dtype is then the file's own, whatever a config's torch_dtype says of the other tensors.
inline constexpr const char* kWeightsMetadataKey = "retnet.weights";

/// The tensor holding the float32 scales of int8 weight `name` (quantized files, quantize.hpp).
inline std::string int8ScalesName(const std::string& name) { return name + ".scales"; }

namespace detail {

/// What keeps two stored tensors alive (an int8 weight's codes and scales).
inline std::shared_ptr<const void> bothOwners(std::shared_ptr<const void> a,
                                              std::shared_ptr<const void> b) {
  return std::make_shared<std::pair<std::shared_ptr<const void>, std::shared_ptr<const void>>>(
      std::move(a), std::move(b));
}

/// The int8 weight `name` (I8 codes, checked shape) with its scales, in place.
template <typename Scalar>
LinearWeight<Scalar> readInt8Weight(const TensorFile& file, const std::string& name, Index rows,
                                    Index cols) {
  const std::string scalesName = int8ScalesName(name);
  if (!file.contains(scalesName)) {
    throw FormatError(retnet::detail::concat(file.displayName(), ": tensor '", name,
                                             "' is I8: an int8 weight needs its float32 scales '",
                                             scalesName, "' in the same file"));
  }
  const Index groups = (cols + retnet::detail::kInt8Group - 1) / retnet::detail::kInt8Group;
  file.requireShape(scalesName, {rows, groups});
  if (file.info(scalesName).dtype != Dtype::F32) {
    throw FormatError(retnet::detail::concat(file.displayName(), ": tensor '", scalesName,
                                             "': int8 scales must be F32, got ",
                                             dtypeName(file.info(scalesName).dtype)));
  }
  StoredTensor codes = file.stored(name), scales = file.stored(scalesName);
  const auto* s = static_cast<const float*>(scales.data);
  bool valid = true;  // finite and >= 0: s·q is then finite for every code
  for (Index i = 0; i < rows * groups; ++i) valid &= s[i] >= 0 && s[i] <= 3.4e38f;
  if (!valid) {
    throw FormatError(retnet::detail::concat(file.displayName(), ": tensor '", scalesName,
                                             "': int8 scales must be finite and >= 0"));
  }
  return LinearWeight<Scalar>::int8(rows, cols, static_cast<const std::int8_t*>(codes.data), s,
                                    bothOwners(std::move(codes.owner), std::move(scales.owner)));
}

}  // namespace detail

/// Tensor `name` of `file`, of shape (rows, cols), as a LinearWeight stored as `storage`. An I8
/// tensor is an int8 weight with its scales beside it (int8ScalesName): used in place when kept
/// as int8, else dequantized (and rounded again for BF16/F16). FormatError for another shape,
/// missing or malformed scales, or a weight that is not finite when stored in reduced precision.
template <typename Scalar>
LinearWeight<Scalar> readLinearWeight(const TensorFile& file, const std::string& name, Index rows,
                                      Index cols, WeightType storage) {
  file.requireShape(name, {rows, cols});
  const Dtype dtype = file.info(name).dtype;
  if (dtype == Dtype::I8) {
    LinearWeight<Scalar> int8 = detail::readInt8Weight<Scalar>(file, name, rows, cols);
    return storage == WeightType::kInt8 ? int8 : int8.converted(storage);
  }
  if (storedAsIs(dtype, storage)) {
    StoredTensor bytes = file.stored(name);
    const auto* codes = static_cast<const std::uint16_t*>(bytes.data);
    const std::uint16_t exponent = dtype == Dtype::BF16 ? 0x7F80 : 0x7C00;
    const auto n = static_cast<std::size_t>(rows * cols);
    unsigned bad = 0;  // branch-free, so the scan vectorises
    for (std::size_t i = 0; i < n; ++i) bad |= unsigned((codes[i] & exponent) == exponent);
    if (bad != 0) {
      throw FormatError(retnet::detail::concat(file.displayName(), ": tensor '", name,
                                               "': holds an infinity or NaN; a ", dtypeName(dtype),
                                               " weight must be finite"));
    }
    return LinearWeight<Scalar>::halves(storage, rows, cols, codes, std::move(bytes.owner));
  }
  LinearWeight<Scalar> full(file.readMatrix<Scalar>(name));
  if (storage == WeightType::kFull) return full;
  try {
    return full.converted(storage);
  } catch (const InvalidArgument&) {
    throw FormatError(retnet::detail::concat(file.displayName(), ": tensor '", name,
                                             "': holds an infinity or NaN; it cannot be stored as ",
                                             weightTypeName(storage)));
  }
}

}  // namespace retnet::io
