// The retention kernels for one (batch item, head) slice.
//
// Notation (paper §2.1): q, k are (time x dk), v is (time x dv); γ is the decay; S is the
// *unnormalised* state Σ_s γ^(n-s) k_sᵀ v_s (dk x dv). Every form computes, for position i of a
// chunk that starts after the state S,
//
//   U_i = Σ_{j<=i in chunk} γ^(i-j) (q_i·k_j) v_j  +  γ^(i+1) q_i S          (paper eq. 7)
//
// and then divides row i by a positive factor f_i that depends on the form (1 for plain
// retention; torchscale's normalisations for multi-scale retention, see RowScaling). The
// parallel form is one chunk spanning the input, so parallel and chunkwise share this code.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "retnet/detail/assert.hpp"
#include "retnet/detail/decay.hpp"
#include "retnet/detail/matrix_views.hpp"

namespace retnet::detail {

template <typename Scalar>
using StateMap = Eigen::Map<RowMatrix<Scalar>>;
template <typename Scalar>
using ConstStateMap = Eigen::Map<const RowMatrix<Scalar>>;

/// How a chunk's rows are divided after U is formed.
enum class RowScaling {
  kNone,       ///< plain retention: o_i = U_i
  kChunkwise,  ///< torchscale chunkwise: o_i = U_i / (r_i · max(iota_i, sigma))
  kParallel,   ///< torchscale parallel: the same with the factor clamped to at most 5e4
};

/// Which side of q·k carries the scale s: the key (torchscale folds 1/sqrt(dk) into k, so S
/// holds s·kᵀv) or the query (FLA scales q, so S holds kᵀv and outputs are s·q S).
enum class ScaleSide { kKey, kQuery };

/// Decay tables for one head and one chunk length C, shared by all chunks and batch items.
/// O(C) memory: the decay mask D (eq. 5) is applied row by row from these, never stored.
template <typename Scalar>
struct ChunkPlan {
  Index rows = 0;              ///< rows in the largest chunk processed: min(C, T)
  Vector<Scalar> powers;       ///< γ^m, m = 0 … rows
  Vector<Scalar> maskPowers;   ///< s·γ^m: the scaled decay mask of the scores
  Vector<Scalar> crossPowers;  ///< γ^m, or s·γ^m when s is on the query side: q S's factor
  Vector<Scalar> keyPowers;    ///< γ^m, or s·γ^m when s is on the key side: kᵀv's factor
  Vector<Scalar> rowNorm;      ///< r_i = sqrt(Σ_{j<=i} γ^(i-j)): torchscale's mask row normaliser
  Scalar windowSum = 1;        ///< L = Σ_{j<C} γ^j: torchscale's chunk state is S / L

  ChunkPlan(const DecayPowers& decay, Index chunkSize, Index time, double scale, ScaleSide side) {
    rows = std::min(chunkSize, time);
    if (rows <= 0) {  // the recurrent form's plan: no tables, nothing allocated
      rows = 0;
      return;
    }
    powers.resize(rows + 1);
    for (Index m = 0; m <= rows; ++m) powers(m) = static_cast<Scalar>(decay(m));
    maskPowers = static_cast<Scalar>(scale) * powers;  // s = 1 leaves γ^m bit for bit
    crossPowers = side == ScaleSide::kQuery ? maskPowers : powers;
    keyPowers = side == ScaleSide::kKey ? maskPowers : powers;
    rowNorm.resize(rows);
    double rowSum = 0;
    for (Index i = 0; i < rows; ++i) {
      rowSum += decay(i);  // Σ_{m<=i} γ^m, the sum of row i of the mask
      rowNorm(i) = static_cast<Scalar>(std::sqrt(rowSum));
    }
    windowSum = static_cast<Scalar>(decay.windowSum(chunkSize));
  }
};

/// Rows of a chunk are processed in blocks of this many, so a large chunk (the parallel form is
/// one chunk of T rows) needs O(block · T) scratch and skips the zero upper triangle of D.
inline constexpr Index kRowBlock = 128;

/// Whether the block of rows starting `r0` rows into a chunk takes the chunk's earlier keys from
/// the state S (advanced to r0) instead of from their scores: once r0 > 2·dk, where the state's
/// 2·dk·dv per row (q·S and folding k_jᵀv_j in) costs less than r0·dv for the earlier values.
inline bool blockViaState(Index r0, Index keyDim) { return r0 > 2 * keyDim; }

/// Per-thread workspace of the chunk kernel: flat buffers that only grow, viewed as matrices
/// of the current shape, so steady-state chunks allocate nothing.
template <typename Scalar>
struct ChunkScratch {
  Vector<Scalar> scores;         // (rowBlock x c) decayed q·k
  Vector<Scalar> scaledQueries;  // (rowBlock x dk) γ^(i+1) q_i: the rows that read S
  Vector<Scalar> weightedKeys;   // (c x dk) γ^(c-1-j) k_j
  Vector<Scalar> rowAbsSum;      // (rowBlock) Σ_j |scores(i, j)|

