// RWKV-4 against its golden data (tests/data/rwkv4: BlinkDL's reference in float64, every file
// found at run time, every dimension read from it) and against the naive oracle
// (tests/reference/naive_rwkv4.hpp) on files of other shapes written here in the same format.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "reference/naive_rwkv4.hpp"
#include "retnet/io/load_model.hpp"
#include "retnet/io/safetensors.hpp"
#include "retnet/io/state_file.hpp"
#include "retnet/rwkv4.hpp"
#include "rwkv4_golden.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using namespace retnet;
using retnet::io::SafetensorsFile;
using retnet::reference::NaiveRwkv4Layer;
using retnet::reference::NaiveRwkv4Matrix;
using retnet::reference::NaiveRwkv4Model;
using retnet::testing::TempDir;

fs::path dataDir() { return fs::path(RETNET_TEST_DATA_DIR) / "rwkv4"; }

/// Every golden file of `kind` (metadata) under tests/data/rwkv4.
std::vector<std::string> goldenFiles(const std::string& kind) {
  std::vector<std::string> found;
  for (const auto& entry : fs::directory_iterator(dataDir())) {
    if (entry.path().extension() != ".safetensors") continue;
    const auto file = SafetensorsFile::open(entry.path().string());
    if (file.metadataValue("kind").value_or("") == kind) found.push_back(entry.path().string());
  }
  std::sort(found.begin(), found.end());
  return found;
}

template <typename Scalar>
class Rwkv4Golden : public ::testing::Test {};
TYPED_TEST_SUITE(Rwkv4Golden, retnet::testing::Scalars, retnet::testing::ScalarName);

TYPED_TEST(Rwkv4Golden, ModelFilesInEveryForm) {
  const auto files = goldenFiles("model");
  ASSERT_FALSE(files.empty()) << "no RWKV-4 model files in " << dataDir();
  for (const std::string& path : files) retnet::testing::checkRwkv4ModelFile<TypeParam>(path);
}

TYPED_TEST(Rwkv4Golden, WkvFilesInEveryForm) {
  const auto files = goldenFiles("wkv");
  ASSERT_FALSE(files.empty()) << "no RWKV-4 wkv files in " << dataDir();
  for (const std::string& path : files) retnet::testing::checkRwkv4WkvFile<TypeParam>(path);
}

// --- The naive oracle, read from and written to files of the golden format ---

NaiveRwkv4Matrix naiveMatrix(const SafetensorsFile& file, const std::string& name) {
  const auto& shape = file.info(name).shape;
  return {static_cast<long>(shape[0]), static_cast<long>(shape[1]), file.readFlat<double>(name)};
}

/// The naive model of a file with BlinkDL's names (every size from the shapes).
NaiveRwkv4Model naiveModelOf(const SafetensorsFile& file) {
  NaiveRwkv4Model m;
  m.embed = naiveMatrix(file, "emb.weight");
  m.head = naiveMatrix(file, "head.weight");
  m.ln0Weight = file.readFlat<double>("blocks.0.ln0.weight");
  m.ln0Bias = file.readFlat<double>("blocks.0.ln0.bias");
  m.lnOutWeight = file.readFlat<double>("ln_out.weight");
  m.lnOutBias = file.readFlat<double>("ln_out.bias");
  for (int l = 0; file.contains("blocks." + std::to_string(l) + ".att.time_decay"); ++l) {
    const std::string p = "blocks." + std::to_string(l) + ".";
    const auto flat = [&](const std::string& name) { return file.readFlat<double>(p + name); };
    NaiveRwkv4Layer layer;
    layer.ln1Weight = flat("ln1.weight");
    layer.ln1Bias = flat("ln1.bias");
    layer.ln2Weight = flat("ln2.weight");
    layer.ln2Bias = flat("ln2.bias");
    layer.timeDecay = flat("att.time_decay");
    layer.timeFirst = flat("att.time_first");
    layer.attMixK = flat("att.time_mix_k");
    layer.attMixV = flat("att.time_mix_v");
    layer.attMixR = flat("att.time_mix_r");
    layer.ffnMixK = flat("ffn.time_mix_k");
    layer.ffnMixR = flat("ffn.time_mix_r");
    layer.attKey = naiveMatrix(file, p + "att.key.weight");
    layer.attValue = naiveMatrix(file, p + "att.value.weight");
    layer.attReceptance = naiveMatrix(file, p + "att.receptance.weight");
    layer.attOutput = naiveMatrix(file, p + "att.output.weight");
    layer.ffnKey = naiveMatrix(file, p + "ffn.key.weight");
    layer.ffnReceptance = naiveMatrix(file, p + "ffn.receptance.weight");
    layer.ffnValue = naiveMatrix(file, p + "ffn.value.weight");
    m.layers.push_back(std::move(layer));
  }
  return m;
}

