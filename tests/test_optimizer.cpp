// The optimiser's side of training (optimizer.hpp, io/training_checkpoint.hpp): the layers'
// parameter views against their gradients' layout, AdamW against the update written out by hand
// in double, clipping by global norm, the warm-up + cosine schedule, and AdamW's state saved and
// resumed bit for bit.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "retnet/block.hpp"
#include "retnet/init.hpp"
#include "retnet/io/load_model.hpp"
#include "retnet/io/training_checkpoint.hpp"
#include "retnet/optimizer.hpp"
#include "test_util.hpp"

namespace retnet {
namespace {

template <typename Scalar>
RowMatrix<Scalar> randomMatrix(Index rows, Index cols, std::uint64_t seed, double scale = 0.3) {
  const auto values = testing::randomValues(static_cast<std::size_t>(rows * cols), seed, scale);
  RowMatrix<Scalar> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(values[std::size_t(i)]);
  return m;
}

RetNetBlockConfig smallConfig(bool fla) {
  RetNetBlockConfig c;
  c.embedDim = 8;
  c.valueDim = 16;
  c.heads = 2;
  c.ffnDim = 12;
  if (fla) {  // grouped heads, FLA's semantics, SwiGLU
    c.heads = 4;
    c.kvHeads = 2;
    c.headKeyDim = 4;
    c.normalization = RetentionNormalization::kNone;
    c.activation = Activation::kSwish;
  }
  return c;
}

template <typename Scalar>
RetNetBlock<Scalar> smallBlock(bool fla, std::uint64_t seed) {
  const RetNetBlockConfig c = smallConfig(fla);
  const MultiScaleRetentionConfig r = c.retention();
  const Index D = c.embedDim, dk = r.keyDim(), kv = r.keyValueHeads();
  RetNetBlockWeights<Scalar> w;
  w.retention.q = randomMatrix<Scalar>(c.heads * dk, D, seed);
  w.retention.k = randomMatrix<Scalar>(kv * dk, D, seed + 1);
  w.retention.v = randomMatrix<Scalar>(kv * r.headValueDim(), D, seed + 2);
  w.retention.g = randomMatrix<Scalar>(c.valueDim, D, seed + 3);
  w.retention.out = randomMatrix<Scalar>(D, c.valueDim, seed + 4);
  if (fla) w.retention.headNorm = Vector<Scalar>::Ones(r.headValueDim());
  w.retentionNorm = Vector<Scalar>::Ones(D);
  w.fc1 = randomMatrix<Scalar>(c.ffnDim, D, seed + 5);
  w.gate = randomMatrix<Scalar>(c.ffnDim, D, seed + 6);
  w.fc2 = randomMatrix<Scalar>(D, c.ffnDim, seed + 7);
  w.finalNorm = Vector<Scalar>::Ones(D);
  return RetNetBlock<Scalar>(c, w);
}

/// Gradients of `block`'s shape filled with random values.
template <typename Scalar>
RetNetBlockGradients<Scalar> randomGradients(const RetNetBlock<Scalar>& block, std::uint64_t seed) {
  RetNetBlockGradients<Scalar> grads = block.zeroGradients();
  grads.forEach([&](const char*, auto& gradient) {
    const auto values = testing::randomValues(static_cast<std::size_t>(gradient.size()), seed++);
    for (Index i = 0; i < gradient.size(); ++i)
      gradient.data()[i] = static_cast<Scalar>(values[std::size_t(i)]);
  });
  return grads;
}

/// Every parameter, flattened, in forEachParameter order.
template <typename Layer>
std::vector<std::pair<std::string, std::vector<double>>> snapshot(const Layer& layer) {
  std::vector<std::pair<std::string, std::vector<double>>> values;
  layer.forEachParameter([&](const char* name, auto parameter) {
    values.emplace_back(name,
                        std::vector<double>(parameter.data(), parameter.data() + parameter.size()));
  });
  return values;
}

TEST(Parameters, MatchTheGradientsNamesOrderAndShapes) {
  for (bool fla : {false, true}) {
    RetNetBlock<double> block = smallBlock<double>(fla, 10);
    std::vector<std::string> gradientNames;
    std::vector<std::pair<Index, Index>> gradientShapes;
    const RetNetBlockGradients<double> grads = block.zeroGradients();
    grads.forEach([&](const char* name, const auto& gradient) {
      gradientNames.emplace_back(name);
      gradientShapes.emplace_back(gradient.rows(), gradient.cols());
    });
    std::vector<std::string> names;
    std::size_t i = 0;
    block.forEachParameter([&](const char* name, Eigen::Map<RowMatrix<double>> parameter) {
      names.emplace_back(name);
      ASSERT_LT(i, gradientShapes.size());
      EXPECT_EQ(parameter.rows(), gradientShapes[i].first) << name;
      EXPECT_EQ(parameter.cols(), gradientShapes[i].second) << name;
      ++i;
    });
    EXPECT_EQ(names, gradientNames);
    EXPECT_EQ(fla, std::find(names.begin(), names.end(), "retention.g_norm_swish_gate.weight") !=
                       names.end());
  }
}

TEST(Parameters, ViewTheWeightsTheForwardUses) {
  // Each parameter view is the weight itself: the block built from the snapshot's values equals
  // the block, and a change through a view changes the forward's output.
  RetNetBlock<double> block = smallBlock<double>(true, 20);
  const Tensor3<double> x =
      testing::toTensor<double>(testing::randomValues(2 * 5 * 8, 21), 2, 5, 8);
  const Tensor3<double> before = block.forwardParallel(x);
  bool changed = false;
  block.forEachParameter([&](const char* name, Eigen::Map<RowMatrix<double>> parameter) {
    if (std::string(name) == "ffn.gate.weight") {
      parameter(0, 0) += 0.5;
      changed = true;
    }
  });
  ASSERT_TRUE(changed);
  const Tensor3<double> after = block.forwardParallel(x);
  double diff = 0;
  for (Index i = 0; i < x.size(); ++i)
    diff = std::max(diff, std::abs(after.data()[i] - before.data()[i]));
  EXPECT_GT(diff, 1e-6);

  // The views of a block holding reduced-precision weights are refused.
  RetNetBlock<double> reduced = smallBlock<double>(false, 22);
  reduced.forEachWeight([](LinearWeight<double>& w) { w = w.converted(WeightType::kBf16); });
  EXPECT_THROW(reduced.forEachParameter([](const char*, auto) {}), InvalidArgument);
}

/// The AdamW update of one tensor written out in double (torch.optim.AdamW's formulas).
struct HandAdamW {
  std::vector<double> m, v;
  void step(std::vector<double>& p, const std::vector<double>& g, int t, double lr,
            const AdamWOptions& o, bool decay) {
    if (m.empty()) m.assign(p.size(), 0.0), v.assign(p.size(), 0.0);
    for (std::size_t i = 0; i < p.size(); ++i) {
      if (decay) p[i] *= 1 - lr * o.weightDecay;
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
      const double mHat = m[i] / (1 - std::pow(o.beta1, t));
      const double vHat = v[i] / (1 - std::pow(o.beta2, t));
      p[i] -= lr * mHat / (std::sqrt(vHat) + o.eps);
    }
  }
};

template <typename Scalar>
class AdamWTyped : public ::testing::Test {};
TYPED_TEST_SUITE(AdamWTyped, testing::Scalars, testing::ScalarName);

TYPED_TEST(AdamWTyped, MatchesTheHandWrittenUpdate) {
  using Scalar = TypeParam;
  for (bool decayVectors : {false, true}) {
    RetNetBlock<Scalar> block = smallBlock<Scalar>(true, 30);
    AdamWOptions options;
    options.weightDecay = 0.1;
    options.beta2 = 0.95;
    options.decayVectors = decayVectors;
    AdamW<Scalar> optimizer(options);
    auto expected = snapshot(block);
    std::vector<HandAdamW> hand(expected.size());
    const double rates[3] = {1e-2, 3e-3, 5e-2};
    for (int t = 1; t <= 3; ++t) {
      const RetNetBlockGradients<Scalar> grads = randomGradients(block, 100 * t);
      std::size_t i = 0;
      grads.forEach([&](const char*, const auto& gradient) {
        const std::vector<double> g(gradient.data(), gradient.data() + gradient.size());
        const bool vector = gradient.cols() == 1;
        hand[i].step(expected[i].second, g, t, rates[t - 1], options, !vector || decayVectors);
        ++i;
      });
      optimizer.step(block, grads, rates[t - 1]);
    }
    EXPECT_EQ(optimizer.steps(), 3);
    const auto got = snapshot(block);
    // The update moves each weight by ≈ lr per step (|m̂/√v̂| ≤ ~1); float rounds each of the
    // few operations once (2^-24 relative, on weights of size ~1) and the moments keep float.
    const double bound = std::is_same_v<Scalar, float> ? 2e-6 : 1e-14;
    ASSERT_EQ(got.size(), expected.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].first, expected[i].first);
      for (std::size_t j = 0; j < got[i].second.size(); ++j)
        ASSERT_NEAR(got[i].second[j], expected[i].second[j], bound)
            << got[i].first << "[" << j << "] decayVectors " << decayVectors;
    }
  }
}

