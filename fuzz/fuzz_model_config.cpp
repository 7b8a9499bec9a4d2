// libFuzzer target for the config.json readers of Hugging Face model directories
// (include/retnet/io/json_file.hpp, fla_checkpoint.hpp, syncdoth_checkpoint.hpp, load_model.hpp).
//
// The input is a config.json text. It is parsed with JsonFile::parse and given to readFlaConfig
// and readSyncdothConfig; each may refuse it with retnet::FormatError or retnet::InvalidArgument.
// Anything else (another exception, a crash, a leak, undefined behaviour, a timeout, an
// allocation far beyond the input) is a finding. A configuration either reader accepts must
//   - pass RetNetModelConfig::validate() and have positive sizes and the family's semantics;
//   - when its model is small (kMaxParameters weights), build: RetNetModel<float> from random
//     weights of its shapes, whose forwardRecurrent over two tokens gives finite logits (for
//     eps >= 1e-12);
//   - and load: written as a model directory (the input as config.json, the same weights in
//     model.safetensors under the family's names, in the config's torch_dtype or a chosen one,
//     in one of FLA's layouts, with or without syncdoth's rel-pos buffers), inspectModel() must
//     describe the same family and configuration and loadModel<float>() must give a model whose
//     logits are bit for bit those of the model built directly.
// The weights, dtype and layout are drawn from a hash of the input, so every finding replays.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_common.hpp"
#include "retnet/errors.hpp"
#include "retnet/io/fla_checkpoint.hpp"
#include "retnet/io/json_file.hpp"
#include "retnet/io/load_model.hpp"
#include "retnet/io/syncdoth_checkpoint.hpp"

