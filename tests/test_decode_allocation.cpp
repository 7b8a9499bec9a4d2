// A recurrent decoding step allocates nothing once its buffers exist: Eigen is built here with
// EIGEN_RUNTIME_NO_MALLOC, so any Eigen allocation while it is forbidden aborts the test.
#define EIGEN_RUNTIME_NO_MALLOC
#include <gtest/gtest.h>

#include <string>

#include "retnet/io/checkpoint.hpp"

namespace retnet {
namespace {

TEST(DecodeAllocation, RecurrentStepsAllocateNothingAfterTheFirst) {
  const auto file =
      io::SafetensorsFile::open(std::string(RETNET_TEST_DATA_DIR) + "/layer_small.safetensors");
  const auto block = io::loadRetNetBlock<float>(file);
  const auto msr = io::loadMultiScaleRetention<float>(file, "retention.");
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

}  // namespace
}  // namespace retnet
