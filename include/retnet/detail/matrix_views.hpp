// Strided matrix views into row-major activation buffers.
//
// A (batch, time, features) buffer holds, for one batch item and one head, a (time x headDim)
// block whose rows are `features` apart: a Map with an OuterStride, never a copy.
#pragma once

#include <Eigen/Core>

#include "retnet/tensor.hpp"

namespace retnet::detail {

template <typename Scalar>
using RowsMap = Eigen::Map<RowMatrix<Scalar>, 0, Eigen::OuterStride<>>;
template <typename Scalar>
using ConstRowsMap = Eigen::Map<const RowMatrix<Scalar>, 0, Eigen::OuterStride<>>;

/// `rows` x `cols` block starting at `data`, consecutive rows `stride` elements apart.
template <typename Scalar>
ConstRowsMap<Scalar> rowsView(const Scalar* data, Index rows, Index cols, Index stride) {
  return ConstRowsMap<Scalar>(data, rows, cols, Eigen::OuterStride<>(stride));
}
template <typename Scalar>
RowsMap<Scalar> rowsView(Scalar* data, Index rows, Index cols, Index stride) {
  return RowsMap<Scalar>(data, rows, cols, Eigen::OuterStride<>(stride));
}

}  // namespace retnet::detail
