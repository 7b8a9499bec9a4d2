// The RetNet language model: torchscale's decoder logits in every form, chunkwise prefill then
// recurrent decoding, generation and sampling, saved states.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "golden_check.hpp"
#include "reference/naive_msr.hpp"
#include "retnet/io/checkpoint.hpp"
#include "retnet/io/state_file.hpp"
#include "test_util.hpp"

namespace retnet {
namespace {

using testing::goldenTolerance;
using testing::normwiseError;

const io::SafetensorsFile& decoderFile() {
  static const io::SafetensorsFile file =
      io::SafetensorsFile::open(std::string(RETNET_TEST_DATA_DIR) + "/decoder_small.safetensors");
  return file;
}

TokenMatrix tokensOf(const io::SafetensorsFile& file) {
  const auto& shape = file.info("tokens").shape;
  const std::vector<std::int64_t> ids = file.readIntegers("tokens");
  return TokenMatrix::Map(ids.data(), shape.at(0), shape.at(1));
}

/// Rows [begin, end) of every batch item of logits (B, T, V), flattened.
template <typename Scalar>
std::vector<double> rows(const Tensor3<Scalar>& logits, Index begin, Index end) {
  std::vector<double> out;
  for (Index b = 0; b < logits.dimension(0); ++b)
    for (Index t = begin; t < end; ++t)
      for (Index v = 0; v < logits.dimension(2); ++v)
        out.push_back(static_cast<double>(logits(b, t, v)));
  return out;
}
std::vector<double> goldenRows(const char* name, Index begin, Index end) {
  return rows(decoderFile().readTensor<double, 3>(name), begin, end);
}

/// Checks a decoder file's three logits tensors against the model it describes.
template <typename Scalar>
void checkDecoderFile(const io::SafetensorsFile& file) {
  const auto model = io::loadRetNetModel<Scalar>(file);
  const TokenMatrix tokens = tokensOf(file);
  const Index chunk = std::stol(file.metadataValue("chunk_size").value_or("8"));
  const std::pair<Form, const char*> forms[] = {{Form::kParallel, "logits_parallel"},
                                                {Form::kChunkwise, "logits_chunkwise"},
                                                {Form::kRecurrent, "logits_recurrent"}};
  for (const auto& [form, name] : forms) {
    const Tensor3<Scalar> logits = form == Form::kParallel ? model.forwardParallel(tokens)
                                   : form == Form::kChunkwise
                                       ? model.forwardChunkwise(tokens, chunk)
                                       : model.forwardRecurrent(tokens);
    const double error = normwiseError(logits, file.readFlat<double>(name));
    std::printf("%s %s %s: normwise error %.2e\n", file.displayName().c_str(), formName(form),
                std::is_same_v<Scalar, double> ? "double" : "float", error);
    EXPECT_LE(error, goldenTolerance<Scalar>()) << file.displayName() << " " << name;
  }
}

template <typename Scalar>
class Model : public ::testing::Test {};
TYPED_TEST_SUITE(Model, testing::Scalars, testing::ScalarName);

TYPED_TEST(Model, LogitsMatchTorchscaleInEveryForm) {
  const RetNetModelConfig config = io::readRetNetModelConfig(decoderFile());
  EXPECT_EQ(config.layers, 2);
  EXPECT_EQ(config.vocab, 50);
  EXPECT_EQ(config.embedScale, 1.0);
  EXPECT_FALSE(config.tiedEmbedding);
  checkDecoderFile<TypeParam>(decoderFile());  // T = 27 is not a multiple of the chunk (8)
}

// Every decoder file in tests/data, whatever its dimensions.
TYPED_TEST(Model, EveryDecoderFileInTheDataFolder) {
  int checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator(RETNET_TEST_DATA_DIR)) {
    if (entry.path().extension() != ".safetensors") continue;
    const auto file = io::SafetensorsFile::open(entry.path().string());
    if (file.metadataValue("kind").value_or("") != "decoder") continue;
    checkDecoderFile<TypeParam>(file);
    ++checked;
  }
  EXPECT_GE(checked, 1);
}

// Decoder files of the golden format with other shapes, logits from the naive float64 oracle:
// 3 layers, 8 heads, swish, V = D, T = 1, chunk 1, chunk > T, batch 3, eps 1e-5, tied embedding.
struct DecoderVariant {
  const char* name;
  long layers, embedDim, valueDim, heads, ffnDim, vocab, batch, time, chunk;
  double eps;
  bool swish, tied;
};

io::SafetensorsFile makeDecoderFile(const DecoderVariant& v, std::uint64_t seed) {
  const long D = v.embedDim, V = v.valueDim, F = v.ffnDim;
  const auto weights = [&](long rows, long cols) {
    return testing::randomValues(static_cast<std::size_t>(rows * cols), ++seed,
                                 1.0 / std::sqrt(static_cast<double>(cols)));
  };
  const auto norm = [&](long size) {
    std::vector<double> w = testing::randomValues(static_cast<std::size_t>(size), ++seed, 0.1);
    for (double& x : w) x += 1.0;
    return w;
  };
  reference::NaiveDecoderWeights w;
  w.vocab = v.vocab;
  w.embed = testing::randomValues(static_cast<std::size_t>(v.vocab * D), ++seed);
  w.finalNorm = norm(D);
  w.outputProjection = v.tied ? w.embed : weights(v.vocab, D);
  io::SafetensorsWriter writer;
  for (long l = 0; l < v.layers; ++l) {
    reference::NaiveLayerWeights layer;
    layer.msr = {D,
                 V,
                 v.heads,
                 v.eps,
                 weights(D, D),
                 weights(D, D),
                 weights(V, D),
                 weights(V, D),
                 weights(D, V)};
    layer.ffnDim = F;
    layer.swish = v.swish;
    layer.retentionNorm = norm(D);
    layer.fc1 = weights(F, D);
    layer.gate = weights(F, D);
    layer.fc2 = weights(D, F);
    layer.finalNorm = norm(D);
    const std::string p = "layers." + std::to_string(l) + ".";
    writer.addTensor(p + "retention.q_proj.weight", io::Dtype::F64, {D, D}, layer.msr.q.data());
    writer.addTensor(p + "retention.k_proj.weight", io::Dtype::F64, {D, D}, layer.msr.k.data());
    writer.addTensor(p + "retention.v_proj.weight", io::Dtype::F64, {V, D}, layer.msr.v.data());
    writer.addTensor(p + "retention.g_proj.weight", io::Dtype::F64, {V, D}, layer.msr.g.data());
    writer.addTensor(p + "retention.out_proj.weight", io::Dtype::F64, {D, V}, layer.msr.out.data());
    writer.addTensor(p + "retention_layer_norm.weight", io::Dtype::F64, {D},
                     layer.retentionNorm.data());
    writer.addTensor(p + "ffn.fc1.weight", io::Dtype::F64, {F, D}, layer.fc1.data());
    writer.addTensor(p + "ffn.gate.weight", io::Dtype::F64, {F, D}, layer.gate.data());
    writer.addTensor(p + "ffn.fc2.weight", io::Dtype::F64, {D, F}, layer.fc2.data());
    writer.addTensor(p + "final_layer_norm.weight", io::Dtype::F64, {D}, layer.finalNorm.data());
    w.layers.push_back(std::move(layer));
  }
  std::vector<std::int64_t> ids(static_cast<std::size_t>(v.batch * v.time));
  std::vector<long> longIds(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i)
    longIds[i] = ids[i] =
        static_cast<std::int64_t>((i * 7 + 3) % static_cast<std::size_t>(v.vocab));
  writer.addMetadata("kind", "decoder");
  writer.addMetadata("layers", std::to_string(v.layers));
  writer.addMetadata("heads", std::to_string(v.heads));
  writer.addMetadata("layernorm_eps", std::to_string(v.eps));
  writer.addMetadata("activation_fn", v.swish ? "swish" : "gelu");
  writer.addMetadata("chunk_size", std::to_string(v.chunk));
  writer.addMetadata("share_decoder_input_output_embed", v.tied ? "True" : "False");
  writer.addIntegers("tokens", {v.batch, v.time}, ids.data());
  writer.addTensor("embed_tokens.weight", io::Dtype::F64, {v.vocab, D}, w.embed.data());
  writer.addTensor("layer_norm.weight", io::Dtype::F64, {D}, w.finalNorm.data());
  if (!v.tied)
    writer.addTensor("output_projection.weight", io::Dtype::F64, {v.vocab, D},
                     w.outputProjection.data());
  const std::pair<reference::NaiveForm, const char*> forms[] = {
      {reference::NaiveForm::kParallel, "logits_parallel"},
      {reference::NaiveForm::kChunkwise, "logits_chunkwise"},
      {reference::NaiveForm::kRecurrent, "logits_recurrent"}};
  for (const auto& [form, name] : forms) {
    const auto logits = reference::naiveDecoder(w, longIds, v.batch, v.time, form, v.chunk);
    writer.addTensor(name, io::Dtype::F64, {v.batch, v.time, v.vocab}, logits.data());
  }
  return io::SafetensorsFile::fromBytes(writer.bytes(), v.name);
}

TYPED_TEST(Model, OtherShapesMatchTheOracleInEveryForm) {
  const DecoderVariant variants[] = {
      // name                   layers  D    V   H   F  vocab B   T  chunk eps   swish tied
      {"3 layers heads=8 swish", 3, 64, 128, 8, 96, 40, 2, 19, 8, 1e-6, true, false},
      {"V=D heads=1 batch=3 tied eps=1e-5", 2, 32, 32, 1, 64, 30, 3, 13, 4, 1e-5, false, true},
      {"T=1 chunk>T", 2, 32, 64, 4, 64, 20, 2, 1, 16, 1e-6, false, false},
      {"chunk=1", 1, 32, 64, 2, 48, 25, 1, 9, 1, 1e-6, true, false},
  };
  std::uint64_t seed = 500;
  for (const DecoderVariant& v : variants) {
    SCOPED_TRACE(v.name);
    checkDecoderFile<TypeParam>(makeDecoderFile(v, seed += 1000));
  }
}

// Prefill the first k tokens chunkwise, decode the rest one at a time, for every k. The prefill's
// last logits are torchscale's chunkwise ones (1e-9). The decoded logits are its recurrent ones up
// to the cross-form gap: layer 1's state is exact, but deeper layers' states were built from the
// chunkwise outputs of the layers below, which differ from the recurrent ones through the
// group-norm eps exactly as torchscale's forms differ. So the bound is torchscale's own
// chunkwise-vs-recurrent gap from the golden metadata (1.5e-6; we measure up to 5e-7), or the
// float tolerance.
TYPED_TEST(Model, ChunkwisePrefillThenDecodeMatchesTorchscaleForEveryPrefixLength) {
  using Scalar = TypeParam;
  const auto model = io::loadRetNetModel<Scalar>(decoderFile());
  const TokenMatrix tokens = tokensOf(decoderFile());
  const Index batch = tokens.rows(), time = tokens.cols();
  const auto gaps = nlohmann::json::parse(*decoderFile().metadataValue("torchscale_form_maxdiff"));
  const double handoffBound = std::max(gaps["chunkwise_vs_recurrent"]["max_rel"].get<double>(),
                                       std::is_same_v<Scalar, float> ? 1e-4 : 0.0);
  for (Index k = 1; k < time; ++k) {
    RetNetModelState<Scalar> state;
    const RowMatrix<Scalar> last = model.prefill(tokens.leftCols(k), state, 8);
    Tensor3<Scalar> decoded(batch, time - k, model.config().vocab);
    RowMatrix<Scalar> logits;
    for (Index t = k; t < time; ++t) {
      model.decode({tokens(0, t), tokens(1, t)}, state, logits);
      for (Index b = 0; b < batch; ++b)
        for (Index v = 0; v < logits.cols(); ++v) decoded(b, t - k, v) = logits(b, v);
    }
    EXPECT_LE(normwiseError(decoded, goldenRows("logits_recurrent", k, time)), handoffBound) << k;
    const std::vector<double> got(last.data(), last.data() + last.size());
    const std::vector<double> ref = goldenRows("logits_chunkwise", k - 1, k);
    EXPECT_LE(normwiseError(got.data(), ref.data(), ref.size()), goldenTolerance<Scalar>()) << k;
    EXPECT_EQ(state.position(0), time);
  }
}

// prefill(tokens, state, logits, scratch) is prefill(tokens, state) with kept buffers: the same
// bits for every prefix length and both forms, one scratch serving the prefills and the decoding
// steps between them, and the same states.
TYPED_TEST(Model, PrefillIntoKeptBuffersEqualsTheValuePrefill) {
  using Scalar = TypeParam;
  const auto model = io::loadRetNetModel<Scalar>(decoderFile());
  const TokenMatrix tokens = tokensOf(decoderFile());
  typename RetNetModel<Scalar>::Scratch scratch;
  RowMatrix<Scalar> kept, stepLogits;
  for (const Form form : {Form::kChunkwise, Form::kParallel}) {
    for (Index k = 1; k < tokens.cols(); ++k) {
      RetNetModelState<Scalar> valueState, keptState;
      const RowMatrix<Scalar> expected = model.prefill(tokens.leftCols(k), valueState, 4, form);
      model.prefill(tokens.leftCols(k), keptState, kept, scratch, 4, form);
      EXPECT_TRUE(kept == expected) << formName(form) << " " << k;
      // Then the rest of the prompt into the same buffers, a decoding step between.
      model.decode({tokens(0, k), tokens(1, k)}, keptState, stepLogits, scratch);
      model.decode({tokens(0, k), tokens(1, k)}, valueState, stepLogits);
      if (k + 1 < tokens.cols()) {
        const TokenMatrix rest = tokens.rightCols(tokens.cols() - k - 1);
        const RowMatrix<Scalar> restExpected = model.prefill(rest, valueState, 4, form);
        model.prefill(rest, keptState, kept, scratch, 4, form);
        EXPECT_TRUE(kept == restExpected) << formName(form) << " " << k;
      }
      for (std::size_t l = 0; l < keptState.layers.size(); ++l) {
        const auto& a = keptState.layers[l].values();
        const auto& b = valueState.layers[l].values();
        ASSERT_EQ(a.size(), b.size());
        EXPECT_EQ(
            std::memcmp(a.data(), b.data(), sizeof(Scalar) * static_cast<std::size_t>(a.size())), 0)
            << "layer " << l;
      }
    }
  }
}

// ---- sampling ---------------------------------------------------------------------------------

TEST(Sampling, GreedyIsTheFirstArgmax) {
  Vector<double> logits(5);
  logits << 0.5, 2.0, -1.0, 2.0, 1.0;
  SplitMix64 rng(1);
  std::vector<Index> scratch;
  EXPECT_EQ(sampleToken(logits, SamplingOptions{}, rng, scratch), 1);
}

TEST(Sampling, TopKAndTopPNeverLeaveTheAllowedSet) {
  Vector<double> logits(8);
  logits << 3.0, 1.0, 2.9, -5.0, 2.0, 0.0, 2.95, -1.0;  // order: 0, 6, 2, 4, 1, 5, 7, 3
  std::vector<Index> scratch;
  SamplingOptions topK{1.0, 3, 1.0};
  SamplingOptions topP{1.0, 0, 0.5};  // p(0) ≈ 0.33, p(6) ≈ 0.31: the first two reach 0.5
  std::vector<int> seenK(8, 0), seenP(8, 0);
  for (std::uint64_t seed = 0; seed < 2000; ++seed) {
    SplitMix64 a(seed), b(seed);
    ++seenK[static_cast<std::size_t>(sampleToken(logits, topK, a, scratch))];
    ++seenP[static_cast<std::size_t>(sampleToken(logits, topP, b, scratch))];
  }
  for (const int allowed : {0, 2, 6}) EXPECT_GT(seenK[static_cast<std::size_t>(allowed)], 300);
  for (const int allowed : {0, 6}) EXPECT_GT(seenP[static_cast<std::size_t>(allowed)], 600);
  for (std::size_t i = 0; i < 8; ++i) {
    if (i != 0 && i != 2 && i != 6) {
      EXPECT_EQ(seenK[i], 0) << i;
    }
    if (i != 0 && i != 6) {
      EXPECT_EQ(seenP[i], 0) << i;
    }
  }
}

TEST(Sampling, TemperatureSamplingFollowsTheSoftmax) {
  Vector<double> logits(3);
  logits << std::log(0.2), std::log(0.3), std::log(0.5);
  std::vector<Index> scratch;
  std::vector<int> seen(3, 0);
  constexpr int kDraws = 20000;
  for (std::uint64_t seed = 0; seed < kDraws; ++seed) {
    SplitMix64 rng(seed);
    ++seen[static_cast<std::size_t>(
        sampleToken(logits, SamplingOptions{1.0, 0, 1.0}, rng, scratch))];
  }
  // Binomial standard deviation at n = 20000 is at most 0.0036; allow 5 of them.
  EXPECT_NEAR(seen[0] / double(kDraws), 0.2, 0.018);
  EXPECT_NEAR(seen[1] / double(kDraws), 0.3, 0.018);
  EXPECT_NEAR(seen[2] / double(kDraws), 0.5, 0.018);
}

TEST(Sampling, RejectsBadOptions) {
  RETNET_EXPECT_THROW_WITH(SamplingOptions({-1.0, 0, 1.0}).validate("x"), InvalidArgument,
                           "temperature", "got -1");
  RETNET_EXPECT_THROW_WITH(SamplingOptions({1.0, -2, 1.0}).validate("x"), InvalidArgument, "topK",
                           "got -2");
  RETNET_EXPECT_THROW_WITH(SamplingOptions({1.0, 0, 0.0}).validate("x"), InvalidArgument, "topP",
                           "(0, 1]", "got 0");
}

// ---- generation -------------------------------------------------------------------------------

const RetNetModel<double>& doubleModel() {
  static const RetNetModel<double> model = io::loadRetNetModel<double>(decoderFile());
  return model;
}

TEST(Generation, GreedyFollowsTheArgmaxOfTheForwardLogits) {
  const auto& model = doubleModel();
  GenerationOptions options;
  options.maxNewTokens = 6;
  const std::vector<std::int64_t> prompt{3, 14, 15, 9};
  const auto generated = model.generate({prompt}, options).at(0);
  ASSERT_EQ(generated.size(), 6u);
  std::vector<std::int64_t> sequence = prompt;
  for (const std::int64_t token : generated) {
    const TokenMatrix ids =
        TokenMatrix::Map(sequence.data(), 1, static_cast<Index>(sequence.size()));
    const Tensor3<double> logits = model.forwardParallel(ids);
    Index best = 0;
    for (Index v = 1; v < model.config().vocab; ++v)
      if (logits(0, ids.cols() - 1, v) > logits(0, ids.cols() - 1, best)) best = v;
    EXPECT_EQ(token, best);
    sequence.push_back(token);
  }
}

TEST(Generation, SameSeedSameTokensAndBatchingChangesNothing) {
  const auto& model = doubleModel();
  GenerationOptions options;
  options.maxNewTokens = 12;
  options.sampling = {0.9, 20, 0.95};
  options.seed = 1234;
  const std::vector<std::vector<std::int64_t>> prompts{
      {1, 2, 3}, {40, 41, 42, 43, 44, 45, 46}, {7}};
  std::vector<std::pair<Index, std::int64_t>> streamed;
  options.onToken = [&](Index sequence, std::int64_t token) {
    streamed.emplace_back(sequence, token);
  };
  const auto batched = model.generate(prompts, options);
  options.onToken = nullptr;
  EXPECT_EQ(model.generate(prompts, options), batched);
  std::size_t total = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(model.generate({prompts[i]}, options).at(0), batched[i])
        << "prompt " << i << " alone";
    total += batched[i].size();
  }
  EXPECT_EQ(streamed.size(), total);
  options.seed = 4321;
  EXPECT_NE(model.generate(prompts, options), batched);
}