TEST(AdamW, RefusesGradientsOfAnotherShapeBeforeChangingAnything) {
  RetNetBlock<double> block = smallBlock<double>(false, 40);
  const RetNetBlock<double> other = smallBlock<double>(true, 41);
  const auto before = snapshot(block);
  AdamW<double> optimizer;
  EXPECT_THROW(optimizer.step(block, other.zeroGradients()), InvalidArgument);
  RetNetBlockGradients<double> wrong = block.zeroGradients();
  wrong.fc2.resize(3, 3);
  EXPECT_THROW(optimizer.step(block, wrong), InvalidArgument);
  EXPECT_EQ(snapshot(block), before);
  EXPECT_EQ(optimizer.steps(), 0);
  // Once its moments exist, the optimiser serves only that model.
  optimizer.step(block, block.zeroGradients());
  RetNetBlock<double> fla = smallBlock<double>(true, 42);
  EXPECT_THROW(optimizer.step(fla, fla.zeroGradients()), InvalidArgument);
  EXPECT_THROW(optimizer.step(block, block.zeroGradients(), -1.0), InvalidArgument);
  AdamWOptions bad;
  bad.beta1 = 1.0;
  EXPECT_THROW(AdamW<double>{bad}, InvalidArgument);
}

TEST(ClipGradientNorm, ScalesAsPyTorchDoes) {
  const RetNetBlock<double> block = smallBlock<double>(false, 50);
  RetNetBlockGradients<double> grads = randomGradients(block, 51);
  double sum = 0;
  grads.forEach([&](const char*, const auto& g) { sum += g.squaredNorm(); });
  const double norm = std::sqrt(sum);
  EXPECT_NEAR(gradientNorm(grads), norm, 1e-12 * norm);

  RetNetBlockGradients<double> unchanged = grads;
  EXPECT_NEAR(clipGradientNorm(unchanged, 2 * norm), norm, 1e-12 * norm);
  EXPECT_EQ(unchanged.fc1, grads.fc1);  // below the bound: untouched

  const double returned = clipGradientNorm(grads, 0.5);
  EXPECT_NEAR(returned, norm, 1e-12 * norm);
  EXPECT_NEAR(gradientNorm(grads), 0.5 * norm / (norm + 1e-6), 1e-12);

  grads.fc2(0, 0) = std::nan("");
  EXPECT_THROW(clipGradientNorm(grads, 1.0), InvalidArgument);
  EXPECT_THROW(clipGradientNorm(unchanged, 0.0), InvalidArgument);
}