namespace {

using namespace retnet_fuzz;
using retnet::io::JsonFile;
using retnet::io::ModelFamily;

/// Models up to this many weights are built, run and loaded (the configs of tests/data have
/// about 1.6e5).
constexpr double kMaxParameters = 2.5e5;

[[noreturn]] void broken(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_model_config: invariant broken: %s: %s\n", what, detail.c_str());
  std::abort();
}

void check(bool condition, const char* what, const std::string& detail = "") {
  if (!condition) broken(what, detail);
}

/// This process's scratch directory, removed at exit.
const std::filesystem::path& scratch() {
  static const std::filesystem::path directory = [] {
    const std::filesystem::path made = makeScratchDirectory("fuzz_model_config");
    std::atexit([] {
      std::error_code error;
      std::filesystem::remove_all(scratch(), error);
    });
    return made;
  }();
  return directory;
}

/// What holds for every configuration a reader accepts.
void checkAccepted(const RetNetModelConfig& c, ModelFamily family) {
  try {
    c.validate("fuzz_model_config");
  } catch (const retnet::InvalidArgument& error) {
    broken("an accepted configuration fails validate()", error.what());
  }
  const auto& b = c.block;
  const auto r = b.retention();
  check(c.vocab >= 1 && c.layers >= 1 && b.embedDim >= 1 && b.valueDim >= 1 && b.heads >= 1 &&
            b.ffnDim >= 1,
        "sizes must be positive");
  check(r.keyDim() >= 2 && r.keyDim() % 2 == 0, "the key width must be even");
  check(r.heads % r.keyValueHeads() == 0 && r.heads * r.headValueDim() == b.valueDim,
        "head layout");
  check(std::isfinite(b.eps) && b.eps >= 0, "eps");
  check(std::isfinite(c.embedScale) && c.embedScale > 0, "embedScale");
  if (family == ModelFamily::kFla) {
    check(b.rotary == retnet::RotaryLayout::kHalfSplit &&
              b.normalization == retnet::RetentionNormalization::kNone &&
              b.scaleSide == retnet::ScaleSide::kQuery && c.embedScale == 1.0 && !c.embedNorm &&
              b.activation == retnet::Activation::kSwish && b.decays.empty(),
          "FLA semantics");
  } else {
    check(b.rotary == retnet::RotaryLayout::kInterleaved &&
              b.normalization == retnet::RetentionNormalization::kTorchscale &&
              b.scaleSide == retnet::ScaleSide::kKey && b.headKeyDim == 0 && b.kvHeads == 0,
          "syncdoth semantics");
    check(b.decays.empty() || static_cast<Index>(b.decays.size()) == b.heads, "decays");
  }
}

/// Builds the model of `c` from random weights, runs it, writes it as a model directory with
/// `text` as config.json, loads that and compares.
void buildAndLoad(const std::string& text, const JsonFile& json, ModelFamily family,
                  const RetNetModelConfig& c, const std::optional<Dtype>& dtype, Index chunkSize,
                  std::uint64_t seed) {
  if (parameterCount(c) > kMaxParameters) return;
  const bool fla = family == ModelFamily::kFla;
  Rng rng(seed);
  const retnet::RetNetModelWeights<float> weights = randomWeights<float>(c, fla, rng);
  retnet::TokenMatrix tokens(1, 2);
  tokens << 0, c.vocab - 1;
  retnet::Tensor3<float> logits;
  try {
    const retnet::RetNetModel<float> model(c, weights);
    logits = model.forwardRecurrent(tokens);
  } catch (const std::exception& error) {
    broken("building or running the model of an accepted configuration threw", error.what());
  }
  check(logits.dimension(0) == 1 && logits.dimension(1) == 2 && logits.dimension(2) == c.vocab,
        "logits shape");
  if (c.block.eps >= 1e-12) {
    for (Index i = 0; i < logits.size(); ++i)
      check(std::isfinite(logits.data()[i]), "logits must be finite");
  }

  // The same model as a Hugging Face directory.
  namespace fs = std::filesystem;
  const fs::path dir = scratch() / "model";
  std::error_code error;
  fs::remove_all(dir, error);
  fs::create_directories(dir);
  writeFile(dir / "config.json", text);
  const Dtype dtypes[3] = {Dtype::F32, Dtype::F16, Dtype::BF16};
  const Dtype stored = dtype ? *dtype : dtypes[(seed >> 8) % 3];
  SafetensorsWriter writer;
  if (fla) {
    addFlaWeights(writer, weights, stored, {((seed >> 12) & 1) != 0, ((seed >> 13) & 1) != 0});
  } else {
    addSyncdothWeights(writer, c, weights, stored, ((seed >> 14) & 1) != 0);
  }
  writer.write((dir / "model.safetensors").string());

  retnet::io::ModelInfo info;
  try {
    info = retnet::io::inspectModel(dir.string());
  } catch (const retnet::FormatError& e) {
    // The one check inspect adds to readFlaConfig's: model_type, when given, is "retnet".
    const nlohmann::json& root = json.root();
    if (fla && !json.isNull("model_type") && root.at("model_type") != "retnet") return;
    broken("inspectModel refused an accepted configuration", e.what());
  } catch (const std::exception& e) {
    broken("inspectModel threw", e.what());
  }
  check(info.family == family, "inspectModel: family", text);
  check(sameConfig(info.config, c), "inspectModel: configuration", text);
  check(info.dtype == dtype, "inspectModel: dtype", text);
  check(info.chunkSize == chunkSize, "inspectModel: chunk size", text);

  retnet::Tensor3<float> loadedLogits;
  try {
    const retnet::RetNetModel<float> loaded = retnet::io::loadModel<float>(dir.string());
    check(sameConfig(loaded.config(), c), "loadModel: configuration", text);
    loadedLogits = loaded.forwardRecurrent(tokens);
  } catch (const std::exception& e) {
    broken("loadModel of an accepted configuration and its weights threw", e.what());
  }
  check(loadedLogits.size() == logits.size() &&
            std::memcmp(loadedLogits.data(), logits.data(), sizeof(float) * logits.size()) == 0,
        "loadModel: logits differ from the model built from the same weights", text);
}

/// Keys and values the structure-aware mutator tries: every key either reader knows, one it
/// does not, and the values at and beyond the edges of what the readers accept.
JsonMutationSpace configSpace() {
  JsonMutationSpace space;
  space.keys = retnet::io::flaConfigKeys();
  for (const std::string& key : retnet::io::syncdothConfigKeys()) space.keys.push_back(key);
  space.keys.push_back("unknown_key");
  for (const double number : {0.0,          1.0,    2.0,
                              3.0,          4.0,    6.0,
                              8.0,          16.0,   64.0,
                              -1.0,         0.1,    0.5,
                              0.75,         1.5,    2.5,
                              1e-6,         1e-300, 1e300,
                              1e10,         9e15,   9007199254740993.0,
                              4294967296.0, 9.3e18, 1.8446744073709552e19})
    space.values.push_back(number);
  for (const std::int64_t number :
       {std::int64_t{2}, std::int64_t{9000000000000000}, std::int64_t{9000000000000001},
        std::int64_t{-9000000000000000}, std::numeric_limits<std::int64_t>::max()})
    space.values.push_back(number);
  space.values.push_back(std::numeric_limits<std::uint64_t>::max());
  for (const char* text :
       {"float32", "float16", "bfloat16", "float64", "swish", "silu", "gelu", "relu", "retnet",
        "chunk", "fused_chunk", "parallel", "fused_recurrent", "", "8"})
    space.values.push_back(text);
  for (const nlohmann::json& other :
       {nlohmann::json(true), nlohmann::json(false), nlohmann::json(nullptr),
        nlohmann::json::object(), nlohmann::json::array(), nlohmann::json::array({1, 2})})
    space.values.push_back(other);
  return space;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > retnet::io::kMaxConfigBytes) return 0;  // JsonFile::read refuses it unread
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::uint64_t seed = hashBytes(data, size);
  std::optional<JsonFile> json;
  try {
    json.emplace(JsonFile::parse(text, "config.json"));
  } catch (const retnet::FormatError&) {
    return 0;
  }
  // Only the readers may refuse; what follows an acceptance checks it, and aborts on a finding.
  std::optional<retnet::io::FlaConfig> fla;
  try {
    fla = retnet::io::readFlaConfig(*json);
  } catch (const retnet::FormatError&) {
  } catch (const retnet::InvalidArgument&) {
  }
  std::optional<retnet::io::SyncdothConfig> syncdoth;
  try {
    syncdoth = retnet::io::readSyncdothConfig(*json);
  } catch (const retnet::FormatError&) {
  } catch (const retnet::InvalidArgument&) {
  }
  if (fla) {
    checkAccepted(fla->model, ModelFamily::kFla);
    buildAndLoad(text, *json, ModelFamily::kFla, fla->model, fla->dtype, 0, seed);
  }
  if (syncdoth) {
    checkAccepted(syncdoth->model, ModelFamily::kSyncdoth);
    check(syncdoth->chunkSize >= 0, "chunkSize");
    buildAndLoad(text, *json, ModelFamily::kSyncdoth, syncdoth->model, syncdoth->dtype,
                 syncdoth->chunkSize, seed);
  }
  // FLA needs hidden_size, which syncdoth refuses as an unknown key.
  check(!(fla && syncdoth), "both readers accepted one config.json", text);
  return 0;
}

extern "C" std::size_t LLVMFuzzerMutate(std::uint8_t* data, std::size_t size, std::size_t maxSize);

/// Half the mutations edit the config as a JSON document (keys and values of configSpace()), the
/// other half libFuzzer's byte mutations (with fuzz/model_config.dict).
extern "C" std::size_t LLVMFuzzerCustomMutator(std::uint8_t* data, std::size_t size,
                                               std::size_t maxSize, unsigned int seed) {
  static const JsonMutationSpace space = configSpace();
  if (seed % 2 == 0) {
    const std::size_t mutated = mutateJson(data, size, maxSize, seed, space);
    if (mutated != 0) return mutated;
  }
  return LLVMFuzzerMutate(data, size, maxSize);
}