  static Eigen::Map<RowMatrix<Scalar>> view(Vector<Scalar>& buffer, Index rows, Index cols) {
    if (buffer.size() < rows * cols) buffer.resize(rows * cols);
    return Eigen::Map<RowMatrix<Scalar>>(buffer.data(), rows, cols);
  }
};

template <typename Scalar>
ConstRowsMap<Scalar> middleRows(const ConstRowsMap<Scalar>& m, Index start, Index count) {
  return ConstRowsMap<Scalar>(m.data() + start * m.outerStride(), count, m.cols(),
                              Eigen::OuterStride<>(m.outerStride()));
}
template <typename Scalar>
RowsMap<Scalar> middleRows(RowsMap<Scalar>& m, Index start, Index count) {
  return RowsMap<Scalar>(m.data() + start * m.outerStride(), count, m.cols(),
                         Eigen::OuterStride<>(m.outerStride()));
}

/// Masks rows [r0, r1) of a chunk's q·k scores, taken against keys [keyBegin, r1), by the decay
/// mask D (eq. 5): row i keeps s·γ^(i−j) (q_i·k_j) for keyBegin <= j <= i and is zero beyond.
/// The forward masks the scores with it, the backward their gradients.
template <typename Scalar, typename Scores>
void maskScores(Scores& scores, const ChunkPlan<Scalar>& plan, Index r0, Index r1, Index keyBegin) {
  for (Index i = r0; i < r1; ++i) {
    auto row = scores.row(i - r0);
    const Index seen = i + 1 - keyBegin;
    row.head(seen).array() *= plan.maskPowers.head(seen).reverse().transpose().array();
    row.tail(r1 - 1 - i).setZero();
  }
}

/// torchscale's cross-chunk normaliser, read from the state S entering a chunk: the largest
/// column abs-sum of R = S / L, floored at 1 (docs/semantics/torchscale.md §3.3).
template <typename Scalar, typename State>
Scalar crossNormaliser(const State& state, const ChunkPlan<Scalar>& plan) {
  return std::max<Scalar>(state.cwiseAbs().colwise().sum().maxCoeff() / plan.windowSum, 1);
}

/// torchscale's factor f_i = r_i · a_i of row i, a_i = max(iota_i, sigma) with
/// iota_i = max(Σ_j |q_i·k_j| γ^(i-j) / r_i, 1) from the row's abs-sum of masked scores; the
/// parallel form also caps a_i at 5e4, as torchscale does (docs/semantics/torchscale.md §3.3).
template <typename Scalar>
Scalar rowFactor(const ChunkPlan<Scalar>& plan, RowScaling scaling, Index i, Scalar absSum,
                 Scalar sigma) {
  const Scalar r = plan.rowNorm(i);
  const Scalar iota = std::max<Scalar>(absSum / r, 1);
  Scalar a = std::max(iota, sigma);
  if (scaling == RowScaling::kParallel) a = std::min<Scalar>(a, Scalar(5e4));
  return r * a;
}

/// S <- γ^n S + Σ_{j in [from, to)} γ^(to-1-j) k_jᵀ v_j (n = to - from): the state after `from`
/// rows of the chunk advanced to `to` rows, each key decayed to the last row before entering.
template <typename Scalar>
void advanceState(const ConstRowsMap<Scalar>& k, const ConstRowsMap<Scalar>& v,
                  const ChunkPlan<Scalar>& plan, Index from, Index to, StateMap<Scalar>& state,
                  bool stateIsZero, ChunkScratch<Scalar>& scratch) {
  const Index n = to - from;
  auto weightedKeys = ChunkScratch<Scalar>::view(scratch.weightedKeys, n, k.cols());
  weightedKeys.noalias() = plan.keyPowers.head(n).reverse().asDiagonal() * middleRows(k, from, n);
  if (stateIsZero) {
    state.noalias() = weightedKeys.transpose() * middleRows(v, from, n);
  } else {
    state *= plan.powers(n);
    state.noalias() += weightedKeys.transpose() * middleRows(v, from, n);
  }
}

/// One chunk of c <= plan.rows positions: writes out (c x dv) and advances S by c positions.
/// `stateIsZero` skips the cross-chunk product when S is known to be zero.
///
/// Rows go in blocks of kRowBlock. A block's output (eq. 7) is formed one of two ways, equal in
/// exact arithmetic: directly, as the masked scores against every earlier key of the chunk times
/// their values plus γ^(i+1) q_i S; or, once the block starts more than 2·dk rows into the chunk
/// (where that is cheaper: 2·dk·dv per row for q·S and the state update against r0·dv for the
/// earlier values), by advancing S to the block's first row and using the block's own keys
/// only — the chunkwise form within the chunk. The normalisers (RowScaling) still sum |scores|
/// over every earlier key of the chunk, as torchscale's do; plain retention skips those scores.
template <typename Scalar>
void retentionChunk(const ConstRowsMap<Scalar>& q, const ConstRowsMap<Scalar>& k,
                    const ConstRowsMap<Scalar>& v, const ChunkPlan<Scalar>& plan,
                    RowScaling scaling, StateMap<Scalar>& state, bool stateIsZero,
                    RowsMap<Scalar>& out, ChunkScratch<Scalar>& scratch) {
  const Index c = q.rows(), keyDim = k.cols();
  // q is (c x dk), k (c x dk), v (c x dv), state (dk x dv), out (c x dv)
  RETNET_ASSERT(c >= 1 && c <= plan.rows && state.rows() == keyDim && out.rows() == c);

  // torchscale's cross-chunk normaliser, read from the state before this chunk.
  Scalar sigma = 1;
  if (scaling != RowScaling::kNone && !stateIsZero) sigma = crossNormaliser(state, plan);

  Index stateRow = 0;  // `state` holds S advanced over the chunk's rows [0, stateRow)
  for (Index r0 = 0; r0 < c; r0 += kRowBlock) {
    const Index rb = std::min(kRowBlock, c - r0), r1 = r0 + rb;  // rows [r0, r1) see keys [0, r1)
    const ConstRowsMap<Scalar> qBlock = middleRows(q, r0, rb);
    RowsMap<Scalar> outBlock = middleRows(out, r0, rb);
    const bool viaState = blockViaState(r0, keyDim);
    if (viaState && stateRow < r0) {
      advanceState(k, v, plan, stateRow, r0, state, stateIsZero && stateRow == 0, scratch);
      stateRow = r0;
    }

    // Decayed scores (QKᵀ ⊙ D) against keys [keyBegin, r1): row i masked by γ^(i-j) for j <= i
    // and 0 beyond.
    const Index keyBegin = viaState && scaling == RowScaling::kNone ? r0 : 0;
    auto scores = ChunkScratch<Scalar>::view(scratch.scores, rb, r1 - keyBegin);
    scores.noalias() = qBlock * middleRows(k, keyBegin, r1 - keyBegin).transpose();
    maskScores(scores, plan, r0, r1, keyBegin);
    auto rowAbsSum = ChunkScratch<Scalar>::view(scratch.rowAbsSum, rb, 1);
    if (scaling != RowScaling::kNone) rowAbsSum.noalias() = scores.cwiseAbs().rowwise().sum();

    // Inner term from the keys not folded into `state`, then the cross term γ^(i+1-stateRow)
    // q_i S from those that are.
    outBlock.noalias() = scores.rightCols(r1 - stateRow) * middleRows(v, stateRow, r1 - stateRow);
    if (!(stateIsZero && stateRow == 0)) {
      // The decay goes on the queries (rb x dk) rather than on q S (rb x dv), and the product
      // accumulates into the output: no (rb x dv) temporary and no pass over it.
      auto scaledQueries = ChunkScratch<Scalar>::view(scratch.scaledQueries, rb, keyDim);
      scaledQueries.noalias() =
          plan.crossPowers.segment(r0 - stateRow + 1, rb).asDiagonal() * qBlock;
      outBlock.noalias() += scaledQueries * state;
    }

    if (scaling != RowScaling::kNone) {
      for (Index i = r0; i < r1; ++i)
        outBlock.row(i - r0) /= rowFactor(plan, scaling, i, rowAbsSum(i - r0), sigma);
    }
  }

  // The state after the chunk (eq. 7's recurrence over the chunk's keys not yet folded in).
  advanceState(k, v, plan, stateRow, c, state, stateIsZero && stateRow == 0, scratch);
}

/// Runs consecutive chunks of `chunkSize` over the (time x ·) slices, the last one possibly
/// shorter; `state` enters as the state before the first row and leaves after the last.
template <typename Scalar>
void retentionChunks(const ConstRowsMap<Scalar>& q, const ConstRowsMap<Scalar>& k,
                     const ConstRowsMap<Scalar>& v, const ChunkPlan<Scalar>& plan,
                     RowScaling scaling, StateMap<Scalar>& state, bool stateIsZero,
                     RowsMap<Scalar>& out, ChunkScratch<Scalar>& scratch) {
  const Index time = q.rows();
  RETNET_ASSERT(plan.rows >= 1);  // else the loop would not advance
  for (Index start = 0; start < time; start += plan.rows) {
    const Index c = std::min(plan.rows, time - start);
    const auto rowsOf = [&](const ConstRowsMap<Scalar>& m) {
      return ConstRowsMap<Scalar>(m.data() + start * m.outerStride(), c, m.cols(),
                                  Eigen::OuterStride<>(m.outerStride()));
    };
    RowsMap<Scalar> outChunk(out.data() + start * out.outerStride(), c, out.cols(),
                             Eigen::OuterStride<>(out.outerStride()));
    retentionChunk(rowsOf(q), rowsOf(k), rowsOf(v), plan, scaling, state, stateIsZero && start == 0,
                   outChunk, scratch);
  }
}

/// One recurrent step (paper eq. 6): S <- γ S + keyScale · kᵀ v, out = (q S) · outScale, in one
/// pass over S. q, k have dk entries; v and out dv; state is (dk x dv) row-major.
template <typename Scalar>
void recurrentStep(const Scalar* q, const Scalar* k, const Scalar* v, Index keyDim, Index valueDim,
                   Scalar gamma, Scalar* state, Scalar* out, Scalar outScale, Scalar keyScale) {
  using RowVec = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;
  const Eigen::Map<const RowVec> value(v, valueDim);
  Eigen::Map<RowVec> output(out, valueDim);
  output.setZero();
  for (Index a = 0; a < keyDim; ++a) {
    Eigen::Map<RowVec> row(state + a * valueDim, valueDim);
    row = gamma * row + (keyScale * k[a]) * value;  // keyScale = 1 leaves k[a] bit for bit
    output += q[a] * row;
  }
  output *= outScale;
}

}  // namespace retnet::detail
