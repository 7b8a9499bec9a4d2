// Stage: row normalisations. RMSNorm (torchscale's and FLA's, with or without a weight) and
// LayerNorm (RWKV's, weight and bias).
//
// Each works row by row, so y may be x itself (in place); blocks of rows go to threads
// (detail::forRowBlocks), each row computed whole by one thread.
#pragma once

#include <cmath>

#include "retnet/detail/checks.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/detail/row_sums.hpp"
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

// ---------------------------------------------------------------------------------------------
// Backward (training). Each recomputes a row's 1/rms (and mean) from x; the weight and bias
// gradients are sums over rows, added in fixed blocks of rows (detail::sumOverRowBlocks) so that
// no bit depends on the thread count.

/// The backward of rmsNorm, with s_r = 1 / sqrt(mean_i(x_ri²) + eps) and g_r = dy_r [⊙ w]:
///   dx_r = s_r · (g_r − (s_r² / n) · (g_r · x_r) · x_r)
/// (s³ is never formed: a zero row with a zero dy gets a zero dx even where s³ would overflow)
///   dw  += Σ_r dy_r ⊙ x_r · s_r                      (only with a weight)
///   x, dy, dx (rows x n); w (n) or null; dw (n), given exactly when w is, accumulated;
///   dx may be dy or x (in place), not overlap them otherwise
template <typename Scalar>
void rmsNormBackward(detail::NoDeduce<ConstMatrixRef<Scalar>> x, const Scalar* w, double eps,
                     detail::NoDeduce<ConstMatrixRef<Scalar>> dy,
                     detail::NoDeduce<MatrixRef<Scalar>> dx, Scalar* dw) {
  const char* where = "stages::rmsNormBackward";
  detail::requireShape(where, dy, x.rows(), x.cols(), "dy (x's shape)");
  detail::requireShape(where, dx, x.rows(), x.cols(), "dx (x's shape)");
  detail::require((w == nullptr) == (dw == nullptr), where,
                  "dw must be given exactly when the weight w is");
  using RowArray = Eigen::Array<Scalar, 1, Eigen::Dynamic>;
  const Index n = x.cols();
  const auto epsilon = static_cast<Scalar>(eps);
  const Eigen::Map<const RowArray> weight(w, w == nullptr ? 0 : n);
  const auto sum = detail::sumOverRowBlocks<Scalar>(
      x.rows(), w == nullptr ? 0 : n, [&](Index begin, Index count, auto partial) {
        for (Index r = begin; r < begin + count; ++r) {
          const auto xr = x.row(r).array();
          const auto dyr = dy.row(r).array();
          const Scalar inverse =
              Scalar(1) / std::sqrt(x.row(r).squaredNorm() / static_cast<Scalar>(n) + epsilon);
          if (w == nullptr) {
            const Scalar correction = inverse * inverse * (dyr * xr).sum() / static_cast<Scalar>(n);
            dx.row(r).array() = inverse * (dyr - correction * xr);
          } else {
            partial.array() += dyr * xr * inverse;
            const Scalar correction =
                inverse * inverse * (dyr * weight * xr).sum() / static_cast<Scalar>(n);
            dx.row(r).array() = inverse * (dyr * weight - correction * xr);
          }
        }
      });
  if (dw != nullptr) Eigen::Map<RowArray>(dw, n) += sum.array();
}

/// The backward of layerNorm, with x̂_r = (x_r − μ_r) · s_r, s_r = 1 / sqrt(σ²_r + eps) and
/// g_r = dy_r ⊙ w:
///   dx_r = s_r · (g_r − mean_i(g_ri) − x̂_r · mean_i(g_ri x̂_ri))
///   dw  += Σ_r dy_r ⊙ x̂_r,   db += Σ_r dy_r
///   x, dy, dx (rows x n); w, dw, db (n), dw and db accumulated; dx may be dy or x (in place),
///   not overlap them otherwise. (b does not enter the gradients.)
template <typename Scalar>
void layerNormBackward(detail::NoDeduce<ConstMatrixRef<Scalar>> x, const Scalar* w, double eps,
                       detail::NoDeduce<ConstMatrixRef<Scalar>> dy,
                       detail::NoDeduce<MatrixRef<Scalar>> dx, Scalar* dw, Scalar* db) {
  const char* where = "stages::layerNormBackward";
  detail::requireShape(where, dy, x.rows(), x.cols(), "dy (x's shape)");
  detail::requireShape(where, dx, x.rows(), x.cols(), "dx (x's shape)");
  detail::require(w != nullptr && dw != nullptr && db != nullptr, where,
                  "the weight w and the gradients dw, db are needed");
  using RowArray = Eigen::Array<Scalar, 1, Eigen::Dynamic>;
  const Index n = x.cols();
  const auto size = static_cast<Scalar>(n);
  const Eigen::Map<const RowArray> weight(w, n);
  const auto epsilon = static_cast<Scalar>(eps);
  // partial = [Σ dy ⊙ x̂ | Σ dy]
  const auto sum = detail::sumOverRowBlocks<Scalar>(
      x.rows(), 2 * n, [&](Index begin, Index count, auto partial) {
        for (Index r = begin; r < begin + count; ++r) {
          const auto dyr = dy.row(r).array();
          const Scalar mean = x.row(r).mean();
          const auto centred = x.row(r).array() - mean;
          const Scalar variance = centred.square().sum() / size;
          const Scalar inverse = Scalar(1) / std::sqrt(variance + epsilon);
          const auto normalised = centred * inverse;
          partial.head(n).array() += dyr * normalised;
          partial.tail(n).array() += dyr;
          const Scalar meanG = (dyr * weight).sum() / size;
          const Scalar meanGx = (dyr * weight * normalised).sum() / size;
          dx.row(r).array() = inverse * (dyr * weight - meanG - normalised * meanGx);
        }
      });
  Eigen::Map<RowArray>(dw, n) += sum.head(n).array();
  Eigen::Map<RowArray>(db, n) += sum.tail(n).array();
}

}  // namespace retnet::stages
