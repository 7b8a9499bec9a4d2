// Multi-scale retention and the RetNet block: forms against each other with and without the
// group-norm eps, state handoff across random splits and forms, decoding without allocation,
// and every documented error.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>

#include "retnet/io/checkpoint.hpp"
#include "test_util.hpp"

namespace retnet {
namespace {

using testing::normwiseError;
using testing::toDoubles;

std::string dataFile(const std::string& name) {
  return std::string(RETNET_TEST_DATA_DIR) + "/" + name;
}

const io::SafetensorsFile& layerFile() {
  static const io::SafetensorsFile file =
      io::SafetensorsFile::open(dataFile("layer_small.safetensors"));
  return file;
}

/// The golden block's weights with another eps (0 makes every form's factor cancel exactly).
template <typename Scalar>
RetNetBlock<Scalar> goldenBlock(double eps) {
  RetNetBlockConfig config = io::readRetNetBlockConfig(layerFile());
  config.eps = eps;
  return io::loadRetNetBlock<Scalar>(layerFile(), "", config);
}
template <typename Scalar>
MultiScaleRetention<Scalar> goldenRetention(double eps) {
  MultiScaleRetentionConfig config = io::readMultiScaleRetentionConfig(layerFile(), "retention.");
  config.eps = eps;
  return io::loadMultiScaleRetention<Scalar>(layerFile(), "retention.", config);
}

template <typename Scalar>
Tensor3<Scalar> randomInput(Index batch, Index time, Index width, std::uint64_t seed) {
  return testing::toTensor<Scalar>(
      testing::randomValues(static_cast<std::size_t>(batch * time * width), seed), batch, time,
      width);
}

/// Positions [begin, end) of every batch item.
template <typename Scalar>
Tensor3<Scalar> positions(const Tensor3<Scalar>& x, Index begin, Index end) {
  const Eigen::array<Index, 3> offsets{0, begin, 0},
      extents{x.dimension(0), end - begin, x.dimension(2)};
  return x.slice(offsets, extents);
}

/// Batch item b alone, as a batch of one.
template <typename Scalar>
Tensor3<Scalar> item(const Tensor3<Scalar>& x, Index b) {
  const Eigen::array<Index, 3> offsets{b, 0, 0}, extents{1, x.dimension(1), x.dimension(2)};
  return x.slice(offsets, extents);
}

// With eps = 0 the group norm removes each form's positive factor exactly, so the forms agree to
// rounding: T = 1000 sums keep the double error near 1e-14, far inside 1e-10.
TEST(LayerForms, AgreeToRoundingWhenGroupNormEpsIsZero) {
  const auto block = goldenBlock<double>(0.0);
  for (const Index time : {1, 7, 100, 1000}) {
    const Tensor3<double> x =
        randomInput<double>(2, time, 64, 11 + static_cast<std::uint64_t>(time));
    const Tensor3<double> parallel = block.forwardParallel(x);
    for (const Index chunk : {1, 8, 33, 2000}) {
      EXPECT_LE(normwiseError(block.forwardChunkwise(x, chunk), toDoubles(parallel)), 1e-10)
          << "T " << time << " chunk " << chunk;
    }
    EXPECT_LE(normwiseError(block.forwardRecurrent(x), toDoubles(parallel)), 1e-10) << "T " << time;
  }
}

enum class Level { kRetention, kBlock };

template <typename Scalar>
Tensor3<Scalar> runPiece(Level level, const MultiScaleRetention<Scalar>& msr,
                         const RetNetBlock<Scalar>& block, Form form, const Tensor3<Scalar>& x,
                         Index chunk, MultiScaleRetentionState<Scalar>& state) {
  return level == Level::kRetention ? msr.forward(form, x, chunk, state)
                                    : block.forward(form, x, chunk, state);
}

// Split a sequence at random points, run each piece in a random form with a random chunk, and
// hand the state on. With eps = 0 the result equals one pass to rounding (1e-10). With the
// checkpoint's eps = 1e-6 each row keeps the factor of a torchscale form (recurrent, or chunkwise
// with some chunk size and alignment), so the gap to one pass stays within the gaps between
// torchscale's own single-pass forms on the same input: parallel, recurrent, and chunkwise with
// every chunk size 1…T (on this input they reach 4.8e-5, at chunk 1).
TEST(LayerHandoff, AnySplitAndAnyFormsMatchOnePass) {
  std::mt19937 rng(7);
  for (const Level level : {Level::kRetention, Level::kBlock}) {
    for (const double eps : {0.0, 1e-6}) {
      const auto msr = goldenRetention<double>(eps);
      const auto block = goldenBlock<double>(eps);
      constexpr Index kBatch = 2, kTime = 77;
      const Tensor3<double> x = randomInput<double>(kBatch, kTime, 64, 99);
      MultiScaleRetentionState<double> whole;
      const Tensor3<double> onePass = runPiece(level, msr, block, Form::kChunkwise, x, 8, whole);
      double torchscaleGap = 0;
      for (Index chunk = 0; chunk <= kTime; ++chunk) {  // 0 stands for parallel and recurrent
        for (const Form form : chunk == 0 ? std::vector<Form>{Form::kParallel, Form::kRecurrent}
                                          : std::vector<Form>{Form::kChunkwise}) {
          MultiScaleRetentionState<double> fresh;
          const Tensor3<double> y = runPiece(level, msr, block, form, x, chunk, fresh);
          torchscaleGap = std::max(torchscaleGap, normwiseError(y, toDoubles(onePass)));
        }
      }
      for (int trial = 0; trial < 20; ++trial) {
        std::vector<Index> cuts{0, kTime};
        const int pieces = std::uniform_int_distribution<int>(2, 5)(rng);
        for (int p = 1; p < pieces; ++p)
          cuts.push_back(std::uniform_int_distribution<Index>(1, kTime - 1)(rng));
        std::sort(cuts.begin(), cuts.end());
        cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
        MultiScaleRetentionState<double> state;
        Tensor3<double> joined(kBatch, kTime, 64);
        std::string trace;
        for (std::size_t p = 0; p + 1 < cuts.size(); ++p) {
          const auto form = static_cast<Form>(std::uniform_int_distribution<int>(0, 2)(rng));
          const Index chunk = std::uniform_int_distribution<Index>(1, 20)(rng);
          trace += " [" + std::to_string(cuts[p]) + "," + std::to_string(cuts[p + 1]) + ")" +
                   formName(form);
          const Tensor3<double> out =
              runPiece(level, msr, block, form, positions(x, cuts[p], cuts[p + 1]), chunk, state);
          const Eigen::array<Index, 3> offsets{0, cuts[p], 0},
              extents{kBatch, cuts[p + 1] - cuts[p], 64};
          joined.slice(offsets, extents) = out;
        }
        SCOPED_TRACE((level == Level::kBlock ? "block eps " : "retention eps ") +
                     std::to_string(eps) + trace);
        EXPECT_LE(normwiseError(joined, toDoubles(onePass)),
                  eps == 0 ? 1e-10 : 1.1 * torchscaleGap);
        EXPECT_EQ(state.position(0), kTime);
        EXPECT_EQ(state.position(1), kTime);
        // The state itself is form-independent: S is unnormalised.
        Eigen::Tensor<double, 0, Eigen::RowMajor> diff =
            (state.values() - whole.values()).abs().maximum();
        Eigen::Tensor<double, 0, Eigen::RowMajor> scale = whole.values().abs().maximum();
        EXPECT_LE(diff() / scale(), 1e-12);
      }
    }
  }
}

// Prefill chunkwise, then decode token by token: equals the recurrent form from the start
// (torchscale cannot do this: its chunkwise form neither returns a state nor takes one).
TEST(LayerHandoff, ChunkwisePrefillThenRecurrentDecodeEqualsRecurrent) {
  const auto block = goldenBlock<double>(1e-6);
  const Tensor3<double> x = randomInput<double>(3, 40, 64, 5);
  const Tensor3<double> recurrent = block.forwardRecurrent(x);
  for (const Index prefill : {1, 8, 13, 39}) {
    MultiScaleRetentionState<double> state;
    block.forwardChunkwise(positions(x, 0, prefill), 8, state);
    Tensor3<double> step;
    for (Index t = prefill; t < 40; ++t) {
      block.forwardRecurrent(positions(x, t, t + 1), state, step);
      const Tensor3<double> expected = positions(recurrent, t, t + 1);
      // Decoding after a prefill is exactly the recurrent form: same factor sqrt(n_t), same S.
      EXPECT_LE(normwiseError(step, toDoubles(expected)), 1e-12)
          << "prefill " << prefill << " t " << t;
    }
  }
}

// Batch items at different positions (e.g. prompts of different lengths) decode together, each
// rotated and normalised at its own position: equal to decoding each alone.
TEST(LayerHandoff, BatchItemsAtDifferentPositionsDecodeTogether) {
  const auto block = goldenBlock<double>(1e-6);
  const Tensor3<double> a = randomInput<double>(1, 12, 64, 1), b = randomInput<double>(1, 5, 64, 2);
  MultiScaleRetentionState<double> stateA, stateB;
  block.forwardChunkwise(a, 4, stateA);
  block.forwardChunkwise(b, 4, stateB);
  MultiScaleRetentionState<double> joint(2, 4, 16, 32);
  for (Index h = 0; h < 4; ++h) {
    joint.matrix(0, h) = stateA.matrix(0, h);
    joint.matrix(1, h) = stateB.matrix(0, h);
  }
  joint.setPosition(0, 12);
  joint.setPosition(1, 5);
  const Tensor3<double> next = randomInput<double>(2, 1, 64, 3);
  const Tensor3<double> together = block.forwardRecurrent(next, joint);
  const Tensor3<double> aloneA = block.forwardRecurrent(item(next, 0), stateA);
  const Tensor3<double> aloneB = block.forwardRecurrent(item(next, 1), stateB);
  for (Index c = 0; c < 64; ++c) {
    EXPECT_NEAR(together(0, 0, c), aloneA(0, 0, c), 1e-13);
    EXPECT_NEAR(together(1, 0, c), aloneB(0, 0, c), 1e-13);
  }
}

// Work is split over (batch item, head) pairs, each computed whole by one thread, so any thread
// count gives bitwise the same result (with OpenMP; without it this checks determinism).
TEST(LayerThreads, ResultsAreBitwiseIdenticalForAnyThreadCount) {
  const auto block = goldenBlock<float>(1e-6);
  const Tensor3<float> x = randomInput<float>(3, 300, 64, 8);
  const int before = numThreads();
  std::vector<Tensor3<float>> results;
  for (const int threads : {1, 2, 3}) {
    setNumThreads(threads);
    MultiScaleRetentionState<float> state;
    results.push_back(block.forwardChunkwise(x, 64, state));
    results.push_back(block.forwardParallel(x));
    results.push_back(block.forwardRecurrent(x));
  }
  setNumThreads(before);
  for (std::size_t i = 3; i < results.size(); ++i) {
    const Tensor3<float>& a = results[i];
    const Tensor3<float>& b = results[i % 3];
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())),
              0)
        << i;
  }
}

