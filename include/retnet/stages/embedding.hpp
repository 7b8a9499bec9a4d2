// Stage: token embedding lookup.
#pragma once

#include <cstdint>

#include "retnet/detail/assert.hpp"
#include "retnet/tensor.hpp"

namespace retnet::stages {

/// y_r = scale · E[token_r]: row lookup in the embedding table, scaled (torchscale: 1 or
/// sqrt(D)). Token ids must be in [0, vocab) (checked by the caller).
///   tokens (rows); E (vocab x D); y (rows x D)
template <typename Scalar>
void embed(const std::int64_t* tokens, detail::NoDeduce<ConstMatrixRef<Scalar>> table, double scale,
           detail::NoDeduce<MatrixRef<Scalar>> y) {
  RETNET_ASSERT(y.cols() == table.cols());
  const auto s = static_cast<Scalar>(scale);
  for (Index r = 0; r < y.rows(); ++r) {
    RETNET_ASSERT(tokens[r] >= 0 && tokens[r] < table.rows());
    y.row(r) = table.row(static_cast<Index>(tokens[r])) * s;
  }
}

}  // namespace retnet::stages