TEST(Generation, StopsAtAStopToken) {
  const auto& model = doubleModel();
  GenerationOptions options;
  options.maxNewTokens = 8;
  const auto free = model.generate({{5, 6}}, options).at(0);
  options.stopTokens = {free.at(2)};
  const auto stopped = model.generate({{5, 6}}, options).at(0);
  const auto firstStop = std::find(free.begin(), free.end(), free.at(2)) - free.begin();
  EXPECT_EQ(stopped, std::vector<std::int64_t>(free.begin(), free.begin() + firstStop + 1));
}

// A sequence that ends leaves the batch: the others go on as if alone, and `state` (like
// finalState) holds each sequence where it ended: its prompt and every generated token but the
// last (6 + 2 − 1 for the stopped one, 2 + 8 − 1 for the others).
TEST(Generation, EndedSequencesLeaveTheBatch) {
  const auto& model = doubleModel();
  GenerationOptions options;
  options.maxNewTokens = 8;
  const std::vector<std::vector<std::int64_t>> prompts{{5, 6}, {1, 2, 3, 4, 5, 6}, {9, 9}};
  const auto free = model.generate({prompts[1]}, options).at(0);
  options.stopTokens = {free.at(1)};
  RetNetModelState<double> state, finalState;
  const auto out = model.continueGeneration(state, prompts, options, &finalState);
  const auto firstStop = std::find(free.begin(), free.end(), free.at(1)) - free.begin();
  EXPECT_EQ(out[1], std::vector<std::int64_t>(free.begin(), free.begin() + firstStop + 1));
  for (std::size_t i : {std::size_t{0}, std::size_t{2}})
    EXPECT_EQ(out[i], model.generate({prompts[i]}, options).at(0)) << "sequence " << i;
  ASSERT_EQ(state.batch(), 3);
  for (Index b = 0; b < 3; ++b) {
    const auto i = static_cast<std::size_t>(b);
    EXPECT_EQ(state.position(b), static_cast<Index>(prompts[i].size() + out[i].size()) - 1);
    EXPECT_EQ(finalState.position(b), state.position(b));
  }
  // The stopped sequence's state is that of a run of its own (the same forms on the same tokens,
  // so equal to rounding; torchscale's forms differ from each other by more, through the
  // group-norm eps, so a prefill of the same tokens is not the reference).
  RetNetModelState<double> alone;
  model.generate({prompts[1]}, options, &alone);
  const RetNetModelState<double> stopped = state.item(1);
  for (std::size_t l = 0; l < alone.layers.size(); ++l) {
    const auto& a = stopped.layers[l].values();
    const auto& b = alone.layers[l].values();
    ASSERT_EQ(a.size(), b.size());
    double worst = 0, largest = 0;
    for (Index i = 0; i < a.size(); ++i) {
      worst = std::max(worst, std::abs(a.data()[i] - b.data()[i]));
      largest = std::max(largest, std::abs(b.data()[i]));
    }
    EXPECT_LE(worst, 1e-12 * largest) << "layer " << l;
  }
}

