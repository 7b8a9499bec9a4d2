// Element types of tensor files and their byte encodings: the Dtype enum with its safetensors
// spelling and size, little-endian loads and stores, and the F16/BF16 codecs.
//
// Only the standard library: no JSON, no Eigen, so the core can use the codecs (for low-precision
// weights) without retnet::io's dependencies. Decoding F16/BF16 is exact (every such value is a
// double); encoding rounds to nearest, ties to even, straight from double.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>

namespace retnet::io {

// Values are moved through integers of the same width with memcpy; that is only meaningful for
// IEEE-754 binary32/binary64, which is what safetensors stores.
static_assert(std::numeric_limits<float>::is_iec559 && sizeof(float) == 4,
              "retnet::io needs IEEE-754 binary32 float");
static_assert(std::numeric_limits<double>::is_iec559 && sizeof(double) == 8,
              "retnet::io needs IEEE-754 binary64 double");

/// Element types retnet reads and writes (the safetensors spelling is dtypeName()).
enum class Dtype { F64, F32, F16, BF16, I64, I8 };

/// The safetensors spelling: "F64", "F32", "F16", "BF16", "I64", "I8".
inline const char* dtypeName(Dtype dtype) {
  switch (dtype) {
    case Dtype::F64:
      return "F64";
    case Dtype::F32:
      return "F32";
    case Dtype::F16:
      return "F16";
    case Dtype::BF16:
      return "BF16";
    case Dtype::I64:
      return "I64";
    case Dtype::I8:
      return "I8";
  }
  return "?";  // Only reachable through a cast of an out-of-range value.
}

/// Bytes per element.
inline std::size_t dtypeSize(Dtype dtype) {
  switch (dtype) {
    case Dtype::F64:
    case Dtype::I64:
      return 8;
    case Dtype::F32:
      return 4;
    case Dtype::F16:
    case Dtype::BF16:
      return 2;
    case Dtype::I8:
      return 1;
  }
  return 0;
}

/// The Dtype spelled `name`, or nothing for a dtype retnet does not support.
inline std::optional<Dtype> dtypeFromName(const std::string& name) {
  for (Dtype dtype : {Dtype::F64, Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::I64, Dtype::I8}) {
    if (name == dtypeName(dtype)) return dtype;
  }
  return std::nullopt;
}

namespace detail {

/// Whether this machine stores integers little-endian, as tensor files do.
inline bool hostIsLittleEndian() {
  const std::uint16_t probe = 1;
  unsigned char first = 0;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

template <typename To, typename From>
To bitCast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bitCast needs equal sizes");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

/// Reads a little-endian unsigned integer byte by byte: no alignment needed, and correct on any
/// host byte order (so no big-endian special case is needed).
template <typename UInt>
UInt loadLittleEndian(const unsigned char* bytes) {
  static_assert(std::is_unsigned_v<UInt>, "loadLittleEndian reads unsigned integers");
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < sizeof(UInt); ++i) value |= std::uint64_t{bytes[i]} << (8 * i);
  return static_cast<UInt>(value);
}

template <typename UInt>
void storeLittleEndian(UInt value, unsigned char* bytes) {
  static_assert(std::is_unsigned_v<UInt>, "storeLittleEndian writes unsigned integers");
  for (std::size_t i = 0; i < sizeof(UInt); ++i) {
    bytes[i] = static_cast<unsigned char>((std::uint64_t{value} >> (8 * i)) & 0xFFu);
  }
}

/// Decodes a 16-bit IEEE-style float with `exponentBits` exponent and `mantissaBits` mantissa
/// bits (F16: 5/10, BF16: 8/7). Every such value is exact in double.
inline double decodeSmallFloat(std::uint16_t bits, int exponentBits, int mantissaBits) {
  const unsigned mantissaMask = (1u << mantissaBits) - 1u;
  const unsigned exponentMask = (1u << exponentBits) - 1u;
  const bool negative = (bits >> (exponentBits + mantissaBits)) & 1u;
  const unsigned exponent = (bits >> mantissaBits) & exponentMask;
  const unsigned mantissa = bits & mantissaMask;
  const int bias = (1 << (exponentBits - 1)) - 1;
  double magnitude;
  if (exponent == exponentMask) {
    magnitude = mantissa == 0 ? std::numeric_limits<double>::infinity()
                              : std::numeric_limits<double>::quiet_NaN();
  } else if (exponent == 0) {  // Zero or subnormal: no implicit leading one.
    magnitude = std::ldexp(static_cast<double>(mantissa), 1 - bias - mantissaBits);
  } else {
    magnitude = std::ldexp(static_cast<double>(mantissa | (1u << mantissaBits)),
                           static_cast<int>(exponent) - bias - mantissaBits);
  }
  return negative ? -magnitude : magnitude;
}

/// Encodes `value` as a 16-bit IEEE-style float, rounding to nearest, ties to even, straight from
/// double (going through float first would round twice and can be off by one ulp). Overflow gives
/// infinity, underflow a subnormal or zero; NaN becomes a quiet NaN with the same sign.
inline std::uint16_t encodeSmallFloat(double value, int exponentBits, int mantissaBits) {
  const unsigned signBit = std::signbit(value) ? 1u << (exponentBits + mantissaBits) : 0u;
  const unsigned infinityBits = ((1u << exponentBits) - 1u) << mantissaBits;
  if (std::isnan(value)) {
    return static_cast<std::uint16_t>(signBit | infinityBits | (1u << (mantissaBits - 1)));
  }
  const double magnitude = std::fabs(value);
  if (magnitude == 0.0) return static_cast<std::uint16_t>(signBit);
  const int bias = (1 << (exponentBits - 1)) - 1;
  if (std::isinf(magnitude)) return static_cast<std::uint16_t>(signBit | infinityBits);
  int frexpExponent = 0;
  std::frexp(magnitude, &frexpExponent);
  const int exponent = frexpExponent - 1;  // magnitude in [2^exponent, 2^(exponent + 1)).
  if (exponent > bias) return static_cast<std::uint16_t>(signBit | infinityBits);
  // Below the normal range the spacing stays that of the smallest normal binade (subnormals).
  const int binade = std::max(exponent, 1 - bias);
  // In units of the target's ulp: at most 2^(mantissaBits + 1), so exact, as is the fraction.
  const double scaled = std::ldexp(magnitude, mantissaBits - binade);
  double rounded = std::floor(scaled);
  const double fraction = scaled - rounded;
  if (fraction > 0.5 || (fraction == 0.5 && std::fmod(rounded, 2.0) != 0.0)) rounded += 1.0;
  // Adding the (biased exponent - 1) field to the significand lets a carry out of the mantissa
  // bump the exponent (out of the largest binade that lands exactly on infinity), and makes a
  // subnormal (field 0) come out right too.
  const unsigned magnitudeBits =
      (static_cast<unsigned>(binade + bias - 1) << mantissaBits) + static_cast<unsigned>(rounded);
  return static_cast<std::uint16_t>(signBit | magnitudeBits);
}

inline double halfToDouble(std::uint16_t bits) { return decodeSmallFloat(bits, 5, 10); }

/// BF16 -> float by its definition: the upper half of a float's bits. Exact (NaNs keep their
/// payload), and ~15x faster than the generic decoder: what checkpoint loading uses.
inline float bfloat16ToFloat(std::uint16_t bits) {
  return bitCast<float>(static_cast<std::uint32_t>(bits) << 16);
}

/// F16 -> float by moving the fields: exact for every one of the 65536 patterns (tested against
/// halfToDouble), without ldexp or branches (so loops of it vectorise): normals re-biased,
/// subnormals m·2^−24 (a normal float product), infinities and NaNs (payload kept) by the fields.
inline float halfToFloat(std::uint16_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1Fu, mantissa = bits & 0x3FFu;
  const std::uint32_t normal = ((exponent + 112u) << 23) | (mantissa << 13);
  const std::uint32_t special = 0x7F800000u | (mantissa << 13);
  const float subnormal =
      static_cast<float>(static_cast<std::int32_t>(mantissa)) * 5.9604644775390625e-8f;
  // Selection by masks rather than ?: so that g++ vectorises it too.
  const std::uint32_t isSubnormal = 0u - static_cast<std::uint32_t>(exponent == 0);
  const std::uint32_t isSpecial = 0u - static_cast<std::uint32_t>(exponent == 31);
  const std::uint32_t magnitude = (bitCast<std::uint32_t>(subnormal) & isSubnormal) |
                                  (special & isSpecial) | (normal & ~(isSubnormal | isSpecial));
  return bitCast<float>(sign | magnitude);
}
inline double bfloat16ToDouble(std::uint16_t bits) { return decodeSmallFloat(bits, 8, 7); }
inline std::uint16_t doubleToHalf(double value) { return encodeSmallFloat(value, 5, 10); }
inline std::uint16_t doubleToBfloat16(double value) { return encodeSmallFloat(value, 8, 7); }

}  // namespace detail
}  // namespace retnet::io
