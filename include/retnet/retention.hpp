// Single-head retention in its three equivalent forms (paper §2.1, eqs. 1–7).
#pragma once

#include <array>
#include <type_traits>
#include <vector>

#include "retnet/detail/checks.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/stages/retention.hpp"
#include "retnet/state.hpp"

namespace retnet {

/// One head of retention with decay γ, without normalisation:
///
///   o_t = Σ_{s<=t} γ^(t-s) (q_t·k_s) v_s
///
/// computed in parallel ((QKᵀ ⊙ D) V, eq. 5), recurrently (S_t = γ S_{t-1} + k_tᵀ v_t,
/// o_t = q_t S_t, eq. 6) or chunkwise (parallel inside chunks, recurrent across them, eq. 7).
/// Inputs are row-major (batch, time, features): q and k (B, T, dk), v (B, T, dv); the output is
/// (B, T, dv). Each form optionally continues from a RetentionState and leaves it advanced past
/// its input, so forms can hand a sequence over to each other anywhere.
///
/// With OpenMP enabled by the caller, batch items run in parallel; results do not depend on
/// the thread count. The forms by value allocate their output and buffers per call;
/// forward(form, q, k, v, chunkSize, state, out, scratch) keeps them in the caller's hands, so a
/// loop of calls allocates nothing once they have their sizes (the layers' kept-buffer form).
template <typename Scalar>
class Retention {
  static_assert(std::is_floating_point_v<Scalar>,
                "retnet::Retention needs a floating-point Scalar");

 public:
  using State = RetentionState<Scalar>;

  /// The buffers of forward(form, q, k, v, chunkSize, state, out, scratch), kept by the caller
  /// from call to call (not part of any state's value): each form's plan (its decay tables, kept
  /// while it serves the calls) and the retention stage's scratch per thread.
  struct Scratch {
    std::array<std::vector<RetentionPlan<Scalar>>, 3> plans;  // per form (Form's value): 0 or 1
    std::vector<RetentionScratch<Scalar>> perThread;
  };

  /// `gamma` must be finite and in [0, 1]: 0 keeps only the current token, 1 never forgets.
  explicit Retention(Scalar gamma)
      : gamma_(gamma),
        head_{checkedDecay(gamma), RetentionNormalization::kNone, 1.0, ScaleSide::kKey} {}

  Scalar gamma() const { return gamma_; }

  /// Parallel form (eq. 5): O(T²) work and memory per batch item.
  Tensor3<Scalar> forwardParallel(ConstTensor3Ref<Scalar> q, ConstTensor3Ref<Scalar> k,
                                  ConstTensor3Ref<Scalar> v) const {
    State state;
    return forwardParallel(q, k, v, state);
  }
  Tensor3<Scalar> forwardParallel(ConstTensor3Ref<Scalar> q, ConstTensor3Ref<Scalar> k,
                                  ConstTensor3Ref<Scalar> v, State& state) const {
    const bool fresh = prepare("Retention::forwardParallel", q, k, v, state);
    return run(Form::kParallel, q, k, v, 0, state, fresh);
  }

  /// Chunkwise form (eq. 7): chunks of `chunkSize` positions (the last may be shorter; a chunk
  /// larger than T is one chunk), O(T · chunkSize) work and O(chunkSize²) scratch.
  Tensor3<Scalar> forwardChunkwise(ConstTensor3Ref<Scalar> q, ConstTensor3Ref<Scalar> k,
                                   ConstTensor3Ref<Scalar> v, Index chunkSize) const {
    State state;
    return forwardChunkwise(q, k, v, chunkSize, state);
  }
  Tensor3<Scalar> forwardChunkwise(ConstTensor3Ref<Scalar> q, ConstTensor3Ref<Scalar> k,
                                   ConstTensor3Ref<Scalar> v, Index chunkSize, State& state) const {
    detail::requireChunkSize("Retention::forwardChunkwise", chunkSize);
    const bool fresh = prepare("Retention::forwardChunkwise", q, k, v, state);
    return run(Form::kChunkwise, q, k, v, chunkSize, state, fresh);
  }

  /// Recurrent form (eq. 6): one position at a time, O(dk · dv) per position.
  Tensor3<Scalar> forwardRecurrent(ConstTensor3Ref<Scalar> q, ConstTensor3Ref<Scalar> k,
                                   ConstTensor3Ref<Scalar> v) const {
    State state;
    return forwardRecurrent(q, k, v, state);
  }
  Tensor3<Scalar> forwardRecurrent(ConstTensor3Ref<Scalar> q, ConstTensor3Ref<Scalar> k,
                                   ConstTensor3Ref<Scalar> v, State& state) const {
    prepare("Retention::forwardRecurrent", q, k, v, state);
    return run(Form::kRecurrent, q, k, v, 0, state, false);
  }

  /// Any form by value: chunkSize is used by the chunkwise form only.
  Tensor3<Scalar> forward(Form form, ConstTensor3Ref<Scalar> q, ConstTensor3Ref<Scalar> k,
                          ConstTensor3Ref<Scalar> v, Index chunkSize, State& state) const {
    switch (form) {
      case Form::kParallel:
        return forwardParallel(q, k, v, state);
      case Form::kChunkwise:
        return forwardChunkwise(q, k, v, chunkSize, state);
      default:
        return forwardRecurrent(q, k, v, state);
    }
  }

