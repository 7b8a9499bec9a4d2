// The backward of the parallel and chunkwise retention kernels (retention_kernel.hpp) for one
// (batch item, head) slice.
//
// Forward, per chunk of c rows entering with the state S (the parallel form is one chunk):
//
//   P_ij = s·γ^(i-j) (q_i·k_j) for j <= i, else 0        (plan.maskPowers)
//   U_i  = Σ_j P_ij v_j + x_(i+1) q_i S                   (x = plan.crossPowers)
//   o_i  = U_i / f_i
//   S'   = γ^c S + Σ_j w_(c-1-j) k_jᵀ v_j                 (w = plan.keyPowers)
//
// The factors f_i (RowScaling) are constants here, as torchscale's detach() makes them in its
// autograd (shared/golden/grad/README.md §3.1): they are recomputed from q, k and S exactly as
// the forward does and only divide the upstream gradient, G_i = dO_i / f_i. With dS' the
// gradient of the loss with respect to S' and dP_ij = s·γ^(i-j) (G_i·v_j) for j <= i:
//
//   dq_i = Σ_j dP_ij k_j + x_(i+1) G_i Sᵀ
//   dk_j = Σ_i dP_ij q_i + w_(c-1-j) v_j dS'ᵀ
//   dv_j = Σ_i P_ij G_i  + w_(c-1-j) k_j dS'
//   dS   = γ^c dS' + Σ_i x_(i+1) q_iᵀ G_i
//
// Chunks are visited last to first with dS carried between them; the states entering the
// chunks are recomputed by a forward sweep over the chunk boundaries before that (never per
// position). Inside a chunk, rows go in blocks of kRowBlock as in the forward, so the scores
// and their gradients take O(kRowBlock · c) memory, never c x c.
#pragma once

#include <algorithm>

#include "retnet/detail/assert.hpp"
#include "retnet/detail/retention_kernel.hpp"

namespace retnet::detail {

/// Per-thread workspace of the retention backward: flat buffers that only grow (nothing is
/// allocated once they have reached the sizes of a call's shape).
template <typename Scalar>
struct RetentionBackwardScratch {
  ChunkScratch<Scalar> forward;    // the forward kernel's buffers (the recompute sweep)
  Vector<Scalar> states;           // ((chunks-1)·dk x dv) the states entering chunks 1 …
  Vector<Scalar> stateGradient;    // (dk x dv) dL/dS at the current chunk boundary
  Vector<Scalar> scores;           // (rowBlock x c) P
  Vector<Scalar> scoreGradients;   // (rowBlock x c) dL/dP ⊙ the decay mask
  Vector<Scalar> rowGradients;     // (rowBlock x dv) G_i = dO_i / f_i
  Vector<Scalar> scaledGradients;  // (rowBlock x dv) x_(i+1) G_i
  Vector<Scalar> weightedKeys;     // (c x dk) w_(c-1-j) k_j
  Vector<Scalar> weightedValues;   // (c x dv) w_(c-1-j) v_j
  Vector<Scalar> rowAbsSum;        // (rowBlock) Σ_j |P_ij|

