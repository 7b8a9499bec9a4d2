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
#include <optional>
#include <string>
#include <utility>
#include <vector>

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

/// "bf16", "f16", "int8-g32": the value of kWeightsMetadataKey for `type`.
inline std::string weightsMetadataValue(WeightType type) {
  if (type == WeightType::kInt8)
    return std::string("int8-g") + std::to_string(retnet::detail::kInt8Group);
  return weightTypeName(type);
}

/// The type a kWeightsMetadataKey value names (one weightsMetadataValue gives), or nothing.
inline std::optional<WeightType> weightsFromMetadata(const std::string& value) {
  for (WeightType type : {WeightType::kBf16, WeightType::kF16, WeightType::kInt8})
    if (value == weightsMetadataValue(type)) return type;
  return std::nullopt;
}

/// The tensor holding the float32 scales of int8 weight `name` (quantized files, quantize.hpp).
inline std::string int8ScalesName(const std::string& name) { return name + ".scales"; }

namespace detail {

/// What keeps two stored tensors alive (an int8 weight's codes and scales).
inline std::shared_ptr<const void> bothOwners(std::shared_ptr<const void> a,
                                              std::shared_ptr<const void> b) {
  return std::make_shared<std::pair<std::shared_ptr<const void>, std::shared_ptr<const void>>>(
      std::move(a), std::move(b));
}

/// The largest scale an int8 weight may have: s·q stays finite for every code (|q| <= 128).
inline constexpr float kMaxInt8Scale = 3.4028234e38f / 128;

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
  const Index groups = retnet::detail::int8Groups(cols);
  file.requireShape(scalesName, {rows, groups});
  if (file.info(scalesName).dtype != Dtype::F32) {
    throw FormatError(retnet::detail::concat(file.displayName(), ": tensor '", scalesName,
                                             "': int8 scales must be F32, got ",
                                             dtypeName(file.info(scalesName).dtype)));
  }
  StoredTensor codes = file.stored(name);  // bytes: the same on any host
  StoredTensor scales;
  if (hostIsLittleEndian()) {
    scales = file.stored(scalesName);
  } else {  // decoded to this host's floats
    auto values = std::make_shared<std::vector<float>>(file.readFlat<float>(scalesName));
    scales.data = values->data();
    scales.owner = std::move(values);
  }
  const auto* s = static_cast<const float*>(scales.data);
  bool valid = true;  // NaN fails both
  for (Index i = 0; i < rows * groups; ++i) valid &= s[i] >= 0 && s[i] <= kMaxInt8Scale;
  if (!valid) {
    throw FormatError(retnet::detail::concat(file.displayName(), ": tensor '", scalesName,
                                             "': int8 scales must lie in [0, ", kMaxInt8Scale,
                                             "] (finite weights)"));
  }
  return LinearWeight<Scalar>::int8(rows, cols, static_cast<const std::int8_t*>(codes.data), s,
                                    bothOwners(std::move(codes.owner), std::move(scales.owner)));
}

/// `weight` stored as `storage`; a non-finite weight is a FormatError naming the tensor.
template <typename Scalar>
LinearWeight<Scalar> convertedFromFile(const TensorFile& file, const std::string& name,
                                       const LinearWeight<Scalar>& weight, WeightType storage) {
  try {
    return weight.converted(storage);
  } catch (const InvalidArgument&) {
    throw FormatError(retnet::detail::concat(file.displayName(), ": tensor '", name,
                                             "': holds an infinity or NaN; it cannot be stored as ",
                                             weightTypeName(storage)));
  }
}

}  // namespace detail

/// Tensor `name` of `file`, of shape (rows, cols), as a LinearWeight stored as `storage`. An I8
/// tensor is an int8 weight with its scales beside it (int8ScalesName): used in place when kept
/// as int8, else dequantized (and rounded again for BF16/F16). Other dtypes must be F64, F32, F16
/// or BF16. FormatError for another shape or dtype, missing or malformed scales, or a weight that
/// is not finite when stored in reduced precision.
template <typename Scalar>
LinearWeight<Scalar> readLinearWeight(const TensorFile& file, const std::string& name, Index rows,
                                      Index cols, WeightType storage) {
  file.requireShape(name, {rows, cols});
  const Dtype dtype = file.info(name).dtype;
  if (dtype == Dtype::I8) {
    LinearWeight<Scalar> int8 = detail::readInt8Weight<Scalar>(file, name, rows, cols);
    if (storage == WeightType::kInt8) return int8;
    return detail::convertedFromFile(file, name, int8, storage);
  }
  if (dtype == Dtype::I64) {
    throw FormatError(retnet::detail::concat(file.displayName(), ": tensor '", name,
                                             "': a weight must be F64, F32, F16, BF16 or I8 (int8 "
                                             "with scales), got I64"));
  }
  if (storedAsIs(dtype, storage) && detail::hostIsLittleEndian()) {
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
  return detail::convertedFromFile(file, name, full, storage);
}

}  // namespace retnet::io
