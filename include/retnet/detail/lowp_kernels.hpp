// Kernels of the reduced-precision linear stage: y(r, j) = Σ_i x(r, i) · W(j, i) for a few rows of
// x (decoding) with W stored as BF16, F16 or int8 with per-group scales, read as stored.
//
// Three builds of the same loop, chosen at run time (one header, no -march needed by consumers):
//   AVX-512 (F, BW, VL): 16 lanes, masked tails;
//   AVX2 + FMA + F16C:   8 lanes, the tail of a row by the portable loop;
//   portable:            any CPU and Scalar: a row decoded into a small buffer, then dots.
// Each SIMD build runs four rows of W at a time against every row of x (each weight read and
// widened once for all of them, 4·R independent accumulators) and prefetches the next four rows.
// setSimdLimit() caps the choice, so tests run every build the CPU has.
//
// The sum order differs between builds (lanes), so results agree to float rounding, not bits;
// within one build they do not depend on the thread count.
#pragma once

#include <atomic>
#include <cstdint>

#include "retnet/detail/lowp_codecs.hpp"
#include "retnet/tensor.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define RETNET_X86_SIMD 1
#include <cpuid.h>
#include <immintrin.h>
#define RETNET_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define RETNET_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define RETNET_X86_SIMD 0
#endif

// g++ 12 warns falsely inside its own AVX-512 conversion headers (GCC PR 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace retnet {

/// Instruction sets the reduced-precision kernels can use, in increasing order.
enum class SimdLevel { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

inline const char* simdLevelName(SimdLevel level) {
  switch (level) {
    case SimdLevel::kAvx512:
      return "avx512";
    case SimdLevel::kAvx2:
      return "avx2";
    case SimdLevel::kPortable:
      break;
  }
  return "portable";
}

/// The best level this CPU (and compiler) supports.
inline SimdLevel simdSupported() {
#if RETNET_X86_SIMD
  // CPUID for the instructions, XGETBV for the operating system saving the registers they use.
  static const SimdLevel level = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return SimdLevel::kPortable;
    const bool fma = c & (1u << 12), osxsave = c & (1u << 27), f16c = c & (1u << 29);
    if (!osxsave || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return SimdLevel::kPortable;
    const bool avx2 = b & (1u << 5),
               avx512 = (b & (1u << 16)) && (b & (1u << 30)) && (b & (1u << 31));  // F, BW, VL
    unsigned xcr0 = 0, high = 0;
    __asm__("xgetbv" : "=a"(xcr0), "=d"(high) : "c"(0));
    const bool ymm = (xcr0 & 0x6u) == 0x6u, zmm = ymm && (xcr0 & 0xE0u) == 0xE0u;
    if (avx512 && fma && zmm) return SimdLevel::kAvx512;
    if (avx2 && fma && f16c && ymm) return SimdLevel::kAvx2;
    return SimdLevel::kPortable;
  }();
  return level;
#else
  return SimdLevel::kPortable;
#endif
}

namespace detail {
inline std::atomic<int>& simdLimitStorage() {
  static std::atomic<int> limit{static_cast<int>(SimdLevel::kAvx512)};
  return limit;
}
}  // namespace detail

/// Caps the level the kernels use (tests run each build; benchmarks compare them). Process-wide.
inline void setSimdLimit(SimdLevel limit) {
  detail::simdLimitStorage().store(static_cast<int>(limit));
}

/// The level the kernels use now: the supported one, capped by setSimdLimit.
inline SimdLevel simdLevel() {
  const int limit = detail::simdLimitStorage().load(std::memory_order_relaxed);
  return static_cast<SimdLevel>(std::min(limit, static_cast<int>(simdSupported())));
}

namespace detail {

/// How W is stored: the element codes of a (out x in) row-major matrix and, for int8, one scale
/// per group of kInt8Group columns of each row (out x groups). kF32 is a float matrix itself (full
/// precision weights go through the same streaming kernels for a few rows).
enum class LowpCode { kBf16, kF16, kInt8, kF32 };

/// Rows of x one pass of the kernels takes (each weight read once for all of them).
inline constexpr Index kLowpPassRows = 8;

struct LowpMatrix {
  LowpCode code = LowpCode::kBf16;
  const void* data = nullptr;     // uint16_t (BF16/F16), int8_t codes or float, row-major
  const float* scales = nullptr;  // int8: (out x groups)
  Index inputs = 0;               // columns of W

  Index groups() const { return int8Groups(inputs); }

