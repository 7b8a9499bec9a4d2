// Single-head retention in its three equivalent forms (paper §2.1, eqs. 1–7).
#pragma once

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
/// the thread count.
template <typename Scalar>
class Retention {
  static_assert(std::is_floating_point_v<Scalar>,
                "retnet::Retention needs a floating-point Scalar");

 public:
  using State = RetentionState<Scalar>;

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

  /// The retention stage over every batch item (in parallel), S advanced past the input.
  Tensor3<Scalar> run(Form form, const ConstTensor3Ref<Scalar>& q, const ConstTensor3Ref<Scalar>& k,
                      const ConstTensor3Ref<Scalar>& v, Index chunkSize, State& state,
                      bool stateIsZero) const {
    const Index time = q.time(), keyDim = q.features(), valueDim = v.features();
    Tensor3<Scalar> out(q.batch(), time, valueDim);
    const RetentionPlan<Scalar> plan(head_, form, chunkSize, time);
    std::vector<RetentionScratch<Scalar>> scratch(
        static_cast<std::size_t>(form == Form::kRecurrent ? 1 : detail::maxThreadSlots()));
    detail::parallelFor(q.batch(), [&](Index b, int thread) {
      // per item: q, k (T x dk), v, out (T x dv), S (dk x dv)
      using Rows = Eigen::Map<const RowMatrix<Scalar>>;
      stages::retention(
          plan, Rows(q.data() + b * time * keyDim, time, keyDim),
          Rows(k.data() + b * time * keyDim, time, keyDim),
          Rows(v.data() + b * time * valueDim, time, valueDim), state.matrix(b), state.position(),
          stateIsZero,
          Eigen::Map<RowMatrix<Scalar>>(out.data() + b * time * valueDim, time, valueDim),
          scratch[form == Form::kRecurrent ? 0 : static_cast<std::size_t>(thread)]);
    });
    state.setPosition(state.position() + time);
    return out;
  }

  Scalar gamma_;
  RetentionHead head_;  // γ, no normalisation, no scale
};

}  // namespace retnet