/// The shape of a synthetic case, and the ranges of its random values.
struct SyntheticCase {
  std::string name;
  int layers, C, F, V, T, B;
  double decayLow = -3, decayHigh = 1;  // time_decay uniform in [low, high]
  double keyScale = 0.3;                // std of att.key.weight's entries
  std::uint64_t seed = 1;
};

NaiveRwkv4Model randomNaiveModel(const SyntheticCase& c) {
  std::mt19937_64 rng(c.seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const auto vector = [&](int n, double mean, double std) {
    std::vector<double> v(static_cast<std::size_t>(n));
    for (double& x : v) x = mean + std * normal(rng);
    return v;
  };
  const auto uniform = [&](int n, double low, double high) {
    std::vector<double> v(static_cast<std::size_t>(n));
    for (double& x : v) x = low + (high - low) * unit(rng);
    return v;
  };
  const auto matrix = [&](int rows, int cols, double std) {
    return NaiveRwkv4Matrix{rows, cols, vector(rows * cols, 0.0, std)};
  };
  NaiveRwkv4Model m;
  m.embed = matrix(c.V, c.C, 1.0);
  m.ln0Weight = vector(c.C, 1.0, 0.1);
  m.ln0Bias = vector(c.C, 0.0, 0.1);
  for (int l = 0; l < c.layers; ++l) {
    NaiveRwkv4Layer p;
    p.ln1Weight = vector(c.C, 1.0, 0.1);
    p.ln1Bias = vector(c.C, 0.0, 0.1);
    p.ln2Weight = vector(c.C, 1.0, 0.1);
    p.ln2Bias = vector(c.C, 0.0, 0.1);
    p.timeDecay = uniform(c.C, c.decayLow, c.decayHigh);
    p.timeFirst = uniform(c.C, -3.0, 3.0);
    p.attMixK = uniform(c.C, 0.0, 1.0);
    p.attMixV = uniform(c.C, 0.0, 1.0);
    p.attMixR = uniform(c.C, 0.0, 1.0);
    p.ffnMixK = uniform(c.C, 0.0, 1.0);
    p.ffnMixR = uniform(c.C, 0.0, 1.0);
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.C));
    p.attKey = matrix(c.C, c.C, c.keyScale);
    p.attValue = matrix(c.C, c.C, scale);
    p.attReceptance = matrix(c.C, c.C, scale);
    p.attOutput = matrix(c.C, c.C, scale);
    p.ffnKey = matrix(c.F, c.C, scale);
    p.ffnReceptance = matrix(c.C, c.C, scale);
    p.ffnValue = matrix(c.C, c.F, 1.0 / std::sqrt(static_cast<double>(c.F)));
    m.layers.push_back(std::move(p));
  }
  m.lnOutWeight = vector(c.C, 1.0, 0.1);
  m.lnOutBias = vector(c.C, 0.0, 0.1);
  m.head = matrix(c.V, c.C, 1.0 / std::sqrt(static_cast<double>(c.C)));
  return m;
}

