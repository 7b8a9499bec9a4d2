// The naive double-precision oracles of the two checkpoint families beyond torchscale, against
// their golden data in tests/data (tests/data/README.md):
//   - tests/reference/naive_fla.hpp (FLA's RetNet, fla-hub checkpoints) against every case
//     directory under tests/data/fla: logits of the recurrent, parallel and chunkwise forms, every
//     layer's hidden state and final retention state, and state hand-overs between forms;
//   - tests/reference/naive_syncdoth.hpp (syncdoth's RetNetForCausalLM) against every case
//     directory under tests/data/syncdoth: logits of the parallel, recurrent and chunkwise forms
//     and of the parallel-prompt-then-recurrent path.
// Each case is read the way a loader reads a checkpoint (tests/family_checkpoints.hpp). Tolerance:
// 1e-9 normwise relative, form for form (the READMEs' float64 figure; exact re-implementations land
// at ~1e-14).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "family_checkpoints.hpp"
#include "reference/naive_fla.hpp"
#include "reference/naive_syncdoth.hpp"
#include "retnet/io/safetensors.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using retnet::io::SafetensorsFile;
using retnet::reference::NaiveFlaConfig;
using retnet::reference::NaiveFlaForm;
using retnet::reference::NaiveFlaMatrix;
using retnet::reference::NaiveFlaOutput;
using retnet::reference::NaiveFlaVector;
using retnet::reference::NaiveFlaWeights;
using retnet::reference::NaiveForm;
using retnet::reference::NaiveLayerWeights;
using retnet::reference::NaiveSyncdothWeights;
using retnet::testing::CheckpointTensors;
using retnet::testing::ErrorLog;
using retnet::testing::expectDtype;
using retnet::testing::flaConfig;
using retnet::testing::normwiseError;
using retnet::testing::readFlaWeights;
using retnet::testing::readJson;
using retnet::testing::readSyncdoth;
using retnet::testing::safetensorsDtype;
using retnet::testing::shapeOf;
using retnet::testing::SyncdothCheckpoint;
using retnet::testing::timeRange;

constexpr double kGoldenTolerance = 1e-9;

fs::path familyDir(const std::string& family) { return fs::path(RETNET_TEST_DATA_DIR) / family; }

