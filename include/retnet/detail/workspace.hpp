// Scratch buffers of the layers: grown on demand, never shrunk, viewed as matrices of the
// current shape, so a loop that reuses them allocates nothing once they have their size.
#pragma once

#include <algorithm>

#include "retnet/form.hpp"
#include "retnet/tensor.hpp"

namespace retnet::detail {

/// Grows `buffer` to at least rows x cols (never shrinks) and views it as that matrix.
template <typename Scalar>
Eigen::Map<RowMatrix<Scalar>> bufferView(Vector<Scalar>& buffer, Index rows, Index cols) {
  if (buffer.size() < rows * cols) buffer.resize(rows * cols);
  return Eigen::Map<RowMatrix<Scalar>>(buffer.data(), rows, cols);
}

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

/// The buffers forEachSlab gathers a slab of several batch items into: part of every sequence
/// layer's scratch (its base), so that a call with a kept scratch allocates nothing.
template <typename Scalar>
struct SlabBuffers {
  Vector<Scalar> slabInput;   // (batch·slab x in)
  Vector<Scalar> slabOutput;  // (batch·slab x out)
};

/// Runs step(xSlab, slabTime, ySlab) over consecutive slabs of at most `slab` positions of x
/// (batch, time, inWidth) -> y (batch, time, outWidth), in order (states carry across slabs). A
/// single batch item is used in place; several are gathered into `in`/`out` and scattered back.
template <typename Scalar, typename Step>
void forEachSlab(const Scalar* x, Index batch, Index time, Index inWidth, Index outWidth,
                 Index slab, Scalar* y, Vector<Scalar>& inBuffer, Vector<Scalar>& outBuffer,
                 Step&& step) {
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
    auto in = bufferView(inBuffer, batch * length, inWidth);
    auto out = bufferView(outBuffer, batch * length, outWidth);
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

}  // namespace retnet::detail