/// Writes `m` and its naive outputs on `tokens` (B x T) as a golden-format model file.
void writeNaiveModelFile(const std::string& path, const NaiveRwkv4Model& m, int B, int T,
                         const std::vector<std::int64_t>& tokens) {
  using retnet::io::Dtype;
  io::SafetensorsWriter out;
  const auto C = static_cast<Index>(m.embed.cols), V = static_cast<Index>(m.embed.rows);
  const auto L = static_cast<Index>(m.layers.size());
  const auto add = [&](const std::string& name, std::vector<Index> shape,
                       const std::vector<double>& values) {
    out.addTensor(name, Dtype::F64, std::move(shape), values.data());
  };
  const auto addMatrix = [&](const std::string& name, const NaiveRwkv4Matrix& matrix) {
    add(name, {matrix.rows, matrix.cols}, matrix.values);
  };
  out.addIntegers("tokens", {B, T}, tokens.data());
  addMatrix("emb.weight", m.embed);
  add("blocks.0.ln0.weight", {C}, m.ln0Weight);
  add("blocks.0.ln0.bias", {C}, m.ln0Bias);
  for (Index l = 0; l < L; ++l) {
    const NaiveRwkv4Layer& p = m.layers[static_cast<std::size_t>(l)];
    const std::string b = "blocks." + std::to_string(l) + ".";
    add(b + "ln1.weight", {C}, p.ln1Weight);
    add(b + "ln1.bias", {C}, p.ln1Bias);
    add(b + "ln2.weight", {C}, p.ln2Weight);
    add(b + "ln2.bias", {C}, p.ln2Bias);
    add(b + "att.time_decay", {C}, p.timeDecay);
    add(b + "att.time_first", {C}, p.timeFirst);
    add(b + "att.time_mix_k", {1, 1, C}, p.attMixK);
    add(b + "att.time_mix_v", {1, 1, C}, p.attMixV);
    add(b + "att.time_mix_r", {1, 1, C}, p.attMixR);
    addMatrix(b + "att.key.weight", p.attKey);
    addMatrix(b + "att.value.weight", p.attValue);
    addMatrix(b + "att.receptance.weight", p.attReceptance);
    addMatrix(b + "att.output.weight", p.attOutput);
    add(b + "ffn.time_mix_k", {1, 1, C}, p.ffnMixK);
    add(b + "ffn.time_mix_r", {1, 1, C}, p.ffnMixR);
    addMatrix(b + "ffn.key.weight", p.ffnKey);
    addMatrix(b + "ffn.receptance.weight", p.ffnReceptance);
    addMatrix(b + "ffn.value.weight", p.ffnValue);
  }
  add("ln_out.weight", {C}, m.lnOutWeight);
  add("ln_out.bias", {C}, m.lnOutBias);
  addMatrix("head.weight", m.head);
  std::vector<double> logits, state, wkvK, wkvV, wkvOut;
  for (int b = 0; b < B; ++b) {
    const std::vector<std::int64_t> row(tokens.begin() + b * T, tokens.begin() + (b + 1) * T);
    const auto result = retnet::reference::naiveRwkv4(m, row);
    for (const auto& r : result.logits) logits.insert(logits.end(), r.begin(), r.end());
    for (const auto& layer : result.state)
      for (const auto& slot : layer) state.insert(state.end(), slot.begin(), slot.end());
    if (b == 0) {
      for (int t = 0; t < T; ++t) {
        const std::size_t l = m.layers.size() - 1, i = static_cast<std::size_t>(t);
        wkvK.insert(wkvK.end(), result.keys[l][i].begin(), result.keys[l][i].end());
        wkvV.insert(wkvV.end(), result.values[l][i].begin(), result.values[l][i].end());
        wkvOut.insert(wkvOut.end(), result.wkv[l][i].begin(), result.wkv[l][i].end());
      }
    }
  }
  add("logits_recurrent", {B, T, V}, logits);
  add("logits_parallel", {B, T, V}, logits);
  add("state_final", {B, L, 5, C}, state);
  add("wkv_k", {T, C}, wkvK);
  add("wkv_v", {T, C}, wkvV);
  add("wkv_out", {T, C}, wkvOut);
  out.addMetadata("kind", "model");
  out.addMetadata("wkv_layer", std::to_string(L - 1));
  out.addMetadata("wkv_batch", "0");
  out.addMetadata("state_order", "ffn_xx,att_xx,aa,bb,pp");
  out.addMetadata("generator", "retnet tests/test_rwkv4.cpp: the naive oracle");
  out.write(path);
}

