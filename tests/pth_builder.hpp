// Builds PyTorch checkpoints byte by byte, the way torch.save lays them out, for tests and the
// fuzzer's seed corpus: a STORED ZIP writer (classic or ZIP64 records, data descriptors, torch's
// 64-byte alignment padding; every field can be made wrong on purpose) and a pickle writer whose
// stateDict() emits the same opcodes torch.save's protocol-2 pickler does for a state dict.
// Only the standard library; the reader under test (retnet/io/pth_reader.hpp) is not used.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace retnet::pth_builder {

using Bytes = std::vector<unsigned char>;

inline void put(Bytes& out, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<unsigned char>(value >> (8 * i)));
}

inline void put(Bytes& out, const std::string& text) {
  out.insert(out.end(), text.begin(), text.end());
}

inline std::uint32_t crc32(const Bytes& data) {
  std::uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char byte : data) {
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1u) != 0 ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
  }
  return crc ^ 0xFFFFFFFFu;
}

/// One entry of an archive; the optional fields falsify what the headers say.
struct Entry {
  Entry(std::string entryName, Bytes entryData)
      : name(std::move(entryName)), data(std::move(entryData)) {}

  std::string name;
  Bytes data;
  std::uint16_t method = 0;             ///< written in both headers; the data stay as given
  std::optional<std::uint32_t> crc;     ///< instead of the data's CRC-32
  std::optional<std::uint64_t> size;    ///< instead of data.size(), in both headers
  std::optional<std::uint64_t> offset;  ///< instead of the local header's offset
};

struct ZipOptions {
  bool zip64 = false;          ///< ZIP64 extra fields (sizes and offsets saturated) and records
  bool dataDescriptor = true;  ///< flag 3 and a descriptor after the data, as torch writes
  bool align = true;           ///< an "FB" extra field padding data to 64 bytes, as torch does
  std::string comment;         ///< archive comment
};

/// A ZIP archive of STORED entries.
inline Bytes zip(const std::vector<Entry>& entries, const ZipOptions& options = {}) {
  constexpr std::uint32_t kSaturated = 0xFFFFFFFFu;
  Bytes out, directory;
  const std::uint16_t version = options.zip64 ? 45 : 20;
  const std::uint16_t flags = options.dataDescriptor ? 0x0808 : 0x0800;
  for (const Entry& entry : entries) {
    const std::uint64_t offset = entry.offset.value_or(out.size());
    const std::uint64_t size = entry.size.value_or(entry.data.size());
    const std::uint32_t crc = entry.crc.value_or(crc32(entry.data));
    Bytes extra;
    if (options.align) {  // torch's padding: data at a multiple of 64 bytes
      const std::size_t before = out.size() + 30 + entry.name.size() + 4 + (options.zip64 ? 20 : 0);
      const std::size_t padding = (64 - before % 64) % 64;
      put(extra, 0x4246, 2);  // "FB"
      put(extra, padding, 2);
      extra.insert(extra.end(), padding, 'Z');
    }
    if (options.zip64) {
      put(extra, 1, 2);
      put(extra, 16, 2);
      put(extra, size, 8);
      put(extra, size, 8);
    }
    put(out, 0x04034b50, 4);
    put(out, version, 2);
    put(out, flags, 2);
    put(out, entry.method, 2);
    put(out, 0, 4);  // time, date
    put(out, options.dataDescriptor ? 0 : crc, 4);
    const std::uint64_t localSize = options.dataDescriptor ? 0 : options.zip64 ? kSaturated : size;
    put(out, localSize, 4);
    put(out, localSize, 4);
    put(out, entry.name.size(), 2);
    put(out, extra.size(), 2);
    put(out, entry.name);
    out.insert(out.end(), extra.begin(), extra.end());
    out.insert(out.end(), entry.data.begin(), entry.data.end());
    if (options.dataDescriptor) {
      put(out, 0x08074b50, 4);
      put(out, crc, 4);
      put(out, size, options.zip64 ? 8 : 4);
      put(out, size, options.zip64 ? 8 : 4);
    }

    Bytes centralExtra;
    if (options.zip64) {
      put(centralExtra, 1, 2);
      put(centralExtra, 24, 2);
      put(centralExtra, size, 8);
      put(centralExtra, size, 8);
      put(centralExtra, offset, 8);
    }
    put(directory, 0x02014b50, 4);
    put(directory, version, 2);
    put(directory, version, 2);
    put(directory, flags, 2);
    put(directory, entry.method, 2);
    put(directory, 0, 4);
    put(directory, crc, 4);
    put(directory, options.zip64 ? kSaturated : size, 4);
    put(directory, options.zip64 ? kSaturated : size, 4);
    put(directory, entry.name.size(), 2);
    put(directory, centralExtra.size(), 2);
    put(directory, 0, 2);  // comment
    put(directory, 0, 2);  // disk
    put(directory, 0, 2);  // internal attributes
    put(directory, 0, 4);  // external attributes
    put(directory, options.zip64 ? kSaturated : offset, 4);
    put(directory, entry.name);
    directory.insert(directory.end(), centralExtra.begin(), centralExtra.end());
  }
  const std::uint64_t directoryOffset = out.size();
  out.insert(out.end(), directory.begin(), directory.end());
  if (options.zip64) {
    const std::uint64_t recordOffset = out.size();
    put(out, 0x06064b50, 4);
    put(out, 44, 8);
    put(out, 45, 2);
    put(out, 45, 2);
    put(out, 0, 4);
    put(out, 0, 4);
    put(out, entries.size(), 8);
    put(out, entries.size(), 8);
    put(out, directory.size(), 8);
    put(out, directoryOffset, 8);
    put(out, 0x07064b50, 4);
    put(out, 0, 4);
    put(out, recordOffset, 8);
    put(out, 1, 4);
  }
  put(out, 0x06054b50, 4);
  put(out, 0, 4);  // disks
  put(out, options.zip64 ? 0xFFFF : entries.size(), 2);
  put(out, options.zip64 ? 0xFFFF : entries.size(), 2);
  put(out, options.zip64 ? kSaturated : directory.size(), 4);
  put(out, options.zip64 ? kSaturated : directoryOffset, 4);
  put(out, options.comment.size(), 2);
  put(out, options.comment);
  return out;
}

