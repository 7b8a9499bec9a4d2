// Scalar codecs of the reduced-precision weight formats (linear_weight.hpp), element by element:
// the definitions the SIMD kernels (lowp_kernels.hpp) must agree with, and the encoders used once
// at load. BF16/F16 decoding is exact; encoding rounds to nearest, ties to even.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "retnet/io/dtype.hpp"

namespace retnet::detail {

/// Columns per int8 group: one float32 scale per 32 consecutive weights of a row (ggml's Q8_0
/// block length). The last group of a row may be shorter.
inline constexpr std::int64_t kInt8Group = 32;

/// Scale groups of an int8 row of `columns` weights: ⌈columns / kInt8Group⌉.
inline std::int64_t int8Groups(std::int64_t columns) {
  return (columns + kInt8Group - 1) / kInt8Group;
}

inline float bf16ToFloat(std::uint16_t bits) { return io::detail::bfloat16ToFloat(bits); }
inline float f16ToFloat(std::uint16_t bits) { return io::detail::halfToFloat(bits); }

/// float -> BF16, nearest-even on the bits (the upper half of the float, rounded); NaN stays a
/// quiet NaN of the same sign. Exactly io::detail::doubleToBfloat16 for every float.
inline std::uint16_t floatToBf16(float value) {
  const auto bits = io::detail::bitCast<std::uint32_t>(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  const std::uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(rounded >> 16);
}

/// float -> F16, nearest-even, overflow to infinity, gradual underflow: by the fields (a float's
/// 24-bit significand shifted into 11 bits with one rounding). Exactly io::detail::doubleToHalf
/// for every float (tested over a sweep of patterns).
inline std::uint16_t floatToF16(float value) {
  const auto bits = io::detail::bitCast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7E00u);   // NaN
  if (magnitude >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // ≥ 65520
  const int exponent = static_cast<int>(magnitude >> 23) - 127;
  if (exponent < -25) return sign;  // below half the smallest subnormal (2^-25): ±0
  std::uint32_t significand = (magnitude & 0x7FFFFFu) | 0x800000u;
  // Units of the F16 ulp of this binade (2^-24 below the normal range): drop `shift` bits.
  const int shift = exponent < -14 ? 13 + (-14 - exponent) : 13;
  const std::uint32_t dropped = significand & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1);
  significand >>= shift;
  if (dropped > half || (dropped == half && (significand & 1u))) ++significand;
  // For normals, adding (exponent + 14) << 10 to the significand (which carries its leading one
  // at bit 10) gives the biased field; a rounding carry moves into the exponent on its own.
  const std::uint32_t field = exponent < -14
                                  ? significand
                                  : (static_cast<std::uint32_t>(exponent + 14) << 10) + significand;
  return static_cast<std::uint16_t>(sign | field);
}

/// The int8 codes and float scale of one group: s = max|w| / 127, q = round(w / s) in
/// [−127, 127] (0 and s = 0 for an all-zero group). |w − s·q| ≤ s/2 = max|w|/254 for each w.
/// The weights must be finite (the caller checks).
template <typename Scalar>
float quantizeGroup(const Scalar* w, std::int64_t count, std::int8_t* codes) {
  double amax = 0;
  for (std::int64_t i = 0; i < count; ++i) amax = std::max(amax, std::fabs(double(w[i])));
  const float scale = static_cast<float>(amax / 127.0);
  for (std::int64_t i = 0; i < count; ++i) {
    const double q = scale == 0 ? 0.0 : std::nearbyint(double(w[i]) / double(scale));
    codes[i] = static_cast<std::int8_t>(std::clamp(q, -127.0, 127.0));
  }
  return scale;
}

}  // namespace retnet::detail
