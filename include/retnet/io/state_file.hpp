// Saving and loading a model state, to pause a conversation and resume it later.
//
// Format (little-endian, no padding):
//   "RETNETST"                      8 bytes of magic
//   u32 version, u32 bytes per value (4 = float32, 8 = float64)
//   version 2 only: u32 block family (BlockConfig::kStateFamily; 1 = RWKV-4); version 1 is a
//       RetNet state (family 0), and RetNet states are still written as version 1
//   u64 vocab, layers, then the block's shape               the model it belongs to
//       (RetNet: embedDim, valueDim, heads, ffnDim; RWKV-4: embedDim, attDim, ffnDim;
//       BlockConfig::signature())
//   u64 batch, then batch x u64 positions
//   layers x (the layer state's values, data()/size())     RetNet: batch x heads x dk x dv of S;
//                                                          RWKV-4: batch x (2C + 3A)
//   u64 FNV-1a checksum of every byte before it
// Written once for every LanguageModel: a block family's state files differ only in the
// signature of its configuration and the values of its layer state.
// A file is refused (retnet::FormatError naming it) if it is not one, is damaged or truncated,
// or belongs to a model of another shape. Values are converted if the file's precision differs.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "retnet/model.hpp"

namespace retnet::io {

namespace state_file {

inline constexpr char kMagic[8] = {'R', 'E', 'T', 'N', 'E', 'T', 'S', 'T'};
inline constexpr std::uint32_t kVersion = 1;        ///< RetNet states (family 0)
inline constexpr std::uint32_t kFamilyVersion = 2;  ///< states of other block families

/// The version a state of block family `family` is written with, and its header's length up to
/// and including the block family.
inline std::uint32_t versionFor(std::uint32_t family) {
  return family == 0 ? kVersion : kFamilyVersion;
}
inline std::size_t headLength(std::uint32_t family) { return family == 0 ? 16 : 20; }

inline std::uint64_t fnv1a(const unsigned char* data, std::size_t size) {
  std::uint64_t hash = 0xCBF29CE484222325ull;
  for (std::size_t i = 0; i < size; ++i) hash = (hash ^ data[i]) * 0x100000001B3ull;
  return hash;
}

class Writer {
 public:
  template <typename UInt>
  void integer(UInt value) {
    for (std::size_t i = 0; i < sizeof(UInt); ++i)
      bytes.push_back(static_cast<unsigned char>(value >> (8 * i)));
  }
  template <typename Scalar>
  void value(Scalar v) {
    using Bits = std::conditional_t<sizeof(Scalar) == 8, std::uint64_t, std::uint32_t>;
    Bits bits;
    std::memcpy(&bits, &v, sizeof(bits));
    integer(bits);
  }
  std::vector<unsigned char> bytes;
};

class Reader {
 public:
  Reader(const std::vector<unsigned char>& bytes, std::string name)
      : bytes_(bytes), name_(std::move(name)) {}

  template <typename UInt>
  UInt integer(const char* what) {
    need(sizeof(UInt), what);
    UInt value = 0;
    for (std::size_t i = 0; i < sizeof(UInt); ++i)
      value |= static_cast<UInt>(static_cast<UInt>(bytes_[offset_ + i]) << (8 * i));
    offset_ += sizeof(UInt);
    return value;
  }
  template <typename Stored>
  Stored value() {
    using Bits = std::conditional_t<sizeof(Stored) == 8, std::uint64_t, std::uint32_t>;
    const Bits bits = integer<Bits>("state values");
    Stored v;
    std::memcpy(&v, &bits, sizeof(v));
    return v;
  }
  void need(std::size_t count, const char* what) const {
    if (count > bytes_.size() - offset_) {
      fail("truncated: ", what, " needs ", count, " more bytes at offset ", offset_,
           " but the file has ", bytes_.size(), " bytes");
    }
  }
  std::size_t offset() const { return offset_; }
  std::size_t remaining() const { return bytes_.size() - offset_; }

  template <typename... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    throw FormatError(retnet::detail::concat(name_, ": ", std::forward<Parts>(parts)...));
  }

 private:
  const std::vector<unsigned char>& bytes_;
  std::string name_;
  std::size_t offset_ = 0;
};

}  // namespace state_file

/// The model's shape as the state file records it: vocab, layers, then the block's signature.
template <typename BlockConfig>
std::vector<std::pair<const char*, Index>> modelSignature(
    const LanguageModelConfig<BlockConfig>& c) {
  std::vector<std::pair<const char*, Index>> signature{{"vocab", c.vocab}, {"layers", c.layers}};
  for (const auto& entry : c.block.signature()) signature.push_back(entry);
  return signature;
}

