// The weight of a dense layer and how it is stored.
//
// W (out x in) in PyTorch's Linear layout, applied as y = x · Wᵀ (stages::linear). Every layer
// holds its projections as LinearWeights, so a storage format is a property of this type only:
//
//   WeightType  stored per weight                      decoded value              bytes/weight
//   kFull       the model's Scalar (float or double)   itself                     4 (8)
//   kBf16       bfloat16                               exact in float             2
//   kF16        IEEE binary16                          exact in float             2
//   kInt8       int8 q, float32 scale s per 32 columns s·q (float product)         1.125
//
// Activations, accumulation and states stay in Scalar. Converting rounds once, to nearest even
// (BF16: |δ| ≤ 2^−8|w|; F16: ≤ 2^−11|w| in its normal range [2^−14, 65504], absolute ≤ 2^−25
// below it, infinity above); int8 is symmetric per group of 32 (ggml Q8_0's length) with
// s = max|w|/127 and q = round(w/s), so |δ| ≤ max|w|/254 over the group. The scales are float32,
// not F16: the 6% fewer bytes of F16 scales would add a second rounding of every weight and an
// F16 range limit, for a decode that stays bound by the codes' bytes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "retnet/detail/checks.hpp"
#include "retnet/detail/lowp_codecs.hpp"
#include "retnet/detail/lowp_kernels.hpp"
#include "retnet/errors.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

/// How a LinearWeight stores W (see the table above).
enum class WeightType { kFull, kBf16, kF16, kInt8 };

/// "full", "bf16", "f16", "int8".
inline const char* weightTypeName(WeightType type) {
  switch (type) {
    case WeightType::kBf16:
      return "bf16";
    case WeightType::kF16:
      return "f16";
    case WeightType::kInt8:
      return "int8";
    case WeightType::kFull:
      break;
  }
  return "full";
}

/// The type named `name` ("full" or "f32", "bf16", "f16", "int8"), or nothing.
inline std::optional<WeightType> weightTypeFromName(const std::string& name) {
  if (name == "full" || name == "f32") return WeightType::kFull;
  for (WeightType type : {WeightType::kBf16, WeightType::kF16, WeightType::kInt8})
    if (name == weightTypeName(type)) return type;
  return std::nullopt;
}

/// The weight of a dense layer, W (out x in) row-major, in one of the WeightTypes. Several layers
/// reading the same input can be stacked into one (stacked()), so their outputs come from one
/// product, side by side: full-precision parts are copied into one matrix (one GEMM), reduced
/// ones stay where they are, as a list of parts (a mapped file's tensors are used in place).
/// Reduced-precision codes are immutable and shared between copies; they may live in memory the
/// weight does not own (a mapped file), kept alive by an owner.
template <typename Scalar>
class LinearWeight {
 public:
  /// Rows [first, first + rows) of a reduced-precision W: their codes (a (rows x in) matrix of
  /// its own) and what keeps them alive.
  struct Part {
    Index first = 0, rows = 0;
    detail::LowpMatrix codes;
    std::shared_ptr<const void> owner;
  };

  LinearWeight() = default;
  /// A full-precision weight holding `matrix` (implicit: a RowMatrix or any Eigen expression is a
  /// weight, so weight structs are filled with matrices).
  LinearWeight(RowMatrix<Scalar> matrix)  // NOLINT(google-explicit-constructor)
      : outputs_(matrix.rows()), inputs_(matrix.cols()), matrix_(std::move(matrix)) {}
  template <typename Derived>
  LinearWeight(const Eigen::MatrixBase<Derived>& matrix)  // NOLINT(google-explicit-constructor)
      : LinearWeight(RowMatrix<Scalar>(matrix)) {}

