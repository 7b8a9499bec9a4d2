// Stage: the retention core of one head in its three forms (paper §2.1), with a normalisation
// policy and the q·k scale on either side.
//
//   o_t = Σ_{s<=t} γ^(t−s) (q_t·k_s) v_s  [· scale]  [/ torchscale's per-form factor]
//
// parallel ((QKᵀ ⊙ D) V, eq. 5, one chunk spanning the input), chunkwise (eq. 7) or recurrent
// (S_t = γ S_{t−1} + k_tᵀ v_t, o_t = q_t S_t, eq. 6). S is the unnormalised state; it enters as
// the state before the first row and leaves after the last. Without normalisation the forms
// hand over anywhere; torchscale's chunkwise factors restart with each call (as torchscale's
// do), so there a split off the chunk grid changes the rows after it.
//
// Normalisation: kNone is plain retention (FLA's, and the single-head Retention layer).
// kTorchscale divides each row by the factor torchscale's MultiScaleRetention uses in that form
// (docs/semantics/torchscale.md §3.3): the parallel form's clamped abs-sum, the chunkwise
// form's inner/cross normalisers, the recurrent form's sqrt of the decay window. The forms then
// differ only through the group norm's eps, as torchscale's do.
//
// The fast kernel is detail/retention_kernel.hpp; its naive twin is tests/reference/.
#pragma once

#include <cmath>

#include "retnet/detail/checks.hpp"
#include "retnet/detail/decay.hpp"
#include "retnet/detail/retention_backward.hpp"
#include "retnet/detail/retention_kernel.hpp"
#include "retnet/form.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

using detail::ScaleSide;

enum class RetentionNormalization {
  kNone,        ///< o = Σ γ^(t−s) (q·k) v: plain retention (FLA)
  kTorchscale,  ///< o divided by torchscale's factor of the form in use
};

/// One head's retention: decay, normalisation and the q·k scale.
struct RetentionHead {
  double gamma = 1.0;
  RetentionNormalization normalization = RetentionNormalization::kNone;
  double scale = 1.0;  ///< s multiplying q·k (FLA: dk^(−1/2)); torchscale's normalisers see it
                       ///< wherever it sits (σ reads S, which holds s only on the key side)
  ScaleSide scaleSide = ScaleSide::kQuery;  ///< which of q, k carries s (what S holds)
};

/// Per-thread scratch of the retention stage: buffers that only grow.
template <typename Scalar>
using RetentionScratch = detail::ChunkScratch<Scalar>;

/// The decay tables of one head for one call of one form over `time` positions: O(chunk)
/// memory, shared by every batch item; the recurrent form needs none (nothing is allocated).
template <typename Scalar>
class RetentionPlan {
 public:
  RetentionPlan(const RetentionHead& head, Form form, Index chunkSize, Index time)
      : head_(checkedHead(head, form, chunkSize, time)),
        form_(form),
        chunkSize_(form == Form::kChunkwise ? chunkSize : 0),
        time_(time),
        decay_(head.gamma),
        chunks_(decay_,
                form == Form::kRecurrent  ? 0
                : form == Form::kParallel ? time
                                          : chunkSize,
                form == Form::kRecurrent ? 0 : time, head.scale, head.scaleSide) {}

  const RetentionHead& head() const { return head_; }
  Form form() const { return form_; }
  Index time() const { return time_; }  ///< the call length the tables were made for
  const detail::DecayPowers& decay() const { return decay_; }
  const detail::ChunkPlan<Scalar>& chunks() const { return chunks_; }

  /// Whether this plan serves a call that would make RetentionPlan(head, form, chunkSize, time):
  /// the same head, form and chunk, and the same length for the parallel form or at most the
  /// plan's for the others (whose tables then hold the same values, so the results are the same
  /// bits). Lets a caller keep its plans from call to call.
  bool serves(const RetentionHead& head, Form form, Index chunkSize, Index time) const {
    return head.gamma == head_.gamma && head.normalization == head_.normalization &&
           head.scale == head_.scale && head.scaleSide == head_.scaleSide && form == form_ &&
           (form != Form::kChunkwise || chunkSize == chunkSize_) &&
           (form == Form::kParallel ? time == time_ : time <= time_);
  }

 private:
  static const RetentionHead& checkedHead(const RetentionHead& head, Form form, Index chunkSize,
                                          Index time) {
    const char* where = "RetentionPlan";
    detail::requireDecay(where, head.gamma);
    detail::require(std::isfinite(head.scale), where, "scale must be finite, got ", head.scale);
    detail::require(time >= 0, where, "time must be >= 0, got ", time);
    if (form == Form::kChunkwise) detail::requireChunkSize(where, chunkSize);
    return head;
  }

  RetentionHead head_;
  Form form_;
  Index chunkSize_;
  Index time_;
  detail::DecayPowers decay_;
  detail::ChunkPlan<Scalar> chunks_;
};

