// Stage: the dense layer y = x · Wᵀ (PyTorch's Linear without bias).
//
// The weight reaches the kernel through LinearWeight (linear_weight.hpp): full precision, BF16,
// F16 or int8 with per-group scales; no layer knows which.
//
// The output columns are split into fixed blocks, each computed whole by one thread with a
// single-threaded Eigen product: the blocks do not depend on the thread count, so neither does
// any bit of the result, and Eigen's own OpenMP GEMM (whose blocking does depend on it) is never
// used. For a few rows (decoding, small batches) the threads stream disjoint slices of W through
// the kernels of detail/lowp_kernels.hpp (AVX-512, AVX2 or portable, chosen at run time): up to
// eight rows of x per pass, four (or two) rows of W at a time, each weight read once per pass and
// widened to float in registers — BF16, F16 and int8 codes as stored, float32 as is. Double
// weights use Eigen's matrix-vector product or plain dots.
//
// More rows (prefill): full precision is one GEMM per column block; reduced precision decodes each
// block of 256 rows of W into a per-thread float panel once and runs the same GEMM on it, so
// prefill keeps the GEMM's speed and pays one pass over the codes. In a build with RETNET_ONEDNN,
// a BF16 weight's block is instead a BF16 GEMM (oneDNN: AMX, or AVX512-BF16 on AMD) on x rounded to
// BF16 once per call (detail/bf16_gemm.hpp: its speed, its error bound; retnet/bf16_gemm.hpp:
// setBf16Gemm to choose).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "retnet/detail/bf16_gemm.hpp"
#include "retnet/detail/checks.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/errors.hpp"
#include "retnet/linear_weight.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

namespace detail {
/// This thread's panel buffer of at least `size` Scalars (grows, never shrinks).
template <typename Scalar>
Scalar* linearPanel(Index size) {
  thread_local std::vector<Scalar> panel;
  if (static_cast<Index>(panel.size()) < size) panel.resize(static_cast<std::size_t>(size));
  return panel.data();
}

/// x rounded to BF16 (rows x in, contiguous) in the calling thread's buffer (grows, never shrinks).
inline const std::uint16_t* bf16Rows(ConstMatrixRef<float> x) {
  thread_local std::vector<std::uint16_t> codes;
  const Index rows = x.rows(), in = x.cols();
  if (static_cast<Index>(codes.size()) < rows * in)
    codes.resize(static_cast<std::size_t>(rows * in));
  std::uint16_t* out = codes.data();
  forRowBlocks(rows, [&](Index begin, Index count) {
    for (Index r = begin; r < begin + count; ++r)
      for (Index i = 0; i < in; ++i) out[r * in + i] = floatToBf16(x(r, i));
  });
  return out;
}
}  // namespace detail

