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
  linear<Scalar>(x, weights.input, hidden);
  auto activated = hidden.leftCols(F);
  detail::forRowBlocks(x.rows(), [&](Index begin, Index count) {
    auto block = activated.middleRows(begin, count);
    activateRows<Scalar>(block, weights.activation);
    block.array() *= hidden.block(begin, F, count, F).array();
  });
  linear<Scalar>(activated, weights.output, y);
}

/// The backward of gatedFeedForward. It recomputes the hidden activations from x (one GEMM, the
/// forward's first), so nothing of the forward needs to be kept but x:
///   [a | b] = x · W_inᵀ,  h = act(a) ⊙ b                         (recomputed)
///   dh = dy · W_out,  da = dh ⊙ b ⊙ act'(a),  db = dh ⊙ act(a)
///   dW_out += dyᵀ · h,  dW_in += [da | db]ᵀ · x,  dx = [da | db] · W_in
/// (dx += … with `accumulate`). Composed of linear, linearBackwardInput / linearBackwardWeight,
/// activateRows and the activation derivative; every weight must be full precision.
///   x (rows x D); dy (rows x D);
///   hidden (rows x 2F) scratch, left holding [h | b] as the forward leaves it;
///   dHidden (rows x 2F) scratch, left holding [da | db];
///   dx (rows x D); dWIn (2F x D): rows [0, F) the gradient of W_a (fc1, gate_proj), rows
///   [F, 2F) that of W_b (gate, up_proj), accumulated; dWOut (D x F), accumulated.
///   No two of these overlap, except that dx may be x.
template <typename Scalar>
void gatedFeedForwardBackward(detail::NoDeduce<ConstMatrixRef<Scalar>> x,
                              const FeedForwardWeights<Scalar>& weights,
                              detail::NoDeduce<ConstMatrixRef<Scalar>> dy,
                              detail::NoDeduce<MatrixRef<Scalar>> hidden,
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
  detail::requireShape(where, dy, rows, D, "dy (rows x D)");
  detail::requireShape(where, hidden, rows, 2 * F, "hidden (rows x 2F)");
  detail::requireShape(where, dHidden, rows, 2 * F, "dHidden (rows x 2F)");
  detail::requireShape(where, dx, rows, D, "dx (rows x D)");
  detail::requireShape(where, dWIn, 2 * F, D, "dWIn (2F x D)");
  detail::requireShape(where, dWOut, D, F, "dWOut (D x F)");

  linear<Scalar>(x, weights.input, hidden);                               // [a | b]
  linearBackwardInput<Scalar>(dy, weights.output, dHidden.rightCols(F));  // dh
  detail::forRowBlocks(rows, [&](Index begin, Index count) {
    detail::ActivationPiece<Scalar> derivative, activated;
    for (Index r = begin; r < begin + count; ++r) {
      for (Index c = 0; c < F; c += detail::kActivationPiece) {
        const Index n = std::min(detail::kActivationPiece, F - c);
        auto a = hidden.row(r).segment(c, n).array();
        const auto b = hidden.row(r).segment(F + c, n).array();
        auto da = dHidden.row(r).segment(c, n).array();
        auto db = dHidden.row(r).segment(F + c, n).array();  // holds dh until written
        detail::activationDerivativePiece<Scalar>(a, weights.activation, derivative);
        activated = a;
        activateRows<Scalar>(Eigen::Map<RowMatrix<Scalar>>(activated.data(), 1, n),
                             weights.activation);
        da = db * b * derivative;
        db *= activated;
        a = activated * b;  // h, as the forward leaves it
      }
    }
  });
  linearBackwardWeight<Scalar>(hidden.leftCols(F), dy, dWOut);
  linearBackward<Scalar>(x, weights.input, dHidden, dx, dWIn, accumulate);
}

}  // namespace stages
}  // namespace retnet
