// The recurrent state of an RWKV-4 block (docs/semantics/rwkv4.md §3.8).
#pragma once

#include <algorithm>
#include <utility>
#include <vector>

#include "retnet/detail/checks.hpp"
#include "retnet/stages/wkv.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

/// What an RWKV-4 block carries from one part of a sequence to the next, per batch item, in the
/// golden data's slot order: ffn_xx (the last ln2 output, channel mixing's token shift, C),
/// att_xx (the last ln1 output, time mixing's token shift, C), and WKV's aa, bb, pp (A each); and
/// every item's position (tokens consumed). Empty it is zeros with pp = −1e30 (for −∞). Every form
/// reads it and leaves it advanced, so a sequence split anywhere and run through any mix of forms
/// gives one pass's result. A plain value: copying it branches a conversation.
///
/// A default-constructed state is empty: the first form that uses it sizes it.
template <typename Scalar>
class Rwkv4State {
 public:
  /// (batch x width) rows of one slot, one row per batch item (a view into the state).
  using SlotRows = Eigen::Map<RowMatrix<Scalar>, 0, Eigen::OuterStride<>>;
  using ConstSlotRows = Eigen::Map<const RowMatrix<Scalar>, 0, Eigen::OuterStride<>>;

  Rwkv4State() = default;
  Rwkv4State(Index batch, Index embedDim, Index attDim) { reset(batch, embedDim, attDim); }

  /// Sizes the state for `batch` sequences and makes every one empty (position 0).
  void reset(Index batch, Index embedDim, Index attDim) {
    detail::require(batch >= 1 && embedDim >= 1 && attDim >= 1, "Rwkv4State",
                    "batch, embedDim and attDim must all be >= 1, got ", batch, ", ", embedDim,
                    ", ", attDim);
    embedDim_ = embedDim;
    attDim_ = attDim;
    values_.resize(batch * itemSize());
    positions_.assign(static_cast<std::size_t>(batch), 0);
    for (Index b = 0; b < batch; ++b) resetItem(b);
  }

  /// Forgets everything: the state becomes empty again.
  void clear() { *this = Rwkv4State(); }

  bool empty() const { return values_.size() == 0; }
  Index batch() const { return static_cast<Index>(positions_.size()); }
  Index embedDim() const { return embedDim_; }  ///< C
  Index attDim() const { return attDim_; }      ///< A
  Index bytes() const { return values_.size() * static_cast<Index>(sizeof(Scalar)); }

  Index position(Index b) const {
    checkItem(b);
    return positions_[static_cast<std::size_t>(b)];
  }
  const std::vector<Index>& positions() const { return positions_; }
  void setPosition(Index b, Index position) {
    checkItem(b);
    detail::require(position >= 0 && position <= kMaxPosition, "Rwkv4State::setPosition",
                    "position must be in [0, 2^53], got ", position);
    positions_[static_cast<std::size_t>(b)] = position;
  }

  /// The token-shift rows of every item: channel mixing's (ffn_xx) and time mixing's (att_xx).
  SlotRows ffnShift() { return slot(0, embedDim_); }
  ConstSlotRows ffnShift() const { return slot(0, embedDim_); }
  SlotRows attShift() { return slot(embedDim_, embedDim_); }
  ConstSlotRows attShift() const { return slot(embedDim_, embedDim_); }
  /// WKV's (aa, bb, pp) rows of every item (batch x A each).
  SlotRows aa() { return slot(2 * embedDim_, attDim_); }
  SlotRows bb() { return slot(2 * embedDim_ + attDim_, attDim_); }
  SlotRows pp() { return slot(2 * embedDim_ + 2 * attDim_, attDim_); }
  ConstSlotRows aa() const { return slot(2 * embedDim_, attDim_); }
  ConstSlotRows bb() const { return slot(2 * embedDim_ + attDim_, attDim_); }
  ConstSlotRows pp() const { return slot(2 * embedDim_ + 2 * attDim_, attDim_); }

  /// Item b's WKV state, for stages::wkv.
  WkvStateView<Scalar> wkv(Index b) {
    checkItem(b);
    Scalar* base = values_.data() + b * itemSize() + 2 * embedDim_;
    return {base, base + attDim_, base + 2 * attDim_};
  }

  /// Every value, item by item, slots in the order above (what a state file stores).
  Scalar* data() { return values_.data(); }
  const Scalar* data() const { return values_.data(); }
  Index size() const { return values_.size(); }

  /// Batch item b as a state of its own (batch 1, its position kept).
  Rwkv4State item(Index b) const {
    checkItem(b);
    Rwkv4State single(1, embedDim_, attDim_);
    single.values_ = values_.segment(b * itemSize(), itemSize());
    single.positions_[0] = position(b);
    return single;
  }

  /// Makes batch item b a copy of item `fromItem` of `from` (values and position).
  void setItem(Index b, const Rwkv4State& from, Index fromItem) {
    checkItem(b);
    from.checkItem(fromItem);
    requireSameShape("Rwkv4State::setItem", from);
    values_.segment(b * itemSize(), itemSize()) =
        from.values_.segment(fromItem * itemSize(), itemSize());
    positions_[static_cast<std::size_t>(b)] = from.position(fromItem);
  }

  /// The batch items of `other` appended after this state's (an empty state takes other's).
  void append(const Rwkv4State& other) {
    if (empty()) {
      *this = other;
      return;
    }
    requireSameShape("Rwkv4State::append", other);
    Vector<Scalar> grown(values_.size() + other.values_.size());
    grown << values_, other.values_;
    values_.swap(grown);
    positions_.insert(positions_.end(), other.positions_.begin(), other.positions_.end());
  }

 private:
  Index itemSize() const { return 2 * embedDim_ + 3 * attDim_; }

  SlotRows slot(Index offset, Index width) {
    return SlotRows(values_.data() + offset, batch(), width, Eigen::OuterStride<>(itemSize()));
  }
  ConstSlotRows slot(Index offset, Index width) const {
    return ConstSlotRows(values_.data() + offset, batch(), width, Eigen::OuterStride<>(itemSize()));
  }

  void resetItem(Index b) {
    auto item = values_.segment(b * itemSize(), itemSize());
    item.head(2 * embedDim_ + 2 * attDim_).setZero();
    item.tail(attDim_).setConstant(static_cast<Scalar>(kWkvEmptyExponent));
  }

  void checkItem(Index b) const {
    detail::require(b >= 0 && b < batch(), "Rwkv4State", "batch item must be in [0, ", batch(),
                    "), got ", b);
  }
  void requireSameShape(const char* where, const Rwkv4State& other) const {
    detail::require(other.embedDim_ == embedDim_ && other.attDim_ == attDim_, where,
                    "the states' shapes differ: (C, A) = (", embedDim_, ", ", attDim_, ") and (",
                    other.embedDim_, ", ", other.attDim_, ")");
  }

  Vector<Scalar> values_;  // batch x (ffn_xx C, att_xx C, aa A, bb A, pp A)
  std::vector<Index> positions_;
  Index embedDim_ = 0, attDim_ = 0;
};

}  // namespace retnet
