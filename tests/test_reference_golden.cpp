// The naive double-precision oracle (tests/reference/naive_msr.hpp) against the torchscale golden
// files in tests/data: MultiScaleRetention, DecoderLayer and RetNetDecoder, each in the parallel,
// chunkwise and recurrent forms, compared form for form at 1e-9 normwise relative error
// (docs/semantics/torchscale.md §4: an exact float64 re-implementation lands at ~1e-15). Every
// dimension comes from the file's metadata and tensor shapes. Also: the stored rotary `angle` and
// `decay` buffers against the oracle's own, and a long-sequence (T = 1024) self-consistency check
// of the forms.
#include "reference/naive_msr.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <iostream>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "retnet/io/safetensors.hpp"
#include "test_util.hpp"

namespace {

using retnet::io::SafetensorsFile;
using retnet::reference::NaiveDecoderWeights;
using retnet::reference::NaiveForm;
using retnet::reference::NaiveLayerWeights;
using retnet::reference::NaiveMsrWeights;
using retnet::testing::normwiseError;

constexpr double kGoldenTolerance = 1e-9;
constexpr double kBufferTolerance = 1e-15;

std::string dataPath(const std::string& file) {
  return std::string(RETNET_TEST_DATA_DIR) + "/" + file;
}

struct FormCase {
  NaiveForm form;
  const char* name;
};
constexpr FormCase kForms[] = {{NaiveForm::kParallel, "parallel"},
                               {NaiveForm::kChunkwise, "chunkwise"},
                               {NaiveForm::kRecurrent, "recurrent"}};

std::string metadataString(const SafetensorsFile& file, const std::string& key) {
  const std::optional<std::string> value = file.metadataValue(key);
  if (!value) throw std::runtime_error(file.displayName() + ": no metadata key '" + key + "'");
  return *value;
}
long metadataLong(const SafetensorsFile& file, const std::string& key) {
  return std::stol(metadataString(file, key));
}
double metadataDouble(const SafetensorsFile& file, const std::string& key) {
  return std::stod(metadataString(file, key));
}

std::vector<long> shapeOf(const SafetensorsFile& file, const std::string& name) {
  const auto& shape = file.info(name).shape;
  return std::vector<long>(shape.begin(), shape.end());
}

/// The file's dimensions, from metadata, cross-checked against the tensor shapes.
struct Dims {
  long D, V, H, T, B, C;
  double eps;
};

Dims readDims(const SafetensorsFile& file, const std::string& prefix) {
  Dims d{};
  d.D = metadataLong(file, "embed_dim");
  d.V = metadataLong(file, "value_dim");
  d.H = metadataLong(file, "heads");
  d.T = metadataLong(file, "seq_len");
  d.B = metadataLong(file, "batch");
  d.C = metadataLong(file, "chunk_size");
  d.eps = metadataDouble(file, "layernorm_eps");
  EXPECT_EQ(metadataDouble(file, "group_norm_eps"), d.eps);
  EXPECT_EQ(metadataLong(file, "key_dim"), d.D / d.H);
  EXPECT_EQ(metadataLong(file, "head_dim"), d.V / d.H);
  EXPECT_EQ(metadataString(file, "gate_fn"), "swish");
  EXPECT_EQ(shapeOf(file, prefix + "q_proj.weight"), (std::vector<long>{d.D, d.D}));
  EXPECT_EQ(shapeOf(file, prefix + "k_proj.weight"), (std::vector<long>{d.D, d.D}));
  EXPECT_EQ(shapeOf(file, prefix + "v_proj.weight"), (std::vector<long>{d.V, d.D}));
  EXPECT_EQ(shapeOf(file, prefix + "g_proj.weight"), (std::vector<long>{d.V, d.D}));
  EXPECT_EQ(shapeOf(file, prefix + "out_proj.weight"), (std::vector<long>{d.D, d.V}));
  return d;
}

/// MSR weights under `prefix` ("" for msr files, "retention." / "layers.{i}.retention." else).
NaiveMsrWeights readMsr(const SafetensorsFile& file, const Dims& d, const std::string& prefix) {
  NaiveMsrWeights w;
  w.embedDim = d.D;
  w.valueDim = d.V;
  w.heads = d.H;
  w.eps = d.eps;
  w.q = file.readFlat<double>(prefix + "q_proj.weight");
  w.k = file.readFlat<double>(prefix + "k_proj.weight");
  w.v = file.readFlat<double>(prefix + "v_proj.weight");
  w.g = file.readFlat<double>(prefix + "g_proj.weight");
  w.out = file.readFlat<double>(prefix + "out_proj.weight");
  return w;
}

/// Layer weights under `prefix` ("" for layer files, "layers.{i}." for decoder files).
NaiveLayerWeights readLayer(const SafetensorsFile& file, const Dims& d, const std::string& prefix) {
  NaiveLayerWeights w;
  w.msr = readMsr(file, d, prefix + "retention.");
  w.ffnDim = metadataLong(file, "ffn_dim");
  const std::string activation = metadataString(file, "activation_fn");
  EXPECT_TRUE(activation == "gelu" || activation == "swish") << activation;
  w.swish = activation == "swish";
  const long F = w.ffnDim;
  EXPECT_EQ(shapeOf(file, prefix + "ffn.fc1.weight"), (std::vector<long>{F, d.D}));
  EXPECT_EQ(shapeOf(file, prefix + "ffn.gate.weight"), (std::vector<long>{F, d.D}));
  EXPECT_EQ(shapeOf(file, prefix + "ffn.fc2.weight"), (std::vector<long>{d.D, F}));
  EXPECT_EQ(shapeOf(file, prefix + "retention_layer_norm.weight"), (std::vector<long>{d.D}));
  EXPECT_EQ(shapeOf(file, prefix + "final_layer_norm.weight"), (std::vector<long>{d.D}));
  w.retentionNorm = file.readFlat<double>(prefix + "retention_layer_norm.weight");
  w.fc1 = file.readFlat<double>(prefix + "ffn.fc1.weight");
  w.gate = file.readFlat<double>(prefix + "ffn.gate.weight");
  w.fc2 = file.readFlat<double>(prefix + "ffn.fc2.weight");
  w.finalNorm = file.readFlat<double>(prefix + "final_layer_norm.weight");
  return w;
}

/// The stored rotary/decay buffers against the oracle's own (docs/semantics/torchscale.md §3.1).
void checkBuffers(const SafetensorsFile& file, const Dims& d, const std::string& angleName,
                  const std::string& decayName) {
  const long dk = d.D / d.H;
  EXPECT_EQ(shapeOf(file, angleName), (std::vector<long>{dk}));
  EXPECT_EQ(shapeOf(file, decayName), (std::vector<long>{d.H}));
  const std::vector<double> angle = file.readFlat<double>(angleName);
  const std::vector<double> decay = file.readFlat<double>(decayName);
  const std::vector<double> ownAngle = retnet::reference::naiveAngle(dk);
  const std::vector<double> ownDecay = retnet::reference::naiveLogDecay(d.H);
  ASSERT_EQ(ownAngle.size(), angle.size());
  ASSERT_EQ(ownDecay.size(), decay.size());
  const double angleError = normwiseError(ownAngle.data(), angle.data(), angle.size());
  const double decayError = normwiseError(ownDecay.data(), decay.data(), decay.size());
  std::cout << "  " << file.displayName() << ": angle error " << angleError << ", decay error "
            << decayError << "\n";
  EXPECT_LE(angleError, kBufferTolerance);
  EXPECT_LE(decayError, kBufferTolerance);
}

/// Compares y with the golden tensor `name` (shape checked first) and prints the error.
void expectGolden(const SafetensorsFile& file, const std::string& name,
                  const std::vector<long>& shape, const std::vector<double>& y) {
  ASSERT_EQ(shapeOf(file, name), shape) << name;
  const std::vector<double> ref = file.readFlat<double>(name);
  ASSERT_EQ(y.size(), ref.size()) << name;
  const double error = normwiseError(y.data(), ref.data(), ref.size());
  std::cout << "  " << name << ": normwise relative error " << error << "\n";
  EXPECT_LE(error, kGoldenTolerance) << name;
}

// A layer-level golden file (kind msr or layer): the naive oracle, in every form, against the
// file's outputs.
template <typename Read, typename Naive>
void checkLayerFile(const char* fileName, const char* kind, const char* retentionPrefix, Read read,
                    Naive naive) {
  const SafetensorsFile file = SafetensorsFile::open(dataPath(fileName));
  EXPECT_EQ(metadataString(file, "kind"), kind);
  const Dims d = readDims(file, retentionPrefix);
  checkBuffers(file, d, "angle", "decay");
  const auto w = read(file, d, "");
  ASSERT_EQ(shapeOf(file, "x"), (std::vector<long>{d.B, d.T, d.D}));
  const std::vector<double> x = file.readFlat<double>("x");
  for (const FormCase& form : kForms) {
    SCOPED_TRACE(form.name);
    const std::vector<double> y = naive(w, x, d.B, d.T, form.form, d.C);
    expectGolden(file, std::string("out_") + form.name, {d.B, d.T, d.D}, y);
  }
}

TEST(ReferenceGolden, MultiScaleRetention) {
  checkLayerFile("msr_small.safetensors", "msr", "", readMsr,
                 [](const auto&... args) { return retnet::reference::naiveMsr(args...); });
}

TEST(ReferenceGolden, DecoderLayer) {
  checkLayerFile("layer_small.safetensors", "layer", "retention.", readLayer,
                 [](const auto&... args) { return retnet::reference::naiveLayer(args...); });
}

TEST(ReferenceGolden, Decoder) {
  const SafetensorsFile file = SafetensorsFile::open(dataPath("decoder_small.safetensors"));
  EXPECT_EQ(metadataString(file, "kind"), "decoder");
  const Dims d = readDims(file, "layers.0.retention.");
  checkBuffers(file, d, "retnet_rel_pos.angle", "retnet_rel_pos.decay");
  const long layers = metadataLong(file, "layers");
  NaiveDecoderWeights w;
  w.vocab = metadataLong(file, "vocab");
  w.embedScale = metadataDouble(file, "embed_scale");
  EXPECT_EQ(metadataString(file, "no_scale_embedding"), "True");
  EXPECT_EQ(metadataLong(file, "padded_len_chunkwise"), (d.T + d.C - 1) / d.C * d.C);
  for (long l = 0; l < layers; ++l) {
    w.layers.push_back(readLayer(file, d, "layers." + std::to_string(l) + "."));
  }
  EXPECT_FALSE(file.contains("layers." + std::to_string(layers) + ".ffn.fc1.weight"));
  ASSERT_EQ(shapeOf(file, "embed_tokens.weight"), (std::vector<long>{w.vocab, d.D}));
  ASSERT_EQ(shapeOf(file, "layer_norm.weight"), (std::vector<long>{d.D}));
  ASSERT_EQ(shapeOf(file, "output_projection.weight"), (std::vector<long>{w.vocab, d.D}));
  w.embed = file.readFlat<double>("embed_tokens.weight");
  w.finalNorm = file.readFlat<double>("layer_norm.weight");
  w.outputProjection = file.readFlat<double>("output_projection.weight");
  ASSERT_EQ(shapeOf(file, "tokens"), (std::vector<long>{d.B, d.T}));
  const std::vector<std::int64_t> ids = file.readIntegers("tokens");
  const std::vector<long> tokens(ids.begin(), ids.end());
  for (const FormCase& form : kForms) {
    SCOPED_TRACE(form.name);
    const std::vector<double> logits =
        retnet::reference::naiveDecoder(w, tokens, d.B, d.T, form.form, d.C);
    expectGolden(file, std::string("logits_") + form.name, {d.B, d.T, w.vocab}, logits);
  }
}

// ---------------------------------------------------------------------------------------------
// Self-consistency at T = 1024 (the length acceptance files use): with the group-norm eps ~ 0
// every form divides out its own positive factor, so the three forms must agree to rounding
// (docs/semantics/torchscale.md §4: ≤ 4e-15 in torchscale). This exercises the chunkwise
// (R, sigma) and recurrent (S, n) states far beyond the golden files' 32 positions, including
// padding (T % chunk != 0).

NaiveLayerWeights randomLayer(long D, long V, long H, long F, bool swish, double eps,
                              std::uint64_t seed) {
  using retnet::testing::randomValues;
  NaiveLayerWeights w;
  w.msr.embedDim = D;
  w.msr.valueDim = V;
  w.msr.heads = H;
  w.msr.eps = eps;
  const double s = 1.0 / std::sqrt(static_cast<double>(D));
  w.msr.q = randomValues(static_cast<std::size_t>(D * D), seed + 1, s);
  w.msr.k = randomValues(static_cast<std::size_t>(D * D), seed + 2, s);
  w.msr.v = randomValues(static_cast<std::size_t>(V * D), seed + 3, s);
  w.msr.g = randomValues(static_cast<std::size_t>(V * D), seed + 4, s);
  w.msr.out = randomValues(static_cast<std::size_t>(D * V), seed + 5, 1.0 / std::sqrt(double(V)));
  w.ffnDim = F;
  w.swish = swish;
  w.retentionNorm = randomValues(static_cast<std::size_t>(D), seed + 6, 0.1);
  w.finalNorm = randomValues(static_cast<std::size_t>(D), seed + 7, 0.1);
  for (double& value : w.retentionNorm) value += 1.0;
  for (double& value : w.finalNorm) value += 1.0;
  w.fc1 = randomValues(static_cast<std::size_t>(F * D), seed + 8, s);
  w.gate = randomValues(static_cast<std::size_t>(F * D), seed + 9, s);
  w.fc2 = randomValues(static_cast<std::size_t>(D * F), seed + 10, 1.0 / std::sqrt(double(F)));
  return w;
}

TEST(ReferenceSelfConsistency, LongSequenceFormsAgreeWithoutGroupNormEps) {
  const long D = 32, V = 64, H = 4, F = 64, B = 1, T = 1000, C = 64;  // 1000 % 64 != 0: padded.
  const NaiveLayerWeights w = randomLayer(D, V, H, F, true, 1e-300, 77);
  const std::vector<double> x = retnet::testing::randomValues(std::size_t(B * T * D), 78);
  using retnet::reference::naiveLayer;
  const std::vector<double> parallel = naiveLayer(w, x, B, T, NaiveForm::kParallel);
  const std::vector<double> chunkwise = naiveLayer(w, x, B, T, NaiveForm::kChunkwise, C);
  const std::vector<double> recurrent = naiveLayer(w, x, B, T, NaiveForm::kRecurrent);
  const double chunkError = normwiseError(chunkwise.data(), parallel.data(), parallel.size());
  const double recurrentError = normwiseError(recurrent.data(), parallel.data(), parallel.size());
  std::cout << "  T=" << T << " eps=1e-300: chunkwise vs parallel " << chunkError
            << ", recurrent vs parallel " << recurrentError << "\n";
  EXPECT_LE(chunkError, 1e-12);
  EXPECT_LE(recurrentError, 1e-12);
}

TEST(ReferenceSelfConsistency, EdgeShapesFormsAgreeWithoutGroupNormEps) {
  // heads = 1 and 8, value_dim = embed_dim and 2·embed_dim, dk = 2 (a single rotary pair, exponent
  // 0), T = 1, chunk 1, chunk > T, T not a multiple of the chunk, B = 3.
  struct Case {
    long D, V, H, B, T, C;
  };
  const Case cases[] = {{16, 16, 1, 3, 9, 1},  {32, 64, 8, 2, 5, 16}, {16, 32, 8, 1, 1, 4},
                        {24, 24, 3, 2, 13, 4}, {8, 8, 4, 3, 17, 5},   {16, 32, 2, 1, 40, 40},
                        {16, 16, 4, 2, 33, 32}};
  for (const Case& c : cases) {
    SCOPED_TRACE("D=" + std::to_string(c.D) + " V=" + std::to_string(c.V) +
                 " H=" + std::to_string(c.H) + " B=" + std::to_string(c.B) +
                 " T=" + std::to_string(c.T) + " C=" + std::to_string(c.C));
    const NaiveMsrWeights w = randomLayer(c.D, c.V, c.H, 8, false, 1e-300, 5).msr;
    const std::vector<double> x =
        retnet::testing::randomValues(std::size_t(c.B * c.T * c.D), 6, 3.0);
    using retnet::reference::naiveMsr;
    const std::vector<double> parallel = naiveMsr(w, x, c.B, c.T, NaiveForm::kParallel);
    const std::vector<double> chunkwise = naiveMsr(w, x, c.B, c.T, NaiveForm::kChunkwise, c.C);
    const std::vector<double> recurrent = naiveMsr(w, x, c.B, c.T, NaiveForm::kRecurrent);
    EXPECT_LE(normwiseError(chunkwise.data(), parallel.data(), parallel.size()), 1e-12);
    EXPECT_LE(normwiseError(recurrent.data(), parallel.data(), parallel.size()), 1e-12);
  }
  EXPECT_EQ(retnet::reference::naiveFrequencies(2), std::vector<double>{1.0});
}

TEST(ReferenceSelfConsistency, LongSequenceDecoderFormsAgreeWithinFormGap) {
  // T = 1024 with the usual eps: forms differ only by the eps effect (docs/semantics/torchscale.md
  // §4: ~1e-4 at most).
  const long D = 32, V = 32, H = 2, F = 64, B = 2, T = 1024, C = 100, Voc = 40;
  NaiveDecoderWeights w;
  w.vocab = Voc;
  w.embed = retnet::testing::randomValues(std::size_t(Voc * D), 90);
  w.outputProjection = retnet::testing::randomValues(std::size_t(Voc * D), 91, 0.2);
  w.finalNorm = std::vector<double>(std::size_t(D), 1.0);
  w.layers.push_back(randomLayer(D, V, H, F, false, 1e-6, 92));
  w.layers.push_back(randomLayer(D, V, H, F, true, 1e-6, 93));
  std::mt19937_64 rng(94);
  std::vector<long> tokens(std::size_t(B * T));
  for (long& token : tokens) token = static_cast<long>(rng() % std::uint64_t(Voc));
  using retnet::reference::naiveDecoder;
  const std::vector<double> parallel = naiveDecoder(w, tokens, B, T, NaiveForm::kParallel);
  const std::vector<double> chunkwise = naiveDecoder(w, tokens, B, T, NaiveForm::kChunkwise, C);
  const std::vector<double> recurrent = naiveDecoder(w, tokens, B, T, NaiveForm::kRecurrent);
  const double chunkError = normwiseError(chunkwise.data(), parallel.data(), parallel.size());
  const double recurrentError = normwiseError(recurrent.data(), parallel.data(), parallel.size());
  std::cout << "  decoder T=" << T << ": chunkwise vs parallel " << chunkError
            << ", recurrent vs parallel " << recurrentError << "\n";
  EXPECT_LE(chunkError, 1e-3);
  EXPECT_LE(recurrentError, 1e-3);
}

}  // namespace