  /// The rows of every part, in order: W = [W_0; W_1; …]. Every part must have the same width and
  /// the same type; full-precision parts are copied into one matrix, reduced ones are shared.
  static LinearWeight stacked(std::initializer_list<const LinearWeight*> parts) {
    const char* where = "LinearWeight::stacked";
    detail::require(parts.size() >= 1, where, "at least one part is needed");
    const LinearWeight& first = **parts.begin();
    Index rows = 0;
    for (const LinearWeight* part : parts) {
      detail::require(part->inputs_ == first.inputs_, where,
                      "every part must have the same input width ", first.inputs_, ", got ",
                      part->inputs_);
      detail::require(part->type_ == first.type_, where, "every part must have the same type ",
                      weightTypeName(first.type_), ", got ", weightTypeName(part->type_));
      rows += part->outputs_;
    }
    LinearWeight w;
    w.type_ = first.type_;
    w.outputs_ = rows;
    w.inputs_ = first.inputs_;
    if (first.type_ == WeightType::kFull) {
      w.matrix_.resize(rows, first.inputs_);
      Index row = 0;
      for (const LinearWeight* part : parts) {
        w.matrix_.middleRows(row, part->outputs_) = part->matrix_;
        row += part->outputs_;
      }
      return w;
    }
    Index row = 0;
    for (const LinearWeight* part : parts) {
      for (Part piece : part->parts_) {
        if (piece.rows == 0) continue;
        piece.first += row;
        w.parts_.push_back(std::move(piece));
      }
      row += part->outputs_;
    }
    return w;
  }

  /// BF16 or F16 codes (out x in, row-major), used in place; `owner` keeps them alive.
  static LinearWeight halves(WeightType type, Index out, Index in, const std::uint16_t* codes,
                             std::shared_ptr<const void> owner) {
    const char* where = "LinearWeight::halves";
    detail::require(type == WeightType::kBf16 || type == WeightType::kF16, where,
                    "the type must be bf16 or f16, got ", weightTypeName(type));
    checkStored(where, out, in, codes);
    return fromCodes(type, out, in, codes, nullptr, std::move(owner));
  }

  /// int8 codes (out x in, row-major) and float32 scales (out x ⌈in/32⌉: scale g of row j applies
  /// to columns [32g, 32g + 32)), used in place; `owner` keeps them alive.
  static LinearWeight int8(Index out, Index in, const std::int8_t* codes, const float* scales,
                           std::shared_ptr<const void> owner) {
    const char* where = "LinearWeight::int8";
    checkStored(where, out, in, codes);
    detail::require(scales != nullptr || out * in == 0, where, "the scales pointer is null");
    return fromCodes(WeightType::kInt8, out, in, codes, scales, std::move(owner));
  }

  WeightType type() const { return type_; }
  Index outputs() const { return outputs_; }  ///< out
  Index inputs() const { return inputs_; }    ///< in
  bool empty() const { return outputs_ * inputs_ == 0; }
  Index scaleGroups() const { return detail::int8Groups(inputs_); }

  /// Bytes of W as stored (codes and scales): what a decoding step reads.
  std::size_t storedBytes() const { return storedBytes(type_, outputs_, inputs_); }
  /// Bytes of an (out x in) weight stored as `type`.
  static std::size_t storedBytes(WeightType type, Index out, Index in) {
    const auto n = static_cast<std::size_t>(out * in);
    const auto groups = static_cast<std::size_t>(detail::int8Groups(in));
    switch (type) {
      case WeightType::kBf16:
      case WeightType::kF16:
        return 2 * n;
      case WeightType::kInt8:
        return n + sizeof(float) * static_cast<std::size_t>(out) * groups;
      case WeightType::kFull:
        break;
    }
    return sizeof(Scalar) * n;
  }

  /// W as stored (out x in); only for WeightType::kFull (dequantized() gives any type's values).
  const RowMatrix<Scalar>& matrix() const {
    requireFull("LinearWeight::matrix");
    return matrix_;
  }

  /// W itself, to change in place (an optimiser's step); only for WeightType::kFull.
  RowMatrix<Scalar>& mutableMatrix() {
    requireFull("LinearWeight::mutableMatrix");
    return matrix_;
  }

  /// The parts of a reduced-precision W, in row order, covering its rows: the codes (uint16_t for
  /// BF16/F16, int8_t with their scales) for kernels and writers. Empty for kFull.
  const std::vector<Part>& parts() const { return parts_; }

