// Sums over rows whose bits do not depend on the thread count: the backward stages' weight
// gradients (a norm's dw, db) and the cross-entropy's loss add a contribution of every row.
#pragma once

#include <Eigen/Core>
#include <algorithm>

#include "retnet/detail/parallel_for.hpp"
#include "retnet/tensor.hpp"

namespace retnet::detail {

/// Calls body(begin, count, partial) over [0, rows) in blocks of kElementwiseRows rows (the
/// blocks of forRowBlocks, in parallel), `partial` a zeroed row of `width` Accumulators owned by
/// the block; returns the sum of the blocks' partials, added in block order. The blocks do not
/// depend on the thread count, so neither does any bit of the sum. Allocates (blocks x width).
template <typename Accumulator, typename Body>
Eigen::Matrix<Accumulator, 1, Eigen::Dynamic> sumOverRowBlocks(Index rows, Index width,
                                                               Body&& body) {
  using Row = Eigen::Matrix<Accumulator, 1, Eigen::Dynamic>;
  const Index blocks = (rows + kElementwiseRows - 1) / kElementwiseRows;
  RowMatrix<Accumulator> partials = RowMatrix<Accumulator>::Zero(blocks, width);
  const auto run = [&](Index block) {
    const Index begin = block * kElementwiseRows;
    body(begin, std::min(kElementwiseRows, rows - begin), partials.row(block));
  };
  if (blocks == 1) {
    run(0);  // a single block on the calling thread, as forRowBlocks does
  } else {
    parallelFor(blocks, [&](Index block, int) { run(block); });
  }
  Row sum = Row::Zero(width);
  for (Index block = 0; block < blocks; ++block) sum += partials.row(block);
  return sum;
}

}  // namespace retnet::detail
