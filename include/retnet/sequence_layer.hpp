// The public forms of a sequence layer: what MultiScaleRetention and RetNetBlock (and any layer
// mapping (B, T, D_in) to (B, T, D_out) with a recurrent state) offer their callers.
//
// A layer derives from SequenceLayer<Layer, Scalar, State, Scratch> and brings the forms into
// its own class with using-declarations, so that a reader of the layer's header sees them:
//
//   forwardParallel(x)              forwardParallel(x, state)
//   forwardChunkwise(x, chunk)      forwardChunkwise(x, chunk, state)
//   forwardRecurrent(x)             forwardRecurrent(x, state)
//   forwardRecurrent(x, state, out[, scratch])    decoding without allocation
//   forward(x)  forward(x, state)   forward(form, x, chunk, state)
//   forward(form, x, chunk, state, out, scratch)  any form without allocation (kept buffers)
//   forwardRows(form, x, batch, time, chunk, state, y, scratch)   raw buffers, for compositions
//
// Each form checks its arguments (prepare), then runs the layer's data path
// (Layer::forwardSlab, public, in the layer's header) over the input, long inputs in slabs of
// whole chunks so that scratch memory is bounded by the slab. The state is the layer's value
// (what a user saves and hands between forms); the scratch is not: it is passed in, or made
// per call, or — for forwardRecurrent(x, state, out) — kept per thread. A Scratch derives from
// detail::SlabBuffers (where a batch of several items is gathered slab by slab).
//
// What the Layer provides (all public):
//   static constexpr FormNames kFormNames;                  names for error messages
//   Index inputWidth() const;  Index outputWidth() const;  Index recommendedChunkSize() const;
//   void sizeOrCheckState(const char* where, const char* batchName, Index batch, State&) const;
//       sizes an empty state for `batch` sequences, or checks a non-empty one against the layer
//   void forwardSlab(Form, ConstMatrixRef<Scalar> x, Index batch, Index time, Index chunk,
//                    State&, MatrixRef<Scalar> y, Scratch&) const;
#pragma once

#include "retnet/detail/checks.hpp"
#include "retnet/detail/workspace.hpp"
#include "retnet/form.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

/// Names of a layer's entry points, for error messages.
struct FormNames {
  const char* parallel;
  const char* chunkwise;
  const char* recurrent;
};

template <typename Layer, typename Scalar_, typename State_, typename Scratch_>
class SequenceLayer {
 public:
  using Scalar = Scalar_;
  using State = State_;
  using Scratch = Scratch_;

  Tensor3<Scalar> forwardParallel(ConstTensor3Ref<Scalar> x) const {
    State state;
    return forwardParallel(x, state);
  }
  /// The parallel form (eq. 5). With a non-empty incoming state it computes the chunkwise
  /// formula with one chunk spanning x.
  Tensor3<Scalar> forwardParallel(ConstTensor3Ref<Scalar> x, State& state) const {
    return run(Form::kParallel, x, 0, state);
  }

  /// Chunks of `chunkSize` positions; the last may be shorter (same rows as torchscale's
  /// zero-padding to a multiple of the chunk, without the padding's cost).
  Tensor3<Scalar> forwardChunkwise(ConstTensor3Ref<Scalar> x, Index chunkSize) const {
    State state;
    return forwardChunkwise(x, chunkSize, state);
  }
  Tensor3<Scalar> forwardChunkwise(ConstTensor3Ref<Scalar> x, Index chunkSize, State& state) const {
    return run(Form::kChunkwise, x, chunkSize, state);
  }

  /// One position at a time (eq. 6).
  Tensor3<Scalar> forwardRecurrent(ConstTensor3Ref<Scalar> x) const {
    State state;
    return forwardRecurrent(x, state);
  }
  Tensor3<Scalar> forwardRecurrent(ConstTensor3Ref<Scalar> x, State& state) const {
    return run(Form::kRecurrent, x, 0, state);
  }