TEST(WarmupCosineSchedule, WarmsUpLinearlyThenFollowsTheCosine) {
  const WarmupCosineSchedule schedule(1e-3, 1e-4, 10, 110);
  EXPECT_DOUBLE_EQ(schedule(0), 1e-4);  // (0 + 1) / 10 of the peak
  EXPECT_DOUBLE_EQ(schedule(4), 5e-4);
  EXPECT_DOUBLE_EQ(schedule(9), 1e-3);
  EXPECT_DOUBLE_EQ(schedule(10), 1e-3);                   // the cosine starts at the peak
  EXPECT_NEAR(schedule(60), 0.5 * (1e-3 + 1e-4), 1e-15);  // half way down
  EXPECT_NEAR(schedule(35), 1e-4 + 0.5 * 9e-4 * (1 + std::cos(std::atan(1.0))), 1e-15);
  EXPECT_DOUBLE_EQ(schedule(110), 1e-4);
  EXPECT_DOUBLE_EQ(schedule(1000), 1e-4);
  for (std::int64_t s = 10; s < 110; ++s) EXPECT_GE(schedule(s), schedule(s + 1));
  EXPECT_DOUBLE_EQ(WarmupCosineSchedule(2.0, 0.0, 0, 4)(0), 2.0);  // no warm-up
  EXPECT_THROW(WarmupCosineSchedule(1e-3, 1e-2, 0, 10), InvalidArgument);
  EXPECT_THROW(WarmupCosineSchedule(1e-3, 0.0, 20, 10), InvalidArgument);
  EXPECT_THROW(schedule(-1), InvalidArgument);
}

