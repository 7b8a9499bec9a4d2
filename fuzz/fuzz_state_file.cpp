// libFuzzer target for the state-file reader (include/retnet/io/state_file.hpp).
//
// The input is a state file's bytes. For each of two fixed small models (fuzz_common.hpp: one
// with torchscale's semantics, one with FLA's, GQA and dk != D/H, whose state files carry the
// longer signature) it is read with deserializeState<float> and, written to a file, with
// loadState<float>; then again with its last 8 bytes replaced by the right checksum, so the
// fuzzer gets past the checksum to the sizes and values behind it. Only retnet::FormatError may
// escape; anything else (another exception, a crash, a leak, undefined behaviour, an allocation
// far beyond the input) is a finding. A state that is accepted must
//   - be accepted alike, with the same values and positions, by both readers;
//   - have the model's layers, each of the model's state shape for the header's batch size, every
//     layer at the same positions;
//   - read as double the same values (converted);
//   - serialize back to the input exactly when its values are float32 (else to a file that reads
//     back to the same state);
//   - take a decoding step of the model from where it is, every position advancing by one; or,
//     when a sequence is at 2^53 (kMaxPosition, where a sequence ends), refuse that step with
//     retnet::InvalidArgument.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_common.hpp"
#include "retnet/errors.hpp"
#include "retnet/io/state_file.hpp"

namespace {

using namespace retnet_fuzz;
using retnet::RetNetModelState;
using retnet::io::deserializeState;

[[noreturn]] void broken(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_state_file: invariant broken: %s: %s\n", what, detail.c_str());
  std::abort();
}

void check(bool condition, const char* what, const std::string& detail = "") {
  if (!condition) broken(what, detail);
}

struct Case {
  const char* name;
  RetNetModelConfig config;
  std::unique_ptr<retnet::RetNetModel<float>> model;
};

struct Fixture {
  std::vector<Case> cases;
  std::filesystem::path dir;
};

const Fixture& fixture() {
  static const Fixture made = [] {
    Fixture f;
    Rng rng(7);
    for (const bool fla : {false, true}) {
      const RetNetModelConfig c = fla ? stateFlaConfig() : stateTorchscaleConfig();
      f.cases.push_back(
          {fla ? "fla" : "torchscale", c,
           std::make_unique<retnet::RetNetModel<float>>(c, randomWeights<float>(c, fla, rng))});
    }
    f.dir = makeScratchDirectory("fuzz_state_file");
    return f;
  }();
  static const bool cleanup = [] {
    std::atexit([] {
      std::error_code error;
      std::filesystem::remove_all(fixture().dir, error);
    });
    return true;
  }();
  (void)cleanup;
  return made;
}

std::uint64_t loadU64(const Bytes& bytes, std::size_t at) {
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < 8; ++i) value |= std::uint64_t{bytes[at + i]} << (8 * i);
  return value;
}

template <typename A, typename B>
bool sameValue(A a, B b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return a == b && std::signbit(a) == std::signbit(b);
}

/// Same positions and the same values, bit for bit.
bool sameState(const RetNetModelState<float>& a, const RetNetModelState<float>& b) {
  if (a.layers.size() != b.layers.size()) return false;
  for (std::size_t l = 0; l < a.layers.size(); ++l) {
    const auto& x = a.layers[l];
    const auto& y = b.layers[l];
    if (x.positions() != y.positions() || x.size() != y.size() ||
        std::memcmp(x.data(), y.data(), sizeof(float) * static_cast<std::size_t>(x.size())) != 0)
      return false;
  }
  return true;
}

/// deserializeState<float>, nullopt when refused with FormatError; anything else is a finding.
std::optional<RetNetModelState<float>> parse(const Bytes& bytes, const RetNetModelConfig& c) {
  try {
    return deserializeState<float>(bytes, c, "fuzz-input");
  } catch (const retnet::FormatError&) {
    return std::nullopt;
  } catch (const std::exception& error) {
    broken("deserializeState threw other than FormatError", error.what());
  }
}