std::vector<std::int64_t> randomTokens(int count, int vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int64_t> pick(0, vocab - 1);
  std::vector<std::int64_t> tokens(static_cast<std::size_t>(count));
  for (auto& t : tokens) t = pick(rng);
  return tokens;
}

// The oracle against BlinkDL's golden outputs: logits, final states and the WKV intermediates.
TEST(Rwkv4Oracle, ReproducesTheGoldenModelFiles) {
  for (const std::string& path : goldenFiles("model")) {
    const auto file = SafetensorsFile::open(path);
    const NaiveRwkv4Model m = naiveModelOf(file);
    const auto& shape = file.info("tokens").shape;
    const Index B = shape[0], T = shape[1];
    const std::vector<std::int64_t> tokens = file.readIntegers("tokens");
    const std::vector<double> logits = file.readFlat<double>("logits_recurrent");
    const Index V = m.embed.rows;
    const Index wkvLayer = retnet::testing::metadataIndex(file, "wkv_layer");
    const Index wkvBatch = retnet::testing::metadataIndex(file, "wkv_batch");
    for (Index b = 0; b < B; ++b) {
      const auto result = retnet::reference::naiveRwkv4(
          m, std::vector<std::int64_t>(tokens.begin() + b * T, tokens.begin() + (b + 1) * T));
      std::vector<double> mine;
      for (const auto& r : result.logits) mine.insert(mine.end(), r.begin(), r.end());
      EXPECT_LE(retnet::testing::normwiseError(mine.data(), logits.data() + b * T * V, mine.size()),
                1e-12)
          << path << " batch " << b;
      if (b != wkvBatch) continue;
      for (const char* name : {"wkv_k", "wkv_v", "wkv_out"}) {
        const auto& rows = name[4] == 'k'   ? result.keys[static_cast<std::size_t>(wkvLayer)]
                           : name[4] == 'v' ? result.values[static_cast<std::size_t>(wkvLayer)]
                                            : result.wkv[static_cast<std::size_t>(wkvLayer)];
        std::vector<double> flat;
        for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
        const std::vector<double> golden = file.readFlat<double>(name);
        EXPECT_LE(retnet::testing::normwiseError(flat.data(), golden.data(), golden.size()), 1e-12)
            << path << " " << name;
      }
    }
  }
}

// Files of the golden format with the shapes the acceptance checks name, written from the oracle
// and checked exactly as the golden files are.
const std::vector<SyntheticCase>& syntheticCases() {
  static const std::vector<SyntheticCase> cases = {
      {"one_layer_t1_ffn_2c", 1, 16, 32, 20, 1, 1},
      {"three_layers_t200", 3, 16, 64, 30, 200, 1, -3, 1, 0.3, 2},
      {"batch3", 2, 16, 48, 40, 30, 3, -3, 1, 0.3, 3},
      // time_decay over [−8, 3] (w from −20 to −3.4e-4) and keys up to about ±50.
      {"t1000_extreme_decays", 1, 32, 64, 50, 1000, 1, -8, 3, 2.0, 4},
      {"c64_vocab100", 1, 64, 256, 100, 40, 1, -3, 1, 0.3, 5},
  };
  return cases;
}

class Rwkv4Synthetic : public ::testing::TestWithParam<SyntheticCase> {};

