// Stage: the dense layer y = x · Wᵀ (PyTorch's Linear without bias).
//
// The weight reaches the kernel through LinearWeight (linear_weight.hpp): full precision, BF16,
// F16 or int8 with per-group scales; no layer knows which.
//
// The output columns are split into fixed blocks, each computed whole by one thread with a
// single-threaded Eigen product: the blocks do not depend on the thread count, so neither does
// any bit of the result, and Eigen's own OpenMP GEMM (whose blocking does depend on it) is never
// used. For a few rows (decoding) the threads stream disjoint slices of W: one row is Eigen's
// matrix-vector product (its kernel runs several rows of W at once, which kept up with memory
// best on the Xeon of the RWKV-4 comparison: 15.6 GB/s on one core against 14.0 for row-by-row
// dots), two to four rows are plain dots, each row of W read once for all of them.
//
// Reduced-precision weights: a few rows read the codes as stored (detail/lowp_kernels.hpp: AVX-512,
// AVX2 or portable, chosen at run time); more rows decode each block of 256 rows of W into a
// per-thread float panel once and run the same GEMM as full precision on it, so prefill keeps the
// GEMM's speed and pays one pass over the codes.
#pragma once

#include <algorithm>
#include <vector>

#include "retnet/detail/checks.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/errors.hpp"
#include "retnet/linear_weight.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

namespace detail {
/// This thread's panel buffer of at least `size` Scalars (grows, never shrinks).
template <typename Scalar>
Scalar* linearPanel(Index size) {
  thread_local std::vector<Scalar> panel;
  if (static_cast<Index>(panel.size()) < size) panel.resize(static_cast<std::size_t>(size));
  return panel.data();
}
}  // namespace detail

namespace stages {

/// Output columns per task: 256 rows of W (1 MiB of float32 weights at D = 1024).
inline constexpr Index kLinearColumnBlock = 256;

/// Up to this many input rows, products stream W once (decoding); more rows are GEMMs.
inline constexpr Index kLinearDotRows = 4;

/// y = x · Wᵀ:  y_rj = Σ_i x_ri W_ji.
///   x (rows x in), W (out x in), y (rows x out); y must not overlap x.
template <typename Scalar>
void linear(detail::NoDeduce<ConstMatrixRef<Scalar>> x, const LinearWeight<Scalar>& weight,
            detail::NoDeduce<MatrixRef<Scalar>> y) {
  const Index n = weight.outputs(), in = weight.inputs(), rows = x.rows();
  detail::requireShape("stages::linear", x, rows, in, "x (rows x in)");
  detail::requireShape("stages::linear", y, rows, n, "y (rows x out)");
  const bool full = weight.type() == WeightType::kFull;
  const Index blocks = (n + kLinearColumnBlock - 1) / kLinearColumnBlock;
  detail::parallelFor(blocks, [&](Index block, int) {
    const Index begin = block * kLinearColumnBlock, width = std::min(kLinearColumnBlock, n - begin);
    if (!full) {
      if (rows <= kLinearDotRows) {
        detail::lowpRows<Scalar>(weight.stored(), begin, begin + width, x.data(), x.outerStride(),
                                 rows, y.data(), y.outerStride());
      } else {
        Eigen::Map<RowMatrix<Scalar>> panel(detail::linearPanel<Scalar>(width * in), width, in);
        for (Index j = 0; j < width; ++j) weight.decodeRow(begin + j, panel.row(j).data());
        y.middleCols(begin, width).noalias() = x * panel.transpose();
      }
      return;
    }
    const RowMatrix<Scalar>& w = weight.matrix();
    if (rows <= kLinearDotRows) {
      if (rows == 1) {
        y.row(0).segment(begin, width).noalias() =
            x.row(0) * w.middleRows(begin, width).transpose();
      } else {
        for (Index j = begin; j < begin + width; ++j) {
          for (Index r = 0; r < rows; ++r) y(r, j) = w.row(j).dot(x.row(r));
        }
      }
    } else {
      y.middleCols(begin, width).noalias() = x * w.middleRows(begin, width).transpose();
    }
  });
}

}  // namespace stages
}  // namespace retnet
