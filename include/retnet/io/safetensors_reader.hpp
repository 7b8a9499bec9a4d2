// Reader for safetensors files (https://github.com/huggingface/safetensors).
//
// Layout: an 8-byte little-endian uint64 N, then N bytes of JSON (possibly padded with trailing
// spaces), then the data section. The JSON object maps each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data section) and may
// hold "__metadata__", an object of string -> string. Tensor data is little-endian and row-major.
//
// open() reads only the header and validates it completely against the file's size before any
// tensor is read, so every later read is in bounds; each tensor is then read from the file in
// pieces of at most kReadPieceBytes and converted (TensorFile, tensor_file.hpp, shared with the
// .pth reader), so the raw file is never held in memory
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
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "retnet/errors.hpp"
#include "retnet/io/dtype.hpp"
#include "retnet/io/tensor_file.hpp"

namespace retnet::io {

/// The longest header the reader accepts: the safetensors format caps it at 100 MB.
inline constexpr std::uint64_t kMaxHeaderLength = 100'000'000;

/// The deepest nesting of JSON objects and arrays the reader accepts in a header; a valid one
/// needs 3 (header object, tensor entry, shape). The limit keeps hostile nesting from exhausting
/// the stack of recursive JSON code (nlohmann's dump() in error messages).
inline constexpr std::size_t kMaxHeaderDepth = 64;

namespace detail {

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

/// A safetensors file whose header was read and validated; tensors are read on demand
/// (TensorFile). names() lists them in order of their data offset.
class SafetensorsFile : public TensorFile {
 public:
  /// Opens the file at `path` and reads its header (tensors are read when asked for);
  /// FormatError if it cannot be read, is not a regular file or its header is malformed.
  static SafetensorsFile open(const std::string& path) {
    auto [in, size] = openRegularFile(path, "a safetensors file");
    // The 8-byte length, then the header it announces, read only once both fit the file.
    std::vector<unsigned char> prefix(static_cast<std::size_t>(std::min<std::size_t>(size, 8)));
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
    file.openStream(std::move(in), size);
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

  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  std::optional<std::string> metadataValue(const std::string& key) const {
    const auto found = metadata_.find(key);
    if (found == metadata_.end()) return std::nullopt;
    return found->second;
  }

 private:
  SafetensorsFile(std::vector<unsigned char> bytes, std::string displayName)
      : TensorFile(std::move(bytes), std::move(displayName)) {}

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
                 "' (supported: F64, F32, F16, BF16, I64, I8)");
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

  std::map<std::string, std::string> metadata_;
};

}  // namespace retnet::io
