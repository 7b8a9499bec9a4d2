// The backward of MultiScaleRetention and of RetNetBlock (forwardTraining + backward, parallel and
// chunkwise forms) against torchscale's autograd gradients (tests/data/grad, shared/golden/grad's
// format: the msr and the layer files), against central finite differences of the real forward,
// and across forms and chunk sizes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "retnet/block.hpp"
#include "retnet/io/checkpoint.hpp"
#include "retnet/multiscale_retention.hpp"
#include "test_util.hpp"

namespace retnet {
namespace {

template <typename Scalar>
using Msr = MultiScaleRetention<Scalar>;
template <typename Scalar>
using Block = RetNetBlock<Scalar>;

using testing::frobeniusError;
using testing::maxNormwise;
using testing::parseTrainedForm;
using testing::randomMatrix;
using testing::splitForms;

std::string gradDataDir() { return std::string(RETNET_TEST_DATA_DIR) + "/grad"; }

/// One training step's results, of a MultiScaleRetention (Layer = Msr) or a RetNetBlock.
template <typename Scalar, typename Layer = Msr<Scalar>>
struct Step {
  RowMatrix<Scalar> y, dx;
  typename Layer::Gradients grads;
  MultiScaleRetentionState<Scalar> state;  // the state after the forward
};

template <typename Scalar, typename Layer>
Step<Scalar, Layer> trainStep(const Layer& layer, Form form, const RowMatrix<Scalar>& x,
                              Index batch, Index time, Index chunk, const RowMatrix<Scalar>& dy,
                              const MultiScaleRetentionState<Scalar>& initial = {}) {
  const Index D = layer.config().embedDim;
  Step<Scalar, Layer> step;
  step.state = initial;
  step.y.resize(batch * time, D);
  step.dx.resize(batch * time, D);
  typename Layer::TrainingCache cache;
  layer.forwardTraining(form, x, batch, time, chunk, step.state, step.y, cache);
  layer.backward(cache, dy, step.dx, step.grads);
  return step;
}

/// A named gradient of a step as doubles: "x" or a weight's checkpoint name.
template <typename Scalar, typename Layer>
std::map<std::string, RowMatrix<double>> namedGradients(const Step<Scalar, Layer>& step) {
  std::map<std::string, RowMatrix<double>> named;
  named["x"] = step.dx.template cast<double>();
  step.grads.forEach([&](const char* name, const auto& g) {
    named[name] = Eigen::Map<const RowMatrix<Scalar>>(g.data(), g.rows(),
                                                      g.size() / std::max<Index>(g.rows(), 1))
                      .template cast<double>();
  });
  return named;
}

/// Every gradient golden file of `kind` (msr, layer) in tests/data/grad.
std::vector<std::string> gradFiles(const std::string& kind) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(gradDataDir())) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() != ".safetensors" || name.find("_grad") == std::string::npos)
      continue;
    const auto file = io::SafetensorsFile::open(entry.path().string());
    if (file.metadataValue("kind").value_or("") == kind) files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}
std::vector<std::string> msrGradFiles() { return gradFiles("msr"); }
std::vector<std::string> layerGradFiles() { return gradFiles("layer"); }

/// The layer of a golden file, built from its weights and metadata (test_layers_golden's way).
template <typename Scalar, template <typename> class Layer>
Layer<Scalar> loadLayer(const io::SafetensorsFile& file) {
  if constexpr (std::is_same_v<Layer<Scalar>, RetNetBlock<Scalar>>) {
    return io::loadRetNetBlock<Scalar>(file);
  } else {
    return io::loadMultiScaleRetention<Scalar>(file);
  }
}

/// A tensor of any rank as a (rows x cols) matrix of its row-major values.
RowMatrix<double> readAs(const io::SafetensorsFile& file, const std::string& name, Index rows,
                         Index cols) {
  const auto values = file.readFlat<double>(name);
  EXPECT_EQ(static_cast<Index>(values.size()), rows * cols) << name;
  return Eigen::Map<const RowMatrix<double>>(values.data(), rows, cols);
}

/// A golden file's x and dy as (B·T, D) matrices, with B, T, D from x's shape.
template <typename Scalar>
struct GoldenInputs {
  Index batch = 0, time = 0, width = 0, chunk = 0;
  RowMatrix<Scalar> x, dy;
};
template <typename Scalar>
GoldenInputs<Scalar> readInputs(const io::SafetensorsFile& file) {
  GoldenInputs<Scalar> in;
  const auto& shape = file.info("x").shape;
  EXPECT_EQ(shape.size(), 3u);
  in.batch = shape.at(0);
  in.time = shape.at(1);
  in.width = shape.at(2);
  in.chunk = std::stol(file.metadataValue("chunk_size").value_or("0"));
  in.x = readAs(file, "x", in.batch * in.time, in.width).template cast<Scalar>();
  in.dy = readAs(file, "dy", in.batch * in.time, in.width).template cast<Scalar>();
  return in;
}

// ---------------------------------------------------------------------------------------------
// Against torchscale's autograd (tests/data/grad): every file, every stored trained form.

