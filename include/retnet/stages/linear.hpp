// Stage: the dense layer y = x · Wᵀ (PyTorch's Linear without bias) and its weight type.
//
// The weight reaches the kernel through LinearWeight, one small type: today it holds float or
// double values in PyTorch's (out, in) layout; reduced-precision storage (BF16, F16, int8 with
// scales) will be further representations of the same type, so no layer changes when it lands.
//
// The output columns are split into fixed blocks, each computed whole by one thread with a
// single-threaded Eigen product: the blocks do not depend on the thread count, so neither does
// any bit of the result, and Eigen's own OpenMP GEMM (whose blocking does depend on it) is never
// used. For a few rows (decoding) the threads stream disjoint slices of W: one row is Eigen's
// matrix-vector product (its kernel runs several rows of W at once, which kept up with memory
// best on the Xeon of the RWKV-4 comparison: 15.6 GB/s on one core against 14.0 for row-by-row
// dots), two to four rows are plain dots, each row of W read once for all of them.
#pragma once

#include <algorithm>
#include <initializer_list>

#include "retnet/detail/checks.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/errors.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

/// The weight of a dense layer, W (out x in) row-major: PyTorch's Linear layout, applied as
/// y = x · Wᵀ. Several layers reading the same input can be stacked into one (stacked()), so
/// their outputs come from one GEMM, side by side.
template <typename Scalar>
class LinearWeight {
 public:
  LinearWeight() = default;
  explicit LinearWeight(RowMatrix<Scalar> matrix) : matrix_(std::move(matrix)) {}

  /// The rows of every part, in order: W = [W_0; W_1; …]. Every part must have the same width.
  static LinearWeight stacked(std::initializer_list<const RowMatrix<Scalar>*> parts) {
    Index rows = 0;
    const Index cols = parts.size() == 0 ? 0 : (*parts.begin())->cols();
    for (const RowMatrix<Scalar>* part : parts) {
      detail::require(part->cols() == cols, "LinearWeight::stacked",
                      "every part must have the same input width ", cols, ", got ", part->cols());
      rows += part->rows();
    }
    RowMatrix<Scalar> matrix(rows, cols);
    Index row = 0;
    for (const RowMatrix<Scalar>* part : parts) {
      matrix.middleRows(row, part->rows()) = *part;
      row += part->rows();
    }
    return LinearWeight(std::move(matrix));
  }

  Index outputs() const { return matrix_.rows(); }  ///< out
  Index inputs() const { return matrix_.cols(); }   ///< in
  bool empty() const { return matrix_.size() == 0; }

  /// W as stored (out x in).
  const RowMatrix<Scalar>& matrix() const { return matrix_; }
  /// Rows [begin, begin + count) of W, e.g. one part of a stacked weight, scaled in place.
  auto rows(Index begin, Index count) { return matrix_.middleRows(begin, count); }

 private:
  RowMatrix<Scalar> matrix_;
};

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
  const RowMatrix<Scalar>& w = weight.matrix();
  const Index n = w.rows(), rows = x.rows();
  detail::requireShape("stages::linear", x, rows, w.cols(), "x (rows x in)");
  detail::requireShape("stages::linear", y, rows, n, "y (rows x out)");
  const Index blocks = (n + kLinearColumnBlock - 1) / kLinearColumnBlock;
  detail::parallelFor(blocks, [&](Index block, int) {
    const Index begin = block * kLinearColumnBlock, width = std::min(kLinearColumnBlock, n - begin);
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