TYPED_TEST(AdamWTyped, ResumesFromASavedStateBitForBit) {
  using Scalar = TypeParam;
  testing::TempDir dir("adamw");
  const std::string path = (dir.path() / "adamw.safetensors").string();
  AdamWOptions options;
  options.learningRate = 3e-3;
  options.weightDecay = 0.05;
  RetNetBlock<Scalar> straight = smallBlock<Scalar>(true, 60);
  RetNetBlock<Scalar> resumed = smallBlock<Scalar>(true, 60);
  AdamW<Scalar> one(options), first(options);
  for (int t = 0; t < 2; ++t) {
    const auto grads = randomGradients(straight, 70 + 10 * t);
    one.step(straight, grads);
    first.step(resumed, grads);
  }
  io::saveAdamW(first, path);
  AdamW<Scalar> second = io::loadAdamW<Scalar>(path);
  EXPECT_EQ(second.steps(), 2);
  EXPECT_EQ(second.options().weightDecay, 0.05);
  for (int t = 2; t < 4; ++t) {
    const auto grads = randomGradients(straight, 70 + 10 * t);
    one.step(straight, grads);
    second.step(resumed, grads);
  }
  EXPECT_EQ(snapshot(straight), snapshot(resumed));

  // A file that is not an optimiser state, or a damaged one, is a FormatError.
  io::SafetensorsWriter writer;
  writer.addMetadata("format", "pt");
  const std::string other = (dir.path() / "other.safetensors").string();
  writer.write(other);
  EXPECT_THROW(io::loadAdamW<Scalar>(other), FormatError);
  io::SafetensorsWriter missing;
  missing.addMetadata("format", "retnet-adamw");
  missing.addMetadata("step", "3");
  missing.addMetadata("lr", "0.001");
  missing.addMetadata("beta1", "0.9");
  missing.addMetadata("beta2", "0.999");
  missing.addMetadata("eps", "1e-8");
  missing.addMetadata("weight_decay", "0");
  missing.addMetadata("parameters", "[\"w\"]");
  const std::string damaged = (dir.path() / "damaged.safetensors").string();
  missing.write(damaged);
  EXPECT_THROW(io::loadAdamW<Scalar>(damaged), FormatError);
}

RetNetModelConfig tinyModelConfig(bool tied) {
  RetNetModelConfig c;
  c.vocab = 16;
  c.layers = 2;
  c.block = smallConfig(false);
  c.tiedEmbedding = tied;
  return c;
}

TEST(ModelParameters, MatchTheModelGradients) {
  for (bool tied : {false, true}) {
    const RetNetModelConfig config = tinyModelConfig(tied);
    RetNetModel<double> model(config, initialRetNetWeights<double>(config, 3));
    std::vector<std::string> gradientNames, names;
    std::vector<Index> sizes;
    model.zeroGradients().forEach([&](const char* name, const auto& gradient) {
      gradientNames.emplace_back(name);
      sizes.push_back(gradient.size());
    });
    std::size_t i = 0;
    model.forEachParameter([&](const char* name, auto parameter) {
      names.emplace_back(name);
      if (i < sizes.size()) {
        EXPECT_EQ(parameter.size(), sizes[i]) << name;
      }
      ++i;
    });
    EXPECT_EQ(names, gradientNames);
    EXPECT_EQ(names.front(), "embed_tokens.weight");
    EXPECT_EQ(tied, names.back() == "layer_norm.weight");
  }
}