namespace stages {

/// Output columns per task: 256 rows of W (1 MiB of float32 weights at D = 1024).
inline constexpr Index kLinearColumnBlock = 256;

/// Output columns per task of a full-precision GEMM (prefill): about an eighth of the outputs,
/// in multiples of 64, at least kLinearColumnBlock. Every task packs all of x again, so wide
/// layers want few blocks (q|k|v|g of config A: 8 blocks of 768 instead of 24 of 256, which
/// repacked x 24 times: 7% of an MSR prefill); eight still balance two or four threads. It
/// depends on the shape only, never on the thread count.
inline Index linearGemmColumnBlock(Index outputs) {
  const Index eighth = (outputs + 7) / 8;
  return std::max(kLinearColumnBlock, (eighth + 63) / 64 * 64);
}

/// Up to this many input rows, float products stream W (decoding, small batches) in passes of
/// detail::kLowpPassRows rows, each pass reading W once; more rows are GEMMs. Reduced-precision
/// weights stream up to kLinearReducedStreamRows rows (their GEMM path pays a decode of W).
inline constexpr Index kLinearStreamRows = 8;
inline constexpr Index kLinearReducedStreamRows = 64;

/// y = x · Wᵀ:  y_rj = Σ_i x_ri W_ji.
///   x (rows x in), W (out x in), y (rows x out); y must not overlap x.
template <typename Scalar>
void linear(detail::NoDeduce<ConstMatrixRef<Scalar>> x, const LinearWeight<Scalar>& weight,
            detail::NoDeduce<MatrixRef<Scalar>> y) {
  const Index n = weight.outputs(), in = weight.inputs(), rows = x.rows();
  detail::requireShape("stages::linear", x, rows, in, "x (rows x in)");
  detail::requireShape("stages::linear", y, rows, n, "y (rows x out)");
  const bool full = weight.type() == WeightType::kFull;
  bool stream = !full && rows <= kLinearReducedStreamRows;
  if constexpr (std::is_same_v<Scalar, float>)
    stream = stream || (full && rows <= kLinearStreamRows);
  // BF16 weights' GEMMs as BF16 GEMMs (a build with RETNET_ONEDNN): x rounded once, here.
  const std::uint16_t* xBf16 = nullptr;
  if constexpr (std::is_same_v<Scalar, float>) {
    if (!stream && weight.type() == WeightType::kBf16 && in > 0 && detail::bf16GemmInUse())
      xBf16 = detail::bf16Rows(x);
  }
  // Column blocks of blockWidth rows of W (kLinearColumnBlock, or linearGemmColumnBlock for a
  // full-precision GEMM), each inside one part of a stacked reduced weight (a full one is a
  // single part). They do not depend on the thread count.
  const auto& parts = weight.parts();
  const Index blockWidth = full && !stream ? linearGemmColumnBlock(n) : kLinearColumnBlock;
  const auto blocksOf = [blockWidth](Index count) { return (count + blockWidth - 1) / blockWidth; };
  Index blocks = 0;
  if (full) blocks = blocksOf(n);
  for (const auto& part : parts) blocks += blocksOf(part.rows);
  detail::parallelFor(blocks, [&](Index block, int) {
    // The block's part (its first row `first`, its codes) and the block's rows inside it.
    Index first = 0, count = n;
    detail::LowpMatrix codes;
    if (full) {
      if constexpr (std::is_same_v<Scalar, float>)
        codes = {detail::LowpCode::kF32, weight.matrix().data(), nullptr, in};
    } else {
      std::size_t p = 0;
      for (; block >= blocksOf(parts[p].rows); ++p) block -= blocksOf(parts[p].rows);
      first = parts[p].first;
      count = parts[p].rows;
      codes = parts[p].codes;
    }
    const Index begin = block * blockWidth, width = std::min(blockWidth, count - begin);
    if (stream) {  // y(:, first + j) for the part's rows j in [begin, begin + width)
      for (Index r = 0; r < rows; r += detail::kLowpPassRows) {
        detail::lowpRows<Scalar>(codes, begin, begin + width, x.data() + r * x.outerStride(),
                                 x.outerStride(), std::min(detail::kLowpPassRows, rows - r),
                                 y.data() + r * y.outerStride() + first, y.outerStride());
      }
    } else if (xBf16 != nullptr) {
#ifdef RETNET_ONEDNN
      if constexpr (std::is_same_v<Scalar, float>)
        detail::bf16Gemm(xBf16, rows, in, in,
                         static_cast<const std::uint16_t*>(codes.data) + begin * in, width,
                         y.data() + first + begin, y.outerStride());
#endif
    } else if (!full) {
      Eigen::Map<RowMatrix<Scalar>> panel(detail::linearPanel<Scalar>(width * in), width, in);
      for (Index j = 0; j < width; ++j) codes.decode(begin + j, 0, in, panel.row(j).data());
      y.middleCols(first + begin, width).noalias() = x * panel.transpose();
    } else if (rows == 1) {  // double: Eigen's matrix-vector kernel
      y.row(0).segment(begin, width).noalias() =
          x.row(0) * weight.matrix().middleRows(begin, width).transpose();
    } else if (rows <= detail::kLowpPassRows) {  // double: each row of W read once for all rows
      const RowMatrix<Scalar>& w = weight.matrix();
      for (Index j = begin; j < begin + width; ++j)
        for (Index r = 0; r < rows; ++r) y(r, j) = w.row(j).dot(x.row(r));
    } else {
      y.middleCols(begin, width).noalias() =
          x * weight.matrix().middleRows(begin, width).transpose();
    }
  });
}

/// A matrix is not passed as the weight: it would convert to a LinearWeight, a copy of W, at
/// every call. Build the LinearWeight once.
template <typename Scalar, typename Derived>
void linear(detail::NoDeduce<ConstMatrixRef<Scalar>> x, const Eigen::MatrixBase<Derived>& weight,
            detail::NoDeduce<MatrixRef<Scalar>> y) = delete;

// ---------------------------------------------------------------------------------------------
// Backward (training). Only a full-precision weight has a gradient: reduced types throw.
// Both products are split like the forward into fixed blocks of kLinearColumnBlock columns of dx
// or rows of dW, each one single-threaded Eigen GEMM, so no bit depends on the thread count.

/// The input gradient of y = x · Wᵀ:  dx = dy · W,  dx_ri = Σ_j dy_rj W_ji; with `accumulate`,
/// dx += dy · W instead (e.g. a residual's or a stacked branch's gradient already in dx).
///   dy (rows x out); W (out x in), WeightType::kFull; dx (rows x in), not overlapping dy
template <typename Scalar>
void linearBackwardInput(detail::NoDeduce<ConstMatrixRef<Scalar>> dy,
                         const LinearWeight<Scalar>& weight, detail::NoDeduce<MatrixRef<Scalar>> dx,
                         bool accumulate = false) {
  const char* where = "stages::linearBackwardInput";
  detail::require(weight.type() == WeightType::kFull, where,
                  "the weight must be full precision to be trained, got ",
                  weightTypeName(weight.type()));
  const Index out = weight.outputs(), in = weight.inputs(), rows = dy.rows();
  detail::requireShape(where, dy, rows, out, "dy (rows x out)");
  detail::requireShape(where, dx, rows, in, "dx (rows x in)");
  const RowMatrix<Scalar>& w = weight.matrix();
  detail::parallelFor((in + kLinearColumnBlock - 1) / kLinearColumnBlock, [&](Index block, int) {
    const Index begin = block * kLinearColumnBlock,
                width = std::min(kLinearColumnBlock, in - begin);
    if (accumulate) {
      dx.middleCols(begin, width).noalias() += dy * w.middleCols(begin, width);
    } else {
      dx.middleCols(begin, width).noalias() = dy * w.middleCols(begin, width);
    }
  });
}

/// The weight gradient of y = x · Wᵀ, accumulated (over batches, steps, tied uses):
///   dW += dyᵀ · x,  dW_ji += Σ_r dy_rj x_ri.
///   x (rows x in); dy (rows x out); dW (out x in), not overlapping x or dy
template <typename Scalar>
void linearBackwardWeight(detail::NoDeduce<ConstMatrixRef<Scalar>> x,
                          detail::NoDeduce<ConstMatrixRef<Scalar>> dy,
                          detail::NoDeduce<MatrixRef<Scalar>> dW) {
  const char* where = "stages::linearBackwardWeight";
  const Index rows = x.rows(), in = x.cols(), out = dy.cols();
  detail::requireShape(where, dy, rows, out, "dy (rows x out)");
  detail::requireShape(where, dW, out, in, "dW (out x in)");
  detail::parallelFor((out + kLinearColumnBlock - 1) / kLinearColumnBlock, [&](Index block, int) {
    const Index begin = block * kLinearColumnBlock,
                width = std::min(kLinearColumnBlock, out - begin);
    dW.middleRows(begin, width).noalias() += dy.middleCols(begin, width).transpose() * x;
  });
}

/// Both gradients of y = x · Wᵀ:
///   dx = dy · W (dx += dy · W with `accumulate`),  dW += dyᵀ · x (always accumulated).
///   x (rows x in); W (out x in), WeightType::kFull; dy (rows x out); dx (rows x in);
///   dW (out x in); dW overlaps none of x, dy, dx; dx does not overlap dy but may be x itself
///   (dW is computed first).
/// A tied output head (logits = h · Eᵀ with the embedding table E) is this call with dW = dE.
template <typename Scalar>
void linearBackward(detail::NoDeduce<ConstMatrixRef<Scalar>> x, const LinearWeight<Scalar>& weight,
                    detail::NoDeduce<ConstMatrixRef<Scalar>> dy,
                    detail::NoDeduce<MatrixRef<Scalar>> dx, detail::NoDeduce<MatrixRef<Scalar>> dW,
                    bool accumulate = false) {
  // Every check here, before the first write.
  const char* where = "stages::linearBackward";
  detail::requireShape(where, x, x.rows(), weight.inputs(), "x (rows x in)");
  detail::requireShape(where, dW, weight.outputs(), weight.inputs(), "dW (out x in)");
  detail::require(weight.type() == WeightType::kFull, where,
                  "the weight must be full precision to be trained, got ",
                  weightTypeName(weight.type()));
  detail::requireShape(where, dy, x.rows(), weight.outputs(), "dy (rows x out)");
  detail::requireShape(where, dx, x.rows(), weight.inputs(), "dx (rows x in)");
  linearBackwardWeight<Scalar>(x, dy, dW);
  linearBackwardInput<Scalar>(dy, weight, dx, accumulate);
}

/// As for the forward, a matrix is not passed as the weight (it would be copied at every call).
template <typename Scalar, typename Derived>
void linearBackwardInput(detail::NoDeduce<ConstMatrixRef<Scalar>> dy,
                         const Eigen::MatrixBase<Derived>& weight,
                         detail::NoDeduce<MatrixRef<Scalar>> dx, bool accumulate = false) = delete;
template <typename Scalar, typename Derived>
void linearBackward(detail::NoDeduce<ConstMatrixRef<Scalar>> x,
                    const Eigen::MatrixBase<Derived>& weight,
                    detail::NoDeduce<ConstMatrixRef<Scalar>> dy,
                    detail::NoDeduce<MatrixRef<Scalar>> dx, detail::NoDeduce<MatrixRef<Scalar>> dW,
                    bool accumulate = false) = delete;

}  // namespace stages
}  // namespace retnet
