// A recurrent decoding step allocates nothing once its buffers exist: Eigen is built here with
// EIGEN_RUNTIME_NO_MALLOC, so any Eigen allocation while it is forbidden aborts the test. Eigen
// checks that with an assertion, so this file keeps assertions on in every build type.
#undef NDEBUG
#define EIGEN_RUNTIME_NO_MALLOC
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "retnet/io/checkpoint.hpp"
#include "retnet/retention.hpp"

namespace retnet {
namespace {

io::SafetensorsFile dataFile(const std::string& name) {
  return io::SafetensorsFile::open(std::string(RETNET_TEST_DATA_DIR) + "/" + name);
}

struct SmallLayer {  // layer_small's block and its retention, in float
  RetNetBlock<float> block;
  MultiScaleRetention<float> msr;
};
SmallLayer smallLayer() {
  const auto file = dataFile("layer_small.safetensors");
  return {io::loadRetNetBlock<float>(file), io::loadMultiScaleRetention<float>(file, "retention.")};
}

TEST(DecodeAllocation, RecurrentStepsAllocateNothingAfterTheFirst) {
  const auto [block, msr] = smallLayer();
  Tensor3<float> token(3, 1, 64), out;
  token.setConstant(0.25f);
  MultiScaleRetentionState<float> blockState, msrState;
  block.forwardChunkwise(Tensor3<float>(Tensor3<float>(3, 9, 64).setConstant(0.5f)), 4, blockState);
  block.forwardRecurrent(token, blockState, out);  // first step sizes the buffers
  msr.forwardRecurrent(token, msrState, out);
  Eigen::internal::set_is_malloc_allowed(false);
  for (int step = 0; step < 5; ++step) {
    block.forwardRecurrent(token, blockState, out);
    msr.forwardRecurrent(token, msrState, out);
  }
  Eigen::internal::set_is_malloc_allowed(true);
  EXPECT_EQ(blockState.position(2), 9 + 6);
  EXPECT_EQ(msrState.position(0), 6);
}

TEST(DecodeAllocation, StepsWithAnExplicitScratchAndModelDecodingAllocateNothing) {
  const auto file = dataFile("decoder_small.safetensors");
  const auto model = io::loadRetNetModel<float>(file);
  RetNetModelState<float> state;
  RetNetModel<float>::Scratch scratch;
  RowMatrix<float> logits;
  TokenMatrix prompt(2, 5);
  prompt << 1, 2, 3, 4, 5, 6, 7, 8, 9, 10;
  model.prefill(prompt, state, 2);
  const std::vector<std::int64_t> tokens{3, 4};
  model.decode(tokens, state, logits, scratch);  // first step sizes the buffers
  model.decode(tokens, state, logits);           // and the per-thread scratch's
  const auto& block = model.blocks().front();
  Tensor3<float> token(2, 1, model.config().block.embedDim), out;
  token.setConstant(0.25f);
  MultiScaleRetentionState<float> blockState;
  RetNetBlockScratch<float> blockScratch;
  block.forwardRecurrent(token, blockState, out, blockScratch);
  Eigen::internal::set_is_malloc_allowed(false);
  for (int step = 0; step < 5; ++step) {
    model.decode(tokens, state, logits, scratch);
    model.decode(tokens, state, logits);
    block.forwardRecurrent(token, blockState, out, blockScratch);
  }
  Eigen::internal::set_is_malloc_allowed(true);
  EXPECT_EQ(state.position(1), 5 + 2 + 10);
}

// Prefill into kept buffers (forward(form, x, chunk, state, out, scratch)) allocates nothing
// either once they have their size: every form, a batch of three, for the layer and the block.
// (This layer's products are small enough for Eigen to pack them on the stack.)
TEST(DecodeAllocation, EveryFormIntoKeptBuffersAllocatesNothing) {
  const auto [block, msr] = smallLayer();
  Tensor3<float> x(3, 9, 64), out;
  x.setConstant(0.5f);
  MultiScaleRetentionState<float> state;
  RetNetBlockScratch<float> blockScratch;
  MultiScaleRetentionScratch<float> msrScratch;
  const Form forms[] = {Form::kParallel, Form::kChunkwise, Form::kRecurrent};
  for (int round = 0; round < 2; ++round) {  // size the buffers: a zero, then a non-zero state
    for (const Form form : forms) {
      block.forward(form, x, 4, state, out, blockScratch);
      msr.forward(form, x, 4, state, out, msrScratch);
    }
  }
  Eigen::internal::set_is_malloc_allowed(false);
  for (int round = 0; round < 2; ++round) {
    for (const Form form : forms) {
      block.forward(form, x, 4, state, out, blockScratch);
      msr.forward(form, x, 4, state, out, msrScratch);
    }
  }
  Eigen::internal::set_is_malloc_allowed(true);
  EXPECT_EQ(state.position(0), 9 * 24);
}

// Single-head retention's kept-buffer form likewise, every form in turn with one scratch.
TEST(DecodeAllocation, RetentionIntoKeptBuffersAllocatesNothing) {
  const Retention<float> retention(0.9f);
  Tensor3<float> q(3, 9, 16), v(3, 9, 32), out;
  q.setConstant(0.25f);
  v.setConstant(0.5f);
  RetentionState<float> state;
  Retention<float>::Scratch scratch;
  const Form forms[] = {Form::kParallel, Form::kChunkwise, Form::kRecurrent};
  for (int round = 0; round < 2; ++round)  // size the buffers: a zero, then a non-zero state
    for (const Form form : forms) retention.forward(form, q, q, v, 4, state, out, scratch);
  Eigen::internal::set_is_malloc_allowed(false);
  for (int round = 0; round < 2; ++round)
    for (const Form form : forms) retention.forward(form, q, q, v, 4, state, out, scratch);
  Eigen::internal::set_is_malloc_allowed(true);
  EXPECT_EQ(state.position(), 9 * 12);
}

// A model's prefill into kept buffers (the scratch decode takes) allocates nothing either once
// sized: both forms, then decoding steps in the same scratch.
TEST(DecodeAllocation, ModelPrefillIntoKeptBuffersAllocatesNothing) {
  const auto model = io::loadRetNetModel<float>(dataFile("decoder_small.safetensors"));
  RetNetModelState<float> state;
  RetNetModel<float>::Scratch scratch;
  RowMatrix<float> logits;
  TokenMatrix prompt(2, 5);
  prompt << 1, 2, 3, 4, 5, 6, 7, 8, 9, 10;
  const std::vector<std::int64_t> tokens{3, 4};
  for (int round = 0; round < 3; ++round) {  // sizes: a zero state, then a non-zero one
    if (round == 2) Eigen::internal::set_is_malloc_allowed(false);
    for (const Form form : {Form::kChunkwise, Form::kParallel}) {
      model.prefill(prompt, state, logits, scratch, 2, form);
      model.decode(tokens, state, logits, scratch);
    }
  }
  Eigen::internal::set_is_malloc_allowed(true);
  EXPECT_EQ(state.position(1), 3 * 2 * (5 + 1));
}

// Reduced-precision weights decode through their own kernels (codes read as stored, no panel):
// no allocation either, in each weight type.
TEST(DecodeAllocation, ReducedPrecisionDecodingAllocatesNothing) {
  const auto file = dataFile("decoder_small.safetensors");
  for (WeightType type : {WeightType::kBf16, WeightType::kF16, WeightType::kInt8}) {
    auto model = io::loadRetNetModel<float>(file);
    model.convertWeights(type);
    RetNetModelState<float> state;
    RetNetModel<float>::Scratch scratch;
    RowMatrix<float> logits;
    const std::vector<std::int64_t> tokens{3, 4, 5};
    model.decode(tokens, state, logits, scratch);  // sizes the buffers
    Eigen::internal::set_is_malloc_allowed(false);
    for (int step = 0; step < 3; ++step) model.decode(tokens, state, logits, scratch);
    Eigen::internal::set_is_malloc_allowed(true);
    EXPECT_EQ(state.position(2), 4) << weightTypeName(type);
  }
}

}  // namespace
}  // namespace retnet
