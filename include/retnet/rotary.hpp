// Rotary position encoding (RoPE; the paper's "theta shift", eq. 3, xPos without its scale), in
// the two layouts the published RetNets use:
//
//   interleaved (GPT-J pairs, torchscale): element 2i pairs with 2i+1, θ_i = 10000^(−i/(n−1))
//     (torchscale's exponent is linspace(0, 1, n), not the usual 2i/dk)
//   half-split (GPT-NeoX "rotate half", FLA): element i pairs with i+n, θ_i = 10000^(−2i/dk)
//
// with n = dk/2 pairs per head. A pair (a, b) at position p becomes
//   (a cos pθ_i − b sin pθ_i,  b cos pθ_i + a sin pθ_i).
#pragma once

#include <cmath>
#include <vector>

#include "retnet/detail/parallel_for.hpp"
#include "retnet/errors.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

enum class RotaryLayout {
  kInterleaved,  ///< pairs (2i, 2i+1), θ_i = 10000^(−i/(n−1)): torchscale
  kHalfSplit,    ///< pairs (i, i+n), θ_i = 10000^(−2i/dk): GPT-NeoX, FLA
};

/// cos(pθ_i) and sin(pθ_i) for a run of positions p (rows) and pairs i (columns).
template <typename Scalar>
struct RotaryTable {
  RowMatrix<Scalar> cosines;  ///< (positions x n)
  RowMatrix<Scalar> sines;    ///< (positions x n)
};

/// The rotation of one head's dk-vector by its position, in either layout.
template <typename Scalar>
class RotaryEmbedding {
 public:
  explicit RotaryEmbedding(Index keyDim, RotaryLayout layout = RotaryLayout::kInterleaved)
      : keyDim_(keyDim), layout_(layout) {
    detail::require(keyDim >= 2 && keyDim % 2 == 0, "RotaryEmbedding",
                    "the per-head key dimension must be even and >= 2, got ", keyDim);
    const Index n = keyDim / 2;
    frequencies_.resize(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) {
      const double exponent =
          layout == RotaryLayout::kHalfSplit
              ? 2.0 * static_cast<double>(i) / static_cast<double>(keyDim)
              : (n == 1 ? 0.0 : static_cast<double>(i) / static_cast<double>(n - 1));
      frequencies_[static_cast<std::size_t>(i)] = 1.0 / std::pow(10000.0, exponent);
    }
  }

  Index keyDim() const { return keyDim_; }
  Index pairs() const { return keyDim_ / 2; }
  RotaryLayout layout() const { return layout_; }

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

  /// Rows t of `table` for positions start + t, t < count (grown, never shrunk).
  void fillTable(Index start, Index count, RotaryTable<Scalar>& table) const {
    if (table.cosines.rows() < count || table.cosines.cols() != pairs()) {
      table.cosines.resize(count, pairs());
      table.sines.resize(count, pairs());
    }
    detail::forRowBlocks(count, [&](Index begin, Index rows) {
      for (Index t = begin; t < begin + rows; ++t)
        fillTable(start + t, &table.cosines(t, 0), &table.sines(t, 0));
    });
  }

  /// Rotates `heads` consecutive dk-vectors starting at `values` by one table row.
  void rotate(Scalar* values, Index heads, const Scalar* cosines, const Scalar* sines) const {
    turn<false>(values, heads, cosines, sines);
  }

  /// The backward of rotate(): the rotation is orthogonal, so its transpose is the rotation by
  /// the opposite angles, (a, b) -> (a cos pθ_i + b sin pθ_i,  b cos pθ_i − a sin pθ_i).
  void rotateBackward(Scalar* values, Index heads, const Scalar* cosines,
                      const Scalar* sines) const {
    turn<true>(values, heads, cosines, sines);
  }

 private:
  /// Each pair turned by the table's angles, or (kBack) by their opposites.
  template <bool kBack>
  void turn(Scalar* values, Index heads, const Scalar* cosines, const Scalar* sines) const {
    const Index n = pairs();
    // Element `first` of pair i and its partner `second` (the next one, or n further).
    const Index step = layout_ == RotaryLayout::kInterleaved ? 2 : 1;
    const Index partner = layout_ == RotaryLayout::kInterleaved ? 1 : n;
    for (Index h = 0; h < heads; ++h) {
      Scalar* x = values + h * keyDim_;
      for (Index i = 0; i < n; ++i) {
        Scalar& a = x[step * i];
        Scalar& b = x[step * i + partner];
        const Scalar first = a, second = b;
        if constexpr (kBack) {
          a = first * cosines[i] + second * sines[i];
          b = second * cosines[i] - first * sines[i];
        } else {
          a = first * cosines[i] - second * sines[i];
          b = second * cosines[i] + first * sines[i];
        }
      }
    }
  }

  Index keyDim_;
  RotaryLayout layout_;
  std::vector<double> frequencies_;
};

namespace stages {

/// Rotates every dk-wide head of every row of x: row t by table row t (position start + t of
/// the table's fillTable).
///   x (rows x heads·dk) in place; table (>= rows x dk/2)
template <typename Scalar>
void rotate(const RotaryEmbedding<Scalar>& rope, const RotaryTable<Scalar>& table,
            detail::NoDeduce<MatrixRef<Scalar>> x) {
  detail::require(x.cols() % rope.keyDim() == 0, "stages::rotate", "x's width (", x.cols(),
                  ") must be a multiple of the key dim (", rope.keyDim(), ")");
  detail::require(table.cosines.rows() >= x.rows() && table.cosines.cols() == rope.pairs(),
                  "stages::rotate", "the table must hold ", x.rows(), " rows of ", rope.pairs(),
                  " pairs, got (", table.cosines.rows(), ", ", table.cosines.cols(), ")");
  const Index heads = x.cols() / rope.keyDim();
  detail::forRowBlocks(x.rows(), [&](Index begin, Index count) {
    for (Index t = begin; t < begin + count; ++t)
      rope.rotate(&x(t, 0), heads, &table.cosines(t, 0), &table.sines(t, 0));
  });
}

/// The backward of rotate(): dx <- Rᵀ dx, the rotation of every pair by the opposite angle
/// −(start + t)θ_i (the rotation is orthogonal, Rᵀ = R⁻¹), in the rope's layout.
///   dx (rows x heads·dk) in place; table (>= rows x dk/2), the one the forward used
template <typename Scalar>
void rotateBackward(const RotaryEmbedding<Scalar>& rope, const RotaryTable<Scalar>& table,
                    detail::NoDeduce<MatrixRef<Scalar>> dx) {
  const char* where = "stages::rotateBackward";
  detail::require(dx.cols() % rope.keyDim() == 0, where, "dx's width (", dx.cols(),
                  ") must be a multiple of the key dim (", rope.keyDim(), ")");
  detail::require(table.cosines.rows() >= dx.rows() && table.cosines.cols() == rope.pairs(), where,
                  "the table must hold ", dx.rows(), " rows of ", rope.pairs(), " pairs, got (",
                  table.cosines.rows(), ", ", table.cosines.cols(), ")");
  const Index heads = dx.cols() / rope.keyDim();
  detail::forRowBlocks(dx.rows(), [&](Index begin, Index count) {
    for (Index t = begin; t < begin + count; ++t)
      rope.rotateBackward(&dx(t, 0), heads, &table.cosines(t, 0), &table.sines(t, 0));
  });
}

}  // namespace stages
}  // namespace retnet