/// Steps of AdamW on one fixed sequence of a tiny model; the last step's loss. With
/// `reversed` the gradients are negated before each step (a wrong sign).
double memorise(int steps, bool reversed) {
  const RetNetModelConfig config = tinyModelConfig(false);
  RetNetModel<double> model(config, initialRetNetWeights<double>(config, 5));
  TokenMatrix tokens(2, 24), targets(2, 24);
  SplitMix64 random(11);
  for (Index i = 0; i < tokens.size(); ++i) tokens.data()[i] = std::int64_t(random.next() % 16);
  for (Index b = 0; b < 2; ++b) {
    for (Index t = 0; t < 24; ++t) targets(b, t) = t + 1 < 24 ? tokens(b, t + 1) : tokens(b, 0);
  }
  AdamWOptions options;
  options.learningRate = 1e-2;
  options.weightDecay = 0.0;
  AdamW<double> optimizer(options);
  RetNetModel<double>::TrainingCache cache;
  auto grads = model.zeroGradients();
  double loss = 0;
  for (int step = 0; step < steps; ++step) {
    grads.setZero();
    model.forwardTraining(step % 2 ? Form::kChunkwise : Form::kParallel, tokens, 7, cache);
    loss = model.backwardCrossEntropy(cache, targets, grads);
    if (reversed) grads.forEach([](const char*, auto& g) { g = -g; });
    clipGradientNorm(grads, 1.0);
    optimizer.step(model, grads);
  }
  return loss;
}

TEST(Training, ATinyModelMemorisesTwoSequences) {
  // 48 positions of 16 random ids: ln 16 = 2.77 nats at the start. With correct gradients AdamW
  // drives the loss to 0.0044 in 150 steps (measured; bound 0.05), alternating
  // the parallel and the chunkwise form; with the gradients' sign reversed it rises instead.
  const double loss = memorise(150, false);
  RecordProperty("loss_after_150_steps", std::to_string(loss));
  EXPECT_LT(loss, 0.05);
  EXPECT_GT(memorise(20, true), 2.77);
}

TEST(TorchscaleCheckpoint, SavesWhatLoadModelReadsBack) {
  testing::TempDir dir("save-model");
  for (bool tied : {false, true}) {
    RetNetModelConfig config = tinyModelConfig(tied);
    config.embedScale = 4.0;
    config.block.eps = 1e-5;
    config.embedNorm = tied;  // torchscale's layernorm_embedding, once with and once without
    const RetNetModel<double> model(config, initialRetNetWeights<double>(config, 9));
    const std::string path =
        (dir.path() / (tied ? "tied.safetensors" : "model.safetensors")).string();
    io::saveTorchscaleModel(model, path);
    const RetNetModel<double> loaded = io::loadModel<double>(path);
    EXPECT_EQ(loaded.config().tiedEmbedding, tied);
    EXPECT_EQ(loaded.config().embedNorm, tied);
    EXPECT_EQ(loaded.config().embedScale, 4.0);
    EXPECT_EQ(loaded.config().block.eps, 1e-5);
    EXPECT_EQ(snapshot(loaded), snapshot(model));  // F64: every bit
    TokenMatrix tokens(1, 9);
    for (Index t = 0; t < 9; ++t) tokens(0, t) = (5 * t) % 16;
    const Tensor3<double> a = model.forwardChunkwise(tokens, 4),
                          b = loaded.forwardChunkwise(tokens, 4);
    EXPECT_TRUE(std::equal(a.data(), a.data() + a.size(), b.data()));
    // F32 (what a float model saves) rounds once.
    const RetNetModel<float> single(config, initialRetNetWeights<float>(config, 9));
    io::saveTorchscaleModel(single, path);
    EXPECT_EQ(snapshot(io::loadModel<float>(path)), snapshot(single));
  }
  // A configuration torchscale cannot express is refused, naming it.
  RetNetModelConfig fla = tinyModelConfig(false);
  fla.block = smallConfig(true);
  const RetNetModel<double> model(fla, initialRetNetWeights<double>(fla, 1));
  try {
    io::saveTorchscaleModel(model, (dir.path() / "fla.safetensors").string());
    ADD_FAILURE() << "an FLA-style model was saved under torchscale's names";
  } catch (const InvalidArgument& error) {
    EXPECT_NE(std::string(error.what()).find("key dimension"), std::string::npos) << error.what();
  }
}