namespace state_file {

/// Reads the block family (after magic, version and value size) and the model signature, and
/// refuses a state of another model.
template <typename BlockConfig>
void readSignature(Reader& in, std::uint32_t version,
                   const LanguageModelConfig<BlockConfig>& config) {
  const std::uint32_t family = version == kVersion ? 0 : in.integer<std::uint32_t>("the family");
  if (family != BlockConfig::kStateFamily) {
    in.fail("the state belongs to a model of another family (number ", family,
            " in the file; this ", BlockConfig::kFamilyName, " model is ",
            BlockConfig::kStateFamily, ")");
  }
  for (const auto& [what, expected] : modelSignature(config)) {
    const auto got = in.integer<std::uint64_t>(what);
    if (got != static_cast<std::uint64_t>(expected)) {
      in.fail("the state belongs to another model: ", what, " is ", got, " in the file, ", expected,
              " in this model");
    }
  }
}

}  // namespace state_file

/// The bytes of a state file for `state`, which belongs to a model of shape `config`.
template <typename LayerState, typename BlockConfig>
std::vector<unsigned char> serializeState(const LanguageModelState<LayerState>& state,
                                          const LanguageModelConfig<BlockConfig>& config) {
  using Scalar = std::remove_const_t<std::remove_pointer_t<decltype(state.layers[0].data())>>;
  const char* where = "serializeState";
  retnet::detail::require(!state.empty(), where, "the state is empty: nothing to save");
  retnet::detail::requireEqual(where, "state layers (the model's)", config.layers,
                               static_cast<Index>(state.layers.size()));
  const auto& first = state.layers.front();
  for (const auto& layer : state.layers) {
    retnet::detail::require(
        layer.positions() == first.positions() && layer.batch() == first.batch(), where,
        "every layer of the state must be at the same positions");
  }
  state_file::Writer out;
  out.bytes.insert(out.bytes.end(), std::begin(state_file::kMagic), std::end(state_file::kMagic));
  const std::uint32_t family = BlockConfig::kStateFamily;
  out.integer(state_file::versionFor(family));
  out.integer(static_cast<std::uint32_t>(sizeof(Scalar)));
  if (family != 0) out.integer(family);
  for (const auto& entry : modelSignature(config))
    out.integer(static_cast<std::uint64_t>(entry.second));
  out.integer(static_cast<std::uint64_t>(first.batch()));
  for (const Index p : first.positions()) out.integer(static_cast<std::uint64_t>(p));
  for (const auto& layer : state.layers) {
    for (Index i = 0; i < layer.size(); ++i) out.value(layer.data()[i]);
  }
  out.integer(state_file::fnv1a(out.bytes.data(), out.bytes.size()));
  return std::move(out.bytes);
}

/// Parses a state file's bytes for a model of blocks `Block` and shape `config`; `name` is used
/// in messages.
template <typename Block>
LanguageModelState<typename Block::State> deserializeModelState(
    const std::vector<unsigned char>& bytes,
    const LanguageModelConfig<typename Block::Config>& config,
    const std::string& name = "<memory>") {
  using Scalar = typename Block::Scalar;
  state_file::Reader in(bytes, name);
  in.need(sizeof(state_file::kMagic), "the magic number");
  if (std::memcmp(bytes.data(), state_file::kMagic, sizeof(state_file::kMagic)) != 0) {
    in.fail("not a retnet state file (no RETNETST magic number)");
  }
  for (std::size_t i = 0; i < sizeof(state_file::kMagic); ++i)
    in.integer<std::uint8_t>("the magic number");
  const auto version = in.integer<std::uint32_t>("the version");
  if (version != state_file::kVersion && version != state_file::kFamilyVersion)
    in.fail("unsupported state file version ", version, " (this reader: 1 and 2)");
  const auto valueBytes = in.integer<std::uint32_t>("the value size");
  if (valueBytes != 4 && valueBytes != 8)
    in.fail("values must be 4 or 8 bytes, the file says ", valueBytes);
  // The checksum covers everything before the last 8 bytes: check it before trusting any size.
  if (bytes.size() < in.offset() + 8) in.fail("truncated: no room for the checksum");
  const std::size_t body = bytes.size() - 8;
  std::uint64_t stored = 0;
  for (std::size_t i = 0; i < 8; ++i)
    stored |= static_cast<std::uint64_t>(bytes[body + i]) << (8 * i);
  if (stored != state_file::fnv1a(bytes.data(), body))
    in.fail("checksum mismatch: the file is damaged or truncated");

  state_file::readSignature(in, version, config);
  const auto batch = in.integer<std::uint64_t>("the batch size");
  // Values per layer and batch item, from a one-item state of this model's blocks.
  const auto perItem = static_cast<std::uint64_t>(Block::makeState(config.block, 1).size());
  // Exact size check before any allocation: a hostile batch count cannot make us allocate.
  if (in.remaining() < 8) in.fail("truncated: no positions or values");
  const std::uint64_t payload = in.remaining() - 8;
  if (batch == 0 || batch > payload / 8 ||
      batch * 8 + batch * perItem * static_cast<std::uint64_t>(config.layers) * valueBytes !=
          payload) {
    in.fail("size mismatch: ", payload, " bytes of positions and values do not fit batch ", batch,
            ", ", config.layers, " layers of ", perItem, " values of ", valueBytes, " bytes");
  }
  std::vector<Index> positions;
  for (std::uint64_t b = 0; b < batch; ++b) {
    const auto p = in.integer<std::uint64_t>("positions");
    if (p > static_cast<std::uint64_t>(kMaxPosition))
      in.fail("position ", p, " is beyond 2^53, the furthest a sequence may reach");
    positions.push_back(static_cast<Index>(p));
  }
  LanguageModelState<typename Block::State> state;
  for (Index l = 0; l < config.layers; ++l) {
    auto layer = Block::makeState(config.block, static_cast<Index>(batch));
    for (Index i = 0; i < layer.size(); ++i) {
      layer.data()[i] = valueBytes == 8 ? static_cast<Scalar>(in.value<double>())
                                        : static_cast<Scalar>(in.value<float>());
    }
    for (std::uint64_t b = 0; b < batch; ++b)
      layer.setPosition(static_cast<Index>(b), positions[b]);
    state.layers.push_back(std::move(layer));
  }
  return state;
}