// Generate, save the state, load it into a fresh process-like context and continue: the tokens
// are those of a run that never stopped.
TEST(Generation, SaveLoadContinueEqualsUninterrupted) {
  const auto& model = doubleModel();
  GenerationOptions options;
  options.sampling = {0.8, 0, 0.9};
  options.seed = 99;
  options.maxNewTokens = 16;
  const std::vector<std::vector<std::int64_t>> prompts{{2, 4, 6, 8}, {11}};
  const auto uninterrupted = model.generate(prompts, options);
  options.maxNewTokens = 7;
  RetNetModelState<double> paused;
  const auto firstPart = model.generate(prompts, options, &paused);
  const std::string path = ::testing::TempDir() + "retnet_state_test.bin";
  io::saveState(paused, model.config(), path);
  RetNetModelState<double> resumed = io::loadState<double>(path, model.config());
  options.maxNewTokens =
      16 - 7;  // the first part's last token is fed (not yet consumed), 9 more drawn
  const auto secondPart =
      model.continueGeneration(resumed, {{firstPart[0].back()}, {firstPart[1].back()}}, options);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    std::vector<std::int64_t> joined = firstPart[i];
    joined.insert(joined.end(), secondPart[i].begin(), secondPart[i].end());
    EXPECT_EQ(joined, uninterrupted[i]) << "sequence " << i;
  }
  std::filesystem::remove(path);
}

