// Writer for safetensors files: builds a file in memory (tensors from doubles or int64, converted
// to F64/F32/F16/BF16/I64, or bytes already encoded in any dtype, plus string metadata) and writes
// it in the layout that safetensors_reader.hpp describes, with the data section aligned to 8 bytes.
//
// What a caller can get wrong (duplicate or reserved names, names or metadata that are not UTF-8,
// negative or overflowing shapes, null data) is an InvalidArgument when the tensor or metadata
// entry is added; write() throws FormatError if the file cannot be written.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <ios>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "retnet/errors.hpp"
#include "retnet/io/dtype.hpp"
#include "retnet/io/safetensors_reader.hpp"  // The shape and UTF-8 checks the reader applies too.

namespace retnet::io {

/// Builds a safetensors file in memory. Tensors are laid out in the order they were added.
class SafetensorsWriter {
 public:
  /// Adds a "__metadata__" entry; InvalidArgument if `key` is already there or not UTF-8.
  void addMetadata(std::string key, std::string value) {
    retnet::detail::require(detail::isValidUtf8(key) && detail::isValidUtf8(value),
                            "SafetensorsWriter::addMetadata",
                            "key and value must be valid UTF-8 (key '", key, "')");
    retnet::detail::require(metadata_.count(key) == 0, "SafetensorsWriter::addMetadata",
                            "duplicate metadata key '", key, "'");
    metadata_.emplace(std::move(key), std::move(value));
  }

  /// Adds a floating-point tensor of `shape` from numel row-major doubles, converted to `dtype`
  /// (F64, F32, F16 or BF16; narrower types round to nearest even). Use addIntegers for I64.
  void addTensor(std::string name, Dtype dtype, std::vector<Eigen::Index> shape,
                 const double* values) {
    retnet::detail::require(dtype != Dtype::I64 && dtype != Dtype::I8,
                            "SafetensorsWriter::addTensor", "tensor '", name,
                            "': use addIntegers for I64, addEncoded for I8");
    const std::size_t count = checkEntry(name, shape, values, "SafetensorsWriter::addTensor");
    const std::size_t size = dtypeSize(dtype);
    std::vector<unsigned char> data(count * size);
    for (std::size_t i = 0; i < count; ++i) {
      unsigned char* target = data.data() + i * size;
      switch (dtype) {
        case Dtype::F64:
          detail::storeLittleEndian(detail::bitCast<std::uint64_t>(values[i]), target);
          break;
        case Dtype::F32:  // IEEE conversion rounds to nearest even.
          detail::storeLittleEndian(detail::bitCast<std::uint32_t>(static_cast<float>(values[i])),
                                    target);
          break;
        case Dtype::F16:
          detail::storeLittleEndian(detail::doubleToHalf(values[i]), target);
          break;
        case Dtype::BF16:
          detail::storeLittleEndian(detail::doubleToBfloat16(values[i]), target);
          break;
        case Dtype::I64:
        case Dtype::I8:
          break;  // Rejected above.
      }
    }
    entries_.push_back({std::move(name), dtype, std::move(shape), std::move(data)});
  }

  /// Adds an I64 tensor of `shape` from numel row-major values.
  void addIntegers(std::string name, std::vector<Eigen::Index> shape, const std::int64_t* values) {
    const std::size_t count = checkEntry(name, shape, values, "SafetensorsWriter::addIntegers");
    std::vector<unsigned char> data(count * 8);
    for (std::size_t i = 0; i < count; ++i) {
      detail::storeLittleEndian(detail::bitCast<std::uint64_t>(values[i]), data.data() + i * 8);
    }
    entries_.push_back({std::move(name), Dtype::I64, std::move(shape), std::move(data)});
  }

  /// Adds a tensor of `dtype` and `shape` from its numel elements already encoded as the file
  /// stores them (little-endian), e.g. a reduced-precision weight's codes.
  void addEncoded(std::string name, Dtype dtype, std::vector<Eigen::Index> shape,
                  const void* bytes) {
    const std::size_t count = checkEntry(name, shape, bytes, "SafetensorsWriter::addEncoded");
    const auto* first = static_cast<const unsigned char*>(bytes);
    std::vector<unsigned char> data(first, first + count * dtypeSize(dtype));
    entries_.push_back({std::move(name), dtype, std::move(shape), std::move(data)});
  }