/// deserializeModelState for a RetNet model (torchscale blocks) of values Scalar.
template <typename Scalar>
RetNetModelState<Scalar> deserializeState(const std::vector<unsigned char>& bytes,
                                          const RetNetModelConfig& config,
                                          const std::string& name = "<memory>") {
  return deserializeModelState<RetNetBlock<Scalar>>(bytes, config, name);
}

template <typename LayerState, typename BlockConfig>
void saveState(const LanguageModelState<LayerState>& state,
               const LanguageModelConfig<BlockConfig>& config, const std::string& path) {
  const std::vector<unsigned char> bytes = serializeState(state, config);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  if (!out) throw FormatError(path + ": cannot write the state file");
}

/// Reads a state file for a model of blocks `Block` and shape `config`, never more bytes than a
/// state of that model with the batch size its header gives takes: a stream that does not end
/// (/dev/zero, a wrong path to a huge file) is refused once it exceeds that size.
template <typename Block>
LanguageModelState<typename Block::State> loadModelState(
    const std::string& path, const LanguageModelConfig<typename Block::Config>& config) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FormatError(path + ": cannot open the state file");
  std::vector<unsigned char> bytes;
  const auto readUpTo = [&](std::uint64_t total) {  // stops at the end of the stream
    std::array<char, 1 << 16> chunk;
    while (bytes.size() < total && in) {
      const auto want =
          static_cast<std::streamsize>(std::min<std::uint64_t>(chunk.size(), total - bytes.size()));
      in.read(chunk.data(), want);
      bytes.insert(bytes.end(), chunk.data(), chunk.data() + in.gcount());
    }
  };
  // The fixed part: magic, version, value size, signature, batch.
  const std::uint64_t header =
      state_file::headLength(Block::Config::kStateFamily) + 8 * (modelSignature(config).size() + 1);
  readUpTo(header);
  if (bytes.size() == header && std::memcmp(bytes.data(), state_file::kMagic, 8) == 0) {
    // A state of another model is said to be one before its length is compared with ours.
    state_file::Reader head(bytes, path);
    for (std::size_t i = 0; i < sizeof(state_file::kMagic); ++i)
      head.integer<std::uint8_t>("the magic number");
    const auto version = head.integer<std::uint32_t>("the version");
    const auto valueBytes = head.integer<std::uint32_t>("the value size");
    state_file::readSignature(head, version, config);
    const auto batch = head.integer<std::uint64_t>("the batch size");
    const auto perItem = static_cast<std::uint64_t>(Block::makeState(config.block, 1).size()) *
                         static_cast<std::uint64_t>(config.layers);
    // The size the header implies, computed only where it cannot overflow (the parser below
    // says what is wrong with any other header).
    const std::uint64_t limit = std::uint64_t(1) << 56;
    if (valueBytes <= 8 && batch >= 1 && batch < limit / (8 + perItem * valueBytes + 1)) {
      const std::uint64_t total = header + batch * (8 + perItem * valueBytes) + 8;
      readUpTo(total);
      if (bytes.size() == total && in.peek() != std::char_traits<char>::eof()) {
        throw FormatError(retnet::detail::concat(
            path, ": longer than the ", total, " bytes a state of ", batch,
            " sequences of this model takes (is it a state file of this model?)"));
      }
    }
  }
  return deserializeModelState<Block>(bytes, config, path);
}

template <typename Scalar>
RetNetModelState<Scalar> loadState(const std::string& path, const RetNetModelConfig& config) {
  return loadModelState<RetNetBlock<Scalar>>(path, config);
}

}  // namespace retnet::io
