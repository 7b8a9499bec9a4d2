// The public forward methods that MultiScaleRetention and RetNetBlock share: the three forms
// with and without a state, forward(x) with the chosen form, and the slab loop behind them.
#pragma once

#include "retnet/detail/checks.hpp"
#include "retnet/detail/workspace.hpp"
#include "retnet/form.hpp"
#include "retnet/state.hpp"

namespace retnet::detail {

/// Names of a layer's entry points, for error messages.
struct FormNames {
  const char* parallel;
  const char* chunkwise;
  const char* recurrent;
};

/// CRTP base of a layer mapping (B, T, D) to (B, T, D) with a MultiScaleRetentionState. The
/// layer provides
///   static constexpr FormNames kFormNames;
///   void prepare(const char* where, const ConstTensor3Ref<Scalar>&, State&) const;  // checks
///   Index outputWidth() const;  Index recommendedChunkSize() const;
///   void forwardSlab(Form, const Scalar* x, Index batch, Index time, Index chunkSize, State&,
///                    Scalar* y, LayerWorkspace<Scalar>&) const;  // unchecked, rows in place
/// and befriends this class.
template <typename Layer, typename Scalar>
class LayerForms {
 public:
  using State = MultiScaleRetentionState<Scalar>;

  Tensor3<Scalar> forwardParallel(ConstTensor3Ref<Scalar> x) const {
    State state;
    return forwardParallel(x, state);
  }
  Tensor3<Scalar> forwardParallel(ConstTensor3Ref<Scalar> x, State& state) const {
    return run(Layer::kFormNames.parallel, Form::kParallel, x, 0, state);
  }

  /// Chunks of `chunkSize` positions; the last may be shorter (same rows as torchscale's
  /// zero-padding to a multiple of the chunk, without the padding's cost).
  Tensor3<Scalar> forwardChunkwise(ConstTensor3Ref<Scalar> x, Index chunkSize) const {
    State state;
    return forwardChunkwise(x, chunkSize, state);
  }
  Tensor3<Scalar> forwardChunkwise(ConstTensor3Ref<Scalar> x, Index chunkSize, State& state) const {
    requireChunkSize(Layer::kFormNames.chunkwise, chunkSize);
    return run(Layer::kFormNames.chunkwise, Form::kChunkwise, x, chunkSize, state);
  }

  Tensor3<Scalar> forwardRecurrent(ConstTensor3Ref<Scalar> x) const {
    State state;
    return forwardRecurrent(x, state);
  }
  Tensor3<Scalar> forwardRecurrent(ConstTensor3Ref<Scalar> x, State& state) const {
    return run(Layer::kFormNames.recurrent, Form::kRecurrent, x, 0, state);
  }

  /// The recurrent form writing into `out` (resized only if its shape differs): a decoding
  /// loop that reuses `out` and `state` allocates nothing after its first step.
  void forwardRecurrent(ConstTensor3Ref<Scalar> x, State& state, Tensor3<Scalar>& out) const {
    layer().prepare(Layer::kFormNames.recurrent, x, state);
    const Index width = layer().outputWidth();
    if (out.dimension(0) != x.batch() || out.dimension(1) != x.time() || out.dimension(2) != width)
      out.resize(x.batch(), x.time(), width);
    forwardRows(Form::kRecurrent, x.data(), x.batch(), x.time(), 0, state, out.data());
  }

  /// The form and chunk size chosen for you: chunkwise with recommendedChunkSize() (for
  /// T <= that chunk, one chunk: the parallel computation with the chunkwise normalisation).
  Tensor3<Scalar> forward(ConstTensor3Ref<Scalar> x, State& state) const {
    return forwardChunkwise(x, layer().recommendedChunkSize(), state);
  }
  Tensor3<Scalar> forward(ConstTensor3Ref<Scalar> x) const {
    State state;
    return forward(x, state);
  }

  /// Any form by value: chunkSize is used by the chunkwise form only.
  Tensor3<Scalar> forward(Form form, ConstTensor3Ref<Scalar> x, Index chunkSize,
                          State& state) const {
    switch (form) {
      case Form::kParallel:
        return forwardParallel(x, state);
      case Form::kChunkwise:
        return forwardChunkwise(x, chunkSize, state);
      default:
        return forwardRecurrent(x, state);
    }
  }

 protected:
  LayerForms() = default;

  /// x (batch·time x D) -> y (batch·time x D); arguments already checked and the state sized.
  /// Single positions use the state's workspace (no allocation when decoding); longer inputs
  /// run in slabs of whole chunks through a temporary workspace of slab size (forEachSlab).
  void forwardRows(Form form, const Scalar* x, Index batch, Index time, Index chunkSize,
                   State& state, Scalar* y) const {
    if (time == 1) {
      layer().forwardSlab(form, x, batch, time, chunkSize, state, y, state.workspace());
      return;
    }
    LayerWorkspace<Scalar> ws;
    forEachSlab(x, batch, time, layer().inputWidth(), layer().outputWidth(),
                slabLength(form, time, chunkSize), y, ws,
                [&](const Scalar* xs, Index slabTime, Scalar* ys) {
                  layer().forwardSlab(form, xs, batch, slabTime, chunkSize, state, ys, ws);
                });
  }

 private:
  const Layer& layer() const { return static_cast<const Layer&>(*this); }

  Tensor3<Scalar> run(const char* where, Form form, const ConstTensor3Ref<Scalar>& x,
                      Index chunkSize, State& state) const {
    layer().prepare(where, x, state);
    Tensor3<Scalar> out(x.batch(), x.time(), layer().outputWidth());
    forwardRows(form, x.data(), x.batch(), x.time(), chunkSize, state, out.data());
    return out;
  }
};

}  // namespace retnet::detail
