// The state of a whole language model: one state per layer, every layer at the same positions.
#pragma once

#include <vector>

#include "retnet/detail/checks.hpp"
#include "retnet/state.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

/// One LayerState per block of a LanguageModel (for RetNet a MultiScaleRetentionState). Its size
/// depends on the batch and the model, never on the sequence length. A plain value: copying it
/// branches every sequence of the batch.
///
/// A LayerState provides: empty(), batch(), position(b), positions(), setPosition(b, p),
/// bytes(), data() and size() (every value, for state files), item(b), setItem(b, from, i) and
/// append(other) (batch items, for generation).
template <typename LayerState>
class LanguageModelState {
 public:
  std::vector<LayerState> layers;

  bool empty() const { return layers.empty() || layers.front().empty(); }
  Index batch() const { return empty() ? 0 : layers.front().batch(); }
  /// Positions of batch item b (tokens consumed).
  Index position(Index b) const {
    detail::require(!empty(), "LanguageModelState::position", "the state is empty");
    return layers.front().position(b);
  }
  Index bytes() const {
    Index total = 0;
    for (const auto& layer : layers) total += layer.bytes();
    return total;
  }
  void clear() { layers.clear(); }

  /// Batch item b (every layer) as a state of its own.
  LanguageModelState item(Index b) const {
    LanguageModelState single;
    for (const auto& layer : layers) single.layers.push_back(layer.item(b));
    return single;
  }
  /// Makes batch item b (every layer) a copy of item `fromItem` of `from`.
  void setItem(Index b, const LanguageModelState& from, Index fromItem) {
    detail::requireEqual("LanguageModelState::setItem", "layers", layers.size(),
                         from.layers.size());
    for (std::size_t l = 0; l < layers.size(); ++l) layers[l].setItem(b, from.layers[l], fromItem);
  }
  /// The sequences of `other` appended after this state's (an empty state takes other's).
  void append(const LanguageModelState& other) {
    if (layers.empty()) {
      layers = other.layers;
      return;
    }
    detail::requireEqual("LanguageModelState::append", "layers", layers.size(),
                         other.layers.size());
    for (std::size_t l = 0; l < layers.size(); ++l) layers[l].append(other.layers[l]);
  }
};

template <typename Scalar>
using RetNetModelState = LanguageModelState<MultiScaleRetentionState<Scalar>>;

}  // namespace retnet
