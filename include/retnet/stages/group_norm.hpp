// Stage: the group norm of multi-scale retention and its output gate (paper eq. 8).
#pragma once

#include <cmath>

#include "retnet/activation.hpp"
#include "retnet/detail/checks.hpp"
#include "retnet/detail/parallel_for.hpp"
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

}  // namespace retnet::stages
