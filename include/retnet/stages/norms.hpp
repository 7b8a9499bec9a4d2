// Stage: row normalisations. RMSNorm (torchscale's and FLA's, with or without a weight) and
// LayerNorm (RWKV's, weight and bias).
//
// Each works row by row, so y may be x itself (in place); blocks of rows go to threads
// (detail::forRowBlocks), each row computed whole by one thread.
#pragma once

#include <cmath>

#include "retnet/detail/checks.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/tensor.hpp"

namespace retnet::stages {

/// y_r = x_r / sqrt(mean_i(x_ri²) + eps), then ⊙ w if a weight is given (w == nullptr: none).
///   x, y (rows x n); w (n) or null; y may be x.
template <typename Scalar>
void rmsNorm(detail::NoDeduce<ConstMatrixRef<Scalar>> x, const Scalar* w, double eps,
             detail::NoDeduce<MatrixRef<Scalar>> y) {
  detail::requireShape("stages::rmsNorm", y, x.rows(), x.cols(), "y (x's shape)");
  const Index n = x.cols();
  const auto epsilon = static_cast<Scalar>(eps);
  detail::forRowBlocks(x.rows(), [&](Index begin, Index count) {
    for (Index r = begin; r < begin + count; ++r) {
      const Scalar meanSquare = x.row(r).squaredNorm() / static_cast<Scalar>(n);
      const Scalar inverse = Scalar(1) / std::sqrt(meanSquare + epsilon);
      if (w == nullptr) {
        y.row(r) = x.row(r) * inverse;
      } else {
        y.row(r) =
            (x.row(r) * inverse)
                .cwiseProduct(Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>(w, n));
      }
    }
  });
}

/// y_r = (x_r − μ_r) / sqrt(σ²_r + eps) ⊙ w + b, with μ_r and σ²_r the mean and the biased
/// variance (1/n) Σ_i (x_ri − μ_r)² of row r (PyTorch's LayerNorm).
///   x, y (rows x n); w, b (n); y may be x.
template <typename Scalar>
void layerNorm(detail::NoDeduce<ConstMatrixRef<Scalar>> x, const Scalar* w, const Scalar* b,
               double eps, detail::NoDeduce<MatrixRef<Scalar>> y) {
  detail::requireShape("stages::layerNorm", y, x.rows(), x.cols(), "y (x's shape)");
  detail::require(w != nullptr && b != nullptr, "stages::layerNorm", "weight and bias are needed");
  using RowVector = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;
  const Index n = x.cols();
  const Eigen::Map<const RowVector> weight(w, n), bias(b, n);
  const auto epsilon = static_cast<Scalar>(eps);
  detail::forRowBlocks(x.rows(), [&](Index begin, Index count) {
    for (Index r = begin; r < begin + count; ++r) {
      const Scalar mean = x.row(r).mean();
      // Two passes (mean, then squared deviations): no cancellation for rows far from zero.
      const Scalar variance = (x.row(r).array() - mean).square().sum() / static_cast<Scalar>(n);
      const Scalar inverse = Scalar(1) / std::sqrt(variance + epsilon);
      y.row(r) = ((x.row(r).array() - mean) * inverse * weight.array() + bias.array()).matrix();
    }
  });
}

}  // namespace retnet::stages