void exercise(const Fixture& f, const Case& k, const Bytes& bytes) {
  const RetNetModelConfig& c = k.config;
  const std::optional<RetNetModelState<float>> state = parse(bytes, c);

  // The same through a file.
  const std::filesystem::path path = f.dir / "state.bin";
  writeFile(path, bytes);
  std::optional<RetNetModelState<float>> loaded;
  try {
    loaded = retnet::io::loadState<float>(path.string(), c);
  } catch (const retnet::FormatError&) {
  } catch (const std::exception& error) {
    broken("loadState threw other than FormatError", error.what());
  }
  check(state.has_value() == loaded.has_value(), "deserializeState and loadState disagree", k.name);
  if (!state) return;
  check(sameState(*state, *loaded), "deserializeState and loadState read different states", k.name);

  // Its shape: the header's batch, the model's layers and state shape.
  const std::size_t signature = retnet::io::modelSignature(c).size();
  const std::uint64_t batch = loadU64(bytes, 16 + 8 * signature);
  const std::uint32_t valueBytes = static_cast<std::uint32_t>(loadU64(bytes, 12));
  check(state->layers.size() == static_cast<std::size_t>(c.layers), "layer count", k.name);
  const auto zero = retnet::RetNetBlock<float>::makeState(c.block, static_cast<Index>(batch));
  for (const auto& layer : state->layers) {
    check(layer.batch() == zero.batch() && layer.heads() == zero.heads() &&
              layer.keyDim() == zero.keyDim() && layer.valueDim() == zero.valueDim(),
          "layer state shape", k.name);
    check(layer.positions() == state->layers.front().positions(), "layers at other positions",
          k.name);
  }

  // As double.
  RetNetModelState<double> asDouble;
  try {
    asDouble = deserializeState<double>(bytes, c, "fuzz-input");
  } catch (const std::exception& error) {
    broken("deserializeState<double> refused what deserializeState<float> accepted", error.what());
  }
  for (std::size_t l = 0; l < state->layers.size(); ++l) {
    const auto& x = state->layers[l];
    const auto& y = asDouble.layers[l];
    check(x.positions() == y.positions() && x.size() == y.size(), "double state shape", k.name);
    for (Index i = 0; i < x.size(); ++i)
      check(sameValue(x.data()[i], static_cast<float>(y.data()[i])), "double state values", k.name);
  }

  // Written back.
  Bytes again;
  try {
    again = retnet::io::serializeState(*state, c);
  } catch (const std::exception& error) {
    broken("serializeState refused an accepted state", error.what());
  }
  if (valueBytes == 4) check(again == bytes, "serializeState(read) != the input", k.name);
  const std::optional<RetNetModelState<float>> back = parse(again, c);
  check(back.has_value() && sameState(*back, *state), "serialized state reads back differently",
        k.name);

  // One decoding step from it. A sequence may end at 2^53, the furthest one may reach, and a
  // state saved there is valid; a step from it must then be refused with retnet's InvalidArgument.
  bool exhausted = false;
  for (const auto& layer : state->layers)
    for (Index b = 0; b < layer.batch(); ++b)
      exhausted = exhausted || layer.position(b) >= retnet::kMaxPosition;
  RetNetModelState<float> next = *state;
  const std::vector<std::int64_t> tokens(static_cast<std::size_t>(batch), 1);
  if (exhausted) {
    try {
      (void)k.model->decode(tokens, next);
    } catch (const retnet::InvalidArgument&) {
      return;
    } catch (const std::exception& error) {
      broken("decoding from a state at 2^53 threw something else than InvalidArgument",
             error.what());
    }
    broken("decoding from a state at 2^53 did not refuse", k.name);
  }
  try {
    (void)k.model->decode(tokens, next);
  } catch (const std::exception& error) {
    broken("decoding from an accepted state threw", error.what());
  }
  for (std::size_t l = 0; l < next.layers.size(); ++l) {
    for (Index b = 0; b < next.layers[l].batch(); ++b)
      check(next.layers[l].position(b) == state->layers[l].position(b) + 1,
            "decoding did not advance the position by one", k.name);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const Fixture& f = fixture();
  const Bytes bytes(data, data + size);
  // The input with a right checksum, so the fuzzer also reaches what the checksum guards.
  Bytes fixed = bytes;
  if (size >= 8) {
    const std::uint64_t sum = retnet::io::state_file::fnv1a(fixed.data(), size - 8);
    for (std::size_t i = 0; i < 8; ++i)
      fixed[size - 8 + i] = static_cast<unsigned char>(sum >> (8 * i));
  }
  for (const Case& k : f.cases) {
    exercise(f, k, bytes);
    if (fixed != bytes) exercise(f, k, fixed);
  }
  return 0;
}
