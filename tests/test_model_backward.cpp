// The language model's backward (forwardTraining + backward / backwardCrossEntropy, parallel and
// chunkwise forms) against torchscale's autograd gradients of the whole decoder (tests/data/grad,
// shared/golden/grad's format: the decoder files), against central finite differences of the real
// forward (a tied head, an embedding scale and norm, T = 1), across forms and chunk sizes, and its
// refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "retnet/io/checkpoint.hpp"
#include "retnet/model.hpp"
#include "test_util.hpp"

namespace retnet {
namespace {

using testing::frobeniusError;
using testing::maxNormwise;
using testing::parseTrainedForm;
using testing::randomMatrix;
using testing::splitForms;

using Named = std::map<std::string, RowMatrix<double>>;

/// Every decoder gradient golden file in tests/data/grad (metadata kind = decoder).
std::vector<std::string> decoderGradFiles() {
  std::vector<std::string> files;
  const std::string dir = std::string(RETNET_TEST_DATA_DIR) + "/grad";
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".safetensors") continue;
    const auto file = io::SafetensorsFile::open(entry.path().string());
    if (file.metadataValue("kind").value_or("") == "decoder")
      files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

/// An I64 (batch, time) tensor of a golden file: `tokens` or `targets`.
TokenMatrix readTokens(const io::SafetensorsFile& file, const std::string& name) {
  const auto& shape = file.info(name).shape;
  EXPECT_EQ(shape.size(), 2u) << name;
  const std::vector<std::int64_t> ids = file.readIntegers(name);
  return TokenMatrix::Map(ids.data(), shape.at(0), shape.at(1));
}

/// A tensor as a (rows x cols) matrix: a vector (n) as (n x 1), (B, T, V) as (B·T x V).
RowMatrix<double> readMatrix(const io::SafetensorsFile& file, const std::string& name) {
  const auto& shape = file.info(name).shape;
  const Index cols = shape.size() <= 1 ? 1 : shape.back();
  const std::vector<double> values = file.readFlat<double>(name);
  const auto rows = static_cast<Index>(values.size()) / cols;
  return Eigen::Map<const RowMatrix<double>>(values.data(), rows, cols);
}

/// Gradients by checkpoint name as doubles, each in its tensor's shape (vectors as (n x 1)).
template <typename Gradients>
Named namedGradients(const Gradients& grads) {
  Named named;
  grads.forEach([&](const char* name, const auto& g) {
    named[name] = Eigen::Map<const RowMatrix<typename std::decay_t<decltype(g)>::Scalar>>(
                      g.data(), g.rows(), g.size() / std::max<Index>(g.rows(), 1))
                      .template cast<double>();
  });
  return named;
}

/// Logits (B, T, V) as (B·T x V).
template <typename Scalar>
Eigen::Map<const RowMatrix<Scalar>> rowsOf(const Tensor3<Scalar>& logits) {
  return {logits.data(), logits.dimension(0) * logits.dimension(1), logits.dimension(2)};
}

/// The mean cross-entropy of the model's real forward (forwardParallel / forwardChunkwise).
template <typename Scalar>
double forwardLoss(const RetNetModel<Scalar>& model, Form form, Index chunk,
                   const TokenMatrix& tokens, const TokenMatrix& targets) {
  const Tensor3<Scalar> logits = form == Form::kParallel ? model.forwardParallel(tokens)
                                                         : model.forwardChunkwise(tokens, chunk);
  return stages::crossEntropy<Scalar>(rowsOf(logits), targets.data());
}

// ---------------------------------------------------------------------------------------------
// Against torchscale's autograd (tests/data/grad): every decoder file, every stored trained form.
// Dimensions, eps, chunk size, forms, tokens and targets all come from the file.

template <typename Scalar>
void checkDecoderGradFile(const std::string& path) {
  constexpr bool isDouble = std::is_same_v<Scalar, double>;
  const auto file = io::SafetensorsFile::open(path);
  const auto model = io::loadRetNetModel<Scalar>(file);
  const TokenMatrix tokens = readTokens(file, "tokens");
  const TokenMatrix targets = readTokens(file, "targets");
  const Index chunk = std::stol(file.metadataValue("chunk_size").value_or("0"));
  int trained = 0;
  for (const std::string& formName : splitForms(file.metadataValue("grad_forms").value_or(""))) {
    Form form;
    if (!parseTrainedForm(formName, form)) continue;
    ++trained;
    const std::string label =
        file.displayName() + " " + formName + (isDouble ? " double" : " float");
    typename RetNetModel<Scalar>::TrainingCache cache;
    const RowMatrix<Scalar>& logits = model.forwardTraining(form, tokens, chunk, cache);
    typename RetNetModel<Scalar>::Gradients grads;  // empty: sized by the backward
    const double loss = model.backwardCrossEntropy(cache, targets, grads);

    // the forward and the loss (float: the forward goldens' tolerance, golden_check.hpp)
    const double tolerance = isDouble ? 1e-9 : 1e-4;
    const double logitsError = maxNormwise(logits, readMatrix(file, "logits_" + formName));
    EXPECT_LE(logitsError, tolerance) << label;
    const double lossRef = file.readFlat<double>("loss_" + formName).at(0);
    const double lossError = std::abs(loss - lossRef) / std::abs(lossRef);
    EXPECT_LE(lossError, tolerance) << label;

    // every stored gradient of the form, and no other
    const std::string prefix = "grad_" + formName + ".";
    Named refs;
    double largest = 0;
    for (const std::string& name : file.names()) {
      if (name.rfind(prefix, 0) != 0) continue;
      RowMatrix<double>& ref = refs[name.substr(prefix.size())];
      ref = readMatrix(file, name);
      largest = std::max(largest, ref.cwiseAbs().maxCoeff());
    }
    const auto [worst, worstName] =
        testing::checkGradients(label, namedGradients(grads), refs, isDouble, largest);
    std::printf("%s: logits %.2e, loss %.2e, worst gradient %.2e (%s)\n", label.c_str(),
                logitsError, lossError, worst, worstName.c_str());
  }
  EXPECT_GE(trained, 1) << file.displayName() << ": no parallel or chunkwise gradients stored";
}

TEST(ModelBackwardGolden, EveryDecoderGradFileInDouble) {
  const auto files = decoderGradFiles();
  EXPECT_GE(files.size(), 2u);
  for (const auto& path : files) checkDecoderGradFile<double>(path);
}

TEST(ModelBackwardGolden, EveryDecoderGradFileInFloat) {
  const auto files = decoderGradFiles();
  EXPECT_GE(files.size(), 2u);
  for (const auto& path : files) checkDecoderGradFile<float>(path);
}

// ---------------------------------------------------------------------------------------------
// Parallel against chunkwise where torchscale's forms agree (group-norm eps ≈ 0: the _eps0
// files), over chunk sizes: one row, ragged, beyond T.

struct TrainResult {
  RowMatrix<double> logits;
  double loss = 0;
  Named grads;
};

TrainResult train(const RetNetModel<double>& model, Form form, Index chunk,
                  const TokenMatrix& tokens, const TokenMatrix& targets) {
  RetNetModel<double>::TrainingCache cache;
  TrainResult result;
  result.logits = model.forwardTraining(form, tokens, chunk, cache);
  RetNetModel<double>::Gradients grads;
  result.loss = model.backwardCrossEntropy(cache, targets, grads);
  result.grads = namedGradients(grads);
  return result;
}

/// Every gradient of b within `tolerance` of a's (normwise and Frobenius); with `skipQueryKey`
/// not q_proj/k_proj's (at T = 1 with eps ≈ 0 they are rounding noise: grad README §3.5).
void expectSameGradients(const Named& a, const Named& b, double tolerance, const std::string& label,
                         bool skipQueryKey) {
  EXPECT_EQ(a.size(), b.size()) << label;
  for (const auto& [key, ref] : a) {
    const std::string& name = key;  // (a lambda cannot capture a structured binding in C++17)
    const auto endsWith = [&](const std::string& tail) {
      return name.size() >= tail.size() &&
             name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
    };
    if (skipQueryKey && (endsWith("q_proj.weight") || endsWith("k_proj.weight"))) continue;
    ASSERT_EQ(b.count(name), 1u) << label << " " << name;
    const double error = std::max(maxNormwise(b.at(name), ref), frobeniusError(b.at(name), ref));
    EXPECT_LE(error, tolerance) << label << " " << name;
  }
}

TEST(ModelBackwardForms, ParallelAndChunkwiseAgreeOnTheEpsZeroFiles) {
  int checked = 0;
  for (const auto& path : decoderGradFiles()) {
    const auto file = io::SafetensorsFile::open(path);
    if (std::stod(file.metadataValue("layernorm_eps").value_or("1")) > 1e-20) continue;
    const auto model = io::loadRetNetModel<double>(file);
    const TokenMatrix tokens = readTokens(file, "tokens");
    const TokenMatrix targets = readTokens(file, "targets");
    const Index time = tokens.cols();
    const TrainResult parallel = train(model, Form::kParallel, 0, tokens, targets);
    // one row per chunk, a ragged last chunk (unless T is a multiple of 5), one chunk beyond T
    for (const Index chunk : std::set<Index>{1, 5, time + 3}) {
      const TrainResult chunkwise = train(model, Form::kChunkwise, chunk, tokens, targets);
      const std::string label = file.displayName() + " chunk " + std::to_string(chunk);
      EXPECT_LE(maxNormwise(chunkwise.logits, parallel.logits), 1e-10) << label;
      EXPECT_LE(std::abs(chunkwise.loss - parallel.loss), 1e-10 * std::abs(parallel.loss)) << label;
      expectSameGradients(parallel.grads, chunkwise.grads, 1e-10, label, time == 1);
    }
    ++checked;
  }
  EXPECT_GE(checked, 1);
}

// ---------------------------------------------------------------------------------------------
// Tiny random models, their parameters as plain matrices by checkpoint name (to perturb entry by
// entry): torchscale's block (gelu GLU) or FLA's (SwiGLU, grouped key/value heads, a head-norm
// weight, no normalisers), a tied head, an embedding scale and norm.

struct PlainModel {
  RetNetModelConfig config;
  Named m;

