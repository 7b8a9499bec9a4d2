// Dense layers y = x · Wᵀ (PyTorch's Linear without bias) for row-major activations.
//
// The output columns are split into fixed blocks, each computed whole by one thread with a
// single-threaded Eigen product: the blocks do not depend on the thread count, so neither does
// any bit of the result, and Eigen's own OpenMP GEMM (whose blocking does depend on it) is never
// used. A block of W is large enough for GEMM efficiency, and for a single row (decoding) the
// threads stream disjoint slices of W, so a matrix-vector step uses the bandwidth of every core.
#pragma once

#include <algorithm>

#include "retnet/detail/parallel_for.hpp"
#include "retnet/tensor.hpp"

namespace retnet::detail {

/// Output columns per task: 256 rows of W (1 MiB of float32 weights at D = 1024).
inline constexpr Index kLinearColumnBlock = 256;

/// Up to this many input rows, products are row-by-row dot products: decoding streams W once,
/// and plain dots keep up with memory where Eigen's GEMV loses ~25% on long weight rows.
inline constexpr Index kLinearDotRows = 4;

/// out (rows x n) = in (rows x k) · Wᵀ with W (n x k) row-major; `out` may have a row stride.
template <typename In, typename Out, typename Scalar>
void linear(const In& in, const RowMatrix<Scalar>& weight, Out& out) {
  const Index n = weight.rows(), rows = in.rows();
  const Index blocks = (n + kLinearColumnBlock - 1) / kLinearColumnBlock;
  parallelFor(blocks, [&](Index block, int) {
    const Index begin = block * kLinearColumnBlock, width = std::min(kLinearColumnBlock, n - begin);
    if (rows <= kLinearDotRows) {
      for (Index j = begin; j < begin + width; ++j) {
        for (Index r = 0; r < rows; ++r) out(r, j) = weight.row(j).dot(in.row(r));
      }
    } else {
      out.middleCols(begin, width).noalias() = in * weight.middleRows(begin, width).transpose();
    }
  });
}

}  // namespace retnet::detail