template <typename Scalar, template <typename> class Layer = Msr>
void checkGoldenFile(const std::string& path) {
  constexpr bool isDouble = std::is_same_v<Scalar, double>;
  const auto file = io::SafetensorsFile::open(path);
  const auto layer = loadLayer<Scalar, Layer>(file);
  const auto in = readInputs<Scalar>(file);
  ASSERT_EQ(in.width, layer.config().embedDim);
  const std::string formsList = file.metadataValue("grad_forms").value_or("");
  int trained = 0;
  for (const std::string& formName : splitForms(formsList)) {
    Form form;
    if (!parseTrainedForm(formName, form)) continue;
    ++trained;
    const std::string label =
        file.displayName() + " " + formName + (isDouble ? " double" : " float");
    const Step<Scalar, Layer<Scalar>> step =
        trainStep(layer, form, in.x, in.batch, in.time, in.chunk, in.dy);

    // the forward and the loss
    const RowMatrix<double> out = readAs(file, "out_" + formName, in.batch * in.time, in.width);
    const double outError = maxNormwise(step.y, out);
    const double tolerance = isDouble ? 1e-9 : 1e-4;  // the forward goldens' (golden_check.hpp)
    EXPECT_LE(outError, tolerance) << label;
    const double loss =
        (step.y.template cast<double>().array() * in.dy.template cast<double>().array()).sum();
    const double lossRef = file.readFlat<double>("loss_" + formName).at(0);
    // float: relative to the size of the summed terms (the sum of N(0,1)-weighted outputs cancels)
    const double lossScale =
        isDouble ? std::abs(lossRef)
                 : (in.dy.template cast<double>().array() * out.array()).abs().sum();
    EXPECT_LE(std::abs(loss - lossRef) / lossScale, tolerance) << label;

    // every stored gradient of the form, each compared
    const std::string prefix = "grad_" + formName + ".";
    std::map<std::string, RowMatrix<double>> refs;
    double largest = 0;
    for (const std::string& name : file.names()) {
      if (name.rfind(prefix, 0) != 0) continue;
      const auto& shape = file.info(name).shape;
      const Index rows = shape.size() == 3 ? shape[0] * shape[1] : shape.at(0);
      const Index cols = shape.size() == 1 ? 1 : shape.back();
      refs[name.substr(prefix.size())] = readAs(file, name, rows, cols);
      largest = std::max(largest, refs[name.substr(prefix.size())].cwiseAbs().maxCoeff());
    }
    const auto [worst, worstName] =
        testing::checkGradients(label, namedGradients(step), refs, isDouble, largest);
    std::printf("%s: out %.2e, worst gradient %.2e (%s)\n", label.c_str(), outError, worst,
                worstName.c_str());
  }
  EXPECT_GE(trained, 1) << file.displayName() << ": no parallel or chunkwise gradients stored";
}

TEST(LayerBackwardGolden, EveryMsrGradFileInDouble) {
  const auto files = msrGradFiles();
  EXPECT_GE(files.size(), 2u);
  for (const auto& path : files) checkGoldenFile<double>(path);
}

TEST(LayerBackwardGolden, EveryMsrGradFileInFloat) {
  const auto files = msrGradFiles();
  EXPECT_GE(files.size(), 2u);
  for (const auto& path : files) checkGoldenFile<float>(path);
}

TEST(BlockBackwardGolden, EveryLayerGradFileInDouble) {
  const auto files = layerGradFiles();
  EXPECT_GE(files.size(), 2u);
  for (const auto& path : files) checkGoldenFile<double, Block>(path);
}

TEST(BlockBackwardGolden, EveryLayerGradFileInFloat) {
  const auto files = layerGradFiles();
  EXPECT_GE(files.size(), 2u);
  for (const auto& path : files) checkGoldenFile<float, Block>(path);
}

// ---------------------------------------------------------------------------------------------
// Parallel against chunkwise where torchscale's forms agree (group-norm eps ≈ 0: the _eps0
// files), over chunk sizes: one row, ragged, the file's, T, beyond T.

template <typename Layer>
void expectSameGradients(const Step<double, Layer>& a, const Step<double, Layer>& b,
                         double tolerance, const std::string& label, bool skipQueryKey = false) {
  const auto ga = namedGradients(a), gb = namedGradients(b);
  for (const auto& [key, ref] : ga) {
    const std::string& name = key;
    const auto endsWith = [&](const std::string& tail) {
      return name.size() >= tail.size() &&
             name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
    };
    if (skipQueryKey && (endsWith("q_proj.weight") || endsWith("k_proj.weight"))) continue;
    const double error = std::max(maxNormwise(gb.at(name), ref), frobeniusError(gb.at(name), ref));
    EXPECT_LE(error, tolerance) << label << " " << name;
  }
}

template <template <typename> class Layer>
int checkFormsAgreeOnEpsZeroFiles(const std::vector<std::string>& files) {
  int checked = 0;
  for (const auto& path : files) {
    const auto file = io::SafetensorsFile::open(path);
    if (std::stod(file.metadataValue("layernorm_eps").value_or("1")) > 1e-20) continue;
    const auto layer = loadLayer<double, Layer>(file);
    const auto in = readInputs<double>(file);
    const Step<double, Layer<double>> parallel =
        trainStep(layer, Form::kParallel, in.x, in.batch, in.time, 0, in.dy);
    std::set<Index> chunks = {1, 3, 5, in.chunk, in.time, in.time + 7};
    if (in.time > 1) chunks.insert(in.time - 1);
    for (const Index chunk : chunks) {
      if (chunk < 1) continue;
      const Step<double, Layer<double>> chunkwise =
          trainStep(layer, Form::kChunkwise, in.x, in.batch, in.time, chunk, in.dy);
      EXPECT_LE(maxNormwise(chunkwise.y, parallel.y), 1e-10) << path << " chunk " << chunk;
      // At T = 1 with eps ≈ 0 the q/k gradients are rounding noise (grad README §3.5).
      expectSameGradients(parallel, chunkwise, 1e-10,
                          file.displayName() + " chunk " + std::to_string(chunk), in.time == 1);
    }
    ++checked;
  }
  return checked;
}