/// Pickle opcodes, appended one call at a time. With `memo`, as Python's pickler: strings and
/// globals are stored in the memo (BINPUT) and repeated by BINGET, and memoize() stores others.
class Pickle {
 public:
  explicit Pickle(bool memo = false) : memo_(memo) {}

  Pickle& op(unsigned char code) {
    bytes_.push_back(code);
    return *this;
  }
  Pickle& proto(int version = 2) { return op(0x80).raw(static_cast<std::uint64_t>(version), 1); }
  Pickle& mark() { return op('('); }
  Pickle& stop() { return op('.'); }
  Pickle& string(const std::string& text) {
    if (recall("X" + text)) return *this;
    op('X').raw(text.size(), 4);
    put(bytes_, text);
    return remember("X" + text);
  }
  /// The shortest of BININT1, BININT2, BININT and LONG1, as Python's pickler chooses.
  Pickle& integer(std::int64_t value) {
    if (value >= 0 && value < 256) return op('K').raw(static_cast<std::uint64_t>(value), 1);
    if (value >= 0 && value < 65536) return op('M').raw(static_cast<std::uint64_t>(value), 2);
    if (value >= INT32_MIN && value <= INT32_MAX) {
      return op('J').raw(static_cast<std::uint32_t>(value), 4);
    }
    return op(0x8A).raw(8, 1).raw(static_cast<std::uint64_t>(value), 8);
  }
  Pickle& boolean(bool value) { return op(value ? 0x88 : 0x89); }
  Pickle& global(const std::string& module, const std::string& name) {
    if (recall("c" + module + "\n" + name)) return *this;
    op('c');
    put(bytes_, module + "\n" + name + "\n");
    return remember("c" + module + "\n" + name);
  }
  /// BINPUT of the value on top (with memo only): what Python does after tuples and REDUCE.
  Pickle& memoize() {
    if (!memo_) return *this;
    if (next_ < 256) return op('q').raw(next_++, 1);  // BINPUT
    return op('r').raw(next_++, 4);                   // LONG_BINPUT
  }
  Pickle& tuple(const std::vector<std::int64_t>& values) {
    if (values.empty()) return op(')');
    if (values.size() > 3) mark();
    for (std::int64_t value : values) integer(value);
    return op(values.size() > 3 ? 't' : static_cast<unsigned char>(0x84 + values.size()));
  }
  Pickle& raw(std::uint64_t value, int bytes) {
    put(bytes_, value, bytes);
    return *this;
  }
  Pickle& append(const Bytes& more) {
    bytes_.insert(bytes_.end(), more.begin(), more.end());
    return *this;
  }
  const Bytes& bytes() const { return bytes_; }