// forward(form, x, chunk, state, out, scratch) is the value-returning forward with the buffers
// kept: the same bits for every form, batch 1 and 3, inputs within one slab and over several (T =
// 1100: slabs of 1024 positions, a batch gathered slab by slab through the scratch), one `out`
// and one scratch carried across all calls of every shape, and the same state afterwards.
template <typename Layer>
void expectKeptBuffersMatchTheValueForms(const Layer& layer) {
  typename Layer::Scratch scratch;
  Tensor3<double> out;
  for (const Index batch : {1, 3}) {
    for (const Index time : {9, 1100}) {
      const Tensor3<double> x = randomInput<double>(batch, time, 64, 40 + time);
      for (const Form form : {Form::kParallel, Form::kChunkwise, Form::kRecurrent}) {
        SCOPED_TRACE(std::string(formName(form)) + " batch " + std::to_string(batch) + " T " +
                     std::to_string(time));
        MultiScaleRetentionState<double> valueState, keptState;
        const Tensor3<double> expected = layer.forward(form, x, 4, valueState);
        layer.forward(form, x, 4, keptState, out, scratch);
        ASSERT_EQ(out.dimension(0), batch);
        ASSERT_EQ(out.dimension(1), time);
        ASSERT_EQ(out.dimension(2), 64);
        EXPECT_EQ(std::memcmp(out.data(), expected.data(),
                              sizeof(double) * static_cast<std::size_t>(out.size())),
                  0);
        EXPECT_EQ(std::memcmp(keptState.values().data(), valueState.values().data(),
                              sizeof(double) * static_cast<std::size_t>(keptState.values().size())),
                  0);
      }
    }
  }
}