  RetNetModel<double> build() const { return RetNetModel<double>(config, weights()); }

  RetNetModelWeights<double> weights() const {
    RetNetModelWeights<double> w;
    w.embed = m.at("embed_tokens.weight");
    if (config.embedNorm) w.embedNorm = m.at("layernorm_embedding.weight");
    for (Index l = 0; l < config.layers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      RetNetBlockWeights<double> b;
      b.retention.q = m.at(p + "retention.q_proj.weight");
      b.retention.k = m.at(p + "retention.k_proj.weight");
      b.retention.v = m.at(p + "retention.v_proj.weight");
      b.retention.g = m.at(p + "retention.g_proj.weight");
      b.retention.out = m.at(p + "retention.out_proj.weight");
      if (m.count(p + "retention.g_norm_swish_gate.weight") != 0)
        b.retention.headNorm = m.at(p + "retention.g_norm_swish_gate.weight");
      b.retentionNorm = m.at(p + "retention_layer_norm.weight");
      b.fc1 = m.at(p + "ffn.fc1.weight");
      b.gate = m.at(p + "ffn.gate.weight");
      b.fc2 = m.at(p + "ffn.fc2.weight");
      b.finalNorm = m.at(p + "final_layer_norm.weight");
      w.layers.push_back(std::move(b));
    }
    w.finalNorm = m.at("layer_norm.weight");
    if (!config.tiedEmbedding) w.outputProjection = m.at("output_projection.weight");
    return w;
  }
};

/// `fla`: FLA's block (no normalisers, so nothing is frozen), a tied head and the embedding scaled
/// by sqrt(D). Else torchscale's block with eps 1e-24 (the group norm cancels the detached
/// normalisers: the plain function's gradient is autograd's), an untied head, the embedding
/// scaled by 1.5 and normed, of width `width`.
PlainModel randomModel(bool fla, std::uint64_t seed, Index width = 8) {
  PlainModel p;
  RetNetBlockConfig& c = p.config.block;
  if (fla) {
    const MultiScaleRetentionConfig r = MultiScaleRetentionConfig::fla(8, 2, 1, 4, 4, 1e-6);
    c.embedDim = r.embedDim;
    c.valueDim = r.valueDim;
    c.heads = r.heads;
    c.headKeyDim = r.headKeyDim;
    c.kvHeads = r.kvHeads;
    c.rotary = r.rotary;
    c.normalization = r.normalization;
    c.scaleSide = r.scaleSide;
    c.activation = Activation::kSwish;
    c.ffnDim = 12;
    c.eps = 1e-6;
    p.config.tiedEmbedding = true;
    p.config.embedScale = std::sqrt(8.0);
  } else {
    c.embedDim = width;
    c.valueDim = 12;
    c.heads = 2;
    c.ffnDim = 10;
    c.eps = 1e-24;
    p.config.embedNorm = true;
    p.config.embedScale = 1.5;
  }
  p.config.vocab = 11;
  p.config.layers = 2;
  const MultiScaleRetentionConfig r = c.retention();
  const Index D = c.embedDim, V = c.valueDim, F = c.ffnDim, dk = r.keyDim(), dv = r.headValueDim();
  const Index kv = r.keyValueHeads(), vocab = p.config.vocab;
  const double sd = 1.0 / std::sqrt(double(D));
  std::uint64_t s = seed;
  const auto norm = [&]() {
    return RowMatrix<double>(RowMatrix<double>::Ones(D, 1) + randomMatrix<double>(D, 1, ++s, 0.3));
  };
  p.m["embed_tokens.weight"] = randomMatrix<double>(vocab, D, ++s, fla ? sd : 1.0);
  if (p.config.embedNorm) p.m["layernorm_embedding.weight"] = norm();
  for (Index l = 0; l < p.config.layers; ++l) {
    const std::string q = "layers." + std::to_string(l) + ".";
    p.m[q + "retention.q_proj.weight"] = randomMatrix<double>(r.heads * dk, D, ++s, sd);
    p.m[q + "retention.k_proj.weight"] = randomMatrix<double>(kv * dk, D, ++s, sd);
    p.m[q + "retention.v_proj.weight"] = randomMatrix<double>(kv * dv, D, ++s, sd);
    p.m[q + "retention.g_proj.weight"] = randomMatrix<double>(V, D, ++s, sd);
    p.m[q + "retention.out_proj.weight"] =
        randomMatrix<double>(D, V, ++s, 1.0 / std::sqrt(double(V)));
    if (fla)
      p.m[q + "retention.g_norm_swish_gate.weight"] =
          RowMatrix<double>::Ones(dv, 1) + randomMatrix<double>(dv, 1, ++s, 0.3);
    p.m[q + "retention_layer_norm.weight"] = norm();
    p.m[q + "ffn.fc1.weight"] = randomMatrix<double>(F, D, ++s, sd);
    p.m[q + "ffn.gate.weight"] = randomMatrix<double>(F, D, ++s, sd);
    p.m[q + "ffn.fc2.weight"] = randomMatrix<double>(D, F, ++s, 1.0 / std::sqrt(double(F)));
    p.m[q + "final_layer_norm.weight"] = norm();
  }
  p.m["layer_norm.weight"] = norm();
  if (!p.config.tiedEmbedding)
    p.m["output_projection.weight"] = randomMatrix<double>(vocab, D, ++s, sd);
  return p;
}

/// Random ids in [0, vocab) (batch, time); with `ignoreOne`, one of them is the ignore index.
TokenMatrix randomIds(Index batch, Index time, Index vocab, std::uint64_t seed, bool ignoreOne) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int64_t> id(0, vocab - 1);
  TokenMatrix ids(batch, time);
  for (Index i = 0; i < ids.size(); ++i) ids.data()[i] = id(rng);
  if (ignoreOne && ids.size() > 1) ids(batch - 1, 0) = stages::kIgnoreIndex;
  return ids;
}

// ---------------------------------------------------------------------------------------------
// Central finite differences of the mean cross-entropy through the real forward, on a few sampled
// entries of every parameter (three each; the embedding's in rows the tokens use).

void checkFiniteDifferences(bool fla, Index batch, Index time, Index chunk, std::uint64_t seed) {
  PlainModel plain = randomModel(fla, seed);
  const RetNetModel<double> model = plain.build();
  const Index vocab = plain.config.vocab, D = plain.config.block.embedDim;
  const TokenMatrix tokens = randomIds(batch, time, vocab, seed + 100, false);
  const TokenMatrix targets = randomIds(batch, time, vocab, seed + 200, true);
  const double h = 1e-5;
  for (const auto& [form, chunkSize] :
       {std::pair{Form::kParallel, Index(0)}, std::pair{Form::kChunkwise, chunk}}) {
    const std::string label = std::string(fla ? "fla, tied" : "torchscale, embedding norm") +
                              " T=" + std::to_string(time) + " " + formName(form);
    const TrainResult ours = train(model, form, chunkSize, tokens, targets);
    EXPECT_LE(std::abs(ours.loss - forwardLoss(model, form, chunkSize, tokens, targets)),
              1e-14 * std::abs(ours.loss))
        << label;
    EXPECT_EQ(ours.grads.size(), plain.m.size()) << label;
    double scale = 0;  // the largest gradient entry: FD noise is absolute
    for (const auto& entry : ours.grads)
      scale = std::max(scale, entry.second.cwiseAbs().maxCoeff());
    double worst = 0;
    std::string worstName;
    for (auto& [name, matrix] : plain.m) {
      ASSERT_EQ(ours.grads.count(name), 1u) << label << " " << name;
      const RowMatrix<double>& g = ours.grads.at(name);
      ASSERT_EQ(g.size(), matrix.size()) << label << " " << name;
      const Index n = matrix.size();
      std::vector<Index> entries = {Index(seed % std::uint64_t(n)), n / 2, n - 1};
      if (name == "embed_tokens.weight")
        entries = {tokens(0, 0) * D, tokens(batch - 1, time - 1) * D + D - 1,
                   tokens(0, time - 1) * D + D / 2};
      for (const Index i : entries) {
        double& e = matrix.data()[i];
        const double saved = e;
        e = saved + h;
        const double plus = forwardLoss(plain.build(), form, chunkSize, tokens, targets);
        e = saved - h;
        const double minus = forwardLoss(plain.build(), form, chunkSize, tokens, targets);
        e = saved;
        const double error = std::abs((plus - minus) / (2 * h) - g.data()[i]) / scale;
        EXPECT_LE(error, 1e-6) << label << " " << name << " entry " << i;
        if (error >= worst) {
          worst = error;
          worstName = name;
        }
      }
    }
    std::printf("FD %s: worst %.2e (%s), relative to the largest gradient %.2e\n", label.c_str(),
                worst, worstName.c_str(), scale);
  }
}

TEST(ModelBackwardFiniteDifferences, TiedHeadAndScaledEmbedding) {
  checkFiniteDifferences(true, 2, 5, 2, 300);  // chunk 2: a ragged last chunk
}

TEST(ModelBackwardFiniteDifferences, EmbeddingNormAndScale) {
  checkFiniteDifferences(false, 2, 5, 3, 400);
}

TEST(ModelBackwardFiniteDifferences, OnePosition) { checkFiniteDifferences(true, 3, 1, 1, 500); }

TEST(ModelBackwardForms, ParallelAndChunkwiseAgreeAtOnePosition) {
  for (const bool fla : {false, true}) {
    const RetNetModel<double> model = randomModel(fla, 510).build();
    const TokenMatrix tokens = randomIds(3, 1, model.config().vocab, 511, false);
    const TokenMatrix targets = randomIds(3, 1, model.config().vocab, 512, false);
    const TrainResult parallel = train(model, Form::kParallel, 0, tokens, targets);
    for (const Index chunk : {1, 4}) {
      const TrainResult chunkwise = train(model, Form::kChunkwise, chunk, tokens, targets);
      // torchscale's block here has eps 1e-24: its q/k gradients are rounding noise (§3.5)
      expectSameGradients(
          parallel.grads, chunkwise.grads, 1e-10,
          std::string(fla ? "fla" : "torchscale") + " T=1 chunk " + std::to_string(chunk), !fla);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The training forward is the forward, bit for bit.

template <typename Scalar>
void expectTrainingForwardIsTheForward(const RetNetModel<Scalar>& model, const TokenMatrix& tokens,
                                       const std::vector<Index>& chunks, const std::string& label) {
  typename RetNetModel<Scalar>::TrainingCache cache;  // reused across the calls
  {
    const Tensor3<Scalar> logits = model.forwardParallel(tokens);
    EXPECT_TRUE(rowsOf(logits) == model.forwardTraining(Form::kParallel, tokens, 0, cache))
        << label << " parallel";
  }
  for (const Index chunk : chunks) {
    const Tensor3<Scalar> logits = model.forwardChunkwise(tokens, chunk);
    EXPECT_TRUE(rowsOf(logits) == model.forwardTraining(Form::kChunkwise, tokens, chunk, cache))
        << label << " chunk " << chunk;
  }
}

TEST(ModelBackward, TrainingForwardIsTheForwardBitForBit) {
  const auto file = io::SafetensorsFile::open(decoderGradFiles().at(0));
  const TokenMatrix tokens = readTokens(file, "tokens");
  const Index chunk = std::stol(file.metadataValue("chunk_size").value_or("8"));
  expectTrainingForwardIsTheForward(io::loadRetNetModel<double>(file), tokens, {chunk, 5},
                                    file.displayName() + " double");
  expectTrainingForwardIsTheForward(io::loadRetNetModel<float>(file), tokens, {chunk},
                                    file.displayName() + " float");
  for (const bool fla : {false, true}) {
    const RetNetModel<double> model = randomModel(fla, 600).build();
    expectTrainingForwardIsTheForward(model, randomIds(2, 7, model.config().vocab, 601, false),
                                      {3, 7, 9}, fla ? "fla, tied" : "embedding norm");
  }
}

// Longer than a slab: the inference forward runs the chunkwise form in slabs of whole chunks
// (detail::kSlabPositions positions), forwardTraining in one. Chunk 7 leaves a ragged slab and a
// ragged last chunk. Double: the logits differ from the slabbed forward's only in the GEMMs'
// blocking over rows (rounding, ~1e-16 relative; bound 1e-12), and the forms' gradients agree as
// on the eps-0 files (eps 1e-24 and FLA's semantics: no normaliser differs; bound 1e-10).
TEST(ModelBackwardForms, LongerThanASlab) {
  const Index time = detail::kSlabPositions + 45, chunk = 7;
  for (const bool fla : {false, true}) {
    const RetNetModel<double> model = randomModel(fla, 650).build();
    const TokenMatrix tokens = randomIds(2, time, model.config().vocab, 651, false);
    const TokenMatrix targets = randomIds(2, time, model.config().vocab, 652, true);
    const std::string label = fla ? "fla" : "torchscale";
    const TrainResult parallel = train(model, Form::kParallel, 0, tokens, targets);
    const TrainResult chunkwise = train(model, Form::kChunkwise, chunk, tokens, targets);
    const Tensor3<double> slabbed = model.forwardChunkwise(tokens, chunk);
    EXPECT_LE(maxNormwise(chunkwise.logits, RowMatrix<double>(rowsOf(slabbed))), 1e-12) << label;
    EXPECT_LE(maxNormwise(chunkwise.logits, parallel.logits), 1e-10) << label;
    EXPECT_LE(std::abs(chunkwise.loss - parallel.loss), 1e-10 * std::abs(parallel.loss)) << label;
    expectSameGradients(parallel.grads, chunkwise.grads, 1e-10, label, false);
  }
}

// ---------------------------------------------------------------------------------------------
// Accumulation, the reused cache (the model's buffers are not reallocated by a repeated
// backward), dLogits given directly.

TEST(ModelBackward, GradientsAccumulateAndTheCacheIsReused) {
  for (const bool fla : {false, true}) {
    const RetNetModel<double> model = randomModel(fla, 700).build();
    const TokenMatrix tokens = randomIds(2, 6, model.config().vocab, 701, false);
    const TokenMatrix targets = randomIds(2, 6, model.config().vocab, 702, true);
    const TrainResult once = train(model, Form::kChunkwise, 4, tokens, targets);
    RetNetModel<double>::TrainingCache cache;
    auto grads = model.zeroGradients();
    for (int pass = 0; pass < 2; ++pass) {
      model.forwardTraining(Form::kChunkwise, tokens, 4, cache);
      EXPECT_EQ(model.backwardCrossEntropy(cache, targets, grads), once.loss);
    }
    const Named twice = namedGradients(grads);
    EXPECT_EQ(twice.size(), once.grads.size());
    for (const auto& [name, g] : twice) EXPECT_LE(maxNormwise(g, 2 * once.grads.at(name)), 1e-15);

    // backward with dLogits given: the same as backwardCrossEntropy's; neither reallocates the
    // workspace or the gradients (the stages' row sums still allocate their small partials:
    // detail::sumOverRowBlocks)
    RowMatrix<double> dLogits(cache.logits.rows(), cache.logits.cols());
    stages::crossEntropyBackward<double>(cache.logits, targets.data(), stages::kIgnoreIndex,
                                         dLogits);
    grads.setZero();
    std::vector<const double*> buffers = {
        cache.workspace.dHidden.data(), cache.workspace.dLogits.data(),
        cache.workspace.block.hidden.data(), cache.workspace.block.retention.dProjections.data()};
    grads.forEach([&](const char*, const auto& g) { buffers.push_back(g.data()); });
    model.backward(cache, dLogits, grads);
    model.backwardCrossEntropy(cache, targets, grads);
    std::vector<const double*> after = {
        cache.workspace.dHidden.data(), cache.workspace.dLogits.data(),
        cache.workspace.block.hidden.data(), cache.workspace.block.retention.dProjections.data()};
    grads.forEach([&](const char*, const auto& g) { after.push_back(g.data()); });
    EXPECT_TRUE(after == buffers);
    for (const auto& [name, g] : namedGradients(grads))
      EXPECT_LE(maxNormwise(g, 2 * once.grads.at(name)), 1e-15) << name;
    grads.setZero();
    grads.forEach(
        [](const char* name, const auto& g) { EXPECT_EQ(g.cwiseAbs().maxCoeff(), 0.0) << name; });
  }
}

// ---------------------------------------------------------------------------------------------
// Refusals: each a retnet::InvalidArgument, before anything is written.

TEST(ModelBackward, RefusesWhatItCannotTrain) {
  PlainModel plain = randomModel(false, 800);
  const RetNetModel<double> model = plain.build();
  const Index vocab = plain.config.vocab, D = plain.config.block.embedDim;
  const TokenMatrix tokens = randomIds(2, 4, vocab, 801, false);
  const TokenMatrix targets = randomIds(2, 4, vocab, 802, false);
  RetNetModel<double>::TrainingCache cache;

  // forms, chunk sizes, tokens
  RETNET_EXPECT_THROW_WITH(model.forwardTraining(Form::kRecurrent, tokens, 0, cache),
                           InvalidArgument, "forwardTraining", "recurrent");
  RETNET_EXPECT_THROW_WITH(model.forwardTraining(Form::kChunkwise, tokens, 0, cache),
                           InvalidArgument, "chunkSize");
  TokenMatrix badTokens = tokens;
  badTokens(1, 2) = vocab;
  RETNET_EXPECT_THROW_WITH(model.forwardTraining(Form::kParallel, badTokens, 0, cache),
                           InvalidArgument, "token ids");
  RETNET_EXPECT_THROW_WITH(model.forwardTraining(Form::kParallel, TokenMatrix(2, 0), 0, cache),
                           InvalidArgument, "non-empty");

  // reduced weights: all, or the head only
  {
    RetNetModel<double> reduced = plain.build();
    reduced.convertWeights(WeightType::kBf16);
    RETNET_EXPECT_THROW_WITH(reduced.forwardTraining(Form::kParallel, tokens, 0, cache),
                             InvalidArgument, "full precision", "bf16");
    RetNetModel<double> head = plain.build();
    LinearWeight<double>* last = nullptr;
    head.forEachWeight([&](LinearWeight<double>& w) { last = &w; });  // the output projection
    *last = last->converted(WeightType::kInt8);
    RETNET_EXPECT_THROW_WITH(head.forwardTraining(Form::kParallel, tokens, 0, cache),
                             InvalidArgument, "full precision");
  }
  // LayerNorm model norms (RWKV-4's kind) have no backward here
  {
    RetNetModelConfig config = plain.config;
    config.norm = ModelNorm::kLayer;
    RetNetModelWeights<double> w = plain.weights();
    w.embedNormBias = Vector<double>::Zero(D);
    w.finalNormBias = Vector<double>::Zero(D);
    const RetNetModel<double> layerNormed(config, std::move(w));
    RETNET_EXPECT_THROW_WITH(layerNormed.forwardTraining(Form::kParallel, tokens, 0, cache),
                             InvalidArgument, "LayerNorm");
  }

  // the backward: an empty cache, a wrong dLogits, another model's cache, wrong gradients
  auto grads = model.zeroGradients();
  RetNetModel<double>::TrainingCache empty;
  RowMatrix<double> dLogits = RowMatrix<double>::Ones(tokens.size(), vocab);
  RETNET_EXPECT_THROW_WITH(model.backward(empty, dLogits, grads), InvalidArgument,
                           "the cache holds no forwardTraining call");
  RETNET_EXPECT_THROW_WITH(model.backwardCrossEntropy(empty, targets, grads), InvalidArgument,
                           "the cache holds no forwardTraining call");
  model.forwardTraining(Form::kParallel, tokens, 0, cache);
  RETNET_EXPECT_THROW_WITH(
      model.backward(cache, RowMatrix<double>::Ones(tokens.size(), vocab + 1), grads),
      InvalidArgument, "dLogits");
  RETNET_EXPECT_THROW_WITH(
      model.backward(cache, RowMatrix<double>::Ones(tokens.size() - 1, vocab), grads),
      InvalidArgument, "dLogits");
  RETNET_EXPECT_THROW_WITH(model.backwardCrossEntropy(cache, TokenMatrix(2, 3), grads),
                           InvalidArgument, "targets");
  TokenMatrix badTargets = targets;
  badTargets(0, 1) = vocab;
  RETNET_EXPECT_THROW_WITH(model.backwardCrossEntropy(cache, badTargets, grads), InvalidArgument,
                           "targets");
  {
    const RetNetModel<double> wider = randomModel(false, 810, 12).build();
    auto widerGrads = wider.zeroGradients();
    RETNET_EXPECT_THROW_WITH(wider.backward(cache, dLogits, widerGrads), InvalidArgument,
                             "not filled by this model");
    PlainModel shallow = plain;  // the same shapes, one layer fewer
    shallow.config.layers = 1;
    RETNET_EXPECT_THROW_WITH(shallow.build().backward(cache, dLogits, grads), InvalidArgument,
                             "not filled by this model");
  }
  // the model's own and a block's (the first block's, whose backward runs last: its shapes are
  // still checked before the head's gradients are added)
  for (const char* field : {"embed_tokens.weight", "layernorm_embedding.weight",
                            "layer_norm.weight", "output_projection.weight",
                            "layers.0.ffn.fc2.weight", "layers.0.retention_layer_norm.weight"}) {
    auto bad = grads;
    bad.forEach([&](const char* name, auto& g) {
      if (std::string(field) == name) g.setZero(g.rows() + 1, g.cols());
    });
    const Named before = namedGradients(bad);
    EXPECT_THROW(model.backward(cache, dLogits, bad), InvalidArgument) << field;
    EXPECT_THROW(model.backwardCrossEntropy(cache, targets, bad), InvalidArgument) << field;
    const Named after = namedGradients(bad);
    for (const auto& [name, g] : before) EXPECT_TRUE(after.at(name) == g) << field << ": " << name;
  }
  {  // a block's cache of another shape is refused before any write, named with its layer
    RetNetModel<double>::TrainingCache bad = cache;
    bad.blocks.at(0).ffnDim += 1;
    const Named before = namedGradients(grads);
    RETNET_EXPECT_THROW_WITH(model.backward(bad, dLogits, grads), InvalidArgument, "(layer 0)",
                             "another FFN width");
    const Named after = namedGradients(grads);
    for (const auto& [name, g] : before) EXPECT_TRUE(after.at(name) == g) << name;
  }
  {  // a block's wrong gradient is named with its layer
    auto bad = grads;
    bad.layers.at(1).fc2.setZero(1, 1);
    RETNET_EXPECT_THROW_WITH(model.backward(cache, dLogits, bad), InvalidArgument, "(layer 1)",
                             "grads.fc2");
  }
  {
    auto bad = grads;
    bad.layers.pop_back();
    RETNET_EXPECT_THROW_WITH(model.backward(cache, dLogits, bad), InvalidArgument, "grads.layers");
    // an output projection's gradient for a tied model
    const RetNetModel<double> tied = randomModel(true, 820).build();
    RetNetModel<double>::TrainingCache tiedCache;
    tied.forwardTraining(Form::kParallel, tokens, 0, tiedCache);
    auto tiedGrads = tied.zeroGradients();
    tiedGrads.outputProjection.setZero(vocab, D);
    EXPECT_THROW(
        tied.backward(tiedCache, RowMatrix<double>::Zero(tokens.size(), tied.config().vocab),
                      tiedGrads),
        InvalidArgument);
  }
  EXPECT_NO_THROW(model.backward(cache, dLogits, grads));
  EXPECT_NO_THROW(model.backwardCrossEntropy(cache, targets, grads));
}

}  // namespace
}  // namespace retnet