TEST_P(Rwkv4Synthetic, EveryFormMatchesTheOracle) {
  const SyntheticCase& c = GetParam();
  const TempDir dir("rwkv4-" + c.name);
  const std::string path = (dir.path() / (c.name + ".safetensors")).string();
  writeNaiveModelFile(path, randomNaiveModel(c), c.B, c.T, randomTokens(c.B * c.T, c.V, c.seed));
  retnet::testing::checkRwkv4ModelFile<double>(path);
  retnet::testing::checkRwkv4ModelFile<float>(path);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Rwkv4Synthetic, ::testing::ValuesIn(syntheticCases()),
                         [](const auto& info) { return info.param.name; });

// --- State in every direction ---

/// A random RWKV-4 model (the oracle's weights) loaded through a file, and its tokens.
struct LoadedCase {
  explicit LoadedCase(const SyntheticCase& c) : dir("rwkv4-" + c.name) {
    path = (dir.path() / "model.safetensors").string();
    tokens = randomTokens(c.B * c.T, c.V, c.seed);
    writeNaiveModelFile(path, randomNaiveModel(c), c.B, c.T, tokens);
    matrix = TokenMatrix(c.B, c.T);
    for (Index i = 0; i < matrix.size(); ++i)
      matrix.data()[i] = tokens[static_cast<std::size_t>(i)];
  }
  TempDir dir;
  std::string path;
  std::vector<std::int64_t> tokens;
  TokenMatrix matrix;
};

/// Columns [begin, begin + count) of the tokens.
TokenMatrix columns(const TokenMatrix& tokens, Index begin, Index count) {
  return tokens.middleCols(begin, count);
}

double stateDifference(const Rwkv4ModelState<double>& a, const Rwkv4ModelState<double>& b) {
  double worst = 0;
  for (std::size_t l = 0; l < a.layers.size(); ++l) {
    const auto& x = a.layers[l];
    const auto& y = b.layers[l];
    EXPECT_EQ(x.positions(), y.positions());
    worst = std::max(worst, (x.ffnShift() - y.ffnShift()).cwiseAbs().maxCoeff());
    worst = std::max(worst, (x.attShift() - y.attShift()).cwiseAbs().maxCoeff());
    // (aa, bb, pp) up to its scale freedom: aa/bb and pp + ln bb.
    worst = std::max(
        worst, (x.aa().cwiseQuotient(x.bb()) - y.aa().cwiseQuotient(y.bb())).cwiseAbs().maxCoeff());
    worst = std::max(
        worst, ((x.pp().array() + x.bb().array().log()) - (y.pp().array() + y.bb().array().log()))
                   .abs()
                   .maxCoeff());
  }
  return worst;
}

// A sequence split anywhere over any sequence of forms gives one pass's logits and final state.
TEST(Rwkv4State, HandsOverBetweenForms) {
  const LoadedCase c({"handoff", 2, 16, 40, 30, 29, 2, -6, 2, 1.0, 11});
  const auto model = io::loadModel<Rwkv4Model<double>>(c.path);
  Rwkv4ModelState<double> whole;
  const Tensor3<double> reference = model.forwardRecurrent(c.matrix, whole);

  Rwkv4ModelState<double> state;
  std::vector<Tensor3<double>> parts;
  parts.push_back(model.forwardRecurrent(columns(c.matrix, 0, 3), state));
  parts.push_back(model.forwardChunkwise(columns(c.matrix, 3, 9), 4, state));  // ragged chunks
  parts.push_back(model.forwardParallel(columns(c.matrix, 12, 6), state));
  parts.push_back(model.forwardChunkwise(columns(c.matrix, 18, 4), 16, state));  // chunk > T
  Tensor3<double> decoded(2, 7, model.config().vocab);
  RowMatrix<double> step;
  for (Index t = 0; t < 7; ++t) {
    model.decode({c.matrix(0, 22 + t), c.matrix(1, 22 + t)}, state, step);
    for (Index b = 0; b < 2; ++b)
      for (Index v = 0; v < step.cols(); ++v) decoded(b, t, v) = step(b, v);
  }
  parts.push_back(decoded);
  Index t0 = 0;
  double worst = 0;
  for (const auto& part : parts) {
    for (Index b = 0; b < 2; ++b)
      for (Index t = 0; t < part.dimension(1); ++t)
        for (Index v = 0; v < part.dimension(2); ++v)
          worst = std::max(worst, std::abs(part(b, t, v) - reference(b, t0 + t, v)));
    t0 += part.dimension(1);
  }
  EXPECT_EQ(t0, 29);
  EXPECT_LE(worst, 1e-12);
  EXPECT_LE(stateDifference(state, whole), 1e-12);
}

