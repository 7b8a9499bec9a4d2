// Buffers a layer needs for one forward call, kept between calls where that saves allocations.
#pragma once

#include <algorithm>
#include <vector>

#include "retnet/detail/parallel_for.hpp"
#include "retnet/detail/retention_kernel.hpp"
#include "retnet/form.hpp"

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
  Vector<Scalar> slabInput, slabOutput;     // gathered slab of a batched input, its output
  std::vector<ChunkScratch<Scalar>> chunk;  // one per thread
};

/// The chunk size forward() uses for per-head key width `keyDim` (see bench/README.md).
inline Index recommendedChunkSize(Index keyDim) { return keyDim >= 128 ? 128 : 64; }

/// Positions per slab of a long input: whole chunks (the chunkwise form must keep one pass's
/// chunk boundaries), about kSlabPositions of them; the parallel form is one slab. Slabs bound a
/// call's scratch memory by the slab, not the sequence, and keep it warm in cache.
inline constexpr Index kSlabPositions = 1024;
inline Index slabLength(Form form, Index time, Index chunkSize) {
  if (form == Form::kParallel) return time;
  if (form == Form::kChunkwise) return chunkSize * std::max<Index>(1, kSlabPositions / chunkSize);
  return kSlabPositions;
}

/// Runs step(xSlab, slabTime, ySlab) over consecutive slabs of at most `slab` positions of x
/// (batch, time, inWidth) -> y (batch, time, outWidth), in order (states carry across slabs). A
/// single batch item is used in place; several are gathered into `ws` and scattered back.
template <typename Scalar, typename Step>
void forEachSlab(const Scalar* x, Index batch, Index time, Index inWidth, Index outWidth,
                 Index slab, Scalar* y, LayerWorkspace<Scalar>& ws, Step&& step) {
  if (slab >= time) {
    step(x, time, y);
    return;
  }
  for (Index start = 0; start < time; start += slab) {
    const Index length = std::min(slab, time - start);
    if (batch == 1) {
      step(x + start * inWidth, length, y + start * outWidth);
      continue;
    }
    auto in = bufferView(ws.slabInput, batch * length, inWidth);
    auto out = bufferView(ws.slabOutput, batch * length, outWidth);
    for (Index b = 0; b < batch; ++b) {
      in.middleRows(b * length, length) =
          Eigen::Map<const RowMatrix<Scalar>>(x + (b * time + start) * inWidth, length, inWidth);
    }
    step(in.data(), length, out.data());
    for (Index b = 0; b < batch; ++b) {
      Eigen::Map<RowMatrix<Scalar>>(y + (b * time + start) * outWidth, length, outWidth) =
          out.middleRows(b * length, length);
    }
  }
}

/// Rows per task of element-wise work spread over threads (norms, activations, rotary).
inline constexpr Index kElementwiseRows = 32;

/// Calls body(begin, count) over [0, rows) in blocks of kElementwiseRows rows, in parallel.
template <typename Body>
void forRowBlocks(Index rows, Body&& body) {
  parallelFor((rows + kElementwiseRows - 1) / kElementwiseRows, [&](Index block, int) {
    const Index begin = block * kElementwiseRows;
    body(begin, std::min(kElementwiseRows, rows - begin));
  });
}

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