TEST(LayerKeptBuffers, AnyFormIntoKeptBuffersEqualsTheValueForms) {
  expectKeptBuffersMatchTheValueForms(goldenRetention<double>(1e-6));
  expectKeptBuffersMatchTheValueForms(goldenBlock<double>(1e-6));
}

TEST(LayerKeptBuffers, RejectsAnOutputOverlappingTheInputAndBadChunks) {
  const auto block = goldenBlock<double>(1e-6);
  RetNetBlockScratch<double> scratch;
  MultiScaleRetentionState<double> state;
  Tensor3<double> out = randomInput<double>(2, 5, 64, 3);
  const ConstTensor3Ref<double> inOut(out.data() + 64, 1, 2, 64);
  RETNET_EXPECT_THROW_WITH(block.forward(Form::kChunkwise, inOut, 2, state, out, scratch),
                           InvalidArgument, "RetNetBlock::forwardChunkwise",
                           "out must not overlap x");
  const Tensor3<double> x = randomInput<double>(2, 5, 64, 4);
  RETNET_EXPECT_THROW_WITH(block.forward(Form::kChunkwise, x, 0, state, out, scratch),
                           InvalidArgument, "chunkSize must be >= 1, got 0");
  RETNET_EXPECT_THROW_WITH(
      block.forward(Form::kParallel, randomInput<double>(2, 5, 63, 5), 0, state, out, scratch),
      InvalidArgument, "RetNetBlock::forwardParallel",
      "x's last dimension (embedDim) must be 64, got 63");
  block.forward(Form::kParallel, x, 0, state, out, scratch);  // the parallel form takes no chunk
  EXPECT_EQ(state.position(1), 5);
}

