// Argument checks shared by the public entry points. Always on: they guard callers' mistakes.
#pragma once

#include <cmath>
#include <functional>
#include <string>
#include <utility>

#include "retnet/errors.hpp"
#include "retnet/tensor.hpp"

namespace retnet::detail {

/// Throws InvalidArgument "<where>: <name…> must be (rows, cols), got (r, c)" unless `m` (any
/// matrix or Eigen expression) has that shape.
template <typename Matrix, typename... Name>
void requireShape(const char* where, const Matrix& m, Index rows, Index cols, Name&&... name) {
  require(m.rows() == rows && m.cols() == cols, where, std::forward<Name>(name)..., " must be (",
          rows, ", ", cols, "), got (", m.rows(), ", ", m.cols(), ")");
}

/// Throws InvalidArgument "<where>: <name…> must have <size> entries, got n" unless `v` has that
/// many.
template <typename Vec, typename... Name>
void requireLength(const char* where, const Vec& v, Index size, Name&&... name) {
  require(v.size() == size, where, std::forward<Name>(name)..., " must have ", size,
          " entries, got ", v.size());
}

inline std::string shapeString(Index a, Index b, Index c) {
  return concat("(", a, ", ", b, ", ", c, ")");
}

/// Every dimension of a (batch, time, features) input must be at least 1.
template <typename Scalar>
void requireNonEmpty(const char* where, const char* name, const ConstTensor3Ref<Scalar>& t) {
  require(t.batch() >= 1 && t.time() >= 1 && t.features() >= 1, where, name,
          " must be non-empty (batch, time, features all >= 1), got shape ",
          shapeString(t.batch(), t.time(), t.features()));
  require(t.data() != nullptr, where, name, " has a null data pointer");
}

/// A kept output buffer `out` (which a form may resize) must not share memory with an input;
/// `message` says which (compared with std::less, defined for any two pointers).
template <typename Scalar>
void requireNoOverlap(const char* where, const Tensor3<Scalar>& out,
                      const ConstTensor3Ref<Scalar>& input, const char* message) {
  const std::less<const Scalar*> before;
  const Scalar* outEnd = out.data() + out.size();
  const Scalar* inputEnd = input.data() + input.size();
  require(out.size() == 0 || !before(input.data(), outEnd) || !before(out.data(), inputEnd), where,
          message);
}

inline void requireChunkSize(const char* where, Index chunkSize) {
  require(chunkSize >= 1, where, "chunkSize must be >= 1, got ", chunkSize);
}

/// A decay γ must be a finite number in [0, 1] (paper eq. 1: γ scales the state every step).
inline void requireDecay(const char* where, double gamma) {
  require(std::isfinite(gamma) && gamma >= 0.0 && gamma <= 1.0, where,
          "gamma must be a finite value in [0, 1], got ", gamma);
}

}  // namespace retnet::detail
