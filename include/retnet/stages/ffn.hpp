// Stage: the gated feed-forward networks. torchscale's GLU, fc2(act(fc1 x) ⊙ gate x), and
// FLA's SwiGLU, down(silu(gate x) ⊙ up x), are one computation with different names:
//
//   [a | b] = x · [W_a; W_b]ᵀ      (one GEMM into a (rows x 2F) buffer)
//   y       = (act(a) ⊙ b) · W_outᵀ
//
// GLU: W_a = fc1, W_b = gate, act = gelu or swish. SwiGLU: W_a = gate_proj, W_b = up_proj,
// act = swish (silu). FeedForwardWeights::glu / ::swiglu put the parts in that order.
#pragma once

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

}  // namespace stages
}  // namespace retnet