// ---- bad input ------------------------------------------------------------------------------

MultiScaleRetentionWeights<double> zeroWeights(Index D, Index V) {
  return {RowMatrix<double>::Zero(D, D), RowMatrix<double>::Zero(D, D),
          RowMatrix<double>::Zero(V, D), RowMatrix<double>::Zero(V, D),
          RowMatrix<double>::Zero(D, V)};
}

TEST(LayerErrors, RejectsBadConfigurations) {
  RETNET_EXPECT_THROW_WITH(
      (void)MultiScaleRetention<double>({64, 128, 3, 1e-6}, zeroWeights(64, 128)), InvalidArgument,
      "heads (3) must divide embedDim (64)");
  RETNET_EXPECT_THROW_WITH(
      (void)MultiScaleRetention<double>({64, 100, 8, 1e-6}, zeroWeights(64, 100)), InvalidArgument,
      "heads (8) must divide valueDim (100)");
  RETNET_EXPECT_THROW_WITH(
      (void)MultiScaleRetention<double>({12, 12, 4, 1e-6}, zeroWeights(12, 12)), InvalidArgument,
      "must be even", "got 3");
  RETNET_EXPECT_THROW_WITH(
      (void)MultiScaleRetention<double>({64, 128, 0, 1e-6}, zeroWeights(64, 128)), InvalidArgument,
      "heads must be >= 1", "got 64, 128, 0");
  RETNET_EXPECT_THROW_WITH(
      (void)MultiScaleRetention<double>({64, 128, 4, -1.0}, zeroWeights(64, 128)), InvalidArgument,
      "eps", "got -1");
  auto wrong = zeroWeights(64, 128);
  wrong.v = RowMatrix<double>::Zero(64, 64);
  RETNET_EXPECT_THROW_WITH((void)MultiScaleRetention<double>({64, 128, 4, 1e-6}, wrong),
                           InvalidArgument, "weight v must be (128, 64), got (64, 64)");
  RetNetBlockWeights<double> blockWeights{zeroWeights(64, 128),
                                          Vector<double>::Ones(64),
                                          RowMatrix<double>::Zero(32, 64),
                                          RowMatrix<double>::Zero(32, 64),
                                          RowMatrix<double>::Zero(64, 32),
                                          Vector<double>::Ones(63)};
  RETNET_EXPECT_THROW_WITH((void)RetNetBlock<double>({64, 128, 4, 32}, blockWeights),
                           InvalidArgument, "weight finalNorm must have 64 entries, got 63");
  RETNET_EXPECT_THROW_WITH((void)RetNetBlock<double>({64, 128, 4, 0}, blockWeights),
                           InvalidArgument, "ffnDim must be >= 1, got 0");
}

