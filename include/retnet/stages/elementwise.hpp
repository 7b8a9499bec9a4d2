// Stages: element-wise activations (swish for the retention gate, gelu or swish in the FFN) and
// the residual sum.
#pragma once

#include <unsupported/Eigen/SpecialFunctions>

#include "retnet/activation.hpp"
#include "retnet/detail/checks.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/tensor.hpp"

namespace retnet::stages {

/// activate() on the calling thread only (for callers that already split the rows).
template <typename Scalar>
void activateRows(detail::NoDeduce<MatrixRef<Scalar>> x, Activation activation) {
  auto values = x.array();
  if (activation == Activation::kSwish) {
    values = values / (Scalar(1) + (-values).exp());
  } else {
    values = Scalar(0.5) * values * (Scalar(1) + (values * Scalar(0.70710678118654752440)).erf());
  }
}

/// x <- act(x) element-wise:  swish(z) = z · σ(z) = z / (1 + e^(−z));
/// gelu(z) = z/2 · (1 + erf(z / √2)) (exact, not the tanh approximation).
///   x (rows x n), in place
template <typename Scalar>
void activate(detail::NoDeduce<MatrixRef<Scalar>> x, Activation activation) {
  detail::forRowBlocks(x.rows(), [&](Index begin, Index count) {
    activateRows<Scalar>(x.middleRows(begin, count), activation);
  });
}

/// y <- y + x (a residual connection).
///   x, y (rows x n)
template <typename Scalar>
void addTo(detail::NoDeduce<ConstMatrixRef<Scalar>> x, detail::NoDeduce<MatrixRef<Scalar>> y) {
  detail::requireShape("stages::addTo", y, x.rows(), x.cols(), "y (x's shape)");
  detail::forRowBlocks(x.rows(), [&](Index begin, Index count) {
    y.middleRows(begin, count) += x.middleRows(begin, count);
  });
}

}  // namespace retnet::stages