// Batch items at different positions: prefill, then each item continues on its own.
TEST(Rwkv4State, ItemsAndGeneration) {
  const LoadedCase c({"items", 1, 16, 32, 25, 12, 3, -4, 1, 1.0, 12});
  const auto model = io::loadModel<Rwkv4Model<double>>(c.path);
  Rwkv4ModelState<double> batch;
  model.forwardChunkwise(c.matrix, 5, batch);
  for (Index b = 0; b < 3; ++b) {
    Rwkv4ModelState<double> alone;
    model.forwardRecurrent(c.matrix.middleRows(b, 1), alone);
    EXPECT_LE(stateDifference(batch.item(b), alone), 1e-12);
  }
  GenerationOptions options;
  options.maxNewTokens = 6;
  // Greedy (the default sampling): the same tokens whatever else is in the batch.
  const auto together = model.generate({c.tokens, {1, 2, 3}}, options);
  const auto alone = model.generate({{1, 2, 3}}, options);
  ASSERT_EQ(together.size(), 2u);
  EXPECT_EQ(together[1], alone[0]);
  EXPECT_EQ(together[0].size(), 6u);
}

// State files record the family: an RWKV-4 state round-trips, and a RetNet model refuses it (and
// the other way round).
TEST(Rwkv4State, StateFilesRoundTripAndNameTheFamily) {
  const LoadedCase c({"state_file", 2, 16, 32, 25, 10, 2, -4, 1, 1.0, 13});
  const auto model = io::loadModel<Rwkv4Model<double>>(c.path);
  Rwkv4ModelState<double> state;
  model.forwardChunkwise(columns(c.matrix, 0, 6), 4, state);
  const std::string path = (c.dir.path() / "state.bin").string();
  io::saveState(state, model.config(), path);
  Rwkv4ModelState<double> loaded = io::loadModelState<Rwkv4Block<double>>(path, model.config());
  EXPECT_EQ(stateDifference(loaded, state), 0.0);
  const auto rest = columns(c.matrix, 6, 4);
  Rwkv4ModelState<double> a = state;
  const Tensor3<double> x = model.forwardRecurrent(rest, a),
                        y = model.forwardRecurrent(rest, loaded);
  EXPECT_EQ(retnet::testing::normwiseError(x, retnet::testing::toDoubles(y)), 0.0);

  const auto retnet = io::loadModel<double>(
      (fs::path(RETNET_TEST_DATA_DIR) / "decoder_small.safetensors").string());
  RETNET_EXPECT_THROW_WITH(io::loadModelState<RetNetBlock<double>>(path, retnet.config()),
                           FormatError, "another family", "RetNet");
  RetNetModelState<double> retnetState;
  TokenMatrix prompt(1, 3);
  prompt << 1, 2, 3;
  retnet.prefill(prompt, retnetState);
  const std::string retnetPath = (c.dir.path() / "retnet_state.bin").string();
  io::saveState(retnetState, retnet.config(), retnetPath);
  RETNET_EXPECT_THROW_WITH(io::loadModelState<Rwkv4Block<double>>(retnetPath, model.config()),
                           FormatError, "another family", "RWKV-4");
}

