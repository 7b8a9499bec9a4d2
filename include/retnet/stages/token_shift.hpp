// Stage: RWKV's token shift with interpolation (docs/semantics/rwkv4.md §3.2): each position
// mixes its own row with the previous position's row of the same sequence,
//
//   out_t = μ ⊙ h_t + (1 − μ) ⊙ h_{t−1},      h_{−1} = the sequence's carried row,
//
// μ a learned vector (any real values). Rows go to threads in blocks; each row is computed whole
// by one thread.
#pragma once

#include "retnet/detail/checks.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/tensor.hpp"

namespace retnet::stages {

/// out = mix(μ, h, shift(h)) over `batch` sequences of `time` rows each.
///   h, out (batch·time x C), sequence b in rows [b·time, (b+1)·time); out must not overlap h
///   previous (batch x C): each sequence's row before its first (zeros at its start)
///   mu (C)
template <typename Scalar>
void tokenShiftMix(detail::NoDeduce<ConstMatrixRef<Scalar>> h, Index batch, Index time,
                   detail::NoDeduce<ConstMatrixRef<Scalar>> previous, const Scalar* mu,
                   detail::NoDeduce<MatrixRef<Scalar>> out) {
  const char* where = "stages::tokenShiftMix";
  detail::require(batch >= 1 && time >= 1 && h.rows() == batch * time, where,
                  "h must hold batch x time rows, got ", h.rows(), " rows for batch ", batch,
                  ", time ", time);
  detail::requireShape(where, previous, batch, h.cols(), "previous (batch x C)");
  detail::requireShape(where, out, h.rows(), h.cols(), "out (h's shape)");
  detail::require(mu != nullptr, where, "mu is needed");
  using RowVector = Eigen::Array<Scalar, 1, Eigen::Dynamic>;
  const Eigen::Map<const RowVector> mix(mu, h.cols());
  detail::forRowBlocks(h.rows(), [&](Index begin, Index count) {
    for (Index r = begin; r < begin + count; ++r) {
      const Index t = r % time;
      const auto before = t == 0 ? previous.row(r / time) : h.row(r - 1);
      out.row(r).array() = mix * h.row(r).array() + (Scalar(1) - mix) * before.array();
    }
  });
}

}  // namespace retnet::stages