  /// The same matrix from row j on.
  LowpMatrix rowsFrom(Index j) const {
    LowpMatrix view = *this;
    const std::size_t size = code == LowpCode::kInt8 ? 1 : code == LowpCode::kF32 ? 4 : 2;
    view.data =
        static_cast<const unsigned char*>(data) + static_cast<std::size_t>(j * inputs) * size;
    if (scales != nullptr) view.scales = scales + j * groups();
    return view;
  }

  /// W(j, i) as float (the SIMD builds' odd columns).
  float at(Index j, Index i) const {
    float value;
    decode(j, i, 1, &value);
    return value;
  }

  /// W(j, begin : begin + count) into out, as Scalar (exact: every stored value is a float).
  template <typename Scalar>
  void decode(Index j, Index begin, Index count, Scalar* out) const {
    switch (code) {
      case LowpCode::kBf16: {
        const auto* w = static_cast<const std::uint16_t*>(data) + j * inputs + begin;
        for (Index i = 0; i < count; ++i) out[i] = static_cast<Scalar>(bf16ToFloat(w[i]));
        return;
      }
      case LowpCode::kF16: {
        const auto* w = static_cast<const std::uint16_t*>(data) + j * inputs + begin;
        for (Index i = 0; i < count; ++i) out[i] = static_cast<Scalar>(f16ToFloat(w[i]));
        return;
      }
      case LowpCode::kF32: {
        const float* w = static_cast<const float*>(data) + j * inputs + begin;
        for (Index i = 0; i < count; ++i) out[i] = static_cast<Scalar>(w[i]);
        return;
      }
      case LowpCode::kInt8:
        break;
    }
    const auto* w = static_cast<const std::int8_t*>(data) + j * inputs;
    const float* s = scales + j * groups();
    for (Index i = begin; i < begin + count;) {  // group by group
      const Index stop = std::min(begin + count, (i / kInt8Group + 1) * kInt8Group);
      const float scale = s[i / kInt8Group];
      for (; i < stop; ++i) out[i - begin] = static_cast<Scalar>(static_cast<float>(w[i]) * scale);
    }
  }
};

/// The portable build: y(r, j) for j in [begin, end), r < rows. Each row of W is decoded in pieces
/// of kPiece columns on the stack and dotted with every row of x (no allocation).
template <typename Scalar>
void lowpRowsPortable(const LowpMatrix& w, Index begin, Index end, const Scalar* x, Index xStride,
                      Index rows, Scalar* y, Index yStride) {
  constexpr Index kPiece = 256;
  Scalar piece[kPiece];
  for (Index j = begin; j < end; ++j) {
    Scalar sums[kLowpPassRows] = {};
    for (Index i = 0; i < w.inputs; i += kPiece) {
      const Index n = std::min(kPiece, w.inputs - i);
      w.decode(j, i, n, piece);
      const Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> p(piece, n);
      for (Index r = 0; r < rows; ++r)
        sums[r] += p.dot(
            Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>(x + r * xStride + i, n));
    }
    for (Index r = 0; r < rows; ++r) y[r * yStride + j] = sums[r];
  }
}

#if RETNET_X86_SIMD

// ---- AVX-512: 16 lanes; loads widen 16 stored values to float (masked loads give zeros).
struct Avx512 {
  using Vec = __m512;
  static constexpr int kLanes = 16;
  RETNET_TARGET_AVX512 static __mmask16 mask(Index n) {
    return n >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
  }
  RETNET_TARGET_AVX512 static Vec zero() { return _mm512_setzero_ps(); }
  RETNET_TARGET_AVX512 static Vec set1(float v) { return _mm512_set1_ps(v); }
  RETNET_TARGET_AVX512 static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  RETNET_TARGET_AVX512 static Vec mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
  RETNET_TARGET_AVX512 static float sum(Vec a) { return _mm512_reduce_add_ps(a); }
  RETNET_TARGET_AVX512 static Vec loadX(const float* p, Index n) {
    return _mm512_maskz_loadu_ps(mask(n), p);
  }
  RETNET_TARGET_AVX512 static Vec load(const std::uint16_t* p, LowpCode code, Index n) {
    const __m256i h = _mm256_maskz_loadu_epi16(mask(n), p);
    if (code == LowpCode::kF16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  RETNET_TARGET_AVX512 static Vec load(const std::int8_t* p, LowpCode, Index n) {
    const __m128i b = _mm_maskz_loadu_epi8(mask(n), p);
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
  }
  RETNET_TARGET_AVX512 static Vec load(const float* p, LowpCode, Index n) { return loadX(p, n); }
  static constexpr bool kMaskedTail = true;
};

// ---- AVX2 + FMA + F16C: 8 lanes; only whole vectors (the caller does the tail).
struct Avx2 {
  using Vec = __m256;
  static constexpr int kLanes = 8;
  RETNET_TARGET_AVX2 static Vec zero() { return _mm256_setzero_ps(); }
  RETNET_TARGET_AVX2 static Vec set1(float v) { return _mm256_set1_ps(v); }
  RETNET_TARGET_AVX2 static Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  RETNET_TARGET_AVX2 static Vec mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
  RETNET_TARGET_AVX2 static float sum(Vec a) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
  }
  RETNET_TARGET_AVX2 static Vec loadX(const float* p, Index) { return _mm256_loadu_ps(p); }
  RETNET_TARGET_AVX2 static Vec load(const std::uint16_t* p, LowpCode code, Index) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if (code == LowpCode::kF16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  RETNET_TARGET_AVX2 static Vec load(const std::int8_t* p, LowpCode, Index) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  }
  RETNET_TARGET_AVX2 static Vec load(const float* p, LowpCode, Index) { return _mm256_loadu_ps(p); }
  static constexpr bool kMaskedTail = false;
};

namespace avx512 {
#define RETNET_LOWP_ISA ::retnet::detail::Avx512
#define RETNET_LOWP_TARGET RETNET_TARGET_AVX512
#include "retnet/detail/lowp_simd_loop.inc"  // NOLINT(build/include): once per ISA
#undef RETNET_LOWP_ISA
#undef RETNET_LOWP_TARGET
}  // namespace avx512

namespace avx2 {
#define RETNET_LOWP_ISA ::retnet::detail::Avx2
#define RETNET_LOWP_TARGET RETNET_TARGET_AVX2
#include "retnet/detail/lowp_simd_loop.inc"  // NOLINT(build/include): once per ISA
#undef RETNET_LOWP_ISA
#undef RETNET_LOWP_TARGET
}  // namespace avx2

template <int R>
bool lowpRowsDispatch(SimdLevel level, const LowpMatrix& w, Index begin, Index end, const float* x,
                      Index xStride, float* y, Index yStride) {
  if (level != SimdLevel::kAvx512 && level != SimdLevel::kAvx2) return false;
  const bool wide = level == SimdLevel::kAvx512;
  switch (w.code) {
    case LowpCode::kInt8:
      wide ? avx512::lowpRows<R, std::int8_t>(w, begin, end, x, xStride, y, yStride)
           : avx2::lowpRows<R, std::int8_t>(w, begin, end, x, xStride, y, yStride);
      return true;
    case LowpCode::kF32:
      wide ? avx512::lowpRows<R, float>(w, begin, end, x, xStride, y, yStride)
           : avx2::lowpRows<R, float>(w, begin, end, x, xStride, y, yStride);
      return true;
    case LowpCode::kBf16:
    case LowpCode::kF16:
      break;
  }
  wide ? avx512::lowpRows<R, std::uint16_t>(w, begin, end, x, xStride, y, yStride)
       : avx2::lowpRows<R, std::uint16_t>(w, begin, end, x, xStride, y, yStride);
  return true;
}

#endif  // RETNET_X86_SIMD

/// y(r, j) = Σ_i x(r, i) W(j, i) for j in [begin, end), r < rows (1…kLowpPassRows): the best
/// build allowed.   x (rows x w.inputs, row stride xStride); y (rows x ·, row stride yStride)
template <typename Scalar>
void lowpRows(const LowpMatrix& w, Index begin, Index end, const Scalar* x, Index xStride,
              Index rows, Scalar* y, Index yStride) {
#if RETNET_X86_SIMD
  if constexpr (std::is_same_v<Scalar, float>) {
    using Kernel =
        bool (*)(SimdLevel, const LowpMatrix&, Index, Index, const float*, Index, float*, Index);
    static constexpr Kernel kKernels[kLowpPassRows] = {
        lowpRowsDispatch<1>, lowpRowsDispatch<2>, lowpRowsDispatch<3>, lowpRowsDispatch<4>,
        lowpRowsDispatch<5>, lowpRowsDispatch<6>, lowpRowsDispatch<7>, lowpRowsDispatch<8>};
    if (rows >= 1 && rows <= kLowpPassRows &&
        kKernels[rows - 1](simdLevel(), w, begin, end, x, xStride, y, yStride))
      return;
  }
#endif
  lowpRowsPortable<Scalar>(w, begin, end, x, xStride, rows, y, yStride);
}

}  // namespace detail
}  // namespace retnet

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
