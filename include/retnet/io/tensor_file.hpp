// What the readers of tensor files (safetensors_reader.hpp, pth_reader.hpp) share: the
// description of one stored tensor (TensorInfo), and TensorFile, the reading API over a file whose
// index a reader has parsed and validated.
//
// A reader fills the index (every tensor's dtype, shape and byte span, checked to lie inside the
// file) when it opens the file; TensorFile then reads a tensor on demand, from memory (a file
// given as bytes) or from the open stream in pieces of at most kReadPieceBytes, each converted to
// the caller's Scalar before the next is read, so the raw file is never held in memory. stored()
// gives a tensor's bytes as they are, in the file memory-mapped (weights used in place, see
// linear_weight_file.hpp). Errors are retnet::FormatError "<file>: tensor '<name>': <what was
// expected>, got <what was found>".
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
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <type_traits>
#include <unsupported/Eigen/CXX11/Tensor>
#include <utility>
#include <vector>

#include "retnet/errors.hpp"
#include "retnet/io/dtype.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define RETNET_HAVE_MMAP 1
#else
#define RETNET_HAVE_MMAP 0
#endif

namespace retnet::io {

/// One tensor of a file, as its index describes it.
struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F64;
  std::vector<Eigen::Index> shape;
  /// Byte offsets of the tensor's elements: into the data section (after the header) of a
  /// safetensors file, into the archive file of a .pth file.
  std::size_t begin = 0, end = 0;

  /// Number of elements (1 for a rank-0 tensor). Overflow-checked when the index was read.
  Eigen::Index numel() const {
    Eigen::Index count = 1;
    for (Eigen::Index extent : shape) count *= extent;
    return count;
  }
};

/// Tensors are read from disk in pieces of at most this many bytes, converted piece by piece.
inline constexpr std::size_t kReadPieceBytes = std::size_t(1) << 20;

/// A tensor's bytes as the file stores them (little-endian, row-major), at an address aligned to
/// its element size, valid while `owner` lives: in the mapped file itself (`mapped`), or a copy.
struct StoredTensor {
  const void* data = nullptr;
  std::shared_ptr<const void> owner;
  bool mapped = false;
};

/// A whole file mapped read-only into memory (POSIX mmap), unmapped when the last owner goes.
/// Its pages are the page cache's: mapping costs no memory until they are read, and they are
/// counted once however many weights point into them.
class FileMapping {
 public:
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;
  ~FileMapping() {
#if RETNET_HAVE_MMAP
    if (address_ != nullptr) ::munmap(address_, size_);
#endif
  }

  /// Which file a path named when it was opened (device and inode), to map that one only.
  struct Identity {
    bool known = false;
    std::uintmax_t device = 0, inode = 0;
  };
  static Identity identify(const std::string& path) {
    Identity identity;
#if RETNET_HAVE_MMAP
    struct stat status {};
    if (::stat(path.c_str(), &status) == 0) {
      identity = {true, static_cast<std::uintmax_t>(status.st_dev),
                  static_cast<std::uintmax_t>(status.st_ino)};
    }
#else
    (void)path;
#endif
    return identity;
  }

  /// `path` mapped, or null where the system cannot map it (no mmap, an error, or not the file
  /// `identity` and `size` describe: it was replaced or changed since its index was read).
  static std::shared_ptr<const FileMapping> map(const std::string& path, std::size_t size,
                                                const Identity& identity) {
#if RETNET_HAVE_MMAP
    if (size == 0 || !identity.known) return nullptr;
    // O_NONBLOCK: a path replaced by a FIFO fails the checks below instead of blocking here.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return nullptr;
    struct stat status {};
    void* address = nullptr;
    if (::fstat(fd, &status) == 0 && S_ISREG(status.st_mode) &&
        static_cast<std::uintmax_t>(status.st_size) == size &&
        static_cast<std::uintmax_t>(status.st_dev) == identity.device &&
        static_cast<std::uintmax_t>(status.st_ino) == identity.inode) {
      // Linux: the pages are mapped in one pass (a BF16 1.3B model: 0.5 s, against 4.6 s of
      // page faults one 4 KiB page at a time as the weights are first read).
#ifdef MAP_POPULATE
      const int flags = MAP_PRIVATE | MAP_POPULATE;
#else
      const int flags = MAP_PRIVATE;
#endif
      address = ::mmap(nullptr, size, PROT_READ, flags, fd, 0);
      if (address == MAP_FAILED) address = nullptr;
    }
    ::close(fd);  // the mapping keeps the file
    if (address == nullptr) return nullptr;
    return std::shared_ptr<const FileMapping>(new FileMapping(address, size));
#else
    (void)path;
    (void)size;
    (void)identity;
    return nullptr;
#endif
  }