/// The case directories of a family: every subdirectory of tests/data/<family> with a
/// config.json, sorted by name.
std::vector<std::string> caseNames(const std::string& family) {
  std::vector<std::string> names;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(familyDir(family), error)) {
    if (entry.is_directory() && fs::exists(entry.path() / "config.json")) {
      names.push_back(entry.path().filename().string());
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

/// A gtest parameter name for a case directory: its name with every other character as '_'.
std::string testName(const ::testing::TestParamInfo<std::string>& info) {
  std::string name = info.param;
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

std::string metadata(const SafetensorsFile& file, const std::string& key) {
  const std::optional<std::string> value = file.metadataValue(key);
  if (!value) throw std::runtime_error(file.displayName() + ": no metadata key " + key);
  return *value;
}
long metadataLong(const SafetensorsFile& file, const std::string& key) {
  return std::stol(metadata(file, key));
}
bool metadataBool(const SafetensorsFile& file, const std::string& key) {
  const std::string value = metadata(file, key);
  if (value != "True" && value != "False") throw std::runtime_error(key + " is not a boolean");
  return value == "True";
}

std::vector<long> readTokens(const SafetensorsFile& golden, long& batch, long& time) {
  const std::vector<long> shape = shapeOf(golden.info("tokens").shape);
  if (shape.size() != 2) throw std::runtime_error("tokens must be (B, T)");
  batch = shape[0];
  time = shape[1];
  const std::vector<std::int64_t> ids = golden.readIntegers("tokens");
  return std::vector<long>(ids.begin(), ids.end());
}

/// The error log of a golden case: each output against the golden tensor of the same name.
class GoldenErrors : public ErrorLog {
 public:
  using ErrorLog::ErrorLog;

  /// Compares y with the golden tensor `name` of shape `shape`, records the error under `kind`.
  void expect(const SafetensorsFile& golden, const std::string& name, const std::string& kind,
              const std::vector<long>& shape, const std::vector<double>& y,
              const std::string& what = "") {
    ASSERT_EQ(shapeOf(golden.info(name).shape), shape) << name;
    check(kind, name + " " + what, y, golden.readFlat<double>(name), kGoldenTolerance);
  }
};

// ---------------------------------------------------------------------------------------------
// FLA (tests/data/fla/README.md)

constexpr NaiveFlaForm kFlaForms[] = {NaiveFlaForm::kRecurrent, NaiveFlaForm::kParallel,
                                      NaiveFlaForm::kChunkwise};
const char* flaFormName(NaiveFlaForm form) {
  return form == NaiveFlaForm::kRecurrent  ? "recurrent"
         : form == NaiveFlaForm::kParallel ? "parallel"
                                           : "chunkwise";
}

/// Two segments' logits (B·T1, V) and (B·T2, V) as one (B, T1+T2, V) row-major tensor.
std::vector<double> joinSegments(const NaiveFlaMatrix& a, const NaiveFlaMatrix& b, long batch) {
  const long t1 = a.rows() / batch, t2 = b.rows() / batch;
  NaiveFlaMatrix joined(a.rows() + b.rows(), a.cols());
  for (long i = 0; i < batch; ++i) {
    joined.middleRows(i * (t1 + t2), t1) = a.middleRows(i * t1, t1);
    joined.middleRows(i * (t1 + t2) + t1, t2) = b.middleRows(i * t2, t2);
  }
  return retnet::reference::naiveFlaFlatten(joined);
}

class FlaGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(FlaGolden, OracleMatchesGoldenData) {
  const fs::path dir = familyDir("fla") / GetParam();
  const json config = readJson(dir / "config.json");
  const NaiveFlaConfig c = flaConfig(config);
  CheckpointTensors tensors(dir);
  expectDtype(tensors, config.at("torch_dtype").get<std::string>());
  const NaiveFlaWeights w = readFlaWeights(c, config, tensors);

  const SafetensorsFile golden = SafetensorsFile::open((dir / "golden.safetensors").string());
  long B = 0, T = 0;
  const std::vector<long> tokens = readTokens(golden, B, T);
  const long C = metadataLong(golden, "chunk_size");
  // The golden file's copy of the configuration against what was derived above.
  EXPECT_EQ(metadata(golden, "kind"), "fla_retnet");
  EXPECT_EQ(metadataLong(golden, "seq_len"), T);
  EXPECT_EQ(metadataLong(golden, "batch"), B);
  EXPECT_EQ(metadataLong(golden, "hidden_size"), c.hidden);
  EXPECT_EQ(metadataLong(golden, "num_hidden_layers"), c.layers);
  EXPECT_EQ(metadataLong(golden, "num_heads"), c.heads);
  EXPECT_EQ(metadataLong(golden, "num_kv_heads"), c.kvHeads);
  EXPECT_EQ(metadataLong(golden, "head_k_dim"), c.keyDim);
  EXPECT_EQ(metadataLong(golden, "head_v_dim"), c.valueDim);
  EXPECT_EQ(metadataLong(golden, "intermediate_size"), c.intermediate);
  EXPECT_EQ(metadataLong(golden, "vocab_size"), c.vocab);
  EXPECT_EQ(std::stod(metadata(golden, "norm_eps")), c.eps);
  EXPECT_EQ(metadataBool(golden, "tie_word_embeddings"), c.tied);
  EXPECT_EQ(metadata(golden, "weights_dtype"),
            safetensorsDtype(config.at("torch_dtype").get<std::string>()));
  EXPECT_EQ(metadata(golden, "mlp_layout"),
            tensors.contains("model.layers.0.mlp.up_proj.weight") ? "split" : "fused");
  EXPECT_TRUE(tensors.contains("model.layers.0." + metadata(golden, "head_norm_name")));

  const std::vector<long> logitsShape{B, T, c.vocab}, hiddenShape{B, T, c.hidden},
      stateShape{B, c.heads, c.keyDim, c.valueDim};
  GoldenErrors errors(GetParam());
  const auto expectOutput = [&](const NaiveFlaOutput& out, const std::string& form,
                                const std::string& what) {
    errors.expect(golden, "logits_" + form, "logits_" + form, logitsShape,
                  retnet::reference::naiveFlaFlatten(out.logits), what);
    for (long l = 0; l < c.layers; ++l) {
      const std::string suffix = "_" + std::to_string(l);
      errors.expect(golden, "hidden" + suffix, "hidden_l (every form)", hiddenShape,
                    retnet::reference::naiveFlaFlatten(out.hidden[std::size_t(l)]), what);
      errors.expect(golden, "state" + suffix, "state_l (every form)", stateShape,
                    retnet::reference::naiveFlaStateTensor(c, out.state, l), what);
    }
    EXPECT_EQ(out.state.position, T);
  };

  // Each form against its own logits, and every layer's hidden state and final state.
  for (const NaiveFlaForm form : kFlaForms) {
    SCOPED_TRACE(flaFormName(form));
    const NaiveFlaOutput out = retnet::reference::naiveFla(c, w, tokens, B, T, form, C);
    expectOutput(out, flaFormName(form), "");
    if (form == NaiveFlaForm::kParallel) {
      errors.expect(golden, "logits", "logits (= parallel)", logitsShape,
                    retnet::reference::naiveFlaFlatten(out.logits));
    }
  }
  // Other chunk sizes (1, one that leaves a last chunk of length 1 when it can, one above T):
  // the same function, the same final states (README §2.6: a short last chunk decays by γ^n).
  for (const long chunk : {1L, T > 2 ? T - 1 : 1L, T + 3}) {
    const NaiveFlaOutput out =
        retnet::reference::naiveFla(c, w, tokens, B, T, NaiveFlaForm::kChunkwise, chunk);
    expectOutput(out, "chunkwise", "chunk " + std::to_string(chunk));
  }
  // Hand-overs: a prefix in one form, the rest in another from the prefix's states at its
  // position, against the recurrent logits and the final states (README §2.6, continuing).
  if (T > 1) {
    const long P = T / 2;
    const std::vector<long> head = timeRange(tokens, B, T, 0, P),
                            tail = timeRange(tokens, B, T, P, T);
    const std::pair<NaiveFlaForm, NaiveFlaForm> handovers[] = {
        {NaiveFlaForm::kChunkwise, NaiveFlaForm::kRecurrent},
        {NaiveFlaForm::kRecurrent, NaiveFlaForm::kParallel},
        {NaiveFlaForm::kParallel, NaiveFlaForm::kChunkwise}};
    for (const auto& [first, second] : handovers) {
      const std::string what =
          std::string(flaFormName(first)) + " prefix then " + flaFormName(second);
      SCOPED_TRACE(what);
      const NaiveFlaOutput a = retnet::reference::naiveFla(c, w, head, B, P, first, C);
      ASSERT_EQ(a.state.position, P);
      const NaiveFlaOutput b =
          retnet::reference::naiveFla(c, w, tail, B, T - P, second, C, &a.state);
      errors.expect(golden, "logits_recurrent", "hand-over logits", logitsShape,
                    joinSegments(a.logits, b.logits, B), what);
      for (long l = 0; l < c.layers; ++l) {
        errors.expect(golden, "state_" + std::to_string(l), "hand-over state_l", stateShape,
                      retnet::reference::naiveFlaStateTensor(c, b.state, l), what);
      }
    }
  }
  errors.print();
}

INSTANTIATE_TEST_SUITE_P(Cases, FlaGolden, ::testing::ValuesIn(caseNames("fla")), testName);

// Grouped key/value heads and expand_k 0.5 are not in the shipped cases: the forms must agree on
// random weights there too (they compute the same function in FLA), with chunks of every kind.
TEST(FlaOracle, GroupedHeadsFormsAgree) {
  NaiveFlaConfig c;
  c.hidden = 32;
  c.layers = 2;
  c.heads = 4;
  c.kvHeads = 2;
  c.keyDim = 4;
  c.valueDim = 8;
  c.intermediate = 48;
  c.vocab = 23;
  c.eps = 1e-5;
  c.tied = true;
  using retnet::testing::randomValues;
  std::uint64_t seed = 1;
  const auto matrix = [&](long rows, long cols, double scale) {
    const std::vector<double> v = randomValues(std::size_t(rows * cols), seed++, scale);
    return NaiveFlaMatrix(Eigen::Map<const NaiveFlaMatrix>(v.data(), rows, cols));
  };
  const auto norm = [&](long size) { return NaiveFlaVector(matrix(size, 1, 0.2).array() + 1.0); };
  NaiveFlaWeights w;
  w.embedding = matrix(c.vocab, c.hidden, 0.5);
  w.finalNorm = norm(c.hidden);
  const double s = 1.0 / std::sqrt(double(c.hidden));
  for (long l = 0; l < c.layers; ++l) {
    retnet::reference::NaiveFlaLayerWeights layer;
    layer.attnNorm = norm(c.hidden);
    layer.q = matrix(c.heads * c.keyDim, c.hidden, 1.5 * s);
    layer.k = matrix(c.kvHeads * c.keyDim, c.hidden, 1.5 * s);
    layer.v = matrix(c.kvHeads * c.valueDim, c.hidden, s);
    layer.g = matrix(c.heads * c.valueDim, c.hidden, s);
    layer.o = matrix(c.hidden, c.heads * c.valueDim, 1.0 / std::sqrt(double(c.heads * c.valueDim)));
    layer.headNorm = norm(c.valueDim);
    layer.mlpNorm = norm(c.hidden);
    layer.gate = matrix(c.intermediate, c.hidden, s);
    layer.up = matrix(c.intermediate, c.hidden, s);
    layer.down = matrix(c.hidden, c.intermediate, 1.0 / std::sqrt(double(c.intermediate)));
    w.layers.push_back(layer);
  }
  const long B = 3, T = 29;
  std::vector<long> tokens;
  for (long i = 0; i < B * T; ++i) tokens.push_back((i * 7 + 3) % c.vocab);
  using retnet::reference::naiveFla;
  const NaiveFlaOutput ref = naiveFla(c, w, tokens, B, T, NaiveFlaForm::kRecurrent);
  const std::vector<double> refLogits = retnet::reference::naiveFlaFlatten(ref.logits);
  const std::pair<NaiveFlaForm, long> runs[] = {{NaiveFlaForm::kParallel, 0},
                                                {NaiveFlaForm::kChunkwise, 1},
                                                {NaiveFlaForm::kChunkwise, 4},
                                                {NaiveFlaForm::kChunkwise, 7},
                                                {NaiveFlaForm::kChunkwise, 64}};
  for (const auto& [form, chunk] : runs) {
    SCOPED_TRACE(std::string(flaFormName(form)) + " chunk " + std::to_string(chunk));
    const NaiveFlaOutput out = naiveFla(c, w, tokens, B, T, form, chunk);
    const std::vector<double> logits = retnet::reference::naiveFlaFlatten(out.logits);
    EXPECT_LE(normwiseError(logits.data(), refLogits.data(), refLogits.size()), 1e-13);
    for (long l = 0; l < c.layers; ++l) {
      const std::vector<double> state = retnet::reference::naiveFlaStateTensor(c, out.state, l);
      const std::vector<double> refState = retnet::reference::naiveFlaStateTensor(c, ref.state, l);
      EXPECT_LE(normwiseError(state.data(), refState.data(), refState.size()), 1e-13);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// syncdoth (tests/data/syncdoth/README.md)

class SyncdothGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(SyncdothGolden, OracleMatchesGoldenData) {
  const fs::path dir = familyDir("syncdoth") / GetParam();
  CheckpointTensors tensors(dir);
  const SyncdothCheckpoint sc = readSyncdoth(dir, tensors);
  expectDtype(tensors, sc.torchDtype);
  const NaiveSyncdothWeights& w = sc.w;

  const SafetensorsFile golden = SafetensorsFile::open((dir / "golden.safetensors").string());
  long B = 0, T = 0;
  const std::vector<long> tokens = readTokens(golden, B, T);
  const long k = metadataLong(golden, "k");
  const long H = w.layers.front().msr.heads;
  EXPECT_EQ(metadata(golden, "kind"), "syncdoth_retnet");
  EXPECT_EQ(metadataLong(golden, "seq_len"), T);
  EXPECT_EQ(metadataLong(golden, "batch"), B);
  EXPECT_EQ(metadataLong(golden, "chunk_size"), sc.chunk);
  EXPECT_EQ(metadataLong(golden, "padded_len_chunkwise"), (T + sc.chunk - 1) / sc.chunk * sc.chunk);
  EXPECT_EQ(metadataLong(golden, "embed_dim"), w.embedDim);
  EXPECT_EQ(metadataLong(golden, "value_dim"), w.layers.front().msr.valueDim);
  EXPECT_EQ(metadataLong(golden, "ffn_dim"), w.layers.front().ffnDim);
  EXPECT_EQ(metadataLong(golden, "layers"), static_cast<long>(w.layers.size()));
  EXPECT_EQ(metadataLong(golden, "heads"), H);
  EXPECT_EQ(metadataLong(golden, "vocab_size"), w.vocab);
  EXPECT_EQ(metadataBool(golden, "use_lm_decay"), w.useLmDecay);
  EXPECT_EQ(metadataBool(golden, "tie_word_embeddings"), w.tied);
  EXPECT_EQ(metadataBool(golden, "layernorm_embedding"), !w.embedNorm.empty());
  EXPECT_EQ(std::stod(metadata(golden, "layernorm_eps")), w.eps);
  EXPECT_NEAR(std::stod(metadata(golden, "embed_scale")), w.embedScale, 1e-14 * w.embedScale);
  const json gammas = json::parse(metadata(golden, "gammas"));
  const std::vector<double> ownGammas = retnet::reference::naiveSyncdothGammas(H, w.useLmDecay);
  ASSERT_EQ(gammas.size(), ownGammas.size());
  for (std::size_t h = 0; h < ownGammas.size(); ++h) {
    EXPECT_NEAR(gammas[h].get<double>(), ownGammas[h], 1e-15) << "head " << h;
  }

  const std::vector<long> shape{B, T, w.vocab};
  GoldenErrors errors(GetParam());
  using retnet::reference::naiveSyncdoth;
  errors.expect(golden, "logits_parallel", "logits_parallel", shape,
                naiveSyncdoth(w, tokens, B, T, NaiveForm::kParallel));
  errors.expect(golden, "logits_recurrent", "logits_recurrent", shape,
                naiveSyncdoth(w, tokens, B, T, NaiveForm::kRecurrent));
  if (golden.contains("logits_chunkwise")) {
    errors.expect(golden, "logits_chunkwise", "logits_chunkwise", shape,
                  naiveSyncdoth(w, tokens, B, T, NaiveForm::kChunkwise, sc.chunk));
  }
  errors.expect(golden, "logits_prefill_then_decode", "logits_prefill_then_decode", shape,
                retnet::reference::naiveSyncdothPrefillThenDecode(w, tokens, B, T, k));
  errors.print();
}

INSTANTIATE_TEST_SUITE_P(Cases, SyncdothGolden, ::testing::ValuesIn(caseNames("syncdoth")),
                         testName);

// The syncdoth oracle runs naive_msr.hpp's retention forms with its decay schedule as their
// argument, inside its own model (embedding, output matrix, layer loop, prompt state); under
// torchscale's schedule, with no embedding norm and an untied head, it must be naive_msr.hpp's
// RetNetDecoder to rounding. Then use_lm_decay: with the group-norm eps ~ 0 every form and the
// prompt hand-over divide out their own factors and agree (README §5: ≤ 1.1e-15).
TEST(SyncdothOracle, AgreesWithTorchscaleOracleAndAcrossForms) {
  const std::vector<std::string> cases = caseNames("syncdoth");
  ASSERT_FALSE(cases.empty());
  const fs::path dir = familyDir("syncdoth") / cases.front();
  CheckpointTensors tensors(dir);
  NaiveSyncdothWeights w = readSyncdoth(dir, tensors).w;
  const long B = 2, T = 21, C = 8, k = 9;
  std::vector<long> tokens;
  for (long i = 0; i < B * T; ++i) tokens.push_back((i * 5 + 1) % w.vocab);

  w.embedNorm.clear();
  w.useLmDecay = false;
  if (w.tied) {
    w.tied = false;
    w.lmHead = w.embed;
  }
  retnet::reference::NaiveDecoderWeights torchscale;
  torchscale.vocab = w.vocab;
  torchscale.embed = w.embed;
  torchscale.embedScale = w.embedScale;
  torchscale.finalNorm = w.finalNorm;
  torchscale.outputProjection = w.lmHead;
  torchscale.layers = w.layers;
  for (const NaiveForm form :
       {NaiveForm::kParallel, NaiveForm::kChunkwise, NaiveForm::kRecurrent}) {
    const std::vector<double> ours = retnet::reference::naiveSyncdoth(w, tokens, B, T, form, C);
    const std::vector<double> ref =
        retnet::reference::naiveDecoder(torchscale, tokens, B, T, form, C);
    EXPECT_LE(normwiseError(ours.data(), ref.data(), ref.size()), 1e-13);
  }

  w.useLmDecay = true;
  w.eps = 1e-300;
  for (NaiveLayerWeights& layer : w.layers) layer.msr.eps = w.eps;
  using retnet::reference::naiveSyncdoth;
  const std::vector<double> parallel = naiveSyncdoth(w, tokens, B, T, NaiveForm::kParallel);
  const std::vector<std::vector<double>> others = {
      naiveSyncdoth(w, tokens, B, T, NaiveForm::kChunkwise, C),
      naiveSyncdoth(w, tokens, B, T, NaiveForm::kRecurrent),
      retnet::reference::naiveSyncdothPrefillThenDecode(w, tokens, B, T, k)};
  for (const std::vector<double>& other : others) {
    EXPECT_LE(normwiseError(other.data(), parallel.data(), parallel.size()), 1e-12);
  }
}

TEST(FamilyOracles, CaseDirectoriesPresent) {
  EXPECT_FALSE(caseNames("fla").empty());
  EXPECT_FALSE(caseNames("syncdoth").empty());
}

}  // namespace
