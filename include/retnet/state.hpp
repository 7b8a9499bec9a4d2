// The recurrent state of single-head retention.
#pragma once

#include "retnet/errors.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

/// What single-head retention carries from one part of a sequence to the next: for every batch
/// item the unnormalised state S_n = Σ_{s<=n} γ^(n-s) k_sᵀ v_s (dk x dv, paper eq. 6), and the
/// number of positions consumed so far. Every form of Retention reads it and leaves it advanced,
/// so a sequence split anywhere and processed by any mix of forms gives one pass's result.
///
/// A default-constructed state is empty: the first form that uses it sizes it (zeros) from its
/// inputs. Afterwards its batch size and dimensions must match every input it meets.
template <typename Scalar>
class RetentionState {
 public:
  using StateMatrix = Eigen::Map<RowMatrix<Scalar>>;
  using ConstStateMatrix = Eigen::Map<const RowMatrix<Scalar>>;

  RetentionState() = default;

  /// A zero state for `batch` items with key width `keyDim` and value width `valueDim`.
  RetentionState(Index batch, Index keyDim, Index valueDim) { reset(batch, keyDim, valueDim); }

  /// Zeros and sizes the state and sets its position to 0.
  void reset(Index batch, Index keyDim, Index valueDim) {
    detail::require(batch >= 1 && keyDim >= 1 && valueDim >= 1, "RetentionState",
                    "batch, keyDim and valueDim must all be >= 1, got ", batch, ", ", keyDim, ", ",
                    valueDim);
    values_.resize(batch, keyDim, valueDim);
    values_.setZero();
    position_ = 0;
  }

  /// Forgets everything: the state becomes empty again.
  void clear() {
    values_ = Tensor3<Scalar>();
    position_ = 0;
  }

  bool empty() const { return values_.size() == 0; }
  Index batch() const { return values_.dimension(0); }
  Index keyDim() const { return values_.dimension(1); }
  Index valueDim() const { return values_.dimension(2); }

  /// Positions consumed since the state was empty or reset.
  Index position() const { return position_; }
  void setPosition(Index position) {
    detail::require(position >= 0, "RetentionState::setPosition", "position must be >= 0, got ",
                    position);
    position_ = position;
  }

  /// S of batch item `b` as a (dk x dv) matrix.
  StateMatrix matrix(Index b) {
    checkItem(b);
    return StateMatrix(values_.data() + b * keyDim() * valueDim(), keyDim(), valueDim());
  }
  ConstStateMatrix matrix(Index b) const {
    checkItem(b);
    return ConstStateMatrix(values_.data() + b * keyDim() * valueDim(), keyDim(), valueDim());
  }

  /// All of S as a (batch, dk, dv) tensor.
  const Tensor3<Scalar>& values() const { return values_; }
  Tensor3<Scalar>& values() { return values_; }

 private:
  void checkItem(Index b) const {
    detail::require(b >= 0 && b < batch(), "RetentionState::matrix", "batch item must be in [0, ",
                    batch(), "), got ", b);
  }

  Tensor3<Scalar> values_;  // (batch, dk, dv)
  Index position_ = 0;
};

}  // namespace retnet
