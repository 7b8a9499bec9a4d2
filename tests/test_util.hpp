// Small helpers shared by the tests: seeded random tensors, error norms, exception checks.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "retnet/tensor.hpp"

namespace retnet::testing {

/// Standard-normal values scaled by `scale`, from a fixed seed.
inline std::vector<double> randomValues(std::size_t count, std::uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> values(count);
  for (double& x : values) x = normal(rng);
  return values;
}

template <typename Scalar>
Tensor3<Scalar> toTensor(const std::vector<double>& values, Index a, Index b, Index c) {
  Tensor3<Scalar> t(a, b, c);
  for (Index i = 0; i < t.size(); ++i)
    t.data()[i] = static_cast<Scalar>(values[static_cast<std::size_t>(i)]);
  return t;
}

template <typename Scalar>
std::vector<double> toDoubles(const Tensor3<Scalar>& t) {
  return std::vector<double>(t.data(), t.data() + t.size());
}

/// max|y - ref| / max|ref|: the normwise relative error used throughout
/// (docs/semantics/torchscale.md §4).
template <typename Y>
double normwiseError(const Y* y, const double* ref, std::size_t count) {
  double maxDiff = 0, maxRef = 0;
  for (std::size_t i = 0; i < count; ++i) {
    const double d = std::abs(static_cast<double>(y[i]) - ref[i]);
    maxDiff = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(maxDiff, d);
    maxRef = std::max(maxRef, std::abs(ref[i]));
  }
  return maxRef > 0 ? maxDiff / maxRef : maxDiff;
}
template <typename Scalar>
double normwiseError(const Tensor3<Scalar>& y, const std::vector<double>& ref) {
  EXPECT_EQ(static_cast<std::size_t>(y.size()), ref.size());
  return normwiseError(y.data(), ref.data(),
                       std::min(ref.size(), static_cast<std::size_t>(y.size())));
}

/// The Scalar types every typed test runs over, and their names in test output.
using Scalars = ::testing::Types<float, double>;
struct ScalarName {
  template <typename T>
  static std::string GetName(int) {
    return std::is_same_v<T, float> ? "float" : "double";
  }
};

/// A fresh directory under temp_directory_path() (named retnet-<label>-<random>), removed with
/// everything in it at the end.
class TempDir {
 public:
  explicit TempDir(const std::string& label) {
    namespace fs = std::filesystem;
    std::random_device device;
    for (;;) {
      const std::string unique = std::to_string(device()) + std::to_string(device());
      path_ = fs::temp_directory_path() / ("retnet-" + label + "-" + unique);
      if (fs::create_directory(path_)) break;
    }
  }
  ~TempDir() {
    std::error_code error;
    std::filesystem::remove_all(path_, error);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// Machine epsilon of Scalar as a double.
template <typename Scalar>
constexpr double epsilonOf() {
  return static_cast<double>(std::numeric_limits<Scalar>::epsilon());
}

}  // namespace retnet::testing

/// EXPECT that `statement` throws `exception_type` whose what() contains every listed substring.
#define RETNET_EXPECT_THROW_WITH(statement, exception_type, ...)              \
  do {                                                                        \
    bool retnetThrew = false;                                                 \
    try {                                                                     \
      statement;                                                              \
    } catch (const exception_type& error) {                                   \
      retnetThrew = true;                                                     \
      const std::string message = error.what();                               \
      for (const std::string& part : std::vector<std::string>{__VA_ARGS__}) { \
        EXPECT_NE(message.find(part), std::string::npos)                      \
            << "message \"" << message << "\" lacks \"" << part << "\"";      \
      }                                                                       \
    }                                                                         \
    EXPECT_TRUE(retnetThrew) << #statement " did not throw " #exception_type; \
  } while (false)
