// torchscale's rotary position encoding ("theta shift", xPos without its scale; paper §2.1).
#pragma once

#include <cmath>
#include <vector>

#include "retnet/errors.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

/// Rotates each adjacent pair (2i, 2i+1) of a head's dk-vector at position p by the angle
/// p·θ_i (GPT-J pairing):
///
///   out[2i]   = x[2i]   cos(pθ_i) − x[2i+1] sin(pθ_i)
///   out[2i+1] = x[2i+1] cos(pθ_i) + x[2i]   sin(pθ_i)
///
/// with θ_i = 10000^(−i/(n−1)), n = dk/2: torchscale's exponent is linspace(0, 1, n), not the
/// usual RoPE 2i/dk. This is the e^{inθ} of the paper's eq. 3 applied to q and k.
template <typename Scalar>
class RotaryEmbedding {
 public:
  explicit RotaryEmbedding(Index keyDim) : keyDim_(keyDim) {
    detail::require(keyDim >= 2 && keyDim % 2 == 0, "RotaryEmbedding",
                    "the per-head key dimension must be even and >= 2, got ", keyDim);
    const Index pairs = keyDim / 2;
    frequencies_.resize(static_cast<std::size_t>(pairs));
    for (Index i = 0; i < pairs; ++i) {
      const double exponent =
          pairs == 1 ? 0.0 : static_cast<double>(i) / static_cast<double>(pairs - 1);
      frequencies_[static_cast<std::size_t>(i)] = 1.0 / std::pow(10000.0, exponent);
    }
  }

  Index keyDim() const { return keyDim_; }
  Index pairs() const { return keyDim_ / 2; }

  /// θ_i, i < dk/2.
  const std::vector<double>& frequencies() const { return frequencies_; }

  /// torchscale's `angle` buffer: each θ_i twice (dk entries).
  Vector<double> angle() const {
    Vector<double> a(keyDim_);
    for (Index i = 0; i < keyDim_; ++i) a(i) = frequencies_[static_cast<std::size_t>(i / 2)];
    return a;
  }

  /// cos(pθ_i) and sin(pθ_i) for i < dk/2, computed in double as torchscale does.
  void fillTable(Index position, Scalar* cosines, Scalar* sines) const {
    for (Index i = 0; i < pairs(); ++i) {
      const double angle =
          static_cast<double>(position) * frequencies_[static_cast<std::size_t>(i)];
      cosines[i] = static_cast<Scalar>(std::cos(angle));
      sines[i] = static_cast<Scalar>(std::sin(angle));
    }
  }

  /// Rotates `heads` consecutive dk-vectors starting at `values` by one table row.
  void rotate(Scalar* values, Index heads, const Scalar* cosines, const Scalar* sines) const {
    for (Index h = 0; h < heads; ++h) {
      Scalar* x = values + h * keyDim_;
      for (Index i = 0; i < pairs(); ++i) {
        const Scalar even = x[2 * i], odd = x[2 * i + 1];
        x[2 * i] = even * cosines[i] - odd * sines[i];
        x[2 * i + 1] = odd * cosines[i] + even * sines[i];
      }
    }
  }

 private:
  Index keyDim_;
  std::vector<double> frequencies_;
};

}  // namespace retnet
