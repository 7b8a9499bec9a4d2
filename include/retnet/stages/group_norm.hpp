// Stage: the group norm of multi-scale retention and its output gate (paper eq. 8).
#pragma once

#include <cmath>

#include "retnet/activation.hpp"
#include "retnet/detail/checks.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/detail/row_sums.hpp"
#include "retnet/stages/elementwise.hpp"
#include "retnet/tensor.hpp"

namespace retnet::stages {

/// For every row and head h (columns [h·dv, (h+1)·dv)):
///   o_h <- o_h / sqrt(mean(o_h²) + eps) [⊙ w]  ⊙ act(g_h)
/// the RMS group norm over each head's dv values (torchscale: no weight; FLA: one weight vector
/// w of dv entries shared by every head), then the gate. g is overwritten with act(g).
///   o (rows x heads·dv) in place; g (rows x heads·dv); w (dv) or null
template <typename Scalar>
void groupNormGate(detail::NoDeduce<MatrixRef<Scalar>> o, Index heads, const Scalar* w, double eps,
                   detail::NoDeduce<MatrixRef<Scalar>> g, Activation gate) {
  const char* where = "stages::groupNormGate";
  detail::require(heads >= 1 && o.cols() % heads == 0, where, "heads (", heads,
                  ") must be >= 1 and divide o's width (", o.cols(), ")");
  detail::requireShape(where, g, o.rows(), o.cols(), "g (o's shape)");
  const Index dv = o.cols() / heads;
  const auto epsilon = static_cast<Scalar>(eps);
  detail::forRowBlocks(o.rows(), [&](Index begin, Index count) {
    for (Index r = begin; r < begin + count; ++r) {
      for (Index h = 0; h < heads; ++h) {
        auto head = o.row(r).segment(h * dv, dv);
        head *= Scalar(1) / std::sqrt(head.squaredNorm() / static_cast<Scalar>(dv) + epsilon);
        if (w != nullptr) {
          head.array() *= Eigen::Map<const Eigen::Array<Scalar, 1, Eigen::Dynamic>>(w, dv);
        }
      }
    }
    auto gateRows = g.middleRows(begin, count);
    activateRows<Scalar>(gateRows, gate);
    o.middleRows(begin, count).array() *= gateRows.array();
  });
}

/// The backward of groupNormGate. Per row and head h, with the forward's inputs (which the
/// forward overwrites: the caller keeps them) o_h (pre-norm) and g_h (pre-activation),
/// s = 1 / sqrt(mean(o_h²) + eps), n_h = o_h · s, u_h = n_h [⊙ w], a_h = act(g_h):
///   dg_h = dy_h ⊙ u_h ⊙ act'(g_h)
///   do_h = s · (m_h − (s² / dv) · (m_h · o_h) · o_h),   m_h = dy_h ⊙ a_h [⊙ w]
///   dw  += Σ_rows Σ_h dy_h ⊙ a_h ⊙ n_h                 (only with a weight)
///   o, g (rows x heads·dv): the forward's inputs; dy (rows x heads·dv); dO, dG (rows x
///   heads·dv), written, overlapping none of o, g, dy and each other; w (dv) or null; dw (dv),
///   given exactly when w is, accumulated.
/// s³ is never formed, so an all-zero row (a padded one) with a zero dy gets zero gradients even
/// with a tiny eps, where torch's rsqrt(eps)³ overflows to NaN (golden/grad README §3.2).
template <typename Scalar>
void groupNormGateBackward(detail::NoDeduce<ConstMatrixRef<Scalar>> o, Index heads, const Scalar* w,
                           double eps, detail::NoDeduce<ConstMatrixRef<Scalar>> g, Activation gate,
                           detail::NoDeduce<ConstMatrixRef<Scalar>> dy,
                           detail::NoDeduce<MatrixRef<Scalar>> dO,
                           detail::NoDeduce<MatrixRef<Scalar>> dG, Scalar* dw) {
  const char* where = "stages::groupNormGateBackward";
  detail::require(heads >= 1 && o.cols() % heads == 0, where, "heads (", heads,
                  ") must be >= 1 and divide o's width (", o.cols(), ")");
  detail::requireShape(where, g, o.rows(), o.cols(), "g (o's shape)");
  detail::requireShape(where, dy, o.rows(), o.cols(), "dy (o's shape)");
  detail::requireShape(where, dO, o.rows(), o.cols(), "dO (o's shape)");
  detail::requireShape(where, dG, o.rows(), o.cols(), "dG (o's shape)");
  detail::require((w == nullptr) == (dw == nullptr), where,
                  "dw must be given exactly when the weight w is");
  using RowArray = Eigen::Array<Scalar, 1, Eigen::Dynamic>;
  const Index dv = o.cols() / heads;
  const auto epsilon = static_cast<Scalar>(eps);
  const Eigen::Map<const RowArray> weight(w, w == nullptr ? 0 : dv);
  const auto sum = detail::sumOverRowBlocks<Scalar>(
      o.rows(), w == nullptr ? 0 : dv, [&](Index begin, Index count, auto partial) {
        // dO <- act(g) (the forward's gate values), dG <- dy ⊙ act'(g); then per head.
        auto gates = dO.middleRows(begin, count);
        gates = g.middleRows(begin, count);
        activateRows<Scalar>(gates, gate);
        activateRowsBackward<Scalar>(g.middleRows(begin, count), gate, dy.middleRows(begin, count),
                                     dG.middleRows(begin, count));
        for (Index r = begin; r < begin + count; ++r) {
          for (Index h = 0; h < heads; ++h) {
            const auto oh = o.row(r).segment(h * dv, dv).array();
            const auto dyh = dy.row(r).segment(h * dv, dv).array();
            auto doh = dO.row(r).segment(h * dv, dv).array();  // holds act(g_h) until written
            auto dgh = dG.row(r).segment(h * dv, dv).array();
            const Scalar inverse =
                Scalar(1) /
                std::sqrt(o.row(r).segment(h * dv, dv).squaredNorm() / static_cast<Scalar>(dv) +
                          epsilon);
            if (w == nullptr) {
              dgh *= oh * inverse;
              const Scalar correction =
                  inverse * inverse * (dyh * doh * oh).sum() / static_cast<Scalar>(dv);
              doh = inverse * (dyh * doh - correction * oh);
            } else {
              partial.array() += dyh * doh * oh * inverse;
              dgh *= oh * inverse * weight;
              const Scalar correction =
                  inverse * inverse * (dyh * doh * weight * oh).sum() / static_cast<Scalar>(dv);
              doh = inverse * (dyh * doh * weight - correction * oh);
            }
          }
        }
      });
  if (dw != nullptr) Eigen::Map<RowArray>(dw, dv) += sum.array();
}

}  // namespace retnet::stages