TEST(FlaCheckpoint, SavesADirectoryLoadModelReadsBack) {
  testing::TempDir dir("save-fla");
  for (bool tied : {false, true}) {
    RetNetModelConfig config = tinyModelConfig(tied);
    config.block = smallConfig(true);  // FLA's semantics, grouped heads, SwiGLU
    config.block.rotary = RotaryLayout::kHalfSplit;
    config.block.scaleSide = ScaleSide::kQuery;
    const RetNetModel<float> model(config, initialRetNetWeights<float>(config, 13));
    const std::string path = (dir.path() / (tied ? "tied" : "untied")).string();
    io::saveFlaModel(model, path);
    const RetNetModel<float> loaded = io::loadModel<float>(path);
    EXPECT_EQ(loaded.config().block.kvHeads, config.block.kvHeads);
    EXPECT_EQ(loaded.config().block.headKeyDim, config.block.headKeyDim);
    EXPECT_EQ(loaded.config().tiedEmbedding, tied);
    EXPECT_EQ(snapshot(loaded), snapshot(model));  // F32: every bit of a float model
    // fuse_norm written, not left to FLA's default: it names the head norm g_norm_swish_gate
    std::ifstream file(std::filesystem::path(path) / "config.json");
    const nlohmann::json json = nlohmann::json::parse(file);
    EXPECT_EQ(json.at("fuse_norm"), true);
    EXPECT_EQ(json.at("torch_dtype"), "float32");
  }
  // FLA's retention asserts a per-head key dim of at most 256 (fla/layers/multiscale_retention.py)
  {
    RetNetModelConfig wide = tinyModelConfig(false);
    wide.block = smallConfig(true);
    wide.block.rotary = RotaryLayout::kHalfSplit;
    wide.block.scaleSide = ScaleSide::kQuery;
    wide.block.headKeyDim = 258;
    const RetNetModel<float> model(wide, initialRetNetWeights<float>(wide, 2));
    RETNET_EXPECT_THROW_WITH(io::saveFlaModel(model, (dir.path() / "wide").string()),
                             InvalidArgument, "key dim of at most 256");
  }
  // torchscale's semantics have no FLA names.
  const RetNetModelConfig torchscale = tinyModelConfig(false);
  const RetNetModel<float> model(torchscale, initialRetNetWeights<float>(torchscale, 1));
  EXPECT_THROW(io::saveFlaModel(model, (dir.path() / "x").string()), InvalidArgument);
  EXPECT_THROW(io::saveFlaModel(model, (dir.path() / "y").string(), io::Dtype::F64),
               InvalidArgument);
}

TEST(Init, IsTorchscalesAndTheSameEverywhere) {
  const RetNetModelConfig config = tinyModelConfig(false);
  const RetNetModelWeights<double> a = initialRetNetWeights<double>(config, 1);
  const RetNetModelWeights<double> b = initialRetNetWeights<double>(config, 1);
  const RetNetModelWeights<double> c = initialRetNetWeights<double>(config, 2);
  EXPECT_EQ(a.embed.matrix(), b.embed.matrix());
  EXPECT_NE(a.embed.matrix(), c.embed.matrix());
  // xavier_uniform bound 2^-2.5·√(6/(in+out)), nn.Linear's 1/√in, N(0, 1/D) for the embedding.
  const Index D = config.block.embedDim, F = config.block.ffnDim;
  const double qBound = std::pow(2.0, -2.5) * std::sqrt(6.0 / double(2 * D));
  const auto& q = a.layers[0].retention.q.matrix();
  EXPECT_LE(q.cwiseAbs().maxCoeff(), qBound);
  EXPECT_GT(q.cwiseAbs().maxCoeff(), 0.8 * qBound);
  EXPECT_LE(a.layers[1].fc1.matrix().cwiseAbs().maxCoeff(), 1.0 / std::sqrt(double(D)));
  EXPECT_LE(a.layers[1].fc2.matrix().cwiseAbs().maxCoeff(), 1.0 / std::sqrt(double(F)));
  const auto& e = a.embed.matrix();
  const double variance = e.squaredNorm() / double(e.size());
  EXPECT_NEAR(variance, 1.0 / double(D), 0.35 / double(D));  // 128 draws
  EXPECT_EQ(a.layers[0].retentionNorm, Vector<double>::Ones(D));
}

}  // namespace
}  // namespace retnet
