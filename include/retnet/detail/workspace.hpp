// Buffers a layer needs for one forward call, kept between calls where that saves allocations.
#pragma once

#include <vector>

#include "retnet/detail/retention_kernel.hpp"

namespace retnet::detail {

/// Grows `buffer` to at least rows x cols (never shrinks) and views it as that matrix.
template <typename Scalar>
Eigen::Map<RowMatrix<Scalar>> bufferView(Vector<Scalar>& buffer, Index rows, Index cols) {
  if (buffer.size() < rows * cols) buffer.resize(rows * cols);
  return Eigen::Map<RowMatrix<Scalar>>(buffer.data(), rows, cols);
}

template <typename Scalar>
struct LayerWorkspace {
  Vector<Scalar> projections;               // (rows x 2D+2V): q | k | v | g per position
  Vector<Scalar> retained;                  // (rows x V): retention output, then normed and gated
  Vector<Scalar> normed;                    // (rows x D): RMSNorm of the block input
  Vector<Scalar> residual;                  // (rows x D): block's h = x + MSR(...)
  Vector<Scalar> hidden;                    // (rows x 2F): fc1 | gate of the FFN
  Vector<Scalar> cosines, sines;            // (time x dk/2) rotary tables
  std::vector<ChunkScratch<Scalar>> chunk;  // one per thread
};

/// Owns scratch space that is not part of its owner's value: a copy starts empty, so copies of
/// a state never share (or race on) buffers.
template <typename Workspace>
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) {}
  Scratch& operator=(const Scratch&) { return *this; }
  Workspace& get() const { return workspace_; }

 private:
  mutable Workspace workspace_;
};

}  // namespace retnet::detail