  /// Rows [begin, begin + count) as a weight of their own: a copy for kFull, shared codes else.
  LinearWeight middleRows(Index begin, Index count) const {
    detail::require(begin >= 0 && count >= 0 && begin + count <= outputs_,
                    "LinearWeight::middleRows", "rows [", begin, ", ", begin + count,
                    ") must lie in [0, ", outputs_, ")");
    if (type_ == WeightType::kFull)
      return LinearWeight(RowMatrix<Scalar>(matrix_.middleRows(begin, count)));
    LinearWeight w;
    w.type_ = type_;
    w.outputs_ = count;
    w.inputs_ = inputs_;
    for (const Part& part : parts_) {
      const Index from = std::max(begin, part.first);
      const Index to = std::min(begin + count, part.first + part.rows);
      if (from >= to) continue;
      Part piece = part;
      piece.first = from - begin;
      piece.rows = to - from;
      piece.codes = part.codes.rowsFrom(from - part.first);
      w.parts_.push_back(std::move(piece));
    }
    return w;
  }

  /// Row j of W as Scalar values (exact: every stored value is a float).   out (in)
  void decodeRow(Index j, Scalar* out) const {
    detail::require(j >= 0 && j < outputs_, "LinearWeight::decodeRow", "row ", j,
                    " must lie in [0, ", outputs_, ")");
    if (type_ == WeightType::kFull) {
      Eigen::Map<RowMatrix<Scalar>>(out, 1, inputs_) = matrix_.row(j);
    } else {
      const Part& part = partOf(j);
      part.codes.decode(j - part.first, 0, inputs_, out);
    }
  }

  /// W's values (out x in) as Scalar, whatever the storage.
  RowMatrix<Scalar> dequantized() const {
    if (type_ == WeightType::kFull) return matrix_;
    RowMatrix<Scalar> w(outputs_, inputs_);
    if (empty()) return w;  // (a shape like (2^62, 0) has no rows worth visiting)
    for (Index j = 0; j < outputs_; ++j) decodeRow(j, w.row(j).data());
    return w;
  }

  /// This weight stored as `type`: rounded from its values (from a reduced type through them, so
  /// converting twice may round twice). Converting to the current type shares the storage.
  /// InvalidArgument for a non-finite weight (it has no reduced form).
  LinearWeight converted(WeightType type) const {
    if (type == type_) return *this;
    if (type == WeightType::kFull) return LinearWeight(dequantized());
    if (empty()) {  // nothing to round: no codes, no scales
      return fromCodes(type, outputs_, inputs_, nullptr, nullptr, nullptr);
    }
    RowMatrix<Scalar> decoded;  // only for a reduced source: a full one is read in place
    if (type_ != WeightType::kFull) decoded = dequantized();
    const RowMatrix<Scalar>& values = type_ == WeightType::kFull ? matrix_ : decoded;
    // x·0 is 0 for finite x and NaN otherwise; Eigen's vectorised sum of those is 20x faster than
    // allFinite() (which tests element by element: 9 ns each, 12 s over a 1.3B model).
    detail::require((values.array() * Scalar(0)).sum() == Scalar(0), "LinearWeight::converted",
                    "the weight must be finite to be stored as ", weightTypeName(type));
    const Index n = outputs_ * inputs_;
    if (type == WeightType::kInt8) {
      const Index groups = scaleGroups();
      auto buffer = std::make_shared<Int8Buffer>();
      buffer->codes.resize(static_cast<std::size_t>(n));
      buffer->scales.resize(static_cast<std::size_t>(outputs_ * groups));
      for (Index j = 0; j < outputs_; ++j) {
        for (Index g = 0; g < groups; ++g) {
          const Index begin = g * detail::kInt8Group;
          const Index count = std::min(detail::kInt8Group, inputs_ - begin);
          buffer->scales[static_cast<std::size_t>(j * groups + g)] = detail::quantizeGroup(
              values.row(j).data() + begin, count, buffer->codes.data() + j * inputs_ + begin);
        }
      }
      const Int8Buffer& b = *buffer;
      return int8(outputs_, inputs_, b.codes.data(), b.scales.data(), std::move(buffer));
    }
    auto codes = std::make_shared<std::vector<std::uint16_t>>(static_cast<std::size_t>(n));
    const Scalar* v = values.data();
    for (Index i = 0; i < n; ++i) (*codes)[static_cast<std::size_t>(i)] = encodeHalf(type, v[i]);
    const std::uint16_t* data = codes->data();
    return halves(type, outputs_, inputs_, data, std::move(codes));
  }