 private:
  /// BINGET of `key` if it was memoized (with memo only).
  bool recall(const std::string& key) {
    if (!memo_) return false;
    for (const auto& [known, index] : memoized_) {
      if (known == key) {
        if (index < 256)
          op('h').raw(index, 1);  // BINGET
        else
          op('j').raw(index, 4);  // LONG_BINGET
        return true;
      }
    }
    return false;
  }
  Pickle& remember(const std::string& key) {
    if (memo_) memoized_.emplace_back(key, next_);
    return memoize();
  }

  Bytes bytes_;
  bool memo_;
  std::uint64_t next_ = 0;
  std::vector<std::pair<std::string, std::uint64_t>> memoized_;
};

/// One tensor of a state dict, as _rebuild_tensor_v2 is called for it.
struct Tensor {
  std::string name;
  std::string storageType = "FloatStorage";
  std::string key = "0";
  std::int64_t storageNumel = 0;
  std::int64_t offset = 0;
  std::vector<std::int64_t> size, stride;
};

/// The contiguous row-major strides of `size` (wrapping around for sizes too large for them).
inline std::vector<std::int64_t> contiguous(const std::vector<std::int64_t>& size) {
  std::vector<std::int64_t> stride(size.size());
  std::uint64_t running = 1;
  for (std::size_t axis = size.size(); axis-- > 0;) {
    stride[axis] = static_cast<std::int64_t>(running);
    running *= static_cast<std::uint64_t>(size[axis]);
  }
  return stride;
}

/// `tensor`'s value: _rebuild_tensor_v2 called on its persistent id, as torch pickles it.
inline void pickleTensor(Pickle& p, const Tensor& tensor) {
  p.global("torch._utils", "_rebuild_tensor_v2").mark();
  p.mark().string("storage").global("torch", tensor.storageType).string(tensor.key);
  p.string("cpu").integer(tensor.storageNumel).op('t').memoize().op('Q');
  p.integer(tensor.offset).tuple(tensor.size).memoize().tuple(tensor.stride).memoize();
  p.boolean(false).global("collections", "OrderedDict").op(')').op('R').memoize();
  p.op('t').memoize().op('R').memoize();
}

/// A pickle of OrderedDict(name -> tensor): torch.save's opcodes, with or without the memo.
inline Bytes stateDict(const std::vector<Tensor>& tensors, bool memo = false) {
  Pickle p(memo);
  p.proto().global("collections", "OrderedDict").op(')').op('R').memoize().mark();
  for (const Tensor& tensor : tensors) {
    p.string(tensor.name);
    pickleTensor(p, tensor);
  }
  return p.op('u').stop().bytes();
}

/// A storage's bytes: `numel` little-endian float32 values 0, 1, 2, ...
inline Bytes floatStorage(std::int64_t numel) {
  Bytes bytes;
  for (std::int64_t i = 0; i < numel; ++i) {
    float value = static_cast<float>(i);
    std::uint32_t bits;
    std::memcpy(&bits, &value, 4);
    put(bytes, bits, 4);
  }
  return bytes;
}

/// torch.save's entries: `archive`/data.pkl, `archive`/data/<key> for each storage, version.
inline std::vector<Entry> archiveEntries(const Bytes& pickle,
                                         const std::vector<std::pair<std::string, Bytes>>& storages,
                                         const std::string& archive = "archive") {
  std::vector<Entry> entries{{archive + "/data.pkl", pickle}};
  for (const auto& [key, bytes] : storages) entries.push_back({archive + "/data/" + key, bytes});
  entries.push_back({archive + "/version", Bytes{'3', '\n'}});
  return entries;
}

}  // namespace retnet::pth_builder
