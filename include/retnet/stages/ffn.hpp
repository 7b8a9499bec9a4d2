// Stage: the gated feed-forward networks. torchscale's GLU, fc2(act(fc1 x) ⊙ gate x), and
// FLA's SwiGLU, down(silu(gate x) ⊙ up x), are one computation with different names:
//
//   [a | b] = x · [W_a; W_b]ᵀ      (one GEMM into a (rows x 2F) buffer)
//   y       = (act(a) ⊙ b) · W_outᵀ
//
// GLU: W_a = fc1, W_b = gate, act = gelu or swish. SwiGLU: W_a = gate_proj, W_b = up_proj,
// act = swish (silu). FeedForwardWeights::glu / ::swiglu put the parts in that order.
#pragma once

#include <algorithm>

#include "retnet/activation.hpp"
#include "retnet/detail/checks.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/errors.hpp"
#include "retnet/stages/elementwise.hpp"
#include "retnet/stages/linear.hpp"

namespace retnet {

/// The weights of a gated FFN: the activated and the linear branch stacked, and the output.
template <typename Scalar>
struct FeedForwardWeights {
  LinearWeight<Scalar> input;   ///< (2F x D): [W_a; W_b], W_a the activated branch
  LinearWeight<Scalar> output;  ///< (D x F)
  Activation activation = Activation::kGelu;

  Index hiddenDim() const { return output.inputs(); }  ///< F

  /// torchscale's FeedForwardNetwork with a gate: fc2(act(fc1 x) ⊙ gate x).
  static FeedForwardWeights glu(const LinearWeight<Scalar>& fc1, const LinearWeight<Scalar>& gate,
                                const LinearWeight<Scalar>& fc2, Activation activation) {
    return make(fc1, gate, fc2, activation, "FeedForwardWeights::glu");
  }
  /// FLA's GatedMLP: down(silu(gate_proj x) ⊙ up_proj x).
  static FeedForwardWeights swiglu(const LinearWeight<Scalar>& gateProj,
                                   const LinearWeight<Scalar>& upProj,
                                   const LinearWeight<Scalar>& downProj) {
    return make(gateProj, upProj, downProj, Activation::kSwish, "FeedForwardWeights::swiglu");
  }

