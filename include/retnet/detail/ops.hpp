// Row-wise building blocks: RMS normalisation and element-wise activations.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <unsupported/Eigen/SpecialFunctions>

#include "retnet/activation.hpp"
#include "retnet/tensor.hpp"

namespace retnet::detail {

/// x <- x / sqrt(mean(x²) + eps) for every row of `rows`, then ⊙ weight if one is given
/// (torchscale's RMSNorm; the retention group norm is the same without a weight).
template <typename Derived, typename Scalar>
void rmsNormRows(Eigen::MatrixBase<Derived>& rows, double eps, const Vector<Scalar>* weight) {
  const Scalar epsilon = static_cast<Scalar>(eps);
  for (Index i = 0; i < rows.rows(); ++i) {
    auto row = rows.row(i);
    const Scalar meanSquare = row.squaredNorm() / static_cast<Scalar>(row.size());
    row *= Scalar(1) / std::sqrt(meanSquare + epsilon);
    if (weight != nullptr) row.array() *= weight->transpose().array();
  }
}

/// Applies `activation` element-wise, in place.
template <typename Derived>
void activateInPlace(Eigen::ArrayBase<Derived>&& values, Activation activation) {
  using Scalar = typename Derived::Scalar;
  if (activation == Activation::kSwish) {
    values = values / (Scalar(1) + (-values).exp());
  } else {
    values = Scalar(0.5) * values * (Scalar(1) + (values * Scalar(0.70710678118654752440)).erf());
  }
}

}  // namespace retnet::detail