// A state is a value: a copy branches the conversation, and each branch continues as if it had
// been computed on its own from the start.
TEST(Generation, CopiedStatesBranchIndependently) {
  const auto& model = doubleModel();
  RetNetModelState<double> trunk;
  model.prefill(TokenMatrix::Constant(1, 5, 7), trunk, 4);
  RetNetModelState<double> branch = trunk;
  const RowMatrix<double> a = model.decode({11}, trunk);
  const RowMatrix<double> b = model.decode({12}, branch);
  TokenMatrix withA(1, 6), withB(1, 6);
  withA << 7, 7, 7, 7, 7, 11;
  withB << 7, 7, 7, 7, 7, 12;
  RetNetModelState<double> freshA, freshB;
  model.prefill(withA.leftCols(5), freshA, 4);
  model.prefill(withB.leftCols(5), freshB, 4);
  EXPECT_EQ(model.decode({11}, freshA), a);  // same arithmetic, so bitwise equal
  EXPECT_EQ(model.decode({12}, freshB), b);
  EXPECT_NE(a, b);
  EXPECT_EQ(trunk.position(0), 6);
  EXPECT_EQ(branch.position(0), 6);
}

TEST(StateFile, RoundTripsExactlyAndConvertsPrecision) {
  const auto& model = doubleModel();
  RetNetModelState<double> state;
  model.prefill(tokensOf(decoderFile()), state, 8);
  const auto bytes = io::serializeState(state, model.config());
  const auto back = io::deserializeState<double>(bytes, model.config());
  ASSERT_EQ(back.layers.size(), state.layers.size());
  for (std::size_t l = 0; l < state.layers.size(); ++l) {
    for (Index i = 0; i < state.layers[l].values().size(); ++i)
      ASSERT_EQ(back.layers[l].values().data()[i], state.layers[l].values().data()[i]);
    EXPECT_EQ(back.layers[l].positions(), state.layers[l].positions());
  }
  const auto asFloat = io::deserializeState<float>(bytes, model.config());
  EXPECT_FLOAT_EQ(asFloat.layers[1].values().data()[7],
                  static_cast<float>(state.layers[1].values().data()[7]));
  EXPECT_EQ(state.bytes(), 2 * 2 * 4 * 16 * 32 * 8);  // layers x batch x H x dk x dv x 8 bytes
}