TEST(LayerBackwardForms, ParallelAndChunkwiseAgreeOnTheEpsZeroFiles) {
  EXPECT_GE(checkFormsAgreeOnEpsZeroFiles<Msr>(msrGradFiles()), 1);
}

TEST(BlockBackwardForms, ParallelAndChunkwiseAgreeOnTheEpsZeroFiles) {
  EXPECT_GE(checkFormsAgreeOnEpsZeroFiles<Block>(layerGradFiles()), 1);
}

/// A random small layer: torchscale's semantics, or FLA's (grouped key/value heads, a head-norm
/// weight) with `fla`.
Msr<double> randomLayer(bool fla, double eps, std::uint64_t seed,
                        MultiScaleRetentionWeights<double>* weightsOut = nullptr) {
  MultiScaleRetentionConfig config;
  if (fla) {
    config = MultiScaleRetentionConfig::fla(8, 2, 1, 4, 4, eps);
  } else {
    config.embedDim = 8;
    config.valueDim = 12;
    config.heads = 2;
    config.eps = eps;
  }
  const Index D = config.embedDim, V = config.valueDim, dk = config.keyDim();
  const Index kv = config.keyValueHeads(), dv = config.headValueDim();
  MultiScaleRetentionWeights<double> w;
  const double scale = 1.0 / std::sqrt(double(D));
  w.q = randomMatrix<double>(config.heads * dk, D, seed + 1, scale);
  w.k = randomMatrix<double>(kv * dk, D, seed + 2, scale);
  w.v = randomMatrix<double>(kv * dv, D, seed + 3, scale);
  w.g = randomMatrix<double>(V, D, seed + 4, scale);
  w.out = randomMatrix<double>(D, V, seed + 5, 1.0 / std::sqrt(double(V)));
  if (fla) w.headNorm = Vector<double>::Ones(dv) + randomMatrix<double>(dv, 1, seed + 6, 0.3);
  if (weightsOut != nullptr) *weightsOut = w;
  return Msr<double>(config, w);
}

