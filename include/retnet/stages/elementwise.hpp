// Stages: element-wise activations (swish for the retention gate, gelu or swish in the FFN,
// RWKV-4's sigmoid and squared ReLU), the residual sum and the element-wise product.
#pragma once

#include <algorithm>
#include <unsupported/Eigen/SpecialFunctions>

#include "retnet/activation.hpp"
#include "retnet/detail/checks.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/tensor.hpp"

namespace retnet::detail {
/// Values per piece of a row in the activations' backward: a stack buffer of this many holds
/// act'(z), so the backward allocates nothing and reads each input once.
inline constexpr Index kActivationPiece = 256;
template <typename Scalar>
using ActivationPiece =
    Eigen::Array<Scalar, 1, Eigen::Dynamic, Eigen::RowMajor, 1, kActivationPiece>;

/// d <- act'(z) for a piece of at most kActivationPiece values (z an array expression):
///   swish'(z) = σ(z) · (1 + z · (1 − σ(z)));  gelu'(z) = Φ(z) + z · φ(z) with
///   Φ(z) = (1 + erf(z/√2))/2 and φ(z) = e^(−z²/2)/√(2π) (exact gelu);  σ'(z) = σ(z)(1 − σ(z));
///   (relu²)'(z) = 2 · max(z, 0).
template <typename Scalar, typename Z>
void activationDerivativePiece(const Z& z, Activation activation, ActivationPiece<Scalar>& d) {
  d.resize(z.size());
  switch (activation) {
    case Activation::kSwish:
      d = Scalar(1) / (Scalar(1) + (-z).exp());
      d = d * (Scalar(1) + z * (Scalar(1) - d));
      break;
    case Activation::kGelu:
      d = Scalar(0.5) * (Scalar(1) + (z * Scalar(0.70710678118654752440)).erf()) +
          z * (Scalar(-0.5) * z.square()).exp() * Scalar(0.39894228040143267794);
      break;
    case Activation::kSigmoid:
      d = Scalar(1) / (Scalar(1) + (-z).exp());
      d = d * (Scalar(1) - d);
      break;
    case Activation::kReluSquared:
      d = Scalar(2) * z.max(Scalar(0));
      break;
  }
}
}  // namespace retnet::detail

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

// ---------------------------------------------------------------------------------------------
// Backward (training): the derivatives of the activations.

/// activateBackward() on the calling thread only (for callers that already split the rows).
template <typename Scalar>
void activateRowsBackward(detail::NoDeduce<ConstMatrixRef<Scalar>> x, Activation activation,
                          detail::NoDeduce<ConstMatrixRef<Scalar>> dy,
                          detail::NoDeduce<MatrixRef<Scalar>> dx) {
  detail::ActivationPiece<Scalar> derivative;
  for (Index r = 0; r < x.rows(); ++r) {
    for (Index c = 0; c < x.cols(); c += detail::kActivationPiece) {
      const Index n = std::min(detail::kActivationPiece, x.cols() - c);
      detail::activationDerivativePiece<Scalar>(x.row(r).segment(c, n).array(), activation,
                                                derivative);
      dx.row(r).segment(c, n).array() = dy.row(r).segment(c, n).array() * derivative;
    }
  }
}

/// The backward of activate():  dx = dy ⊙ act'(x) element-wise, given the forward's input x:
///   swish'(z) = σ(z) · (1 + z · (1 − σ(z)));  gelu'(z) = Φ(z) + z · φ(z) (exact gelu: Φ the
///   normal CDF (1 + erf(z/√2))/2, φ its density e^(−z²/2)/√(2π));  σ'(z) = σ(z) · (1 − σ(z));
///   (relu²)'(z) = 2 · max(z, 0).
///   x, dy, dx (rows x n); dx may be dy or x (in place), not overlap them otherwise
template <typename Scalar>
void activateBackward(detail::NoDeduce<ConstMatrixRef<Scalar>> x, Activation activation,
                      detail::NoDeduce<ConstMatrixRef<Scalar>> dy,
                      detail::NoDeduce<MatrixRef<Scalar>> dx) {
  const char* where = "stages::activateBackward";
  detail::requireShape(where, dy, x.rows(), x.cols(), "dy (x's shape)");
  detail::requireShape(where, dx, x.rows(), x.cols(), "dx (x's shape)");
  detail::forRowBlocks(x.rows(), [&](Index begin, Index count) {
    activateRowsBackward<Scalar>(x.middleRows(begin, count), activation,
                                 dy.middleRows(begin, count), dx.middleRows(begin, count));
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