TEST(StateFile, DamagedOrForeignFilesAreRefused) {
  const auto& model = doubleModel();
  RetNetModelState<double> state;
  model.prefill(tokensOf(decoderFile()), state, 8);
  const auto bytes = io::serializeState(state, model.config());
  auto flipped = bytes;
  flipped[100] ^= 1;
  RETNET_EXPECT_THROW_WITH(io::deserializeState<double>(flipped, model.config(), "s.bin"),
                           FormatError, "s.bin", "checksum mismatch");
  const std::vector<unsigned char> truncated(bytes.begin(), bytes.end() - 100);
  RETNET_EXPECT_THROW_WITH(io::deserializeState<double>(truncated, model.config()), FormatError,
                           "checksum");
  const std::vector<unsigned char> tiny(bytes.begin(), bytes.begin() + 12);
  RETNET_EXPECT_THROW_WITH(io::deserializeState<double>(tiny, model.config()), FormatError,
                           "truncated");
  auto notOurs = bytes;
  notOurs[0] = 'X';
  RETNET_EXPECT_THROW_WITH(io::deserializeState<double>(notOurs, model.config()), FormatError,
                           "not a retnet state file");
  RetNetModelConfig other = model.config();
  other.block.ffnDim = 256;
  RETNET_EXPECT_THROW_WITH(io::deserializeState<double>(bytes, other), FormatError, "another model",
                           "ffnDim is 128 in the file, 256 in this model");
  RETNET_EXPECT_THROW_WITH(io::loadState<double>("/nonexistent/dir/state.bin", model.config()),
                           FormatError, "cannot open");
  RETNET_EXPECT_THROW_WITH(io::serializeState(RetNetModelState<double>(), model.config()),
                           InvalidArgument, "empty");
}

