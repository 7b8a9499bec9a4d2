// Stages: element-wise activations (swish for the retention gate, gelu or swish in the FFN,
// RWKV-4's sigmoid and squared ReLU), the residual sum and the element-wise product.
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
  switch (activation) {
    case Activation::kSwish:
      values = values / (Scalar(1) + (-values).exp());
      break;
    case Activation::kGelu:
      values = Scalar(0.5) * values * (Scalar(1) + (values * Scalar(0.70710678118654752440)).erf());
      break;
    case Activation::kSigmoid:
      values = Scalar(1) / (Scalar(1) + (-values).exp());
      break;
    case Activation::kReluSquared:
      values = values.max(Scalar(0)).square();
      break;
  }
}

/// x <- act(x) element-wise:  swish(z) = z · σ(z) = z / (1 + e^(−z));
/// gelu(z) = z/2 · (1 + erf(z / √2)) (exact, not the tanh approximation); σ(z) = 1 / (1 + e^(−z));
/// relu²(z) = max(z, 0)².
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

/// y <- y ⊙ x (element-wise product, e.g. a gate).
///   x, y (rows x n)
template <typename Scalar>
void multiplyBy(detail::NoDeduce<ConstMatrixRef<Scalar>> x, detail::NoDeduce<MatrixRef<Scalar>> y) {
  detail::requireShape("stages::multiplyBy", y, x.rows(), x.cols(), "y (x's shape)");
  detail::forRowBlocks(x.rows(), [&](Index begin, Index count) {
    y.middleRows(begin, count).array() *= x.middleRows(begin, count).array();
  });
}

}  // namespace retnet::stages