// Float32 decoding over 100 000 tokens with the slowest decays (time_decay = −8, w = −3.4e-4):
// finite throughout; its drift from double is printed and bounded.
TEST(Rwkv4State, LongFloatDecodingStaysFinite) {
  SyntheticCase spec{"long", 1, 16, 32, 20, 1, 1, -8, -8, 1.0, 14};
  const LoadedCase c(spec);
  const auto single = io::loadModel<Rwkv4Model<float>>(c.path);
  const auto exact = io::loadModel<Rwkv4Model<double>>(c.path);
  Rwkv4ModelState<float> fs;
  Rwkv4ModelState<double> ds;
  RowMatrix<float> fl;
  RowMatrix<double> dl;
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<std::int64_t> pick(0, spec.V - 1);
  double worst = 0;
  const Index steps = 100000;
  for (Index t = 0; t < steps; ++t) {
    const std::int64_t token = pick(rng);
    single.decode({token}, fs, fl);
    exact.decode({token}, ds, dl);
    ASSERT_TRUE(fl.allFinite()) << "step " << t;
    if (t % 1000 == 999) {
      const double scale = dl.cwiseAbs().maxCoeff();
      worst = std::max(worst, (fl.cast<double>() - dl).cwiseAbs().maxCoeff() / scale);
    }
  }
  std::printf(
      "float32 decoding, 100000 tokens, slowest decays: worst normwise drift from double "
      "%.2e\n",
      worst);
  // pp's float32 additions round to ~1% of w here (README §4); the weights of old tokens drift,
  // but the average they form moves by far less.
  EXPECT_LE(worst, 1e-3);
}

// --- Loading ---

/// The golden model's tensors under Hugging Face's names, with a config.json, in `dir`.
void writeHuggingFaceCopy(const std::string& golden, const fs::path& dir,
                          const std::string& extraConfig = "") {
  const auto file = SafetensorsFile::open(golden);
  io::SafetensorsWriter out;
  Index layers = 0;
  for (const std::string& name : file.names()) {
    if (name.rfind("emb.", 0) != 0 && name.rfind("blocks.", 0) != 0 &&
        name.rfind("ln_out.", 0) != 0 && name != "head.weight")
      continue;
    if (name.find(".att.time_decay") != std::string::npos) ++layers;
    const std::vector<double> values = file.readFlat<double>(name);
    out.addTensor(io::detail::rwkv4Name(io::Rwkv4Names::kHuggingFace, name), io::Dtype::F32,
                  file.info(name).shape, values.data());
  }
  out.write((dir / "model.safetensors").string());
  const auto& embed = file.info("emb.weight").shape;
  std::ofstream config(dir / "config.json");
  config << "{\"model_type\": \"rwkv\", \"architectures\": [\"RwkvForCausalLM\"], "
         << "\"vocab_size\": " << embed[0] << ", \"hidden_size\": " << embed[1]
         << ", \"num_hidden_layers\": " << layers << ", \"layer_norm_epsilon\": 1e-05"
         << extraConfig << "}";
}

TEST(Rwkv4Load, HuggingFaceNamesAndConfig) {
  for (const std::string& golden : goldenFiles("model")) {
    const TempDir dir("rwkv4-hf");
    writeHuggingFaceCopy(golden, dir.path());
    io::ModelInfo info;
    const auto any = io::loadModel<io::AnyModel<double>>(dir.path().string(), &info);
    EXPECT_EQ(info.family, io::ModelFamily::kRwkv4);
    EXPECT_EQ(info.rwkv4Names, io::Rwkv4Names::kHuggingFace);
    ASSERT_TRUE(std::holds_alternative<Rwkv4Model<double>>(any));
    const auto& model = std::get<Rwkv4Model<double>>(any);
    const auto file = SafetensorsFile::open(golden);
    const std::vector<std::int64_t> ids = file.readIntegers("tokens");
    const auto& shape = file.info("tokens").shape;
    TokenMatrix tokens(shape[0], shape[1]);
    for (Index i = 0; i < tokens.size(); ++i) tokens.data()[i] = ids[static_cast<std::size_t>(i)];
    // The weights were rounded to float32 (2^-24 relative) on the way.
    EXPECT_LE(retnet::testing::normwiseError(model.forwardChunkwise(tokens, 8),
                                             file.readFlat<double>("logits_recurrent")),
              1e-5);
    EXPECT_EQ(io::inspectModel(dir.path().string()).rwkv4.block.embedDim,
              model.config().block.embedDim);
  }
}

