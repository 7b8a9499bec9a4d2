// The BF16 GEMM behind a BF16 weight's prefill products (stages::linear), through oneDNN: an
// option of the build, never a requirement of the header-only core.
//
// Built with RETNET_ONEDNN (CMake option of the same name: it defines the macro on retnet::retnet
// and links oneDNN and OpenMP), a product y = x · Wᵀ of many rows of x by a BF16 W runs as oneDNN's
// BF16 matmul: x is rounded to BF16 once per call (nearest even), every product of two BF16
// values is exact in float32, and the sums are float32. On a CPU with AMX-BF16 that is oneDNN's
// AMX kernel, 2.3x Eigen's float32 GEMM on one thread of an Intel Xeon (Sapphire Rapids family);
// on an AMD CPU with AVX512-BF16 its VDPBF16PS kernel, 2.0-2.3x on one thread of an AMD EPYC
// (Zen 5) (docs/performance.md). Without the macro, or where it is not used, the product decodes
// W into a float panel and runs Eigen's float32 GEMM with x as it is.
//
// Accuracy. The only new error is x's rounding, |x̂_i − x_i| ≤ 2⁻⁸|x_i| (BF16 keeps 8 significant
// bits), so with n = in products summed in float32 (u = 2⁻²⁴, Higham Thm 3.1):
//   |ŷ_rj − y_rj| ≤ (2⁻⁸ + 1.01·(n + 1)·2⁻²⁴) · Σ_i |x_ri| |W_ji|
// where y is the exact product of x and the stored W. AMX and VDPBF16PS treat BF16 subnormals
// (below 2⁻¹²⁶) as zero, which adds at most 2⁻¹²⁶·Σ_i |W_ji| + 2⁻¹²⁶·Σ_i|x_ri| — nothing at any
// real activation. Against the float32 path (x kept exact, relative error ~n·2⁻²⁴) that is 2⁻⁸ of
// Σ|x||w|: the price of the speed, and why the use is a choice (setBf16Gemm).
//
// Threads. Each call runs single-threaded (OpenMP's thread count set to 1 around it and put back):
// stages::linear calls it once per fixed column block, one thread per block, so no bit depends on
// the thread count; oneDNN never splits the sum over `in` then (tested: test_bf16_gemm).
// oneDNN's primitives are kept per thread, by shape and strides.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "retnet/bf16_gemm.hpp"
#include "retnet/tensor.hpp"

#ifdef RETNET_ONEDNN
#ifndef _OPENMP
// Debian's oneDNN runs on OpenMP, and retnet runs it single-threaded inside its own fixed blocks
// (so that no bit depends on the thread count): that needs OpenMP's thread count per thread.
#error "RETNET_ONEDNN needs OpenMP (-fopenmp)"
#endif
#include <omp.h>

#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace retnet {

namespace detail {

/// Whether stages::linear uses the BF16 GEMM now: the choice allows it and this CPU runs it.
inline bool bf16GemmInUse() {
  switch (bf16GemmChoice()) {
    case Bf16Gemm::kWherever:
      return bf16GemmAvailable();
    case Bf16Gemm::kWhereFast:
      return bf16GemmFast();
    case Bf16Gemm::kNever:
      break;
  }
  return false;
}

#ifdef RETNET_ONEDNN

/// y (rows x width, row stride ldy) = x · Wᵀ with x (rows x in, BF16 codes, row stride ldx) and
/// W (width x in, BF16 codes, row-major, contiguous), summed in float32 on the calling thread.
/// Only where bf16GemmAvailable() (a dnnl::error otherwise).
inline void bf16Gemm(const std::uint16_t* x, Index rows, Index in, Index ldx,
                     const std::uint16_t* w, Index width, float* y, Index ldy) {
  using dnnl::memory;
  struct Kept {
    Index rows, in, ldx, width, ldy;
    dnnl::matmul primitive;
    memory::desc src, weights, dst;
  };
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  thread_local std::vector<Kept> kept;  // this thread's primitives, by shape and strides
  thread_local dnnl::stream stream(engine);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);  // for this thread's regions only; put back below
  struct Restore {
    int threads;
    ~Restore() { omp_set_num_threads(threads); }
  } restore{threads};
  auto found = std::find_if(kept.begin(), kept.end(), [&](const Kept& k) {
    return k.rows == rows && k.in == in && k.ldx == ldx && k.width == width && k.ldy == ldy;
  });
  if (found == kept.end()) {
    if (kept.size() >= 64) kept.clear();  // a bound on a server's many prompt lengths
    const memory::desc src({rows, in}, memory::data_type::bf16, memory::dims{ldx, 1});
    const memory::desc weights({in, width}, memory::data_type::bf16, memory::dims{1, in});
    const memory::desc dst({rows, width}, memory::data_type::f32, memory::dims{ldy, 1});
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, weights, dst), engine);
    kept.push_back({rows, in, ldx, width, ldy, dnnl::matmul(pd), src, weights, dst});
    found = kept.end() - 1;
  }
  // oneDNN's memory objects take non-const handles; it only reads the inputs.
  memory a(found->src, engine, const_cast<std::uint16_t*>(x));
  memory b(found->weights, engine, const_cast<std::uint16_t*>(w));
  memory c(found->dst, engine, y);
  found->primitive.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
  stream.wait();
}

#endif  // RETNET_ONEDNN

}  // namespace detail
}  // namespace retnet
