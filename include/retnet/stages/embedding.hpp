// Stage: token embedding lookup.
#pragma once

#include <cstdint>
#include <type_traits>

#include "retnet/detail/checks.hpp"
#include "retnet/linear_weight.hpp"
#include "retnet/tensor.hpp"

namespace retnet::stages {

/// y_r = scale · E[token_r]: row lookup in the embedding table, scaled (torchscale: 1 or
/// sqrt(D)). Token ids must be in [0, vocab).
///   tokens (rows); E (vocab x D); y (rows x D)
template <typename Scalar>
void embed(const std::int64_t* tokens, detail::NoDeduce<ConstMatrixRef<Scalar>> table, double scale,
           detail::NoDeduce<MatrixRef<Scalar>> y) {
  const char* where = "stages::embed";
  detail::requireShape(where, y, y.rows(), table.cols(), "y (rows x D)");
  const auto s = static_cast<Scalar>(scale);
  for (Index r = 0; r < y.rows(); ++r) {
    detail::require(tokens[r] >= 0 && tokens[r] < table.rows(), where, "token ids must be in [0, ",
                    table.rows(), "), got ", tokens[r]);
    y.row(r) = table.row(static_cast<Index>(tokens[r])) * s;
  }
}

/// The same lookup in a table of any WeightType: the row decoded, then scaled.
///   tokens (rows); E (vocab x D); y (rows x D)
///   (Table is LinearWeight<Scalar>: a matrix argument, which converts to both, takes the
///   overload above.)
template <typename Scalar, typename Table,
          typename = std::enable_if_t<std::is_same_v<Table, LinearWeight<Scalar>>>>
void embed(const std::int64_t* tokens, const Table& table, double scale,
           detail::NoDeduce<MatrixRef<Scalar>> y) {
  if (table.type() == WeightType::kFull) {
    embed<Scalar>(tokens, table.matrix(), scale, y);
    return;
  }
  const char* where = "stages::embed";
  detail::requireShape(where, y, y.rows(), table.inputs(), "y (rows x D)");
  const auto s = static_cast<Scalar>(scale);
  for (Index r = 0; r < y.rows(); ++r) {
    detail::require(tokens[r] >= 0 && tokens[r] < table.outputs(), where,
                    "token ids must be in [0, ", table.outputs(), "), got ", tokens[r]);
    table.decodeRow(static_cast<Index>(tokens[r]), y.row(r).data());
    y.row(r) *= s;
  }
}

/// The backward of embed(): a scatter-add of the rows' gradients into the table's gradient,
///   dE[token_r] += scale · dy_r   for r = 0, 1, … in order (repeated tokens accumulate).
/// Token ids must be in [0, vocab); all are checked before dE is written. A tied output head
/// (logits = h · Eᵀ) adds its part with stages::linearBackward(h, E, dlogits, dh, dE).
///   tokens (rows); dy (rows x D); dE (vocab x D), accumulated, not overlapping dy
template <typename Scalar>
void embedBackward(const std::int64_t* tokens, detail::NoDeduce<ConstMatrixRef<Scalar>> dy,
                   double scale, detail::NoDeduce<MatrixRef<Scalar>> dTable) {
  const char* where = "stages::embedBackward";
  detail::requireShape(where, dy, dy.rows(), dTable.cols(), "dy (rows x D)");
  detail::require(tokens != nullptr || dy.rows() == 0, where, "the tokens pointer is null");
  for (Index r = 0; r < dy.rows(); ++r) {
    detail::require(tokens[r] >= 0 && tokens[r] < dTable.rows(), where, "token ids must be in [0, ",
                    dTable.rows(), "), got ", tokens[r]);
  }
  const auto s = static_cast<Scalar>(scale);
  for (Index r = 0; r < dy.rows(); ++r) dTable.row(static_cast<Index>(tokens[r])) += dy.row(r) * s;
}

}  // namespace retnet::stages