TEST(LayerBackwardForms, ParallelAndChunkwiseAgreeAtOnePosition) {
  for (const bool fla : {false, true}) {
    const auto layer = randomLayer(fla, 1e-6, 70);
    const Index batch = 3, time = 1, D = layer.config().embedDim;
    const auto x = randomMatrix<double>(batch * time, D, 71, 1.0);
    const auto dy = randomMatrix<double>(batch * time, D, 72, 1.0);
    const auto parallel = trainStep(layer, Form::kParallel, x, batch, time, 0, dy);
    for (const Index chunk : {1, 4}) {
      const auto chunkwise = trainStep(layer, Form::kChunkwise, x, batch, time, chunk, dy);
      expectSameGradients(
          parallel, chunkwise, 1e-10,
          std::string(fla ? "fla" : "torchscale") + " T=1 chunk " + std::to_string(chunk));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Central finite differences of L = Σ dy·y through the real forward (forwardSlab), on an
// FLA-configured layer (no normalisers, so nothing is frozen), grouped key/value heads and a
// head-norm weight, from a zero state and from a state a prefix left (positions > 0).

double loss(const Msr<double>& layer, Form form, const RowMatrix<double>& x, Index batch,
            Index time, Index chunk, const MultiScaleRetentionState<double>& initial,
            const RowMatrix<double>& dy) {
  MultiScaleRetentionState<double> state = initial;
  if (state.empty()) layer.prepareState("test", batch, state);
  RowMatrix<double> y(batch * time, layer.config().embedDim);
  MultiScaleRetentionScratch<double> scratch;
  layer.forwardSlab(form, x, batch, time, chunk, state, y, scratch);
  return (y.array() * dy.array()).sum();
}

TEST(LayerBackwardFiniteDifferences, EveryWeightAndTheInput) {
  MultiScaleRetentionWeights<double> w;
  const auto base = randomLayer(true, 1e-6, 90, &w);
  const auto config = base.config();
  const Index batch = 2, time = 5, D = config.embedDim;
  const auto x = randomMatrix<double>(batch * time, D, 91, 1.0);
  const auto dy = randomMatrix<double>(batch * time, D, 92, 1.0);
  // a state left by a 3-position prefix (a constant of the loss)
  MultiScaleRetentionState<double> prefixState;
  {
    const auto prefix =
        testing::toTensor<double>(testing::randomValues(batch * 3 * D, 93), batch, 3, D);
    base.forwardParallel(prefix, prefixState);
  }
  const double h = 1e-5;
  for (const bool fromPrefix : {false, true}) {
    const MultiScaleRetentionState<double> initial =
        fromPrefix ? prefixState : MultiScaleRetentionState<double>();
    for (const auto& formChunk :
         {std::pair{Form::kParallel, Index(0)}, std::pair{Form::kChunkwise, Index(2)}}) {
      const Form form = formChunk.first;
      const Index chunk = formChunk.second;
      const std::string label = std::string(formName(form)) + (fromPrefix ? " after a prefix" : "");
      const auto step = trainStep(base, form, x, batch, time, chunk, dy, initial);
      // each weight: perturb an entry, rebuild the layer, difference the loss
      const auto fd = [&](auto&& entries, Index count, auto&& rebuild) {
        RowMatrix<double> grad(count, 1);
        for (Index i = 0; i < count; ++i) {
          double& e = entries(i);
          const double saved = e;
          e = saved + h;
          const double plus = loss(rebuild(), form, x, batch, time, chunk, initial, dy);
          e = saved - h;
          const double minus = loss(rebuild(), form, x, batch, time, chunk, initial, dy);
          e = saved;
          grad(i) = (plus - minus) / (2 * h);
        }
        return grad;
      };
      RowMatrix<double> q = w.q.matrix(), k = w.k.matrix(), v = w.v.matrix(), g = w.g.matrix(),
                        out = w.out.matrix();
      Vector<double> norm = w.headNorm;
      const auto rebuild = [&]() {
        MultiScaleRetentionWeights<double> p;
        p.q = q;
        p.k = k;
        p.v = v;
        p.g = g;
        p.out = out;
        p.headNorm = norm;
        return Msr<double>(config, p);
      };
      const auto check = [&](const char* name, RowMatrix<double>& m,
                             const RowMatrix<double>& ours) {
        const RowMatrix<double> numeric =
            fd([&](Index i) -> double& { return m.data()[i]; }, m.size(), rebuild);
        const RowMatrix<double> flat =
            Eigen::Map<const RowMatrix<double>>(ours.data(), ours.size(), 1);
        const double error = frobeniusError(flat, numeric);
        EXPECT_LE(error, 1e-6) << label << " " << name;
        std::printf("FD %s %s: %.2e\n", label.c_str(), name, error);
      };
      check("q_proj.weight", q, step.grads.q);
      check("k_proj.weight", k, step.grads.k);
      check("v_proj.weight", v, step.grads.v);
      check("g_proj.weight", g, step.grads.g);
      check("out_proj.weight", out, step.grads.out);
      {
        const RowMatrix<double> numeric =
            fd([&](Index i) -> double& { return norm(i); }, norm.size(), rebuild);
        const RowMatrix<double> ours = step.grads.headNorm;
        EXPECT_LE(frobeniusError(ours, numeric), 1e-6) << label << " headNorm";
      }
      {
        RowMatrix<double> xs = x;
        RowMatrix<double> numeric(xs.size(), 1);
        for (Index i = 0; i < xs.size(); ++i) {
          const double saved = xs.data()[i];
          xs.data()[i] = saved + h;
          const double plus = loss(base, form, xs, batch, time, chunk, initial, dy);
          xs.data()[i] = saved - h;
          const double minus = loss(base, form, xs, batch, time, chunk, initial, dy);
          xs.data()[i] = saved;
          numeric(i) = (plus - minus) / (2 * h);
        }
        const RowMatrix<double> ours =
            Eigen::Map<const RowMatrix<double>>(step.dx.data(), step.dx.size(), 1);
        const double error = frobeniusError(ours, numeric);
        EXPECT_LE(error, 1e-6) << label << " x";
        std::printf("FD %s x: %.2e\n", label.c_str(), error);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The training forward is the forward; gradients accumulate.

/// forwardTraining gives the bits of forwardSlab, output and state, in both trainable forms.
template <typename Layer, typename Scratch>
void expectTrainingForwardIsTheForward(const Layer& layer, std::uint64_t seed) {
  const Index batch = 2, time = 7, D = layer.config().embedDim;
  const auto x = randomMatrix<double>(batch * time, D, seed, 1.0);
  for (const auto& [form, chunk] :
       {std::pair{Form::kParallel, Index(0)}, std::pair{Form::kChunkwise, Index(3)}}) {
    MultiScaleRetentionState<double> a, b;
    layer.prepareState("test", batch, a);
    layer.prepareState("test", batch, b);
    RowMatrix<double> ya(batch * time, D), yb(batch * time, D);
    Scratch scratch;
    layer.forwardSlab(form, x, batch, time, chunk, a, ya, scratch);
    typename Layer::TrainingCache cache;
    layer.forwardTraining(form, x, batch, time, chunk, b, yb, cache);
    EXPECT_TRUE(ya == yb) << formName(form);
    for (Index i = 0; i < a.size(); ++i) {
      if (a.data()[i] != b.data()[i]) {
        ADD_FAILURE() << "state differs at " << i;
        break;
      }
    }
    EXPECT_EQ(a.positions(), b.positions());
  }
}

TEST(LayerBackward, TrainingForwardIsTheForwardBitForBit) {
  for (const bool fla : {false, true}) {
    expectTrainingForwardIsTheForward<Msr<double>, MultiScaleRetentionScratch<double>>(
        randomLayer(fla, 1e-6, 110), 111);
  }
}

TEST(LayerBackward, GradientsAccumulateAndTheCacheIsReused) {
  const auto layer = randomLayer(true, 1e-6, 120);
  const Index batch = 2, time = 6, D = layer.config().embedDim;
  const auto x = randomMatrix<double>(batch * time, D, 121, 1.0);
  const auto dy = randomMatrix<double>(batch * time, D, 122, 1.0);
  const auto once = trainStep(layer, Form::kChunkwise, x, batch, time, 4, dy);
  Msr<double>::TrainingCache cache;
  auto grads = layer.zeroGradients();
  RowMatrix<double> y(batch * time, D), dx(batch * time, D);
  for (int pass = 0; pass < 2; ++pass) {
    MultiScaleRetentionState<double> state;
    layer.forwardTraining(Form::kChunkwise, x, batch, time, 4, state, y, cache);
    layer.backward(cache, dy, dx, grads);
  }
  EXPECT_TRUE(dx == once.dx);
  const auto a = namedGradients(once);
  Step<double> twice;
  twice.dx = dx;
  twice.grads = grads;
  for (const auto& [name, g] : namedGradients(twice)) {
    if (name == "x") continue;
    EXPECT_LE(maxNormwise(g, 2 * a.at(name)), 1e-15) << name;
  }
  grads.setZero();
  EXPECT_EQ(grads.q.cwiseAbs().maxCoeff(), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Refusals.

TEST(LayerBackward, RefusesWhatItCannotTrain) {
  MultiScaleRetentionWeights<double> w;
  const auto layer = randomLayer(false, 1e-6, 130, &w);
  const Index batch = 2, time = 4, D = layer.config().embedDim;
  const auto x = randomMatrix<double>(batch * time, D, 131, 1.0);
  RowMatrix<double> y(batch * time, D), dx(batch * time, D);
  Msr<double>::TrainingCache cache;
  {
    MultiScaleRetentionState<double> state;
    EXPECT_THROW(layer.forwardTraining(Form::kRecurrent, x, batch, time, 0, state, y, cache),
                 InvalidArgument);
  }
  {
    auto reduced = w;
    for (auto* weight : {&reduced.q, &reduced.k, &reduced.v, &reduced.g})
      *weight = weight->converted(WeightType::kBf16);
    const Msr<double> bf16(layer.config(), reduced);
    MultiScaleRetentionState<double> state;
    EXPECT_THROW(bf16.forwardTraining(Form::kParallel, x, batch, time, 0, state, y, cache),
                 InvalidArgument);
    auto outOnly = w;
    outOnly.out = outOnly.out.converted(WeightType::kInt8);
    const Msr<double> int8(layer.config(), outOnly);
    EXPECT_THROW(int8.forwardTraining(Form::kParallel, x, batch, time, 0, state, y, cache),
                 InvalidArgument);
  }
  {
    MultiScaleRetentionState<double> state;
    RowMatrix<double> badX(batch * time + 1, D), badY(batch * time, D + 1);
    EXPECT_THROW(layer.forwardTraining(Form::kParallel, badX, batch, time, 0, state, y, cache),
                 InvalidArgument);
    EXPECT_THROW(layer.forwardTraining(Form::kParallel, x, batch, time, 0, state, badY, cache),
                 InvalidArgument);
    EXPECT_THROW(layer.forwardTraining(Form::kChunkwise, x, batch, time, 0, state, y, cache),
                 InvalidArgument);
    MultiScaleRetentionState<double> wrongBatch;
    layer.prepareState("test", batch + 1, wrongBatch);
    EXPECT_THROW(layer.forwardTraining(Form::kParallel, x, batch, time, 0, wrongBatch, y, cache),
                 InvalidArgument);
  }
  {
    auto grads = layer.zeroGradients();
    Msr<double>::TrainingCache empty;
    EXPECT_THROW(layer.backward(empty, y, dx, grads), InvalidArgument);
    MultiScaleRetentionState<double> state;
    layer.forwardTraining(Form::kParallel, x, batch, time, 0, state, y, cache);
    RowMatrix<double> badDy(batch * time, D + 1), badDx(batch * time - 1, D);
    EXPECT_THROW(layer.backward(cache, badDy, dx, grads), InvalidArgument);
    EXPECT_THROW(layer.backward(cache, y, badDx, grads), InvalidArgument);
    auto badGrads = grads;
    badGrads.q.resize(3, 3);
    EXPECT_THROW(layer.backward(cache, y, dx, badGrads), InvalidArgument);
    auto withNorm = grads;
    withNorm.headNorm.setZero(layer.config().headValueDim());
    EXPECT_THROW(layer.backward(cache, y, dx, withNorm), InvalidArgument);
    // a cache of another layer's shape
    const auto other = randomLayer(true, 1e-6, 140);
    EXPECT_THROW(other.backward(cache, y, dx, grads), InvalidArgument);
    // the same widths with one head: its cache's buffers are as large as this layer's or larger
    // (its state: 1·8·12 values per item against 2·4·6), so only the recorded shape tells
    MultiScaleRetentionConfig oneHead = layer.config();
    oneHead.heads = 1;
    const Msr<double> single(oneHead, w);
    Msr<double>::TrainingCache singleCache;
    MultiScaleRetentionState<double> singleState;
    single.forwardTraining(Form::kParallel, x, batch, time, 0, singleState, y, singleCache);
    RETNET_EXPECT_THROW_WITH(layer.backward(singleCache, y, dx, grads), InvalidArgument,
                             "another shape");
    EXPECT_NO_THROW(layer.backward(cache, y, dx, grads));
  }
}

// ---------------------------------------------------------------------------------------------
// RetNetBlock: finite differences, the training forward, accumulation, refusals.

/// A random small block of FLA's configuration: no torchscale normalisers, grouped key/value
/// heads, a head-norm weight, the SwiGLU MLP (fc1 = gate_proj, gate = up_proj, fc2 = down_proj).
RetNetBlockConfig flaBlockConfig(double eps) {
  const MultiScaleRetentionConfig r = MultiScaleRetentionConfig::fla(8, 2, 1, 4, 4, eps);
  RetNetBlockConfig c;
  c.embedDim = r.embedDim;
  c.valueDim = r.valueDim;
  c.heads = r.heads;
  c.ffnDim = 12;
  c.eps = eps;
  c.activation = Activation::kSwish;
  c.headKeyDim = r.headKeyDim;
  c.kvHeads = r.kvHeads;
  c.rotary = r.rotary;
  c.normalization = r.normalization;
  c.scaleSide = r.scaleSide;
  return c;
}

/// A block's weights as plain matrices, to perturb entry by entry (by checkpoint name).
struct PlainBlockWeights {
  std::map<std::string, RowMatrix<double>> m;

  RetNetBlockWeights<double> weights() const {
    RetNetBlockWeights<double> w;
    w.retention.q = m.at("retention.q_proj.weight");
    w.retention.k = m.at("retention.k_proj.weight");
    w.retention.v = m.at("retention.v_proj.weight");
    w.retention.g = m.at("retention.g_proj.weight");
    w.retention.out = m.at("retention.out_proj.weight");
    w.retention.headNorm = m.at("retention.g_norm_swish_gate.weight");
    w.retentionNorm = m.at("retention_layer_norm.weight");
    w.fc1 = m.at("ffn.fc1.weight");
    w.gate = m.at("ffn.gate.weight");
    w.fc2 = m.at("ffn.fc2.weight");
    w.finalNorm = m.at("final_layer_norm.weight");
    return w;
  }
};

PlainBlockWeights randomBlockWeights(const RetNetBlockConfig& c, std::uint64_t seed) {
  const MultiScaleRetentionConfig r = c.retention();
  const Index D = c.embedDim, V = c.valueDim, F = c.ffnDim, dk = r.keyDim(), dv = r.headValueDim();
  const Index kv = r.keyValueHeads();
  const double sd = 1.0 / std::sqrt(double(D));
  PlainBlockWeights p;
  p.m["retention.q_proj.weight"] = randomMatrix<double>(c.heads * dk, D, seed + 1, sd);
  p.m["retention.k_proj.weight"] = randomMatrix<double>(kv * dk, D, seed + 2, sd);
  p.m["retention.v_proj.weight"] = randomMatrix<double>(kv * dv, D, seed + 3, sd);
  p.m["retention.g_proj.weight"] = randomMatrix<double>(V, D, seed + 4, sd);
  p.m["retention.out_proj.weight"] =
      randomMatrix<double>(D, V, seed + 5, 1.0 / std::sqrt(double(V)));
  p.m["retention.g_norm_swish_gate.weight"] =
      RowMatrix<double>::Ones(dv, 1) + randomMatrix<double>(dv, 1, seed + 6, 0.3);
  p.m["retention_layer_norm.weight"] =
      RowMatrix<double>::Ones(D, 1) + randomMatrix<double>(D, 1, seed + 7, 0.3);
  p.m["ffn.fc1.weight"] = randomMatrix<double>(F, D, seed + 8, sd);
  p.m["ffn.gate.weight"] = randomMatrix<double>(F, D, seed + 9, sd);
  p.m["ffn.fc2.weight"] = randomMatrix<double>(D, F, seed + 10, 1.0 / std::sqrt(double(F)));
  p.m["final_layer_norm.weight"] =
      RowMatrix<double>::Ones(D, 1) + randomMatrix<double>(D, 1, seed + 11, 0.3);
  return p;
}

double blockLoss(const Block<double>& block, Form form, const RowMatrix<double>& x, Index batch,
                 Index time, Index chunk, const MultiScaleRetentionState<double>& initial,
                 const RowMatrix<double>& dy) {
  MultiScaleRetentionState<double> state = initial;
  if (state.empty()) block.prepareState("test", batch, state);
  RowMatrix<double> y(batch * time, block.config().embedDim);
  RetNetBlockScratch<double> scratch;
  block.forwardSlab(form, x, batch, time, chunk, state, y, scratch);
  return (y.array() * dy.array()).sum();
}

TEST(BlockBackwardFiniteDifferences, EveryWeightAndTheInput) {
  const RetNetBlockConfig config = flaBlockConfig(1e-6);
  PlainBlockWeights plain = randomBlockWeights(config, 200);
  const Block<double> base(config, plain.weights());
  const Index batch = 2, time = 5, D = config.embedDim;
  const auto x = randomMatrix<double>(batch * time, D, 201, 1.0);
  const auto dy = randomMatrix<double>(batch * time, D, 202, 1.0);
  MultiScaleRetentionState<double> prefixState;
  {
    const auto prefix =
        testing::toTensor<double>(testing::randomValues(batch * 3 * D, 203), batch, 3, D);
    base.forwardParallel(prefix, prefixState);
  }
  const double h = 1e-5;
  for (const bool fromPrefix : {false, true}) {
    const MultiScaleRetentionState<double> initial =
        fromPrefix ? prefixState : MultiScaleRetentionState<double>();
    for (const auto& [form, chunk] :
         {std::pair{Form::kParallel, Index(0)}, std::pair{Form::kChunkwise, Index(2)}}) {
      const std::string label = std::string(formName(form)) + (fromPrefix ? " after a prefix" : "");
      const auto step = trainStep(base, form, x, batch, time, chunk, dy, initial);
      const auto ours = namedGradients(step);
      EXPECT_EQ(ours.size(), plain.m.size() + 1) << label;
      for (auto& [name, matrix] : plain.m) {
        RowMatrix<double> numeric(matrix.size(), 1);
        for (Index i = 0; i < matrix.size(); ++i) {
          const double saved = matrix.data()[i];
          matrix.data()[i] = saved + h;
          const double plus = blockLoss(Block<double>(config, plain.weights()), form, x, batch,
                                        time, chunk, initial, dy);
          matrix.data()[i] = saved - h;
          const double minus = blockLoss(Block<double>(config, plain.weights()), form, x, batch,
                                         time, chunk, initial, dy);
          matrix.data()[i] = saved;
          numeric(i) = (plus - minus) / (2 * h);
        }
        ASSERT_EQ(ours.count(name), 1u) << label << " " << name;
        const RowMatrix<double>& g = ours.at(name);
        const RowMatrix<double> flat = Eigen::Map<const RowMatrix<double>>(g.data(), g.size(), 1);
        const double error = frobeniusError(flat, numeric);
        EXPECT_LE(error, 1e-6) << label << " " << name;
        std::printf("FD block %s %s: %.2e\n", label.c_str(), name.c_str(), error);
      }
      RowMatrix<double> xs = x;
      RowMatrix<double> numeric(xs.size(), 1);
      for (Index i = 0; i < xs.size(); ++i) {
        const double saved = xs.data()[i];
        xs.data()[i] = saved + h;
        const double plus = blockLoss(base, form, xs, batch, time, chunk, initial, dy);
        xs.data()[i] = saved - h;
        const double minus = blockLoss(base, form, xs, batch, time, chunk, initial, dy);
        xs.data()[i] = saved;
        numeric(i) = (plus - minus) / (2 * h);
      }
      const RowMatrix<double> flat =
          Eigen::Map<const RowMatrix<double>>(step.dx.data(), step.dx.size(), 1);
      const double error = frobeniusError(flat, numeric);
      EXPECT_LE(error, 1e-6) << label << " x";
      std::printf("FD block %s x: %.2e\n", label.c_str(), error);
    }
  }
}

/// A random small block: torchscale's configuration (gelu GLU), or FLA's with `fla`.
Block<double> randomBlock(bool fla, std::uint64_t seed) {
  if (fla)
    return Block<double>(flaBlockConfig(1e-6),
                         randomBlockWeights(flaBlockConfig(1e-6), seed).weights());
  RetNetBlockConfig c;
  c.embedDim = 8;
  c.valueDim = 12;
  c.heads = 2;
  c.ffnDim = 10;
  PlainBlockWeights p = randomBlockWeights(c, seed);
  RetNetBlockWeights<double> w = p.weights();
  w.retention.headNorm.resize(0);
  return Block<double>(c, w);
}

TEST(BlockBackward, TrainingForwardIsTheForwardBitForBit) {
  for (const bool fla : {false, true}) {
    expectTrainingForwardIsTheForward<Block<double>, RetNetBlockScratch<double>>(
        randomBlock(fla, 210), 211);
  }
}

TEST(BlockBackward, GradientsAccumulateAndTheCacheIsReused) {
  const auto block = randomBlock(true, 220);
  const Index batch = 2, time = 6, D = block.config().embedDim;
  const auto x = randomMatrix<double>(batch * time, D, 221, 1.0);
  const auto dy = randomMatrix<double>(batch * time, D, 222, 1.0);
  const auto once = trainStep(block, Form::kChunkwise, x, batch, time, 4, dy);
  Block<double>::TrainingCache cache;
  auto grads = block.zeroGradients();
  RowMatrix<double> y(batch * time, D), dx(batch * time, D);
  for (int pass = 0; pass < 2; ++pass) {
    MultiScaleRetentionState<double> state;
    block.forwardTraining(Form::kChunkwise, x, batch, time, 4, state, y, cache);
    block.backward(cache, dy, dx, grads);
  }
  EXPECT_TRUE(dx == once.dx);
  const auto a = namedGradients(once);
  Step<double, Block<double>> twice;
  twice.dx = dx;
  twice.grads = grads;
  const auto b = namedGradients(twice);
  EXPECT_EQ(a.size(), b.size());
  for (const auto& [name, g] : b) {
    if (name == "x") {
      continue;
    }
    EXPECT_LE(maxNormwise(g, 2 * a.at(name)), 1e-15) << name;
  }
  // dX may be dY's buffer
  RowMatrix<double> inPlace = dy;
  Block<double>::Gradients fresh;
  block.backward(cache, inPlace, inPlace, fresh);
  EXPECT_TRUE(inPlace == once.dx);
  grads.setZero();
  grads.forEach(
      [](const char* name, const auto& g) { EXPECT_EQ(g.cwiseAbs().maxCoeff(), 0.0) << name; });
}

// One workspace serves many blocks' caches, forwards then backwards in reverse order as a model
// runs them (LanguageModel's cache holds one for all its blocks): the same bits as each block in
// its own cache's workspace, whatever the other block left in the shared one.
TEST(BlockBackward, OneWorkspaceServesManyCaches) {
  const Block<double> first = randomBlock(false, 230), second = randomBlock(true, 231);
  const Index batch = 2, time = 7, rows = batch * time;
  const Index D1 = first.config().embedDim, D2 = second.config().embedDim;
  const auto x1 = randomMatrix<double>(rows, D1, 232, 1.0);
  const auto x2 = randomMatrix<double>(rows, D2, 233, 1.0);
  const auto dy1 = randomMatrix<double>(rows, D1, 234, 1.0);
  const auto dy2 = randomMatrix<double>(rows, D2, 235, 1.0);
  Block<double>::TrainingWorkspace shared;
  Block<double>::TrainingCache cache1, cache2;
  MultiScaleRetentionState<double> state1, state2;
  RowMatrix<double> y1(rows, D1), y2(rows, D2), dx1(rows, D1), dx2(rows, D2);
  Block<double>::Gradients grads1, grads2;
  first.forwardTraining(Form::kChunkwise, x1, batch, time, 3, state1, y1, cache1, shared);
  second.forwardTraining(Form::kParallel, x2, batch, time, 0, state2, y2, cache2, shared);
  second.backward(cache2, dy2, dx2, grads2, shared);
  first.backward(cache1, dy1, dx1, grads1, shared);
  const auto own1 = trainStep(first, Form::kChunkwise, x1, batch, time, 3, dy1);
  const auto own2 = trainStep(second, Form::kParallel, x2, batch, time, 0, dy2);
  EXPECT_TRUE(y1 == own1.y && y2 == own2.y);
  EXPECT_TRUE(dx1 == own1.dx && dx2 == own2.dx);
  for (const auto& [grads, own] :
       {std::pair{&grads1, &own1.grads}, std::pair{&grads2, &own2.grads}}) {
    std::vector<RowMatrix<double>> a, b;
    grads->forEach([&](const char*, const auto& g) { a.emplace_back(g); });
    own->forEach([&](const char*, const auto& g) { b.emplace_back(g); });
    EXPECT_TRUE(a == b);
  }
}

TEST(BlockBackward, RefusesWhatItCannotTrain) {
  const RetNetBlockConfig config = flaBlockConfig(1e-6);
  const PlainBlockWeights plain = randomBlockWeights(config, 230);
  const Block<double> block(config, plain.weights());
  const Index batch = 2, time = 4, D = config.embedDim;
  const auto x = randomMatrix<double>(batch * time, D, 231, 1.0);
  RowMatrix<double> y(batch * time, D), dx(batch * time, D);
  Block<double>::TrainingCache cache;
  {
    MultiScaleRetentionState<double> state;
    EXPECT_THROW(block.forwardTraining(Form::kRecurrent, x, batch, time, 0, state, y, cache),
                 InvalidArgument);
  }
  {
    const auto reducedBlock = [&](auto&& reduce) {
      RetNetBlockWeights<double> w = plain.weights();
      reduce(w);
      return Block<double>(config, w);
    };
    const std::vector<Block<double>> reduced = {
        reducedBlock([](RetNetBlockWeights<double>& w) {
          for (auto* weight : {&w.retention.q, &w.retention.k, &w.retention.v, &w.retention.g})
            *weight = weight->converted(WeightType::kBf16);
        }),
        reducedBlock([](RetNetBlockWeights<double>& w) {
          w.retention.out = w.retention.out.converted(WeightType::kInt8);
        }),
        reducedBlock([](RetNetBlockWeights<double>& w) {
          for (auto* weight : {&w.fc1, &w.gate}) *weight = weight->converted(WeightType::kBf16);
        }),
        reducedBlock(
            [](RetNetBlockWeights<double>& w) { w.fc2 = w.fc2.converted(WeightType::kInt8); }),
    };
    for (const auto& b : reduced) {
      MultiScaleRetentionState<double> state;
      EXPECT_THROW(b.forwardTraining(Form::kParallel, x, batch, time, 0, state, y, cache),
                   InvalidArgument);
    }
  }
  {
    MultiScaleRetentionState<double> state;
    RowMatrix<double> badX(batch * time + 1, D), badY(batch * time, D + 1);
    EXPECT_THROW(block.forwardTraining(Form::kParallel, badX, batch, time, 0, state, y, cache),
                 InvalidArgument);
    EXPECT_THROW(block.forwardTraining(Form::kParallel, x, batch, time, 0, state, badY, cache),
                 InvalidArgument);
    EXPECT_THROW(block.forwardTraining(Form::kChunkwise, x, batch, time, 0, state, y, cache),
                 InvalidArgument);
    EXPECT_THROW(block.forwardTraining(Form::kParallel, x, 0, time, 0, state, y, cache),
                 InvalidArgument);
    MultiScaleRetentionState<double> wrongBatch;
    block.prepareState("test", batch + 1, wrongBatch);
    EXPECT_THROW(block.forwardTraining(Form::kParallel, x, batch, time, 0, wrongBatch, y, cache),
                 InvalidArgument);
  }
  {
    auto grads = block.zeroGradients();
    Block<double>::TrainingCache empty;
    EXPECT_THROW(block.backward(empty, y, dx, grads), InvalidArgument);
    MultiScaleRetentionState<double> state;
    block.forwardTraining(Form::kParallel, x, batch, time, 0, state, y, cache);
    RowMatrix<double> badDy(batch * time, D + 1), badDx(batch * time - 1, D);
    EXPECT_THROW(block.backward(cache, badDy, dx, grads), InvalidArgument);
    EXPECT_THROW(block.backward(cache, y, badDx, grads), InvalidArgument);
    for (const char* field : {"retention.q_proj.weight", "ffn.gate.weight",
                              "final_layer_norm.weight", "retention.g_norm_swish_gate.weight"}) {
      auto bad = grads;
      bad.forEach([&](const char* name, auto& g) {
        if (std::string(field) == name) {
          g.setZero(g.size() + 1, 1);
        }
      });
      const auto before = namedGradients(Step<double, Block<double>>{y, dx, bad, {}});
      EXPECT_THROW(block.backward(cache, y, dx, bad), InvalidArgument) << field;
      // nothing written before the refusal
      const auto after = namedGradients(Step<double, Block<double>>{y, dx, bad, {}});
      for (const auto& [name, g] : before) {
        EXPECT_TRUE(after.at(name) == g) << field << ": " << name;
      }
    }
    // a cache of another block's shape
    const auto other = randomBlock(false, 240);
    EXPECT_THROW(other.backward(cache, y, dx, grads), InvalidArgument);
    // a wider FFN's cache: every buffer large enough, only the recorded F tells
    RetNetBlockConfig widerConfig = config;
    widerConfig.ffnDim += 4;
    const Block<double> wider(widerConfig, randomBlockWeights(widerConfig, 250).weights());
    Block<double>::TrainingCache widerCache;
    MultiScaleRetentionState<double> widerState;
    wider.forwardTraining(Form::kParallel, x, batch, time, 0, widerState, y, widerCache);
    RETNET_EXPECT_THROW_WITH(block.backward(widerCache, y, dx, grads), InvalidArgument,
                             "another FFN width");
    EXPECT_NO_THROW(block.backward(cache, y, dx, grads));
  }
}

}  // namespace
}  // namespace retnet
