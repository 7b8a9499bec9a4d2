// Multi-scale retention and the RetNet block against torchscale's outputs (golden files made in
// float64 by the reference implementation; see tests/data and docs/semantics/torchscale.md).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "golden_check.hpp"
#include "retnet/io/checkpoint.hpp"
#include "test_util.hpp"

namespace retnet {
namespace {

using testing::normwiseError;

std::string dataFile(const std::string& name) {
  return std::string(RETNET_TEST_DATA_DIR) + "/" + name;
}

template <typename Layer, typename Scalar>
Tensor3<Scalar> runForm(const Layer& layer, Form form, const Tensor3<Scalar>& x, Index chunk) {
  typename Layer::State state;
  return layer.forward(form, x, chunk, state);
}

template <typename Scalar>
class GoldenLayers : public ::testing::Test {};
TYPED_TEST_SUITE(GoldenLayers, testing::Scalars, testing::ScalarName);

TYPED_TEST(GoldenLayers, MultiScaleRetentionMatchesTorchscaleInEveryForm) {
  const auto file = io::SafetensorsFile::open(dataFile("msr_small.safetensors"));
  const auto msr = io::loadMultiScaleRetention<TypeParam>(file);
  EXPECT_EQ(msr.config().heads, 4);
  EXPECT_EQ(msr.config().valueDim, 128);
  testing::checkLayerForms<TypeParam>(file, msr);
}

TYPED_TEST(GoldenLayers, RetNetBlockMatchesTorchscaleInEveryForm) {
  const auto file = io::SafetensorsFile::open(dataFile("layer_small.safetensors"));
  const auto block = io::loadRetNetBlock<TypeParam>(file);
  EXPECT_EQ(block.config().ffnDim, 128);
  EXPECT_EQ(block.config().activation, Activation::kGelu);
  testing::checkLayerForms<TypeParam>(file, block);
}

// Every layer-level golden file in tests/data (kind msr or layer), whatever its dimensions: drop
// more files of torchscale's format there and they are checked too.
TYPED_TEST(GoldenLayers, EveryLayerFileInTheDataFolder) {
  int checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator(RETNET_TEST_DATA_DIR)) {
    if (entry.path().extension() != ".safetensors") continue;
    const auto file = io::SafetensorsFile::open(entry.path().string());
    const std::string kind = file.metadataValue("kind").value_or("");
    if (kind != "msr" && kind != "layer") continue;
    testing::checkGoldenLayerFile<TypeParam>(file);
    ++checked;
  }
  EXPECT_GE(checked, 2);
}

// Our forms differ from each other exactly as torchscale's do (each reproduces its own form), so
// their gaps stay within the gaps the golden metadata records for torchscale itself.
TEST(GoldenLayersCrossForm, GapsBetweenFormsAreTorchscalesOwn) {
  for (const std::string name : {"msr_small.safetensors", "layer_small.safetensors"}) {
    const auto file = io::SafetensorsFile::open(dataFile(name));
    const auto gaps = nlohmann::json::parse(*file.metadataValue("torchscale_form_maxdiff"));
    const auto x = file.readTensor<double, 3>("x");
    const Index chunk = std::stol(*file.metadataValue("chunk_size"));
    Tensor3<double> parallel, chunkwise, recurrent;
    if (name == "msr_small.safetensors") {
      const auto layer = io::loadMultiScaleRetention<double>(file);
      parallel = runForm(layer, Form::kParallel, x, chunk);
      chunkwise = runForm(layer, Form::kChunkwise, x, chunk);
      recurrent = runForm(layer, Form::kRecurrent, x, chunk);
    } else {
      const auto layer = io::loadRetNetBlock<double>(file);
      parallel = runForm(layer, Form::kParallel, x, chunk);
      chunkwise = runForm(layer, Form::kChunkwise, x, chunk);
      recurrent = runForm(layer, Form::kRecurrent, x, chunk);
    }
    // max_rel is max|a-b| / max(max|a|, max|b|); ours is within 1% of it (plus rounding).
    const auto bound = [&](const char* key) {
      return 1.01 * gaps[key]["max_rel"].get<double>() + 1e-12;
    };
    EXPECT_LE(normwiseError(parallel, testing::toDoubles(chunkwise)),
              bound("parallel_vs_chunkwise"))
        << name;
    EXPECT_LE(normwiseError(parallel, testing::toDoubles(recurrent)),
              bound("parallel_vs_recurrent"))
        << name;
    EXPECT_LE(normwiseError(chunkwise, testing::toDoubles(recurrent)),
              bound("chunkwise_vs_recurrent"))
        << name;
  }
}

}  // namespace
}  // namespace retnet
