// The pieces the "one house" refactor made public: per-head decay schedules in the MSR config,
// explicit scratch for the forms, batch-item operations on states, and state files written once
// for any LanguageModel.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "retnet/io/checkpoint.hpp"
#include "retnet/io/state_file.hpp"
#include "test_util.hpp"

namespace retnet {
namespace {

const io::SafetensorsFile& file(const char* name) {
  static std::vector<std::pair<std::string, io::SafetensorsFile>> files;
  for (const auto& entry : files)
    if (entry.first == name) return entry.second;
  files.emplace_back(name,
                     io::SafetensorsFile::open(std::string(RETNET_TEST_DATA_DIR) + "/" + name));
  return files.back().second;
}

Tensor3<double> randomInput(Index batch, Index time, Index width, std::uint64_t seed) {
  return testing::toTensor<double>(
      testing::randomValues(static_cast<std::size_t>(batch * time * width), seed), batch, time,
      width);
}

bool bitwiseEqual(const Tensor3<double>& a, const Tensor3<double>& b) {
  if (a.size() != b.size()) return false;
  for (Index i = 0; i < a.size(); ++i)
    if (a.data()[i] != b.data()[i]) return false;
  return true;
}

TEST(Decays, TheDefaultScheduleWrittenOutGivesTheSameBits) {
  MultiScaleRetentionConfig config =
      io::readMultiScaleRetentionConfig(file("layer_small.safetensors"), "retention.");
  const auto standard =
      io::loadMultiScaleRetention<double>(file("layer_small.safetensors"), "retention.", config);
  config.decays = stages::retnetDecays(config.heads);
  const auto explicitDecays =
      io::loadMultiScaleRetention<double>(file("layer_small.safetensors"), "retention.", config);
  const Tensor3<double> x = randomInput(2, 37, config.embedDim, 5);
  EXPECT_TRUE(bitwiseEqual(standard.forwardChunkwise(x, 8), explicitDecays.forwardChunkwise(x, 8)));
  EXPECT_TRUE(bitwiseEqual(standard.forwardRecurrent(x), explicitDecays.forwardRecurrent(x)));
}

TEST(Decays, OtherDecaysChangeTheOutputAndTheFormsStillAgree) {
  MultiScaleRetentionConfig config =
      io::readMultiScaleRetentionConfig(file("layer_small.safetensors"), "retention.");
  config.eps = 0;  // every form's factor then cancels in the group norm (see test_layers)
  const auto standard =
      io::loadMultiScaleRetention<double>(file("layer_small.safetensors"), "retention.", config);
  config.decays.assign(static_cast<std::size_t>(config.heads), 0.5);
  config.decays.back() = 1.0;
  const auto custom =
      io::loadMultiScaleRetention<double>(file("layer_small.safetensors"), "retention.", config);
  const Tensor3<double> x = randomInput(1, 41, config.embedDim, 6);
  const Tensor3<double> parallel = custom.forwardParallel(x);
  EXPECT_GT(testing::normwiseError(standard.forwardParallel(x), testing::toDoubles(parallel)),
            1e-3);
  // eps = 0: the forms agree to rounding (double, T = 41: a few hundred ulps at most).
  EXPECT_LT(testing::normwiseError(custom.forwardChunkwise(x, 7), testing::toDoubles(parallel)),
            1e-10);
  EXPECT_LT(testing::normwiseError(custom.forwardRecurrent(x), testing::toDoubles(parallel)),
            1e-10);
}

TEST(Decays, AScheduleOfTheWrongLengthOrRangeIsRefused) {
  MultiScaleRetentionConfig config =
      io::readMultiScaleRetentionConfig(file("layer_small.safetensors"), "retention.");
  config.decays = {0.9};
  RETNET_EXPECT_THROW_WITH(config.validate("here"), InvalidArgument, "expected one decay per head");
  config.decays.assign(static_cast<std::size_t>(config.heads), 0.9);
  config.decays[0] = 1.5;
  RETNET_EXPECT_THROW_WITH(config.validate("here"), InvalidArgument,
                           "gamma must be a finite value in [0, 1], got 1.5");
}

TEST(Scratch, AnExplicitScratchGivesTheSameBitsAsTheOthers) {
  const auto block = io::loadRetNetBlock<double>(file("layer_small.safetensors"));
  const Index D = block.config().embedDim;
  const Tensor3<double> prompt = randomInput(2, 9, D, 7), token = randomInput(2, 1, D, 8);
  MultiScaleRetentionState<double> a, b;
  block.forwardChunkwise(prompt, 4, a);
  block.forwardChunkwise(prompt, 4, b);
  RetNetBlockScratch<double> scratch;
  Tensor3<double> outA, outB;
  for (int step = 0; step < 3; ++step) {
    block.forwardRecurrent(token, a, outA, scratch);
    block.forwardRecurrent(token, b, outB);  // the per-thread scratch
    ASSERT_TRUE(bitwiseEqual(outA, outB));
  }
  EXPECT_FALSE(bitwiseEqual(outA, block.forwardRecurrent(token, b)));  // b has moved on
}

TEST(StateItems, ItemSetItemAndAppendMoveWholeBatchItems) {
  MultiScaleRetentionState<double> state(3, 2, 4, 6);
  for (Index i = 0; i < state.size(); ++i) state.data()[i] = static_cast<double>(i);
  for (Index b = 0; b < 3; ++b) state.setPosition(b, 10 + b);

  const MultiScaleRetentionState<double> second = state.item(1);
  EXPECT_EQ(second.batch(), 1);
  EXPECT_EQ(second.position(0), 11);
  EXPECT_EQ(second.matrix(0, 1), state.matrix(1, 1));

  MultiScaleRetentionState<double> grown = state;
  grown.append(second);
  EXPECT_EQ(grown.batch(), 4);
  EXPECT_EQ(grown.position(3), 11);
  EXPECT_EQ(grown.matrix(3, 0), state.matrix(1, 0));
  EXPECT_EQ(grown.matrix(2, 1), state.matrix(2, 1));

  grown.setItem(0, state, 2);
  EXPECT_EQ(grown.position(0), 12);
  EXPECT_EQ(grown.matrix(0, 1), state.matrix(2, 1));

  MultiScaleRetentionState<double> empty;
  empty.append(second);
  EXPECT_EQ(empty.batch(), 1);
  RETNET_EXPECT_THROW_WITH(grown.setItem(0, MultiScaleRetentionState<double>(1, 2, 4, 5), 0),
                           InvalidArgument, "shapes differ");
  RETNET_EXPECT_THROW_WITH((void)state.item(3), InvalidArgument, "got (3, 0)");
}

TEST(StateFile, TheGenericReaderIsTheRetNetReader) {
  const auto model = io::loadRetNetModel<double>(file("decoder_small.safetensors"));
  RetNetModelState<double> state;
  TokenMatrix tokens(2, 5);
  tokens << 1, 2, 3, 4, 5, 6, 7, 8, 9, 10;
  model.prefill(tokens, state, 2);
  const std::vector<unsigned char> bytes = io::serializeState(state, model.config());
  const auto viaModel = io::deserializeModelState<RetNetBlock<double>>(bytes, model.config());
  const auto viaRetNet = io::deserializeState<double>(bytes, model.config());
  ASSERT_EQ(viaModel.layers.size(), state.layers.size());
  for (std::size_t l = 0; l < state.layers.size(); ++l) {
    EXPECT_EQ(viaModel.layers[l].positions(), state.layers[l].positions());
    for (Index i = 0; i < state.layers[l].size(); ++i) {
      ASSERT_EQ(viaModel.layers[l].data()[i], state.layers[l].data()[i]);
      ASSERT_EQ(viaRetNet.layers[l].data()[i], state.layers[l].data()[i]);
    }
  }
}

// Positions stop at 2^53 (kMaxPosition): beyond it rotary angles and decay powers are not
// exact, and position + time could overflow. States, forms and state files refuse to go there.
TEST(Positions, NoStateFormOrStateFileGoesBeyond2To53) {
  const auto msr =
      io::loadMultiScaleRetention<double>(file("layer_small.safetensors"), "retention.");
  MultiScaleRetentionState<double> state;
  const Tensor3<double> x = randomInput(1, 3, msr.config().embedDim, 9);
  msr.forwardRecurrent(x, state);
  RETNET_EXPECT_THROW_WITH(state.setPosition(0, kMaxPosition + 1), InvalidArgument, "2^53");
  state.setPosition(0, kMaxPosition - 3);
  msr.forwardRecurrent(x, state);  // lands exactly on 2^53
  EXPECT_EQ(state.position(0), kMaxPosition);
  RETNET_EXPECT_THROW_WITH(msr.forwardRecurrent(x, state), InvalidArgument, "beyond 2^53");
  RETNET_EXPECT_THROW_WITH(msr.forwardChunkwise(x, 2, state), InvalidArgument, "beyond 2^53");

  const auto model = io::loadRetNetModel<double>(file("decoder_small.safetensors"));
  RetNetModelState<double> modelState;
  TokenMatrix tokens(1, 2);
  tokens << 1, 2;
  model.forwardRecurrent(tokens, modelState);
  for (auto& layer : modelState.layers) layer.setPosition(0, kMaxPosition);
  std::vector<unsigned char> bytes = io::serializeState(modelState, model.config());
  EXPECT_EQ(io::deserializeState<double>(bytes, model.config()).position(0), kMaxPosition);
  // The same file one position further (checksum recomputed): refused by name.
  for (auto& layer : modelState.layers) layer.setPosition(0, kMaxPosition - 1);
  bytes = io::serializeState(modelState, model.config());
  const std::size_t at = bytes.size() - 8 -
                         static_cast<std::size_t>(modelState.layers.size()) *
                             static_cast<std::size_t>(modelState.layers[0].size()) * 8 -
                         8;  // the one position, before the values
  std::uint64_t position = 0;
  for (std::size_t i = 0; i < 8; ++i) position |= std::uint64_t(bytes[at + i]) << (8 * i);
  ASSERT_EQ(position, static_cast<std::uint64_t>(kMaxPosition - 1));
  position += 2;
  for (std::size_t i = 0; i < 8; ++i)
    bytes[at + i] = static_cast<unsigned char>(position >> (8 * i));
  const std::uint64_t sum = io::state_file::fnv1a(bytes.data(), bytes.size() - 8);
  for (std::size_t i = 0; i < 8; ++i)
    bytes[bytes.size() - 8 + i] = static_cast<unsigned char>(sum >> (8 * i));
  RETNET_EXPECT_THROW_WITH(io::deserializeState<double>(bytes, model.config()), FormatError,
                           "is beyond 2^53");
}

TEST(StageErrors, EveryStageRefusesMismatchedArguments) {
  RowMatrix<double> x = RowMatrix<double>::Ones(3, 4), y(3, 5), g(3, 4);
  const LinearWeight<double> w(RowMatrix<double>::Ones(4, 4));
  RETNET_EXPECT_THROW_WITH(stages::linear(x, w, y), InvalidArgument,
                           "stages::linear: y (rows x out) must be (3, 4), got (3, 5)");
  RETNET_EXPECT_THROW_WITH(stages::rmsNorm<double>(x, nullptr, 1e-6, y), InvalidArgument,
                           "stages::rmsNorm: y (x's shape) must be (3, 4), got (3, 5)");
  RETNET_EXPECT_THROW_WITH(stages::layerNorm<double>(x, nullptr, nullptr, 1e-5, x), InvalidArgument,
                           "weight and bias are needed");
  RETNET_EXPECT_THROW_WITH(stages::addTo<double>(x, y), InvalidArgument, "stages::addTo");
  RETNET_EXPECT_THROW_WITH(
      stages::groupNormGate<double>(x, 3, nullptr, 1e-6, g, Activation::kSwish), InvalidArgument,
      "heads (3) must be >= 1 and divide o's width (4)");
  const std::int64_t tokens[3] = {0, 1, 4};
  RETNET_EXPECT_THROW_WITH(stages::embed<double>(tokens, RowMatrix<double>::Ones(4, 4), 1.0, x),
                           InvalidArgument, "token ids must be in [0, 4), got 4");
  const RotaryEmbedding<double> rope(4);
  RotaryTable<double> table;
  rope.fillTable(0, 2, table);
  RETNET_EXPECT_THROW_WITH(stages::rotate(rope, table, x), InvalidArgument,
                           "the table must hold 3 rows of 2 pairs, got (2, 2)");

  const RetentionHead head{0.9, RetentionNormalization::kNone, 1.0, ScaleSide::kQuery};
  RETNET_EXPECT_THROW_WITH(RetentionPlan<double>(head, Form::kChunkwise, 0, 3), InvalidArgument,
                           "chunkSize must be >= 1, got 0");
  RETNET_EXPECT_THROW_WITH(
      RetentionPlan<double>({1.5, RetentionNormalization::kNone, 1.0, ScaleSide::kQuery},
                            Form::kRecurrent, 0, 3),
      InvalidArgument, "gamma must be a finite value in [0, 1], got 1.5");
  const RetentionPlan<double> parallel(head, Form::kParallel, 0, 2);
  RowMatrix<double> S = RowMatrix<double>::Zero(4, 4), out(3, 4);
  RetentionScratch<double> scratch;
  RETNET_EXPECT_THROW_WITH(stages::retention(parallel, x, x, x, S, 0, true, out, scratch),
                           InvalidArgument,
                           "the plan was made for 2 rows of the parallel form, got 3");
  RowMatrix<double> wrongState = RowMatrix<double>::Zero(4, 3);
  const RetentionPlan<double> recurrent(head, Form::kRecurrent, 0, 3);
  RETNET_EXPECT_THROW_WITH(stages::retention(recurrent, x, x, x, wrongState, 0, true, out, scratch),
                           InvalidArgument, "S (dk x dv) must be (4, 4), got (4, 3)");
}

TEST(StageErrors, TheRowsInterfaceChecksItsState) {
  const auto block = io::loadRetNetBlock<double>(file("layer_small.safetensors"));
  const Index D = block.config().embedDim;
  RowMatrix<double> x = RowMatrix<double>::Ones(2, D), y(2, D);
  MultiScaleRetentionState<double> empty, wrong(3, block.config().heads, D / block.config().heads,
                                                block.config().valueDim / block.config().heads);
  RetNetBlockScratch<double> scratch;
  RETNET_EXPECT_THROW_WITH(block.forwardSlab(Form::kRecurrent, x, 2, 1, 0, empty, y, scratch),
                           InvalidArgument, "the state must be sized (prepare) first");
  RETNET_EXPECT_THROW_WITH(block.forwardSlab(Form::kRecurrent, x, 2, 1, 0, wrong, y, scratch),
                           InvalidArgument, "batch size (the state's) must be 3, got 2");
  RETNET_EXPECT_THROW_WITH(
      block.forwardRows(Form::kChunkwise, x.data(), 2, 1, 0, wrong, y.data(), scratch),
      InvalidArgument, "chunkSize must be >= 1, got 0");
  RETNET_EXPECT_THROW_WITH(
      block.forwardRows(Form::kRecurrent, nullptr, 2, 1, 0, wrong, y.data(), scratch),
      InvalidArgument, "non-null");
}

}  // namespace
}  // namespace retnet