 private:
  struct Int8Buffer {
    std::vector<std::int8_t> codes;
    std::vector<float> scales;
  };

  static std::uint16_t encodeHalf(WeightType type, Scalar value) {
    if constexpr (std::is_same_v<Scalar, float>) {
      return type == WeightType::kBf16 ? detail::floatToBf16(value) : detail::floatToF16(value);
    } else {  // from double in one rounding (through float would round twice)
      return type == WeightType::kBf16 ? io::detail::doubleToBfloat16(double(value))
                                       : io::detail::doubleToHalf(double(value));
    }
  }

  static void checkStored(const char* where, Index out, Index in, const void* codes) {
    detail::require(out >= 0 && in >= 0, where, "the shape must be non-negative, got (", out, ", ",
                    in, ")");
    detail::require(codes != nullptr || out * in == 0, where, "the codes pointer is null");
  }

  static LinearWeight fromCodes(WeightType type, Index out, Index in, const void* codes,
                                const float* scales, std::shared_ptr<const void> owner) {
    LinearWeight w;
    w.type_ = type;
    w.outputs_ = out;
    w.inputs_ = in;
    Part part;
    part.rows = out;
    part.codes.code = type == WeightType::kBf16  ? detail::LowpCode::kBf16
                      : type == WeightType::kF16 ? detail::LowpCode::kF16
                                                 : detail::LowpCode::kInt8;
    part.codes.data = codes;
    part.codes.scales = scales;
    part.codes.inputs = in;
    part.owner = std::move(owner);
    w.parts_.push_back(std::move(part));
    return w;
  }

  /// The part holding row j (reduced types; 0 <= j < outputs_).
  const Part& partOf(Index j) const {
    std::size_t p = 0;
    while (p + 1 < parts_.size() && j >= parts_[p].first + parts_[p].rows) ++p;
    return parts_[p];
  }

  void requireFull(const char* where) const {
    detail::require(type_ == WeightType::kFull, where, "the weight is stored as ",
                    weightTypeName(type_), ", not full precision");
  }

  WeightType type_ = WeightType::kFull;
  Index outputs_ = 0, inputs_ = 0;
  RowMatrix<Scalar> matrix_;  // kFull
  std::vector<Part> parts_;   // the other types: one or more row ranges of codes
};

namespace detail {
/// Throws InvalidArgument "<where>: <name…> must be (out, in), got (o, i)" unless `w` has that
/// shape.
template <typename Scalar, typename... Name>
void requireShape(const char* where, const LinearWeight<Scalar>& w, Index out, Index in,
                  Name&&... name) {
  require(w.outputs() == out && w.inputs() == in, where, std::forward<Name>(name)..., " must be (",
          out, ", ", in, "), got (", w.outputs(), ", ", w.inputs(), ")");
}
}  // namespace detail

namespace detail {

/// The matrix of a full-precision weight, const or not as the weight (what forEachParameter
/// visits).
template <typename Scalar>
RowMatrix<Scalar>& fullMatrix(LinearWeight<Scalar>& w) {
  return w.mutableMatrix();
}
template <typename Scalar>
const RowMatrix<Scalar>& fullMatrix(const LinearWeight<Scalar>& w) {
  return w.matrix();
}

/// The map forEachParameter passes for a layer of type Self: writable unless Self is const.
template <typename Self, typename Scalar>
using ParameterMap = std::conditional_t<std::is_const_v<Self>, Eigen::Map<const RowMatrix<Scalar>>,
                                        Eigen::Map<RowMatrix<Scalar>>>;

}  // namespace detail

}  // namespace retnet
