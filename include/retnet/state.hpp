// The recurrent state of single-head retention.
#pragma once

#include <algorithm>
#include <vector>

#include "retnet/detail/checks.hpp"
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
    detail::require(position >= 0 && position <= kMaxPosition, "RetentionState::setPosition",
                    "position must be in [0, 2^53], got ", position);
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

/// What multi-scale retention (and a RetNet block, whose only state is its retention's) carries
/// from one part of a sequence to the next: for every batch item and head the unnormalised
/// state S = Σ_s γ_h^(n-s) k_sᵀ v_s (dk x dv), and every batch item's position (the number of
/// positions it has consumed). torchscale's normalised states are functions of these two: its
/// recurrent state is S / sqrt(Σ_{m<=n} γ^m) and its chunkwise state S / Σ_{j<C} γ^j, so one
/// state serves every form, in any order.
///
/// A default-constructed state is empty: the first form that uses it sizes it. Position 0 means
/// S is zero. The state is a plain value: copying it branches a conversation. (The layers'
/// scratch buffers live elsewhere: MultiScaleRetentionScratch.) Batch items may sit at different
/// positions (each is rotated and normalised at its own); every form advances each item by the
/// length of its input.
template <typename Scalar>
class MultiScaleRetentionState {
 public:
  using Values = Eigen::Tensor<Scalar, 4, Eigen::RowMajor>;  // (batch, heads, dk, dv)
  using StateMatrix = Eigen::Map<RowMatrix<Scalar>>;
  using ConstStateMatrix = Eigen::Map<const RowMatrix<Scalar>>;

  MultiScaleRetentionState() = default;
  MultiScaleRetentionState(Index batch, Index heads, Index keyDim, Index valueDim) {
    reset(batch, heads, keyDim, valueDim);
  }

  /// Zeros and sizes the state; every position becomes 0.
  void reset(Index batch, Index heads, Index keyDim, Index valueDim) {
    detail::require(batch >= 1 && heads >= 1 && keyDim >= 1 && valueDim >= 1,
                    "MultiScaleRetentionState",
                    "batch, heads, keyDim and valueDim must all be >= 1, got ", batch, ", ", heads,
                    ", ", keyDim, ", ", valueDim);
    values_.resize(batch, heads, keyDim, valueDim);
    values_.setZero();
    positions_.assign(static_cast<std::size_t>(batch), 0);
  }

  /// Forgets everything: the state becomes empty again.
  void clear() {
    values_ = Values();
    positions_.clear();
  }

  bool empty() const { return values_.size() == 0; }
  Index batch() const { return values_.dimension(0); }
  Index heads() const { return values_.dimension(1); }
  Index keyDim() const { return values_.dimension(2); }
  Index valueDim() const { return values_.dimension(3); }

  /// Bytes of state proper (S), independent of the sequence length.
  Index bytes() const { return values_.size() * static_cast<Index>(sizeof(Scalar)); }

  Index position(Index b) const {
    checkItem(b);
    return positions_[static_cast<std::size_t>(b)];
  }
  const std::vector<Index>& positions() const { return positions_; }
  void setPosition(Index b, Index position) {
    checkItem(b);
    detail::require(position >= 0 && position <= kMaxPosition,
                    "MultiScaleRetentionState::setPosition", "position must be in [0, 2^53], got ",
                    position);
    positions_[static_cast<std::size_t>(b)] = position;
  }

  /// S of batch item b and head h as a (dk x dv) matrix.
  StateMatrix matrix(Index b, Index h) {
    checkItem(b, h);
    return StateMatrix(data(b, h), keyDim(), valueDim());
  }
  ConstStateMatrix matrix(Index b, Index h) const {
    checkItem(b, h);
    return ConstStateMatrix(values_.data() + (b * heads() + h) * keyDim() * valueDim(), keyDim(),
                            valueDim());
  }

  const Values& values() const { return values_; }
  Values& values() { return values_; }

  /// Unchecked pointer to S of (b, h), for the kernels.
  Scalar* data(Index b, Index h) {
    return values_.data() + (b * heads() + h) * keyDim() * valueDim();
  }

  /// Every value of the state, batch item by batch item (what a state file stores).
  Scalar* data() { return values_.data(); }
  const Scalar* data() const { return values_.data(); }
  Index size() const { return values_.size(); }

  /// Batch item b as a state of its own (batch 1, its position kept).
  MultiScaleRetentionState item(Index b) const {
    checkItem(b);
    MultiScaleRetentionState single(1, heads(), keyDim(), valueDim());
    std::copy(itemBegin(b), itemBegin(b + 1), single.values_.data());
    single.positions_[0] = position(b);
    return single;
  }

  /// Makes batch item b a copy of item `fromItem` of `from` (S and position).
  void setItem(Index b, const MultiScaleRetentionState& from, Index fromItem) {
    checkItem(b);
    from.checkItem(fromItem);
    detail::require(
        from.heads() == heads() && from.keyDim() == keyDim() && from.valueDim() == valueDim(),
        "MultiScaleRetentionState::setItem", "the states' shapes differ");
    std::copy(from.itemBegin(fromItem), from.itemBegin(fromItem + 1),
              values_.data() + b * itemSize());
    positions_[static_cast<std::size_t>(b)] = from.position(fromItem);
  }

  /// The batch items of `other` appended after this state's (an empty state takes other's).
  void append(const MultiScaleRetentionState& other) {
    if (empty()) {
      *this = other;
      return;
    }
    detail::require(
        other.heads() == heads() && other.keyDim() == keyDim() && other.valueDim() == valueDim(),
        "MultiScaleRetentionState::append", "the states' shapes differ");
    MultiScaleRetentionState grown(batch() + other.batch(), heads(), keyDim(), valueDim());
    std::copy(values_.data(), values_.data() + values_.size(), grown.values_.data());
    std::copy(other.values_.data(), other.values_.data() + other.values_.size(),
              grown.values_.data() + values_.size());
    for (Index b = 0; b < batch(); ++b) grown.positions_[static_cast<std::size_t>(b)] = position(b);
    for (Index b = 0; b < other.batch(); ++b)
      grown.positions_[static_cast<std::size_t>(batch() + b)] = other.position(b);
    *this = std::move(grown);
  }

 private:
  void checkItem(Index b, Index h = 0) const {
    detail::require(b >= 0 && b < batch() && h >= 0 && h < heads(), "MultiScaleRetentionState",
                    "(batch item, head) must be in [0, ", batch(), ") x [0, ", heads(), "), got (",
                    b, ", ", h, ")");
  }

  Index itemSize() const { return heads() * keyDim() * valueDim(); }
  const Scalar* itemBegin(Index b) const { return values_.data() + b * itemSize(); }

  Values values_;
  std::vector<Index> positions_;
};

}  // namespace retnet
