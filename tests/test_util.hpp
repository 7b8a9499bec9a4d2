// Small helpers shared by the tests: seeded random tensors, error norms, exception checks.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "retnet/form.hpp"
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

/// max|a − ref| / max|ref| of a matrix expression against a double reference (the gradient
/// golden README's normwise error, §4); infinite when a NaN appears.
template <typename A>
double maxNormwise(const A& a, const RowMatrix<double>& ref) {
  const double diff = (a.template cast<double>() - ref).cwiseAbs().maxCoeff();
  const double scale = ref.cwiseAbs().maxCoeff();
  return std::isnan(diff) ? INFINITY : scale > 0 ? diff / scale : diff;
}

/// ‖a − b‖ / max(‖a‖, ‖b‖) in the Frobenius norm; infinite when a NaN appears.
template <typename A>
double frobeniusError(const A& a, const RowMatrix<double>& b) {
  const RowMatrix<double> ad = a.template cast<double>();
  const double scale = std::max(ad.norm(), b.norm());
  const double diff = (ad - b).norm();
  return std::isnan(diff) ? INFINITY : scale > 0 ? diff / scale : diff;
}

/// A (rows x cols) matrix of randomValues(…, seed, scale).
template <typename Scalar>
RowMatrix<Scalar> randomMatrix(Index rows, Index cols, std::uint64_t seed, double scale) {
  const auto values = randomValues(static_cast<std::size_t>(rows * cols), seed, scale);
  RowMatrix<Scalar> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(values[std::size_t(i)]);
  return m;
}

/// The items of a comma-separated list (a golden file's `grad_forms`), empty ones dropped.
inline std::vector<std::string> splitForms(const std::string& list) {
  std::vector<std::string> forms;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) forms.push_back(item);
  }
  return forms;
}

/// The form a gradient golden file names, if it is one that trains (parallel, chunkwise).
inline bool parseTrainedForm(const std::string& name, Form& form) {
  if (name == "parallel") {
    form = Form::kParallel;
  } else if (name == "chunkwise") {
    form = Form::kChunkwise;
  } else {
    return false;
  }
  return true;
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

/// The gradient golden files' check (shared/golden/grad README §4) of `ours` against `refs`, both
/// by parameter name: the same names, and per tensor in double e ≤ 1e-9 (normwise and
/// Frobenius), in float e ≤ 1e-3 with the denominator floored at 1e-2 · `largest` (the form's
/// largest reference gradient). Returns the worst error and its tensor's name.
inline std::pair<double, std::string> checkGradients(
    const std::string& label, const std::map<std::string, RowMatrix<double>>& ours,
    const std::map<std::string, RowMatrix<double>>& refs, bool isDouble, double largest) {
  EXPECT_EQ(ours.size(), refs.size()) << label;
  for (const auto& entry : ours) {
    if (refs.count(entry.first) == 0)
      ADD_FAILURE() << label << ": " << entry.first << " has no stored gradient";
  }
  double worst = 0;
  std::string worstName;
  for (const auto& [name, ref] : refs) {
    const auto it = ours.find(name);
    if (it == ours.end()) {
      ADD_FAILURE() << label << ": no gradient for " << name;
      continue;
    }
    if (it->second.rows() != ref.rows() || it->second.cols() != ref.cols()) {
      ADD_FAILURE() << label << " " << name << ": shape (" << it->second.rows() << ", "
                    << it->second.cols() << "), stored (" << ref.rows() << ", " << ref.cols()
                    << ")";
      continue;
    }
    double error;
    if (isDouble) {
      error = std::max(maxNormwise(it->second, ref), frobeniusError(it->second, ref));
      EXPECT_LE(error, 1e-9) << label << " " << name;
    } else {  // §4: the denominator floored at 1e-2 of the form's largest reference gradient
      const double diff = (it->second - ref).cwiseAbs().maxCoeff();
      error = diff / std::max(ref.cwiseAbs().maxCoeff(), 1e-2 * largest);
      EXPECT_LE(error, 1e-3) << label << " " << name;
    }
    if (error >= worst) {
      worst = error;
      worstName = name;
    }
  }
  return {worst, worstName};
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