// ---- bad input --------------------------------------------------------------------------------

TEST(ModelErrors, RejectsBadTokensStatesAndOptions) {
  const auto& model = doubleModel();
  TokenMatrix tokens(1, 3);
  tokens << 1, 50, 2;
  RETNET_EXPECT_THROW_WITH(model.forwardParallel(tokens), InvalidArgument,
                           "token ids must be in [0, 50), got 50");
  RETNET_EXPECT_THROW_WITH(model.forwardChunkwise(TokenMatrix(2, 0), 4), InvalidArgument,
                           "non-empty", "(2, 0)");
  RETNET_EXPECT_THROW_WITH(model.forwardChunkwise(TokenMatrix::Zero(1, 3), 0), InvalidArgument,
                           "chunkSize");
  RetNetModelState<double> state;
  model.prefill(TokenMatrix::Zero(2, 3), state, 4);
  RETNET_EXPECT_THROW_WITH(model.decode({1, 2, 3}, state), InvalidArgument,
                           "batch size (the state's) must be 2, got 3");
  RETNET_EXPECT_THROW_WITH(model.decode({1, -1}, state), InvalidArgument, "got -1");
  GenerationOptions options;
  RETNET_EXPECT_THROW_WITH(model.generate({{1}, {}}, options), InvalidArgument,
                           "sequence 1 has no tokens");
  RETNET_EXPECT_THROW_WITH(model.generate({}, options), InvalidArgument, "at least one sequence");
  options.maxNewTokens = -1;
  RETNET_EXPECT_THROW_WITH(model.generate({{1}}, options), InvalidArgument,
                           "maxNewTokens must be >= 0, got -1");
}

}  // namespace
}  // namespace retnet