  const unsigned char* data() const { return static_cast<const unsigned char*>(address_); }
  std::size_t size() const { return size_; }

 private:
  FileMapping(void* address, std::size_t size) : address_(address), size_(size) {}
  void* address_ = nullptr;
  std::size_t size_ = 0;
};

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

}  // namespace detail

/// The tensors of one file, read on demand. Made by a reader (SafetensorsFile, PthFile), which
/// fills the index; copies share the open stream.
class TensorFile {
 public:
  template <typename Scalar>
  using RowMajorMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  template <typename Scalar>
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  template <typename Scalar, int Rank>
  using RowMajorTensor = Eigen::Tensor<Scalar, Rank, Eigen::RowMajor>;

  /// The path given to open(), or the name given with the bytes: what messages call the file.
  const std::string& displayName() const { return displayName_; }

  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }

  /// The index entry of `name`; FormatError "<file>: no tensor 'name'" if there is none.
  const TensorInfo& info(const std::string& name) const {
    const auto found = tensors_.find(name);
    if (found == tensors_.end()) fail("no tensor '", name, "'");
    return found->second;
  }

  /// Tensor names in the file's order (the reader's class says which).
  const std::vector<std::string>& names() const { return names_; }

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

  /// From now on stored() copies instead of mapping the file (a mapping made before stays with the
  /// tensors that use it). For weights that must live in memory the process owns: the kernel can
  /// drop a mapped file's clean pages at any time (memory pressure, proactive reclaim) and read
  /// them from disk again at the next touch; pages the process owns stay where there is no swap.
  void neverMap() const {
    if (!stream_) return;
    const std::lock_guard<std::mutex> lock(stream_->mutex);
    stream_->mapTried = true;
    stream_->mapping.reset();
  }

  /// Tensor `name`'s bytes as stored (StoredTensor): in place in the file mapped read-only when
  /// `mapping` allows, the system can map it, the host is little-endian and the tensor's offset is
  /// a multiple of its element size; else a copy (an in-memory file's tensors are copied too).
  /// The file is mapped once, on the first call, and stays mapped while this file or any returned
  /// owner lives. A mapped file must not be changed or truncated while mapped (reading a page
  /// past a truncation is a SIGBUS); a file replaced at its path since it was opened is not mapped.
  StoredTensor stored(const std::string& name, bool mapping = true) const {
    const TensorInfo& tensor = info(name);
    const std::size_t size = dtypeSize(tensor.dtype), offset = dataStart_ + tensor.begin;
    if (mapping && stream_ && detail::hostIsLittleEndian() && offset % size == 0) {
      const std::lock_guard<std::mutex> lock(stream_->mutex);
      if (!stream_->mapTried) {
        stream_->mapTried = true;
        stream_->mapping = FileMapping::map(displayName_, fileSize_, stream_->identity);
      }
      if (stream_->mapping) {
        // The mapping's lifetime, the tensor's address (the aliasing constructor).
        const unsigned char* data = stream_->mapping->data() + offset;
        return {data, std::shared_ptr<const void>(stream_->mapping, data), true};
      }
    }
    // new[] aligns to alignof(max_align_t), enough for every dtype.
    auto copy =
        std::make_shared<std::vector<unsigned char>>(readRange(offset, tensor.end - tensor.begin));
    const unsigned char* data = copy->data();
    return {data, std::shared_ptr<const void>(std::move(copy), data), false};
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

 protected:
  // A base of the readers, never used alone: not destroyed, copied or moved as a TensorFile (so
  // no virtual destructor; WeightFiles's shared_ptr<const TensorFile> deletes the reader).
  ~TensorFile() = default;
  TensorFile(const TensorFile&) = default;
  TensorFile(TensorFile&&) = default;
  TensorFile& operator=(const TensorFile&) = default;
  TensorFile& operator=(TensorFile&&) = default;

  /// A file held in memory (`bytes` is all of it), or, once openStream() is called, the part of
  /// it the reader keeps (safetensors: the header).
  TensorFile(std::vector<unsigned char> bytes, std::string displayName)
      : bytes_(std::move(bytes)), fileSize_(bytes_.size()), displayName_(std::move(displayName)) {}

  /// The file at `path` opened for reading at offsets, and its size. `what` names the format in
  /// the message for a file that is not regular ("a safetensors file").
  static std::pair<std::ifstream, std::size_t> openRegularFile(const std::string& path,
                                                               const char* what) {
    // A directory opens fine as a stream on Linux; say what is wrong instead of reading nothing.
    std::error_code error;
    if (std::filesystem::is_directory(path, error)) {
      throw FormatError(retnet::detail::concat(path, ": is a directory, not a file"));
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) throw FormatError(retnet::detail::concat(path, ": cannot open file for reading"));
    // Tensors are read later at their offsets: that needs a file of a known size, not a stream.
    if (!std::filesystem::is_regular_file(path, error)) {
      throw FormatError(
          retnet::detail::concat(path, ": not a regular file (", what, " is read at its offsets)"));
    }
    const std::uintmax_t size = std::filesystem::file_size(path, error);
    if (error) {
      throw FormatError(retnet::detail::concat(path, ": cannot tell its size: ", error.message()));
    }
    if (size > std::numeric_limits<std::size_t>::max()) {
      throw FormatError(retnet::detail::concat(path, ": file of ", size, " bytes is too large"));
    }
    return {std::move(in), static_cast<std::size_t>(size)};
  }

  /// Reads tensors (and readRange()) from `in`, a file of `size` bytes, from now on.
  void openStream(std::ifstream in, std::size_t size) {
    stream_ = std::make_shared<OpenStream>();
    stream_->in = std::move(in);
    stream_->identity = FileMapping::identify(displayName_);
    fileSize_ = size;
  }

  /// Bytes [offset, offset + count) of the file; the caller has checked they lie inside it.
  std::vector<unsigned char> readRange(std::size_t offset, std::size_t count) const {
    std::vector<unsigned char> bytes(count);
    if (!stream_) {
      std::copy_n(bytes_.begin() + static_cast<std::ptrdiff_t>(offset), count, bytes.begin());
      return bytes;
    }
    const std::lock_guard<std::mutex> lock(stream_->mutex);
    std::ifstream& in = stream_->in;
    in.clear();
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(count));
    if (!in) {
      fail("read failed at byte ", offset, " (", count,
           " bytes; was the file changed or truncated after it was opened?)");
    }
    return bytes;
  }

  template <typename... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    throw FormatError(retnet::detail::concat(displayName_, ": ", std::forward<Parts>(parts)...));
  }

  template <typename... Parts>
  [[noreturn]] void failTensor(const std::string& name, Parts&&... parts) const {
    fail("tensor '", name, "': ", std::forward<Parts>(parts)...);
  }

  /// Adds `tensor` to the index, last in names(); the reader has checked its span.
  void addTensor(TensorInfo tensor) {
    names_.push_back(tensor.name);
    tensors_.emplace(tensor.name, std::move(tensor));
  }

  std::vector<unsigned char> bytes_;  ///< the whole file (from bytes), or what the reader keeps
  std::size_t fileSize_ = 0;          ///< bytes in the file
  std::size_t dataStart_ = 0;         ///< where TensorInfo's begin and end count from
  std::map<std::string, TensorInfo> tensors_;
  std::vector<std::string> names_;

 private:
  const TensorInfo& requireRank(const std::string& name, int rank) const {
    const TensorInfo& tensor = info(name);
    if (tensor.shape.size() != static_cast<std::size_t>(rank)) {
      failTensor(name, "expected rank ", rank, ", got rank ", tensor.shape.size(), " (shape ",
                 detail::shapeString(tensor.shape), ")");
    }
    return tensor;
  }

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
    // The stream opened by open(): the file read is the file whose index was checked (even if
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
      case Dtype::I8:
        return convert(source, count, stride, out, [](const unsigned char* element) {
          return static_cast<std::int8_t>(*element);
        });
    }
  }

  /// out[i] = load(source + i * stride) for `count` elements.
  template <typename Scalar, typename Load>
  static void convert(const unsigned char* source, std::size_t count, std::size_t stride,
                      Scalar* out, Load load) {
    for (std::size_t i = 0; i < count; ++i) out[i] = static_cast<Scalar>(load(source + i * stride));
  }

  std::string displayName_;
  struct OpenStream {
    std::ifstream in;
    std::mutex mutex;
    FileMapping::Identity identity;              // the file opened, as its path named it then
    bool mapTried = false;                       // stored() mapped the file, or failed to
    std::shared_ptr<const FileMapping> mapping;  // null: not mapped
  };
  std::shared_ptr<OpenStream> stream_;  ///< where tensors are read from; null: from bytes_
};

}  // namespace retnet::io