TEST(LayerErrors, RejectsBadInputsAndStates) {
  const auto msr = goldenRetention<double>(1e-6);
  const auto block = goldenBlock<double>(1e-6);
  const Tensor3<double> wrongWidth(2, 5, 63), empty(2, 0, 64), x(2, 5, 64);
  RETNET_EXPECT_THROW_WITH(msr.forwardParallel(wrongWidth), InvalidArgument, "forwardParallel",
                           "x's last dimension (embedDim) must be 64, got 63");
  RETNET_EXPECT_THROW_WITH(block.forwardRecurrent(empty), InvalidArgument, "x must be non-empty",
                           "(2, 0, 64)");
  RETNET_EXPECT_THROW_WITH(block.forwardChunkwise(x, 0), InvalidArgument,
                           "chunkSize must be >= 1, got 0");
  MultiScaleRetentionState<double> otherBatch(3, 4, 16, 32), otherHeads(2, 2, 32, 64),
      otherValue(2, 4, 16, 16);
  RETNET_EXPECT_THROW_WITH(block.forwardChunkwise(x, 4, otherBatch), InvalidArgument,
                           "x's batch size (the state's) must be 3, got 2");
  RETNET_EXPECT_THROW_WITH(msr.forwardRecurrent(x, otherHeads), InvalidArgument,
                           "state heads must be 4, got 2");
  RETNET_EXPECT_THROW_WITH(block.forwardParallel(x, otherValue), InvalidArgument,
                           "state value dim must be 32, got 16");
  RETNET_EXPECT_THROW_WITH(otherBatch.matrix(0, 4), InvalidArgument, "[0, 3) x [0, 4)",
                           "got (0, 4)");
  RETNET_EXPECT_THROW_WITH(otherBatch.setPosition(0, -1), InvalidArgument,
                           "position must be in [0, 2^53], got -1");
}

TEST(LayerErrors, CheckpointsThatContradictTheConfigurationAreRefused) {
  // A configuration with 8 heads contradicts the stored 4-entry decay buffer.
  RetNetBlockConfig eightHeads = io::readRetNetBlockConfig(layerFile());
  eightHeads.heads = 8;
  RETNET_EXPECT_THROW_WITH((void)io::loadRetNetBlock<double>(layerFile(), "", eightHeads),
                           FormatError, "layer_small.safetensors",
                           "'decay' has 4 entries but the layer has 8 heads");
  // A larger FFN than stored.
  RetNetBlockConfig widerFfn = io::readRetNetBlockConfig(layerFile());
  widerFfn.ffnDim = 256;
  RETNET_EXPECT_THROW_WITH((void)io::loadRetNetBlock<double>(layerFile(), "", widerFfn),
                           FormatError, "ffn.fc1.weight", "[256, 64]", "[128, 64]");
  // A prefix with nothing under it.
  RETNET_EXPECT_THROW_WITH((void)io::loadRetNetBlock<double>(layerFile(), "layers.3."), FormatError,
                           "missing tensor 'layers.3.retention.q_proj.weight'");
}

}  // namespace
}  // namespace retnet