  static Eigen::Map<RowMatrix<Scalar>> view(Vector<Scalar>& buffer, Index rows, Index cols) {
    return ChunkScratch<Scalar>::view(buffer, rows, cols);
  }
};

/// The backward of one chunk of c <= plan.rows rows (retentionChunk), entering with `state`
/// (not read when `stateIsZero`).
///   dOut (c x dv): dL/do of the chunk's rows
///   dState (dk x dv): in, dL/dS' (the state after the chunk; zero when `dStateIsZero`); out,
///     when `enteringGradient`, dL/dS (the state entering it), `dStateIsZero` updated; else
///     left unspecified
///   dq, dk (c x dk), dv (c x dv): written (the chunk's own rows see everything that reads them)
template <typename Scalar>
void retentionChunkBackward(const ConstRowsMap<Scalar>& q, const ConstRowsMap<Scalar>& k,
                            const ConstRowsMap<Scalar>& v, const ChunkPlan<Scalar>& plan,
                            RowScaling scaling, const ConstStateMap<Scalar>& state,
                            bool stateIsZero, const ConstRowsMap<Scalar>& dOut,
                            StateMap<Scalar>& dState, bool& dStateIsZero, bool enteringGradient,
                            RowsMap<Scalar>& dq, RowsMap<Scalar>& dk, RowsMap<Scalar>& dv,
                            RetentionBackwardScratch<Scalar>& scratch) {
  using Scratch = RetentionBackwardScratch<Scalar>;
  const Index c = q.rows(), keyDim = k.cols(), valueDim = v.cols();
  RETNET_ASSERT(c >= 1 && c <= plan.rows && dOut.rows() == c && dState.rows() == keyDim &&
                dState.cols() == valueDim);

  // Through the state update: dk_j, dv_j from dS', then dS = γ^c dS' (+ the cross terms below).
  if (dStateIsZero) {
    dk.setZero();
    dv.setZero();
  } else {
    auto weightedKeys = Scratch::view(scratch.weightedKeys, c, keyDim);
    weightedKeys.noalias() = plan.keyPowers.head(c).reverse().asDiagonal() * k;
    dv.noalias() = weightedKeys * dState;
    auto weightedValues = Scratch::view(scratch.weightedValues, c, valueDim);
    weightedValues.noalias() = plan.keyPowers.head(c).reverse().asDiagonal() * v;
    dk.noalias() = weightedValues * dState.transpose();
    if (enteringGradient) dState *= plan.powers(c);
  }

  // torchscale's cross-chunk normaliser, as the forward reads it from the entering state.
  Scalar sigma = 1;
  if (scaling != RowScaling::kNone && !stateIsZero) sigma = crossNormaliser(state, plan);

  for (Index r0 = 0; r0 < c; r0 += kRowBlock) {
    const Index rb = std::min(kRowBlock, c - r0), r1 = r0 + rb;  // rows [r0, r1) see keys [0, r1)
    const ConstRowsMap<Scalar> qBlock = middleRows(q, r0, rb);
    const ConstRowsMap<Scalar> keys = middleRows(k, 0, r1);
    const ConstRowsMap<Scalar> values = middleRows(v, 0, r1);
    RowsMap<Scalar> dqBlock = middleRows(dq, r0, rb);
    RowsMap<Scalar> dkSeen = middleRows(dk, 0, r1);
    RowsMap<Scalar> dvSeen = middleRows(dv, 0, r1);

    // P, as the forward forms it (the same products, so the same factors).
    auto scores = Scratch::view(scratch.scores, rb, r1);
    scores.noalias() = qBlock * keys.transpose();
    maskScores(scores, plan, r0, r1, 0);

    // G = dO / f, f_i = r_i · max(iota_i, sigma) [capped at 5e4 in the parallel form].
    auto grads = Scratch::view(scratch.rowGradients, rb, valueDim);
    grads = middleRows(dOut, r0, rb);
    if (scaling != RowScaling::kNone) {
      auto rowAbsSum = Scratch::view(scratch.rowAbsSum, rb, 1);
      rowAbsSum.noalias() = scores.cwiseAbs().rowwise().sum();
      for (Index i = r0; i < r1; ++i)
        grads.row(i - r0) /= rowFactor(plan, scaling, i, rowAbsSum(i - r0), sigma);
    }

    // Inner term: dv += Pᵀ G; dP = (G Vᵀ) ⊙ mask; dq = dP K; dk += dPᵀ Q.
    dvSeen.noalias() += scores.transpose() * grads;
    auto scoreGrads = Scratch::view(scratch.scoreGradients, rb, r1);
    scoreGrads.noalias() = grads * values.transpose();
    maskScores(scoreGrads, plan, r0, r1, 0);
    dqBlock.noalias() = scoreGrads * keys;
    dkSeen.noalias() += scoreGrads.transpose() * qBlock;

    // Cross term x_(i+1) q_i S: dq_i += x_(i+1) G_i Sᵀ, dS += Σ_i x_(i+1) q_iᵀ G_i.
    if (!stateIsZero || enteringGradient) {
      auto scaled = Scratch::view(scratch.scaledGradients, rb, valueDim);
      scaled.noalias() = plan.crossPowers.segment(r0 + 1, rb).asDiagonal() * grads;
      if (!stateIsZero) dqBlock.noalias() += scaled * state.transpose();
      if (enteringGradient) {
        if (dStateIsZero) {
          dState.noalias() = qBlock.transpose() * scaled;
          dStateIsZero = false;
        } else {
          dState.noalias() += qBlock.transpose() * scaled;
        }
      }
    }
  }
}

/// The backward of retentionChunks: chunks of plan.rows over the (time x ·) slices, the last
/// one possibly shorter, entering with `initial` (not read when `stateIsZero`).
///   dOut (time x dv); finalGradient: dL/dS after the last row, a dense (dk x dv) block, or null
///   for zero; dq, dk (time x dk), dv (time x dv): written; initialGradient: dL/d`initial`
///   written to a dense (dk x dv) block, or null when not wanted
///
/// Memory: the states entering chunks 1 … N-1 (N = ⌈time / plan.rows⌉) are recomputed by one
/// forward sweep and kept, (N-1)·dk·dv scalars, plus O(min(plan.rows, kRowBlock) · plan.rows +
/// plan.rows · (dk + dv)) for one chunk's scores, their gradients and weighted rows. Nothing is
/// kept per position.
template <typename Scalar>
void retentionChunksBackward(const ConstRowsMap<Scalar>& q, const ConstRowsMap<Scalar>& k,
                             const ConstRowsMap<Scalar>& v, const ChunkPlan<Scalar>& plan,
                             RowScaling scaling, const ConstStateMap<Scalar>& initial,
                             bool stateIsZero, const ConstRowsMap<Scalar>& dOut,
                             const Scalar* finalGradient, RowsMap<Scalar>& dq, RowsMap<Scalar>& dk,
                             RowsMap<Scalar>& dv, Scalar* initialGradient,
                             RetentionBackwardScratch<Scalar>& scratch) {
  using Scratch = RetentionBackwardScratch<Scalar>;
  const Index time = q.rows(), keyDim = k.cols(), valueDim = v.cols();
  if (time == 0) {  // S = S0: the gradient passes through
    if (initialGradient != nullptr) {
      StateMap<Scalar> out(initialGradient, keyDim, valueDim);
      if (finalGradient == nullptr) {
        out.setZero();
      } else {
        out = ConstStateMap<Scalar>(finalGradient, keyDim, valueDim);
      }
    }
    return;
  }
  RETNET_ASSERT(plan.rows >= 1);
  const Index rows = plan.rows, chunks = (time + rows - 1) / rows, stateSize = keyDim * valueDim;

  // Forward sweep over the chunk boundaries: states(n-1) enters chunk n.
  auto states = Scratch::view(scratch.states, std::max<Index>(chunks - 1, 0) * keyDim, valueDim);
  for (Index n = 1; n < chunks; ++n) {
    StateMap<Scalar> next(states.data() + (n - 1) * stateSize, keyDim, valueDim);
    const bool previousIsZero = n == 1 && stateIsZero;
    if (!previousIsZero) {
      next = n == 1 ? initial : ConstStateMap<Scalar>(next.data() - stateSize, keyDim, valueDim);
    }
    advanceState(k, v, plan, (n - 1) * rows, n * rows, next, previousIsZero, scratch.forward);
  }

  // Backward sweep, last chunk first, carrying dL/dS across the boundaries.
  StateMap<Scalar> dState(Scratch::view(scratch.stateGradient, keyDim, valueDim).data(), keyDim,
                          valueDim);
  bool dStateIsZero = finalGradient == nullptr;
  if (!dStateIsZero) dState = ConstStateMap<Scalar>(finalGradient, keyDim, valueDim);
  for (Index n = chunks - 1; n >= 0; --n) {
    const Index begin = n * rows, c = std::min(rows, time - begin);
    const auto rowsOf = [&](const ConstRowsMap<Scalar>& m) {
      return ConstRowsMap<Scalar>(m.data() + begin * m.outerStride(), c, m.cols(),
                                  Eigen::OuterStride<>(m.outerStride()));
    };
    const auto outRowsOf = [&](RowsMap<Scalar>& m) {
      return RowsMap<Scalar>(m.data() + begin * m.outerStride(), c, m.cols(),
                             Eigen::OuterStride<>(m.outerStride()));
    };
    const ConstStateMap<Scalar> entering(
        n == 0 ? initial.data() : states.data() + (n - 1) * stateSize, keyDim, valueDim);
    RowsMap<Scalar> dqChunk = outRowsOf(dq), dkChunk = outRowsOf(dk), dvChunk = outRowsOf(dv);
    retentionChunkBackward(rowsOf(q), rowsOf(k), rowsOf(v), plan, scaling, entering,
                           n == 0 && stateIsZero, rowsOf(dOut), dState, dStateIsZero,
                           n > 0 || initialGradient != nullptr, dqChunk, dkChunk, dvChunk, scratch);
  }
  if (initialGradient != nullptr) {
    StateMap<Scalar> out(initialGradient, keyDim, valueDim);
    if (dStateIsZero) {
      out.setZero();
    } else {
      out = dState;
    }
  }
}

}  // namespace retnet::detail