namespace stages {

/// Retention of one (batch item, head) over `time` positions in the plan's form.
///   q, k (time x dk); v (time x dv); S (dk x dv), in and out; out (time x dv)
///   start: positions consumed before q's first row (the torchscale recurrent factor needs it)
///   stateIsZero: S is known to be zero (skips the products with it)
template <typename Scalar>
void retention(const RetentionPlan<Scalar>& plan, detail::NoDeduce<ConstMatrixRef<Scalar>> q,
               detail::NoDeduce<ConstMatrixRef<Scalar>> k,
               detail::NoDeduce<ConstMatrixRef<Scalar>> v, detail::NoDeduce<MatrixRef<Scalar>> S,
               Index start, bool stateIsZero, detail::NoDeduce<MatrixRef<Scalar>> out,
               RetentionScratch<Scalar>& scratch) {
  const Index time = q.rows(), dk = q.cols(), dv = v.cols();
  const char* where = "stages::retention";
  detail::requireShape(where, k, time, dk, "k (q's shape)");
  detail::requireEqual(where, "v's rows (q's)", time, v.rows());
  detail::requireShape(where, out, time, dv, "out (time x dv)");
  detail::requireShape(where, S, dk, dv, "S (dk x dv)");
  detail::require(S.outerStride() == dv, where, "S must be a dense (dk x dv) block");
  detail::require(start >= 0 && start <= kMaxPosition - time, where, "start (", start, ") + time (",
                  time, ") must lie in [0, 2^53]");
  // The tables must be those of this call: a parallel plan spans exactly `time` rows (a shorter
  // one would silently run chunkwise), a chunkwise one at most the rows it was made for.
  detail::require(plan.form() == Form::kRecurrent ||
                      (plan.form() == Form::kParallel ? time == plan.time() : time <= plan.time()),
                  where, "the plan was made for ", plan.time(), " rows of the ",
                  formName(plan.form()), " form, got ", time);
  const RetentionHead& head = plan.head();
  const bool torchscale = head.normalization == RetentionNormalization::kTorchscale;
  detail::StateMap<Scalar> state(S.data(), dk, dv);
  if (plan.form() == Form::kRecurrent) {
    const auto gamma = static_cast<Scalar>(head.gamma);
    const auto s = static_cast<Scalar>(head.scale);
    const Scalar keyScale = head.scaleSide == ScaleSide::kKey ? s : Scalar(1);
    const Scalar queryScale = head.scaleSide == ScaleSide::kQuery ? s : Scalar(1);
    for (Index t = 0; t < time; ++t) {
      // torchscale's recurrent state is S / sqrt(n_t), n_t = Σ_{m<=t} γ^m: o_t = q_t S_t /
      // sqrt(n_t)
      Scalar outScale = queryScale;
      if (torchscale) {
        outScale *= static_cast<Scalar>(1.0 / std::sqrt(plan.decay().windowSum(start + t + 1)));
      }
      detail::recurrentStep(q.data() + t * q.outerStride(), k.data() + t * k.outerStride(),
                            v.data() + t * v.outerStride(), dk, dv, gamma, state.data(),
                            out.data() + t * out.outerStride(), outScale, keyScale);
    }
    return;
  }
  const detail::RowScaling scaling = !torchscale ? detail::RowScaling::kNone
                                     : plan.form() == Form::kParallel
                                         ? detail::RowScaling::kParallel
                                         : detail::RowScaling::kChunkwise;
  const detail::ConstRowsMap<Scalar> qm(q.data(), time, dk, Eigen::OuterStride<>(q.outerStride()));
  const detail::ConstRowsMap<Scalar> km(k.data(), time, dk, Eigen::OuterStride<>(k.outerStride()));
  const detail::ConstRowsMap<Scalar> vm(v.data(), time, dv, Eigen::OuterStride<>(v.outerStride()));
  detail::RowsMap<Scalar> om(out.data(), time, dv, Eigen::OuterStride<>(out.outerStride()));
  detail::retentionChunks(qm, km, vm, plan.chunks(), scaling, state, stateIsZero, om, scratch);
}

}  // namespace stages

/// Per-thread scratch of the retention backward: buffers that only grow.
template <typename Scalar>
using RetentionBackwardScratch = detail::RetentionBackwardScratch<Scalar>;

