// The same loading and checking code as for the torchscale golden files, on files of the same
// format with other dimensions: written here with random weights, their outputs computed by the
// independent naive oracle (tests/reference/naive_msr.hpp, itself checked against torchscale's
// files in test_reference_golden). Covers what docs/semantics/torchscale.md §2.4 says acceptance
// files vary: heads 1 and 8, value dim = embed dim, T = 1, T not a multiple of the chunk, chunk 1,
// chunk > T, batch 3, eps 1e-5, swish FFN, and a long sequence.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "golden_check.hpp"
#include "reference/naive_msr.hpp"

namespace retnet {
namespace {

using reference::NaiveForm;

struct Variant {
  const char* name;
  bool block;  // RetNet block (kind "layer") or multi-scale retention alone (kind "msr")
  long embedDim, valueDim, heads, ffnDim, batch, time, chunk;
  double eps;
  bool swish;
};

std::vector<double> randomWeights(long rows, long cols, std::uint64_t seed) {
  // Scaled like PyTorch's default init so activations stay O(1) through the layers.
  return testing::randomValues(static_cast<std::size_t>(rows * cols), seed,
                               1.0 / std::sqrt(static_cast<double>(cols)));
}

/// A file in torchscale's golden format for `v`, outputs from the naive oracle.
io::SafetensorsFile makeFile(const Variant& v, std::uint64_t seed) {
  const long D = v.embedDim, V = v.valueDim, H = v.heads, F = v.ffnDim, dk = D / H;
  reference::NaiveLayerWeights w;
  w.msr = {D,
           V,
           H,
           v.eps,
           randomWeights(D, D, seed),
           randomWeights(D, D, seed + 1),
           randomWeights(V, D, seed + 2),
           randomWeights(V, D, seed + 3),
           randomWeights(D, V, seed + 4)};
  w.ffnDim = F;
  w.swish = v.swish;
  w.retentionNorm = testing::randomValues(static_cast<std::size_t>(D), seed + 5, 0.1);
  w.finalNorm = testing::randomValues(static_cast<std::size_t>(D), seed + 6, 0.1);
  for (std::size_t i = 0; i < w.retentionNorm.size(); ++i) {
    w.retentionNorm[i] += 1.0;
    w.finalNorm[i] += 1.0;
  }
  w.fc1 = randomWeights(F, D, seed + 7);
  w.gate = randomWeights(F, D, seed + 8);
  w.fc2 = randomWeights(D, F, seed + 9);
  const std::vector<double> x =
      testing::randomValues(static_cast<std::size_t>(v.batch * v.time * D), seed + 10);

  io::SafetensorsWriter writer;
  writer.addMetadata("kind", v.block ? "layer" : "msr");
  writer.addMetadata("embed_dim", std::to_string(D));
  writer.addMetadata("value_dim", std::to_string(V));
  writer.addMetadata("heads", std::to_string(H));
  writer.addMetadata("layernorm_eps", std::to_string(v.eps));
  writer.addMetadata("chunk_size", std::to_string(v.chunk));
  writer.addMetadata("gate_fn", "swish");
  const std::string prefix = v.block ? "retention." : "";
  writer.addTensor("x", io::Dtype::F64, {v.batch, v.time, D}, x.data());
  writer.addTensor(prefix + "q_proj.weight", io::Dtype::F64, {D, D}, w.msr.q.data());
  writer.addTensor(prefix + "k_proj.weight", io::Dtype::F64, {D, D}, w.msr.k.data());
  writer.addTensor(prefix + "v_proj.weight", io::Dtype::F64, {V, D}, w.msr.v.data());
  writer.addTensor(prefix + "g_proj.weight", io::Dtype::F64, {V, D}, w.msr.g.data());
  writer.addTensor(prefix + "out_proj.weight", io::Dtype::F64, {D, V}, w.msr.out.data());
  const std::vector<double> angle = reference::naiveAngle(dk), decay = reference::naiveLogDecay(H);
  writer.addTensor("angle", io::Dtype::F64, {dk}, angle.data());
  writer.addTensor("decay", io::Dtype::F64, {H}, decay.data());
  if (v.block) {
    writer.addMetadata("ffn_dim", std::to_string(F));
    writer.addMetadata("activation_fn", v.swish ? "swish" : "gelu");
    writer.addTensor("retention_layer_norm.weight", io::Dtype::F64, {D}, w.retentionNorm.data());
    writer.addTensor("ffn.fc1.weight", io::Dtype::F64, {F, D}, w.fc1.data());
    writer.addTensor("ffn.gate.weight", io::Dtype::F64, {F, D}, w.gate.data());
    writer.addTensor("ffn.fc2.weight", io::Dtype::F64, {D, F}, w.fc2.data());
    writer.addTensor("final_layer_norm.weight", io::Dtype::F64, {D}, w.finalNorm.data());
  }
  const std::pair<NaiveForm, const char*> forms[] = {{NaiveForm::kParallel, "out_parallel"},
                                                     {NaiveForm::kChunkwise, "out_chunkwise"},
                                                     {NaiveForm::kRecurrent, "out_recurrent"}};
  for (const auto& [form, name] : forms) {
    const std::vector<double> y =
        v.block ? reference::naiveLayer(w, x, v.batch, v.time, form, v.chunk)
                : reference::naiveMsr(w.msr, x, v.batch, v.time, form, v.chunk);
    writer.addTensor(name, io::Dtype::F64, {v.batch, v.time, D}, y.data());
  }
  return io::SafetensorsFile::fromBytes(writer.bytes(), v.name);
}

const Variant kVariants[] = {
    // name                      block   D    V  H   F  B    T  chunk  eps  swish
    {"msr heads=1", false, 16, 32, 1, 0, 2, 19, 8, 1e-6, false},
    {"msr heads=8 V=D", false, 64, 64, 8, 0, 2, 21, 4, 1e-6, false},
    {"msr T=1", false, 32, 64, 4, 0, 2, 1, 8, 1e-6, false},
    {"msr chunk=1 batch=3", false, 32, 64, 2, 0, 3, 13, 1, 1e-6, false},
    {"msr chunk>T eps=1e-5", false, 32, 32, 4, 0, 1, 11, 16, 1e-5, false},
    {"layer heads=8 swish", true, 64, 128, 8, 96, 2, 23, 8, 1e-6, true},
    {"layer V=D T%chunk!=0 batch=3", true, 32, 32, 2, 64, 3, 30, 7, 1e-5, false},
    {"layer heads=1 chunk=1", true, 16, 32, 1, 48, 1, 9, 1, 1e-6, true},
    {"layer T=1", true, 32, 64, 4, 64, 2, 1, 8, 1e-6, false},
    {"layer long T=1024", true, 32, 64, 4, 64, 1, 1024, 64, 1e-5, false},
};

template <typename Scalar>
class LayerVariants : public ::testing::Test {};
TYPED_TEST_SUITE(LayerVariants, testing::Scalars, testing::ScalarName);

TYPED_TEST(LayerVariants, EveryFormMatchesTheOracleInEveryConfiguration) {
  std::uint64_t seed = 1000;
  for (const Variant& v : kVariants) {
    SCOPED_TRACE(v.name);
    testing::checkGoldenLayerFile<TypeParam>(makeFile(v, seed += 100));
  }
}

}  // namespace
}  // namespace retnet
