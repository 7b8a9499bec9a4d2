// A dense layer's weight read from a tensor file in the storage the model keeps
// (linear_weight.hpp): the one place where a file's tensor becomes a LinearWeight.
//
// A BF16 or F16 tensor kept in its own type is used in place: the file is memory-mapped
// (TensorFile::stored) and the weight points into the mapping, which it keeps alive; loading it
// costs no copy and no memory beyond the page cache's pages of the file. Its codes are checked
// finite (an exponent of all ones is infinity or NaN), which reads them once. Any other
// combination is read as Scalar and rounded once to the storage, tensor by tensor, so a load
// holds one tensor in full precision at a time.
#pragma once

#include <cstdint>
#include <string>

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

/// Tensor `name` of `file`, of shape (rows, cols), as a LinearWeight stored as `storage`.
/// FormatError for another shape, or a weight that is not finite when stored in reduced precision.
template <typename Scalar>
LinearWeight<Scalar> readLinearWeight(const TensorFile& file, const std::string& name, Index rows,
                                      Index cols, WeightType storage) {
  file.requireShape(name, {rows, cols});
  const Dtype dtype = file.info(name).dtype;
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
