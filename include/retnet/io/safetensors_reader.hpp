// Reader for safetensors files (https://github.com/huggingface/safetensors).
//
// Layout: an 8-byte little-endian uint64 N, then N bytes of JSON (possibly padded with trailing
// spaces), then the data section. The JSON object maps each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data section) and may
// hold "__metadata__", an object of string -> string. Tensor data is little-endian and row-major.
//
// open() reads only the header and validates it completely against the file's size before any
// tensor is read, so every later read is in bounds; each tensor is then read from the file in
// pieces of at most kReadPieceBytes and converted, so the raw file is never held in memory
// (loading a checkpoint costs the converted weights, not the file on top). fromBytes() parses a
// file held in memory (tests, fuzzing). Every problem is a retnet::FormatError naming the file, the
// tensor when there is one, and what was expected against what was found.
//
// Hostile files cost bounded work: nothing a header claims is allocated unless the file holds the
// bytes for it (a tensor's byte size must equal its span inside the data section, so a read
// allocates at most 4x that span: F16 -> double), the header is parsed in linear time into a
// JSON document of a bounded multiple of its length, at most kMaxHeaderLength bytes long (the
// format's own limit) and at most kMaxHeaderDepth containers deep.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <unsupported/Eigen/CXX11/Tensor>
#include <utility>
#include <vector>

#include "retnet/errors.hpp"
#include "retnet/io/dtype.hpp"

namespace retnet::io {

/// One tensor of a safetensors file, as described by its header.
struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F64;
  std::vector<Eigen::Index> shape;
  std::size_t begin = 0, end = 0;  ///< Byte offsets into the data section (after the header).

  /// Number of elements (1 for a rank-0 tensor). Overflow-checked when the header was read.
  Eigen::Index numel() const {
    Eigen::Index count = 1;
    for (Eigen::Index extent : shape) count *= extent;
    return count;
  }
};

/// Tensors are read from disk in pieces of at most this many bytes, converted piece by piece.
inline constexpr std::size_t kReadPieceBytes = std::size_t(1) << 20;

/// The longest header the reader accepts: the safetensors format caps it at 100 MB.
inline constexpr std::uint64_t kMaxHeaderLength = 100'000'000;

/// The deepest nesting of JSON objects and arrays the reader accepts in a header; a valid one
/// needs 3 (header object, tensor entry, shape). The limit keeps hostile nesting from exhausting
/// the stack of recursive JSON code (nlohmann's dump() in error messages).
inline constexpr std::size_t kMaxHeaderDepth = 64;

namespace detail {

/// "[2, 32, 64]", the way shapes appear in messages.
inline std::string shapeString(const std::vector<Eigen::Index>& shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

/// Product of `shape`, or nothing if an extent is negative or the product exceeds Eigen::Index.
inline std::optional<Eigen::Index> checkedNumel(const std::vector<Eigen::Index>& shape) {
  Eigen::Index count = 1;
  for (Eigen::Index extent : shape) {
    if (extent < 0) return std::nullopt;
    if (extent != 0 && count > std::numeric_limits<Eigen::Index>::max() / extent) {
      return std::nullopt;
    }
    count *= extent;
  }
  return count;
}

/// Builds a header's JSON document from nlohmann's SAX events, in time linear in the header
/// (nlohmann's parse() with a callback rescans the parent object at every object end, which is
/// quadratic in the number of objects). Stops at the first duplicate key in any object (nlohmann
/// keeps the last silently, and a duplicated tensor name would hide a tensor), at nesting deeper
/// than `maxDepth`, or at a syntax error; error() then says which.
class HeaderBuilder final : public nlohmann::json_sax<nlohmann::json> {
 public:
  HeaderBuilder(nlohmann::json& root, std::size_t maxDepth) : root_(root), maxDepth_(maxDepth) {}

  const std::string& error() const { return error_; }

  bool null() override { return place(nullptr) != nullptr; }
  bool boolean(bool value) override { return place(value) != nullptr; }
  bool number_integer(number_integer_t value) override { return place(value) != nullptr; }
  bool number_unsigned(number_unsigned_t value) override { return place(value) != nullptr; }
  bool number_float(number_float_t value, const string_t&) override {
    return place(value) != nullptr;
  }
  bool string(string_t& value) override { return place(std::move(value)) != nullptr; }
  bool binary(binary_t& value) override {  // Not produced by JSON text; kept for completeness.
    return place(nlohmann::json::binary(std::move(value))) != nullptr;
  }

  bool start_object(std::size_t) override { return open(nlohmann::json::object()); }
  bool start_array(std::size_t) override { return open(nlohmann::json::array()); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }

  bool key(string_t& name) override {
    nlohmann::json& object = *open_.back();
    if (object.contains(name)) {
      error_ = retnet::detail::concat("header has duplicate key '", name, "'");
      return false;
    }
    slot_ = &object[name];
    return true;
  }

  bool parse_error(std::size_t, const std::string&,
                   const nlohmann::json::exception& error) override {
    error_ = retnet::detail::concat("header is not valid JSON: ", error.what());
    return false;
  }

 private:
  /// Puts `value` where the parser is (the root, the end of the open array, or the slot of the
  /// last key) and returns where it went. Open containers never move: only the innermost grows.
  nlohmann::json* place(nlohmann::json value) {
    if (open_.empty()) {
      root_ = std::move(value);
      return &root_;
    }
    nlohmann::json& parent = *open_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(value));
      return &parent.back();
    }
    *slot_ = std::move(value);
    return slot_;
  }