  /// Orders the tensors by element size, widest first (8, 4, 2, 1 bytes), keeping the order
  /// they were added within each size: every tensor then starts at an offset aligned to its
  /// element size, as readers that map the file in place need.
  void sortByElementSize() {
    std::stable_sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) {
      return dtypeSize(a.dtype) > dtypeSize(b.dtype);
    });
  }

  /// The file: length, JSON header padded with spaces so the data starts at a multiple of 8
  /// (keeps elements aligned for readers that map the file), then the data.
  std::vector<unsigned char> bytes() const {
    const std::string text = header();
    std::vector<unsigned char> file(8 + text.size() + dataBytes());
    detail::storeLittleEndian(static_cast<std::uint64_t>(text.size()), file.data());
    std::copy(text.begin(), text.end(), file.begin() + 8);
    auto data = file.begin() + static_cast<std::ptrdiff_t>(8 + text.size());
    for (const Entry& entry : entries_) {
      data = std::copy(entry.data.begin(), entry.data.end(), data);
    }
    return file;
  }

  /// Writes bytes() to `path`, tensor by tensor (no second copy of the data in memory);
  /// FormatError if the file cannot be written.
  void write(const std::string& path) const {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) throw FormatError(retnet::detail::concat(path, ": cannot open file for writing"));
    const std::string text = header();
    unsigned char length[8];
    detail::storeLittleEndian(static_cast<std::uint64_t>(text.size()), length);
    out.write(reinterpret_cast<const char*>(length), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const Entry& entry : entries_) {
      out.write(reinterpret_cast<const char*>(entry.data.data()),
                static_cast<std::streamsize>(entry.data.size()));
    }
    out.close();
    if (!out) {
      throw FormatError(
          retnet::detail::concat(path, ": cannot write ", 8 + text.size() + dataBytes(), " bytes"));
    }
  }

 private:
  struct Entry {
    std::string name;
    Dtype dtype;
    std::vector<Eigen::Index> shape;
    std::vector<unsigned char> data;
  };

  std::size_t dataBytes() const {
    std::size_t total = 0;
    for (const Entry& entry : entries_) total += entry.data.size();
    return total;
  }

  /// The JSON header, padded with spaces so the data starts at a multiple of 8.
  std::string header() const {
    nlohmann::json header = nlohmann::json::object();
    std::size_t offset = 0;
    for (const Entry& entry : entries_) {
      header[entry.name] = {{"dtype", dtypeName(entry.dtype)},
                            {"shape", entry.shape},
                            {"data_offsets", {offset, offset + entry.data.size()}}};
      offset += entry.data.size();
    }
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::string text = header.dump();
    text.append((8 - (8 + text.size()) % 8) % 8, ' ');
    return text;
  }

  /// Validates name, shape and values of a new tensor; returns its element count.
  template <typename T>
  std::size_t checkEntry(const std::string& name, const std::vector<Eigen::Index>& shape,
                         const T* values, const char* where) const {
    retnet::detail::require(name != "__metadata__", where,
                            "'__metadata__' is reserved and cannot name a tensor");
    retnet::detail::require(detail::isValidUtf8(name), where, "tensor name must be valid UTF-8");
    const bool duplicate = std::any_of(entries_.begin(), entries_.end(),
                                       [&](const Entry& entry) { return entry.name == name; });
    retnet::detail::require(!duplicate, where, "duplicate tensor '", name, "'");
    const auto numel = detail::checkedNumel(shape);
    retnet::detail::require(numel.has_value(), where, "tensor '", name, "': shape ",
                            detail::shapeString(shape),
                            " must have non-negative extents and a representable element count");
    // 8 bytes is the widest element; refuse sizes whose byte count would overflow.
    retnet::detail::require(
        static_cast<std::uint64_t>(*numel) <= std::numeric_limits<std::size_t>::max() / 8, where,
        "tensor '", name, "': shape ", detail::shapeString(shape), " is too large");
    retnet::detail::require(values != nullptr || *numel == 0, where, "tensor '", name,
                            "': values must not be null");
    return static_cast<std::size_t>(*numel);
  }

  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace retnet::io