/// The golden model file with `name` added (a tensor of shape (C)).
std::string withExtraTensor(const fs::path& dir, const std::string& name) {
  const std::string golden = goldenFiles("model").front();
  const auto file = SafetensorsFile::open(golden);
  io::SafetensorsWriter out;
  for (const std::string& n : file.names()) {
    const std::vector<double> values = file.readFlat<double>(n);
    if (file.info(n).dtype == io::Dtype::I64) {
      out.addIntegers(n, file.info(n).shape, file.readIntegers(n).data());
    } else {
      out.addTensor(n, file.info(n).dtype, file.info(n).shape, values.data());
    }
  }
  const std::vector<double> values(static_cast<std::size_t>(file.info("ln_out.weight").shape[0]),
                                   0.5);
  out.addTensor(name, io::Dtype::F32, file.info("ln_out.weight").shape, values.data());
  const std::string path = (dir / "model.safetensors").string();
  out.write(path);
  return path;
}

TEST(Rwkv4Load, Refusals) {
  const std::string golden = goldenFiles("model").front();
  RETNET_EXPECT_THROW_WITH(io::loadModel<double>(golden), FormatError, "an RWKV-4 checkpoint",
                           "Rwkv4Model");
  const std::string retnet =
      (fs::path(RETNET_TEST_DATA_DIR) / "decoder_small.safetensors").string();
  RETNET_EXPECT_THROW_WITH(io::loadModel<Rwkv4Model<double>>(retnet), FormatError, "not an RWKV-4");
  {
    const TempDir dir("rwkv4-v5");
    RETNET_EXPECT_THROW_WITH(
        io::loadModel<Rwkv4Model<float>>(withExtraTensor(dir.path(), "blocks.0.att.time_faaaa")),
        FormatError, "blocks.0.att.time_faaaa", "RWKV-5/6");
  }
  {
    const TempDir dir("rwkv4-4a");
    RETNET_EXPECT_THROW_WITH(
        io::loadModel<Rwkv4Model<float>>(withExtraTensor(dir.path(), "blocks.1.tiny_ln.weight")),
        FormatError, "blocks.1.tiny_ln.weight", "RWKV-4a");
  }
  {
    const TempDir dir("rwkv4-ln0");
    RETNET_EXPECT_THROW_WITH(
        io::loadModel<Rwkv4Model<float>>(withExtraTensor(dir.path(), "blocks.1.ln0.weight")),
        FormatError, "blocks.1.ln0.weight", "not part of an RWKV-4 model");
  }
  {
    const TempDir dir("rwkv4-config");
    writeHuggingFaceCopy(golden, dir.path());
    std::ofstream(dir.path() / "config.json") << "{\"model_type\": \"rwkv\", \"hidden_size\": 33}";
    RETNET_EXPECT_THROW_WITH(io::loadModel<Rwkv4Model<float>>(dir.path().string()), FormatError,
                             "hidden_size", "33");
  }
  {
    const TempDir dir("rwkv4-tied");
    writeHuggingFaceCopy(golden, dir.path(), ", \"tie_word_embeddings\": true");
    RETNET_EXPECT_THROW_WITH(io::loadModel<Rwkv4Model<float>>(dir.path().string()), FormatError,
                             "tie_word_embeddings");
  }
}

}  // namespace