  bool open(nlohmann::json container) {
    if (open_.size() >= maxDepth_) {
      error_ = retnet::detail::concat("header nests JSON objects and arrays deeper than ",
                                      maxDepth_, " levels");
      return false;
    }
    open_.push_back(place(std::move(container)));
    return true;
  }

  bool close() {
    open_.pop_back();
    return true;
  }

  nlohmann::json& root_;
  std::size_t maxDepth_;
  std::vector<nlohmann::json*> open_;  ///< The containers being filled, outermost first.
  nlohmann::json* slot_ = nullptr;     ///< Where the value of the last key goes.
  std::string error_;
};

/// Whether nlohmann can serialize `text` (it must be valid UTF-8 to go into the JSON header).
inline bool isValidUtf8(const std::string& text) {
  try {
    (void)nlohmann::json(text).dump();
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

}  // namespace detail

/// A safetensors file loaded into memory and validated.
class SafetensorsFile {
 public:
  template <typename Scalar>
  using RowMajorMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  template <typename Scalar>
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  template <typename Scalar, int Rank>
  using RowMajorTensor = Eigen::Tensor<Scalar, Rank, Eigen::RowMajor>;

  /// Opens the file at `path` and reads its header (tensors are read when asked for);
  /// FormatError if it cannot be read, is not a regular file or its header is malformed.
  static SafetensorsFile open(const std::string& path) {
    // A directory opens fine as a stream on Linux; say what is wrong instead of reading nothing.
    std::error_code error;
    if (std::filesystem::is_directory(path, error)) {
      throw FormatError(retnet::detail::concat(path, ": is a directory, not a file"));
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) throw FormatError(retnet::detail::concat(path, ": cannot open file for reading"));
    // Tensors are read later at their offsets: that needs a file of a known size, not a stream.
    if (!std::filesystem::is_regular_file(path, error)) {
      throw FormatError(retnet::detail::concat(
          path, ": not a regular file (a safetensors file is read at its offsets)"));
    }
    const std::uintmax_t size = std::filesystem::file_size(path, error);
    if (error) {
      throw FormatError(retnet::detail::concat(path, ": cannot tell its size: ", error.message()));
    }
    // The 8-byte length, then the header it announces, read only once both fit the file.
    std::vector<unsigned char> prefix(static_cast<std::size_t>(std::min<std::uintmax_t>(size, 8)));
    in.read(reinterpret_cast<char*>(prefix.data()), static_cast<std::streamsize>(prefix.size()));
    if (prefix.size() == 8) {
      const std::uint64_t headerLength = detail::loadLittleEndian<std::uint64_t>(prefix.data());
      if (headerLength <= kMaxHeaderLength && headerLength <= size - 8) {
        prefix.resize(8 + static_cast<std::size_t>(headerLength));
        in.read(reinterpret_cast<char*>(prefix.data() + 8),
                static_cast<std::streamsize>(headerLength));
      }
    }
    if (!in) {
      throw FormatError(
          retnet::detail::concat(path, ": read failed in the first ", prefix.size(), " bytes"));
    }
    SafetensorsFile file(std::move(prefix), path);
    file.stream_ = std::make_shared<OpenStream>();
    file.stream_->in = std::move(in);
    file.fileSize_ = static_cast<std::size_t>(size);
    file.parseHeader();
    return file;
  }

  /// Parses an in-memory file; `displayName` is what error messages call it.
  static SafetensorsFile fromBytes(std::vector<unsigned char> bytes,
                                   std::string displayName = "<memory>") {
    SafetensorsFile file(std::move(bytes), std::move(displayName));
    file.parseHeader();
    return file;
  }

  const std::string& displayName() const { return displayName_; }

  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }

  /// The header entry of `name`; FormatError "<file>: no tensor 'name'" if there is none.
  const TensorInfo& info(const std::string& name) const {
    const auto found = tensors_.find(name);
    if (found == tensors_.end()) fail("no tensor '", name, "'");
    return found->second;
  }

  /// Tensor names in order of their data offset.
  const std::vector<std::string>& names() const { return names_; }

  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  std::optional<std::string> metadataValue(const std::string& key) const {
    const auto found = metadata_.find(key);
    if (found == metadata_.end()) return std::nullopt;
    return found->second;
  }

  /// Throws FormatError naming the tensor, `expected` and the stored shape unless they are equal.
  void requireShape(const std::string& name, const std::vector<Eigen::Index>& expected) const {
    const TensorInfo& tensor = info(name);
    if (tensor.shape != expected) {
      failTensor(name, "expected shape ", detail::shapeString(expected), ", got ",
                 detail::shapeString(tensor.shape));
    }
  }

  /// All elements in row-major order, converted to Scalar (float or double) from any dtype.
  template <typename Scalar>
  std::vector<Scalar> readFlat(const std::string& name) const {
    const TensorInfo& tensor = info(name);
    std::vector<Scalar> values(static_cast<std::size_t>(tensor.numel()));
    decode(tensor, values.data());
    return values;
  }

  /// A rank-2 tensor as a row-major matrix.
  template <typename Scalar>
  RowMajorMatrix<Scalar> readMatrix(const std::string& name) const {
    const TensorInfo& tensor = requireRank(name, 2);
    RowMajorMatrix<Scalar> matrix(tensor.shape[0], tensor.shape[1]);
    decode(tensor, matrix.data());
    return matrix;
  }

  /// As readMatrix(name), and the shape must be (rows, cols).
  template <typename Scalar>
  RowMajorMatrix<Scalar> readMatrix(const std::string& name, Eigen::Index rows,
                                    Eigen::Index cols) const {
    requireShape(name, {rows, cols});
    return readMatrix<Scalar>(name);
  }

  /// A rank-1 tensor as a column vector.
  template <typename Scalar>
  Vector<Scalar> readVector(const std::string& name) const {
    const TensorInfo& tensor = requireRank(name, 1);
    Vector<Scalar> vector(tensor.shape[0]);
    decode(tensor, vector.data());
    return vector;
  }

  /// As readVector(name), and the length must be `size`.
  template <typename Scalar>
  Vector<Scalar> readVector(const std::string& name, Eigen::Index size) const {
    requireShape(name, {size});
    return readVector<Scalar>(name);
  }

  /// A tensor of rank `Rank` as a row-major Eigen::Tensor (same element order as the file).
  template <typename Scalar, int Rank>
  RowMajorTensor<Scalar, Rank> readTensor(const std::string& name) const {
    static_assert(Rank >= 0, "Rank must be non-negative");
    const TensorInfo& tensor = requireRank(name, Rank);
    std::array<Eigen::Index, static_cast<std::size_t>(Rank)> dimensions{};
    // Rank 0 skips the copy: g++ -O2 flags a copy into the (null) data of an empty std::array.
    if constexpr (Rank > 0) std::copy(tensor.shape.begin(), tensor.shape.end(), dimensions.begin());
    RowMajorTensor<Scalar, Rank> result(dimensions);
    decode(tensor, result.data());
    return result;
  }

  /// As readTensor(name), and the shape must be `expected`.
  template <typename Scalar, int Rank>
  RowMajorTensor<Scalar, Rank> readTensor(
      const std::string& name,
      const std::array<Eigen::Index, static_cast<std::size_t>(Rank)>& expected) const {
    requireShape(name, std::vector<Eigen::Index>(expected.begin(), expected.end()));
    return readTensor<Scalar, Rank>(name);
  }

  /// The elements of an I64 tensor, row-major; FormatError for any other dtype.
  std::vector<std::int64_t> readIntegers(const std::string& name) const {
    const TensorInfo& tensor = info(name);
    if (tensor.dtype != Dtype::I64) {
      failTensor(name, "expected dtype I64, got ", dtypeName(tensor.dtype));
    }
    std::vector<std::int64_t> values(static_cast<std::size_t>(tensor.numel()));
    forEachPiece(tensor, [&](const unsigned char* source, std::size_t first, std::size_t count) {
      for (std::size_t i = 0; i < count; ++i, source += 8) {
        values[first + i] =
            detail::bitCast<std::int64_t>(detail::loadLittleEndian<std::uint64_t>(source));
      }
    });
    return values;
  }

 private:
  SafetensorsFile(std::vector<unsigned char> bytes, std::string displayName)
      : bytes_(std::move(bytes)), displayName_(std::move(displayName)), fileSize_(bytes_.size()) {}

  /// Calls visit(bytes, first, count) for consecutive runs of the tensor's elements: the whole
  /// tensor at once from memory, pieces of at most kReadPieceBytes from disk.
  template <typename Visit>
  void forEachPiece(const TensorInfo& tensor, Visit visit) const {
    const auto count = static_cast<std::size_t>(tensor.numel());
    if (!stream_) {
      visit(bytes_.data() + dataStart_ + tensor.begin, std::size_t(0), count);
      return;
    }
    if (count == 0) return;
    const std::size_t stride = dtypeSize(tensor.dtype);
    const std::size_t perPiece = std::max<std::size_t>(1, kReadPieceBytes / stride);
    // The stream opened by open(): the file read is the file whose header was checked (even if
    // the path is removed or replaced since). One reader at a time: a read seeks.
    const std::lock_guard<std::mutex> lock(stream_->mutex);
    std::ifstream& in = stream_->in;
    in.clear();
    in.seekg(static_cast<std::streamoff>(dataStart_ + tensor.begin));
    std::vector<unsigned char> piece(std::min(count, perPiece) * stride);
    for (std::size_t first = 0; first < count; first += perPiece) {
      const std::size_t n = std::min(perPiece, count - first);
      in.read(reinterpret_cast<char*>(piece.data()), static_cast<std::streamsize>(n * stride));
      if (!in) {
        failTensor(tensor.name, "read failed at element ", first, " of ", count,
                   " (was the file changed or truncated after it was opened?)");
      }
      visit(piece.data(), first, n);
    }
  }

  template <typename... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    throw FormatError(retnet::detail::concat(displayName_, ": ", std::forward<Parts>(parts)...));
  }

  template <typename... Parts>
  [[noreturn]] void failTensor(const std::string& name, Parts&&... parts) const {
    fail("tensor '", name, "': ", std::forward<Parts>(parts)...);
  }

  const TensorInfo& requireRank(const std::string& name, int rank) const {
    const TensorInfo& tensor = info(name);
    if (tensor.shape.size() != static_cast<std::size_t>(rank)) {
      failTensor(name, "expected rank ", rank, ", got rank ", tensor.shape.size(), " (shape ",
                 detail::shapeString(tensor.shape), ")");
    }
    return tensor;
  }

  /// Converts the tensor's elements into `out` (numel() of them). Bounds were checked on load.
  template <typename Scalar>
  void decode(const TensorInfo& tensor, Scalar* out) const {
    static_assert(std::is_floating_point_v<Scalar>, "tensors are read as float or double");
    forEachPiece(tensor, [&](const unsigned char* source, std::size_t first, std::size_t count) {
      decodePiece(tensor.dtype, source, count, out + first);
    });
  }

  /// Converts `count` elements of `dtype` at `source` into `out`.
  template <typename Scalar>
  static void decodePiece(Dtype dtype, const unsigned char* source, std::size_t count,
                          Scalar* out) {
    const std::size_t stride = dtypeSize(dtype);
    switch (dtype) {
      case Dtype::F64:
        return convert(source, count, stride, out, [](const unsigned char* element) {
          return detail::bitCast<double>(detail::loadLittleEndian<std::uint64_t>(element));
        });
      case Dtype::F32:
        return convert(source, count, stride, out, [](const unsigned char* element) {
          return detail::bitCast<float>(detail::loadLittleEndian<std::uint32_t>(element));
        });
      case Dtype::F16:  // exact in float, so in double too
        return convert(source, count, stride, out, [](const unsigned char* element) {
          return detail::halfToFloat(detail::loadLittleEndian<std::uint16_t>(element));
        });
      case Dtype::BF16:
        return convert(source, count, stride, out, [](const unsigned char* element) {
          return detail::bfloat16ToFloat(detail::loadLittleEndian<std::uint16_t>(element));
        });
      case Dtype::I64:
        return convert(source, count, stride, out, [](const unsigned char* element) {
          return detail::bitCast<std::int64_t>(detail::loadLittleEndian<std::uint64_t>(element));
        });
    }
  }

  /// out[i] = load(source + i * stride) for `count` elements.
  template <typename Scalar, typename Load>
  static void convert(const unsigned char* source, std::size_t count, std::size_t stride,
                      Scalar* out, Load load) {
    for (std::size_t i = 0; i < count; ++i) out[i] = static_cast<Scalar>(load(source + i * stride));
  }

  /// A non-negative JSON integer, or nothing (negative, fractional, not a number, > uint64).
  static std::optional<std::uint64_t> unsignedValue(const nlohmann::json& value) {
    if (value.is_number_unsigned()) return value.get<std::uint64_t>();
    if (value.is_number_integer() && value.get<std::int64_t>() == 0) return 0;  // "-0"
    return std::nullopt;
  }

  void parseHeader() {
    if (fileSize_ < 8) {
      fail("file is ", fileSize_, " bytes, shorter than the 8-byte header length");
    }
    const std::uint64_t headerLength = detail::loadLittleEndian<std::uint64_t>(bytes_.data());
    // Checked before the length is used for anything, so a corrupt length allocates nothing.
    if (headerLength > kMaxHeaderLength) {
      fail("header length ", headerLength, " exceeds the safetensors limit of ", kMaxHeaderLength,
           " bytes");
    }
    const std::size_t available = fileSize_ - 8;
    if (headerLength > available) {
      fail("header length ", headerLength, " exceeds the ", available,
           " bytes after the 8-byte length (file size ", fileSize_, ")");
    }
    dataStart_ = 8 + static_cast<std::size_t>(headerLength);
    const std::size_t dataSize = fileSize_ - dataStart_;

    nlohmann::json header;
    detail::HeaderBuilder builder(header, kMaxHeaderDepth);
    if (!nlohmann::json::sax_parse(bytes_.data() + 8, bytes_.data() + dataStart_, &builder)) {
      fail(builder.error());
    }
    if (!header.is_object()) fail("header must be a JSON object, got ", header.type_name());

    std::vector<const TensorInfo*> byOffset;
    for (auto entry = header.begin(); entry != header.end(); ++entry) {
      if (entry.key() == "__metadata__") {
        parseMetadata(entry.value());
        continue;
      }
      TensorInfo tensor = parseEntry(entry.key(), entry.value(), dataSize);
      const auto inserted = tensors_.emplace(tensor.name, std::move(tensor));
      byOffset.push_back(&inserted.first->second);
    }

    std::sort(byOffset.begin(), byOffset.end(), [](const TensorInfo* a, const TensorInfo* b) {
      return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
    });
    // Sorted by begin, if any two spans overlap then so do two neighbours. Empty tensors own no
    // bytes and are skipped.
    const TensorInfo* previous = nullptr;
    for (const TensorInfo* tensor : byOffset) {
      names_.push_back(tensor->name);
      if (tensor->begin == tensor->end) continue;
      if (previous != nullptr && tensor->begin < previous->end) {
        fail("tensors '", previous->name, "' (data_offsets [", previous->begin, ", ", previous->end,
             "]) and '", tensor->name, "' (data_offsets [", tensor->begin, ", ", tensor->end,
             "]) overlap");
      }
      previous = tensor;
    }
  }

  void parseMetadata(const nlohmann::json& metadata) {
    if (!metadata.is_object()) {
      fail("__metadata__ must be an object of strings, got ", metadata.type_name());
    }
    for (auto item = metadata.begin(); item != metadata.end(); ++item) {
      if (!item.value().is_string()) {
        fail("__metadata__ value of '", item.key(), "' must be a string, got ",
             item.value().type_name(), " ", item.value().dump());
      }
      metadata_.emplace(item.key(), item.value().get<std::string>());
    }
  }

  TensorInfo parseEntry(const std::string& name, const nlohmann::json& entry,
                        std::size_t dataSize) const {
    if (!entry.is_object()) failTensor(name, "entry must be an object, got ", entry.type_name());
    TensorInfo tensor;
    tensor.name = name;

    const auto dtype = entry.find("dtype");
    if (dtype == entry.end()) failTensor(name, "missing \"dtype\"");
    if (!dtype->is_string()) {
      failTensor(name, "\"dtype\" must be a string, got ", dtype->type_name(), " ", dtype->dump());
    }
    const auto parsedDtype = dtypeFromName(dtype->get<std::string>());
    if (!parsedDtype) {
      failTensor(name, "unknown dtype '", dtype->get<std::string>(),
                 "' (supported: F64, F32, F16, BF16, I64)");
    }
    tensor.dtype = *parsedDtype;

    const auto shape = entry.find("shape");
    if (shape == entry.end()) failTensor(name, "missing \"shape\"");
    if (!shape->is_array()) {
      failTensor(name, "\"shape\" must be an array, got ", shape->type_name(), " ", shape->dump());
    }
    for (const nlohmann::json& extent : *shape) {
      const auto value = unsignedValue(extent);
      if (!value) {
        failTensor(name, "shape entries must be non-negative integers, got ", extent.dump(), " in ",
                   shape->dump());
      }
      if (*value > static_cast<std::uint64_t>(std::numeric_limits<Eigen::Index>::max())) {
        failTensor(name, "shape entry ", *value, " does not fit in Eigen::Index");
      }
      tensor.shape.push_back(static_cast<Eigen::Index>(*value));
    }
    const auto numel = detail::checkedNumel(tensor.shape);
    if (!numel) {
      failTensor(name, "element count of shape ", detail::shapeString(tensor.shape),
                 " overflows Eigen::Index");
    }
    const std::size_t elementSize = dtypeSize(tensor.dtype);
    if (static_cast<std::uint64_t>(*numel) >
        std::numeric_limits<std::size_t>::max() / elementSize) {
      failTensor(name, "byte size of shape ", detail::shapeString(tensor.shape), " with dtype ",
                 dtypeName(tensor.dtype), " overflows size_t");
    }
    const std::size_t byteSize = static_cast<std::size_t>(*numel) * elementSize;

    const auto offsets = entry.find("data_offsets");
    if (offsets == entry.end()) failTensor(name, "missing \"data_offsets\"");
    if (!offsets->is_array() || offsets->size() != 2) {
      failTensor(name, "\"data_offsets\" must be an array [begin, end], got ", offsets->dump());
    }
    const auto begin = unsignedValue((*offsets)[0]);
    const auto end = unsignedValue((*offsets)[1]);
    if (!begin || !end) {
      failTensor(name, "\"data_offsets\" must be non-negative integers, got ", offsets->dump());
    }
    if (*begin > *end) {
      failTensor(name, "data_offsets begin ", *begin, " is greater than end ", *end);
    }
    if (*end > dataSize) {
      failTensor(name, "data_offsets [", *begin, ", ", *end, "] end beyond the data section of ",
                 dataSize, " bytes");
    }
    tensor.begin = static_cast<std::size_t>(*begin);
    tensor.end = static_cast<std::size_t>(*end);
    if (tensor.end - tensor.begin != byteSize) {
      failTensor(name, "shape ", detail::shapeString(tensor.shape), " with dtype ",
                 dtypeName(tensor.dtype), " needs ", byteSize, " bytes, but data_offsets [",
                 tensor.begin, ", ", tensor.end, "] span ", tensor.end - tensor.begin);
    }
    return tensor;
  }

  std::vector<unsigned char> bytes_;  ///< the whole file (fromBytes), or its header (open)
  std::string displayName_;
  struct OpenStream {
    std::ifstream in;
    std::mutex mutex;
  };
  std::shared_ptr<OpenStream> stream_;  ///< where tensors are read from; null: from bytes_
  std::size_t fileSize_ = 0;            ///< bytes in the file
  std::size_t dataStart_ = 0;           ///< 8 + header length: where data offsets count from.
  std::map<std::string, TensorInfo> tensors_;
  std::vector<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace retnet::io