namespace stages {

/// The backward of `retention` for one (batch item, head), parallel and chunkwise forms
/// (training runs these; the recurrent form throws InvalidArgument).
///   plan, q, k (time x dk), v (time x dv), start, stateIsZero: as given to the forward
///   S0 (dk x dv, dense): the state *entering* the forward call (the forward overwrites its S,
///     so the caller keeps a copy); not read when stateIsZero
///   dOut (time x dv): dL/dout
///   dS: dL/dS for the state the forward leaves, a dense row-major (dk x dv) block, or nullptr
///     when the loss does not read it
///   dq, dk (time x dk), dv (time x dv): dL/dq, dL/dk, dL/dv, written (not accumulated); they
///     must not overlap the inputs
///   dS0: dL/dS0 written to a dense row-major (dk x dv) block, or nullptr when not wanted
///
/// torchscale's normalisation factors are constants of the backward, as its detach() makes them
/// (shared/golden/grad/README.md §3.1): do_i / f_i is what flows into U_i, with f_i recomputed
/// exactly as the forward computes it. The chunkwise form recomputes the states entering its
/// chunks in one forward sweep and keeps them: (⌈time / chunk⌉ − 1)·dk·dv scalars in the
/// scratch, plus O(min(chunk, kRowBlock)·chunk + chunk·(dk + dv)) for one chunk's scores and
/// their gradients; the parallel form is one chunk, its rows in blocks of kRowBlock, so
/// O(kRowBlock·time) and never time x time. Kernel: detail/retention_backward.hpp.
template <typename Scalar>
void retentionBackward(const RetentionPlan<Scalar>& plan,
                       detail::NoDeduce<ConstMatrixRef<Scalar>> q,
                       detail::NoDeduce<ConstMatrixRef<Scalar>> k,
                       detail::NoDeduce<ConstMatrixRef<Scalar>> v,
                       detail::NoDeduce<ConstMatrixRef<Scalar>> S0, Index start, bool stateIsZero,
                       detail::NoDeduce<ConstMatrixRef<Scalar>> dOut, const Scalar* dS,
                       detail::NoDeduce<MatrixRef<Scalar>> dq,
                       detail::NoDeduce<MatrixRef<Scalar>> dk,
                       detail::NoDeduce<MatrixRef<Scalar>> dv, Scalar* dS0,
                       RetentionBackwardScratch<Scalar>& scratch) {
  const Index time = q.rows(), dkWidth = q.cols(), dvWidth = v.cols();
  const char* where = "stages::retentionBackward";
  detail::require(plan.form() != Form::kRecurrent, where,
                  "the recurrent form has no backward; train with the parallel or chunkwise form");
  detail::requireShape(where, k, time, dkWidth, "k (q's shape)");
  detail::requireEqual(where, "v's rows (q's)", time, v.rows());
  detail::requireShape(where, S0, dkWidth, dvWidth, "S0 (dk x dv)");
  detail::require(S0.outerStride() == dvWidth, where, "S0 must be a dense (dk x dv) block");
  detail::requireShape(where, dOut, time, dvWidth, "dOut (time x dv)");
  detail::requireShape(where, dq, time, dkWidth, "dq (q's shape)");
  detail::requireShape(where, dk, time, dkWidth, "dk (k's shape)");
  detail::requireShape(where, dv, time, dvWidth, "dv (v's shape)");
  detail::require(start >= 0 && start <= kMaxPosition - time, where, "start (", start, ") + time (",
                  time, ") must lie in [0, 2^53]");
  detail::require(plan.form() == Form::kParallel ? time == plan.time() : time <= plan.time(), where,
                  "the plan was made for ", plan.time(), " rows of the ", formName(plan.form()),
                  " form, got ", time);
  const bool torchscale = plan.head().normalization == RetentionNormalization::kTorchscale;
  const detail::RowScaling scaling = !torchscale ? detail::RowScaling::kNone
                                     : plan.form() == Form::kParallel
                                         ? detail::RowScaling::kParallel
                                         : detail::RowScaling::kChunkwise;
  const detail::ConstRowsMap<Scalar> qm(q.data(), time, dkWidth,
                                        Eigen::OuterStride<>(q.outerStride()));
  const detail::ConstRowsMap<Scalar> km(k.data(), time, dkWidth,
                                        Eigen::OuterStride<>(k.outerStride()));
  const detail::ConstRowsMap<Scalar> vm(v.data(), time, dvWidth,
                                        Eigen::OuterStride<>(v.outerStride()));
  const detail::ConstRowsMap<Scalar> dom(dOut.data(), time, dvWidth,
                                         Eigen::OuterStride<>(dOut.outerStride()));
  detail::RowsMap<Scalar> dqm(dq.data(), time, dkWidth, Eigen::OuterStride<>(dq.outerStride()));
  detail::RowsMap<Scalar> dkm(dk.data(), time, dkWidth, Eigen::OuterStride<>(dk.outerStride()));
  detail::RowsMap<Scalar> dvm(dv.data(), time, dvWidth, Eigen::OuterStride<>(dv.outerStride()));
  const detail::ConstStateMap<Scalar> initial(S0.data(), dkWidth, dvWidth);
  detail::retentionChunksBackward(qm, km, vm, plan.chunks(), scaling, initial, stateIsZero, dom, dS,
                                  dqm, dkm, dvm, dS0, scratch);
}

}  // namespace stages
}  // namespace retnet
