// Powers of a retention decay γ and the window sums built from them.
#pragma once

#include <cmath>
#include <limits>

#include "retnet/tensor.hpp"

namespace retnet::detail {

/// γ^m computed as torchscale does, exp(m · ln γ) in double, with γ^0 = 1 also for γ = 0.
class DecayPowers {
 public:
  explicit DecayPowers(double gamma)
      : gamma_(gamma),
        logGamma_(gamma > 0 ? std::log(gamma) : -std::numeric_limits<double>::infinity()) {}

  double gamma() const { return gamma_; }

  double operator()(Index m) const {
    if (m == 0) return 1.0;
    if (gamma_ == 0) return 0.0;
    return std::exp(static_cast<double>(m) * logGamma_);
  }

  /// Σ_{m=0}^{count-1} γ^m: the total decay weight of a window of `count` positions, i.e. the
  /// row sum of the decay mask D (paper eq. 5). expm1 keeps it accurate for γ near 1.
  double windowSum(Index count) const {
    if (count <= 0) return 0.0;
    if (gamma_ == 0) return 1.0;
    if (gamma_ == 1) return static_cast<double>(count);
    return std::expm1(static_cast<double>(count) * logGamma_) / std::expm1(logGamma_);
  }

 private:
  double gamma_;
  double logGamma_;
};

}  // namespace retnet::detail