  /// `form` into `out` (resized to (B, T, dv) if its shape differs) with the caller's scratch:
  /// the same bits as the form by value, and once `out` and `scratch` have their sizes a call
  /// allocates nothing beyond what Eigen's products take for packing. chunkSize is used by the
  /// chunkwise form only. `out` must not overlap q, k or v (its buffer may be resized).
  void forward(Form form, ConstTensor3Ref<Scalar> q, ConstTensor3Ref<Scalar> k,
               ConstTensor3Ref<Scalar> v, Index chunkSize, State& state, Tensor3<Scalar>& out,
               Scratch& scratch) const {
    const char* where = form == Form::kParallel    ? "Retention::forwardParallel"
                        : form == Form::kChunkwise ? "Retention::forwardChunkwise"
                                                   : "Retention::forwardRecurrent";
    if (form == Form::kChunkwise) detail::requireChunkSize(where, chunkSize);
    for (const auto* input : {&q, &k, &v})
      detail::requireNoOverlap(where, out, *input,
                               "out must not overlap q, k or v (its buffer may be resized)");
    const bool fresh = prepare(where, q, k, v, state) && form != Form::kRecurrent;
    if (out.dimension(0) != q.batch() || out.dimension(1) != q.time() ||
        out.dimension(2) != v.features())
      out.resize(q.batch(), q.time(), v.features());
    runInto(form, q, k, v, chunkSize, state, fresh, out, scratch);
  }

 private:
  static double checkedDecay(Scalar gamma) {
    detail::requireDecay("Retention", static_cast<double>(gamma));
    return static_cast<double>(gamma);
  }

  /// Checks shapes and sizes the state if it is empty; returns true if it was. Nothing is
  /// modified when a check fails.
  static bool prepare(const char* where, const ConstTensor3Ref<Scalar>& q,
                      const ConstTensor3Ref<Scalar>& k, const ConstTensor3Ref<Scalar>& v,
                      State& state) {
    detail::requireNonEmpty(where, "q", q);
    detail::requireNonEmpty(where, "k", k);
    detail::requireNonEmpty(where, "v", v);
    detail::requireEqual(where, "k's shape (batch, time, dk) as q's",
                         detail::shapeString(q.batch(), q.time(), q.features()),
                         detail::shapeString(k.batch(), k.time(), k.features()));
    detail::requireEqual(where, "v's batch size (q's)", q.batch(), v.batch());
    detail::requireEqual(where, "v's time length (q's)", q.time(), v.time());
    if (state.empty()) {
      state.reset(q.batch(), q.features(), v.features());
      return true;
    }
    detail::requireEqual(where, "state batch size (q's)", q.batch(), state.batch());
    detail::requireEqual(where, "state key dim (q's features)", q.features(), state.keyDim());
    detail::requireEqual(where, "state value dim (v's features)", v.features(), state.valueDim());
    return false;
  }

  /// The form by value: its output and buffers made for this call.
  Tensor3<Scalar> run(Form form, const ConstTensor3Ref<Scalar>& q, const ConstTensor3Ref<Scalar>& k,
                      const ConstTensor3Ref<Scalar>& v, Index chunkSize, State& state,
                      bool stateIsZero) const {
    Tensor3<Scalar> out(q.batch(), q.time(), v.features());
    Scratch scratch;
    runInto(form, q, k, v, chunkSize, state, stateIsZero, out, scratch);
    return out;
  }

  /// The retention stage over every batch item (in parallel) into `out` (already (B, T, dv)),
  /// S advanced past the input.
  void runInto(Form form, const ConstTensor3Ref<Scalar>& q, const ConstTensor3Ref<Scalar>& k,
               const ConstTensor3Ref<Scalar>& v, Index chunkSize, State& state, bool stateIsZero,
               Tensor3<Scalar>& out, Scratch& scratch) const {
    const Index time = q.time(), keyDim = q.features(), valueDim = v.features();
    auto& kept = scratch.plans[static_cast<std::size_t>(form)];
    if (kept.empty() || !kept.front().serves(head_, form, chunkSize, time)) {
      kept.clear();  // keeps its capacity
      kept.emplace_back(head_, form, chunkSize, time);
    }
    const RetentionPlan<Scalar>& plan = kept.front();
    // the recurrent form's stage uses no scratch, so one serves every thread
    const auto slots =
        static_cast<std::size_t>(form == Form::kRecurrent ? 1 : detail::maxThreadSlots());
    if (scratch.perThread.size() < slots) scratch.perThread.resize(slots);
    detail::parallelFor(q.batch(), [&](Index b, int thread) {
      // per item: q, k (T x dk), v, out (T x dv), S (dk x dv)
      using Rows = Eigen::Map<const RowMatrix<Scalar>>;
      stages::retention(
          plan, Rows(q.data() + b * time * keyDim, time, keyDim),
          Rows(k.data() + b * time * keyDim, time, keyDim),
          Rows(v.data() + b * time * valueDim, time, valueDim), state.matrix(b), state.position(),
          stateIsZero,
          Eigen::Map<RowMatrix<Scalar>>(out.data() + b * time * valueDim, time, valueDim),
          scratch.perThread[form == Form::kRecurrent ? 0 : static_cast<std::size_t>(thread)]);
    });
    state.setPosition(state.position() + time);
  }

  Scalar gamma_;
  RetentionHead head_;  // γ, no normalisation, no scale
};

}  // namespace retnet