 private:
  static FeedForwardWeights make(const LinearWeight<Scalar>& a, const LinearWeight<Scalar>& b,
                                 const LinearWeight<Scalar>& out, Activation activation,
                                 const char* where) {
    const Index F = a.outputs(), D = a.inputs();
    detail::require(F >= 1 && D >= 1, where, "the branch weights must be non-empty");
    detail::requireShape(where, b, F, D, "both branches");
    detail::requireShape(where, out, D, F, "the output weight");
    return {LinearWeight<Scalar>::stacked({&a, &b}), out, activation};
  }
};

namespace detail {

/// h = act(a) ⊙ b over the rows [begin, begin + count) of a, b, h (rows x F each; h may be a),
/// piece by piece (kActivationPiece values) through an aligned buffer, so that every value is
/// computed the same way whatever the buffers' strides and alignment: the forward, the training
/// forward and the backward's h agree bit for bit. Then each(r, c, n, act) with act the piece
/// act(a) of row r, columns [c, c + n) (the backward's use of it).
template <typename Scalar, typename A, typename B, typename H, typename Each>
void gatedActivation(const A& a, const B& b, H& h, Activation activation, Index begin, Index count,
                     Each&& each) {
  const Index F = a.cols();
  ActivationPiece<Scalar> piece;
  for (Index r = begin; r < begin + count; ++r) {
    for (Index c = 0; c < F; c += kActivationPiece) {
      const Index n = std::min(kActivationPiece, F - c);
      piece = a.row(r).segment(c, n).array();
      stages::activateRows<Scalar>(Eigen::Map<RowMatrix<Scalar>>(piece.data(), 1, n), activation);
      h.row(r).segment(c, n).array() = piece * b.row(r).segment(c, n).array();
      each(r, c, n, piece);
    }
  }
}
template <typename Scalar, typename A, typename B, typename H>
void gatedActivation(const A& a, const B& b, H& h, Activation activation, Index begin,
                     Index count) {
  gatedActivation<Scalar>(a, b, h, activation, begin, count,
                          [](Index, Index, Index, const ActivationPiece<Scalar>&) {});
}

/// The gated FFN's data path, shapes checked by the caller: [a | b] = x·W_inᵀ into
/// preActivation, h = act(a) ⊙ b into activated (which may be preActivation's left half),
/// y = h·W_outᵀ.
template <typename Scalar>
void gatedFeedForwardPath(ConstMatrixRef<Scalar> x, const FeedForwardWeights<Scalar>& weights,
                          MatrixRef<Scalar> preActivation, MatrixRef<Scalar> activated,
                          MatrixRef<Scalar> y) {
  const Index F = weights.hiddenDim();
  stages::linear<Scalar>(x, weights.input, preActivation);
  forRowBlocks(x.rows(), [&](Index begin, Index count) {
    gatedActivation<Scalar>(preActivation.leftCols(F), preActivation.rightCols(F), activated,
                            weights.activation, begin, count);
  });
  stages::linear<Scalar>(activated, weights.output, y);
}

}  // namespace detail

namespace stages {

/// y = (act(x W_aᵀ) ⊙ x W_bᵀ) W_outᵀ.
///   x (rows x D); hidden (rows x 2F) scratch, left holding [act(a) ⊙ b | b]; y (rows x D),
///   not overlapping x or hidden
template <typename Scalar>
void gatedFeedForward(detail::NoDeduce<ConstMatrixRef<Scalar>> x,
                      const FeedForwardWeights<Scalar>& weights,
                      detail::NoDeduce<MatrixRef<Scalar>> hidden,
                      detail::NoDeduce<MatrixRef<Scalar>> y) {
  const Index F = weights.hiddenDim();
  detail::requireShape("stages::gatedFeedForward", hidden, x.rows(), 2 * F, "hidden (rows x 2F)");
  auto activated = hidden.leftCols(F);  // h in place of a
  detail::gatedFeedForwardPath<Scalar>(x, weights, hidden, activated, y);
}

/// gatedFeedForward for training: the same y, bit for bit, keeping what the backward needs.
///   x (rows x D); preActivation (rows x 2F), written: [a | b] = x · [W_a; W_b]ᵀ, which
///   gatedFeedForwardBackward reads; activated (rows x F) scratch, left holding act(a) ⊙ b;
///   y (rows x D). No two overlap.
template <typename Scalar>
void gatedFeedForwardTraining(detail::NoDeduce<ConstMatrixRef<Scalar>> x,
                              const FeedForwardWeights<Scalar>& weights,
                              detail::NoDeduce<MatrixRef<Scalar>> preActivation,
                              detail::NoDeduce<MatrixRef<Scalar>> activated,
                              detail::NoDeduce<MatrixRef<Scalar>> y) {
  const char* where = "stages::gatedFeedForwardTraining";
  const Index F = weights.hiddenDim(), D = weights.input.inputs(), rows = x.rows();
  detail::requireShape(where, x, rows, D, "x (rows x D)");
  detail::requireShape(where, y, rows, D, "y (rows x D)");
  detail::requireShape(where, preActivation, rows, 2 * F, "preActivation (rows x 2F)");
  detail::requireShape(where, activated, rows, F, "activated (rows x F)");
  detail::gatedFeedForwardPath<Scalar>(x, weights, preActivation, activated, y);
}

/// The backward of gatedFeedForward, from the pre-activations gatedFeedForwardTraining kept:
///   [a | b] (given),  h = act(a) ⊙ b                              (recomputed, elementwise)
///   dh = dy · W_out,  da = dh ⊙ b ⊙ act'(a),  db = dh ⊙ act(a)
///   dW_out += dyᵀ · h,  dW_in += [da | db]ᵀ · x,  dx = [da | db] · W_in
/// (dx += … with `accumulate`). Composed of linearBackwardInput / linearBackwardWeight, the
/// activation and its derivative; every weight must be full precision.
///   x (rows x D); preActivation (rows x 2F), the training forward's [a | b]; dy (rows x D);
///   activated (rows x F) scratch, left holding h, as the forward computed it (bit for bit);
///   dHidden (rows x 2F) scratch, left holding [da | db];
///   dx (rows x D); dWIn (2F x D): rows [0, F) the gradient of W_a (fc1, gate_proj), rows
///   [F, 2F) that of W_b (gate, up_proj), accumulated; dWOut (D x F), accumulated.
///   No two of these overlap, except that dx may be x.
template <typename Scalar>
void gatedFeedForwardBackward(detail::NoDeduce<ConstMatrixRef<Scalar>> x,
                              const FeedForwardWeights<Scalar>& weights,
                              detail::NoDeduce<ConstMatrixRef<Scalar>> preActivation,
                              detail::NoDeduce<ConstMatrixRef<Scalar>> dy,
                              detail::NoDeduce<MatrixRef<Scalar>> activated,
                              detail::NoDeduce<MatrixRef<Scalar>> dHidden,
                              detail::NoDeduce<MatrixRef<Scalar>> dx,
                              detail::NoDeduce<MatrixRef<Scalar>> dWIn,
                              detail::NoDeduce<MatrixRef<Scalar>> dWOut, bool accumulate = false) {
  const char* where = "stages::gatedFeedForwardBackward";
  const Index F = weights.hiddenDim(), D = weights.input.inputs(), rows = x.rows();
  detail::require(
      weights.input.type() == WeightType::kFull && weights.output.type() == WeightType::kFull,
      where, "the weights must be full precision to be trained, got ",
      weightTypeName(weights.input.type()), " and ", weightTypeName(weights.output.type()));
  detail::requireShape(where, weights.input, 2 * F, D, "the input weight");
  detail::requireShape(where, weights.output, D, F, "the output weight");
  detail::requireShape(where, x, rows, D, "x (rows x D)");
  detail::requireShape(where, preActivation, rows, 2 * F, "preActivation (rows x 2F)");
  detail::requireShape(where, dy, rows, D, "dy (rows x D)");
  detail::requireShape(where, activated, rows, F, "activated (rows x F)");
  detail::requireShape(where, dHidden, rows, 2 * F, "dHidden (rows x 2F)");
  detail::requireShape(where, dx, rows, D, "dx (rows x D)");
  detail::requireShape(where, dWIn, 2 * F, D, "dWIn (2F x D)");
  detail::requireShape(where, dWOut, D, F, "dWOut (D x F)");

  linearBackwardInput<Scalar>(dy, weights.output, dHidden.rightCols(F));  // dh
  const auto a = preActivation.leftCols(F), b = preActivation.rightCols(F);
  detail::forRowBlocks(rows, [&](Index begin, Index count) {
    detail::ActivationPiece<Scalar> derivative;
    detail::gatedActivation<Scalar>(  // h, then per piece:
        a, b, activated, weights.activation, begin, count,
        [&](Index r, Index c, Index n, const detail::ActivationPiece<Scalar>& act) {
          auto da = dHidden.row(r).segment(c, n).array();
          auto db = dHidden.row(r).segment(F + c, n).array();  // holds dh until written
          detail::activationDerivativePiece<Scalar>(a.row(r).segment(c, n).array(),
                                                    weights.activation, derivative);
          da = db * b.row(r).segment(c, n).array() * derivative;
          db *= act;
        });
  });
  linearBackwardWeight<Scalar>(activated, dy, dWOut);
  linearBackward<Scalar>(x, weights.input, dHidden, dx, dWIn, accumulate);
}

}  // namespace stages
}  // namespace retnet