  /// The recurrent form writing into `out` (resized only if its shape differs) with the caller's
  /// scratch: a decoding loop that reuses `out`, `state` and `scratch` allocates nothing after
  /// its first step.
  void forwardRecurrent(ConstTensor3Ref<Scalar> x, State& state, Tensor3<Scalar>& out,
                        Scratch& scratch) const {
    forward(Form::kRecurrent, x, 0, state, out, scratch);
  }
  /// The same with a scratch kept per thread and layer type (grown to the largest call).
  void forwardRecurrent(ConstTensor3Ref<Scalar> x, State& state, Tensor3<Scalar>& out) const {
    thread_local Scratch scratch;
    forwardRecurrent(x, state, out, scratch);
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

  /// `form` into `out` (resized to (B, T, outputWidth) if its shape differs) with the caller's
  /// scratch: once both have their sizes, a call allocates nothing beyond what Eigen's products
  /// take for packing (heap above EIGEN_STACK_ALLOCATION_LIMIT), so a loop of calls (prefills,
  /// decoding) keeps its buffers warm. The scratch then holds one slab's buffers (about
  /// kSlabPositions rows, or all of x for the parallel form). `out` must not overlap x.
  void forward(Form form, ConstTensor3Ref<Scalar> x, Index chunkSize, State& state,
               Tensor3<Scalar>& out, Scratch& scratch) const {
    const char* where = form == Form::kParallel    ? Layer::kFormNames.parallel
                        : form == Form::kChunkwise ? Layer::kFormNames.chunkwise
                                                   : Layer::kFormNames.recurrent;
    if (form == Form::kChunkwise) detail::requireChunkSize(where, chunkSize);
    detail::requireNoOverlap(where, out, x, "out must not overlap x (its buffer may be resized)");
    prepare(where, x, state);  // sizes an empty state: the last check
    const Index width = layer().outputWidth();
    if (out.dimension(0) != x.batch() || out.dimension(1) != x.time() || out.dimension(2) != width)
      out.resize(x.batch(), x.time(), width);
    forwardRows(form, x.data(), x.batch(), x.time(), chunkSize, state, out.data(), scratch);
  }

  /// Checks x (B, T, inputWidth) and the state against the layer, sizing an empty state.
  void prepare(const char* where, const ConstTensor3Ref<Scalar>& x, State& state) const {
    detail::requireNonEmpty(where, "x", x);
    detail::requireEqual(where, "x's last dimension (embedDim)", layer().inputWidth(),
                         x.features());
    layer().sizeOrCheckState(where, "x's batch size (the state's)", x.batch(), state);
  }
  /// Sizes an empty state for `batch` sequences, or checks a non-empty one against the layer.
  void prepareState(const char* where, Index batch, State& state) const {
    layer().sizeOrCheckState(where, "batch size (the state's)", batch, state);
  }

  /// x (batch·time x inputWidth) -> y (batch·time x outputWidth), both row-major buffers, for
  /// enclosing compositions (a model's stack of blocks) that have sized the state with prepare();
  /// forwardSlab checks the state against the layer. Long inputs run in slabs of whole chunks.
  void forwardRows(Form form, const Scalar* x, Index batch, Index time, Index chunkSize,
                   State& state, Scalar* y, Scratch& scratch) const {
    const char* where = "SequenceLayer::forwardRows";
    detail::require(x != nullptr && y != nullptr && batch >= 1 && time >= 1, where,
                    "x and y must be non-null buffers of batch, time >= 1, got (", batch, ", ",
                    time, ")");
    if (form == Form::kChunkwise) detail::requireChunkSize(where, chunkSize);
    const Index in = layer().inputWidth(), out = layer().outputWidth();
    detail::forEachSlab(
        x, batch, time, in, out, detail::slabLength(form, time, chunkSize), y, scratch.slabInput,
        scratch.slabOutput, [&](const Scalar* xs, Index slabTime, Scalar* ys) {
          const Eigen::Map<const RowMatrix<Scalar>> xSlab(xs, batch * slabTime, in);
          Eigen::Map<RowMatrix<Scalar>> ySlab(ys, batch * slabTime, out);
          layer().forwardSlab(form, xSlab, batch, slabTime, chunkSize, state, ySlab, scratch);
        });
  }

 protected:
  SequenceLayer() = default;

 private:
  const Layer& layer() const { return static_cast<const Layer&>(*this); }

  /// A value-returning form: forward() into a new output with one call's scratch.
  Tensor3<Scalar> run(Form form, const ConstTensor3Ref<Scalar>& x, Index chunkSize,
                      State& state) const {
    Tensor3<Scalar> out;
    Scratch scratch;  // one call's buffers, sized by its slab
    forward(form, x, chunkSize, state, out, scratch);
    return out;
  }
};

}  // namespace retnet
