// The BF16 GEMM of BF16 weights' prefill products (detail/bf16_gemm.hpp, a build with
// RETNET_ONEDNN): the linear stage against a naive double product within the stated bound, the
// rounding of x it promises (exactly once, to nearest even), stacked weights, bitwise
// independence of the thread count, the choice (setBf16Gemm), and a model's prefill through it.
// In a build without oneDNN, or on a CPU where oneDNN has no BF16 matmul (it needs AVX-512), the
// GEMM cases skip, saying why; the choice's semantics are checked everywhere.
#include <gtest/gtest.h>

#include <fstream>
#include <retnet/io/load_model.hpp>
#include <retnet/retnet.hpp>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace retnet {
namespace {

using testing::randomValues;

/// Puts the default choice back at the end of a test.
struct Bf16GemmGuard {
  ~Bf16GemmGuard() { setBf16Gemm(Bf16Gemm::kWhereFast); }
};

/// Why the BF16 GEMM cannot run here, or empty.
std::string whyNot() {
#ifndef RETNET_ONEDNN
  return "built without RETNET_ONEDNN";
#else
  if (!bf16GemmAvailable()) return "oneDNN has no BF16 matmul on this CPU (it needs AVX-512)";
  return "";
#endif
}

/// A (rows x cols) matrix of values spread over four binades either side of 1, seeded.
RowMatrix<double> spread(Index rows, Index cols, std::uint64_t seed) {
  const auto values = randomValues(static_cast<std::size_t>(rows * cols), seed);
  RowMatrix<double> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) {
    const double v = values[static_cast<std::size_t>(i)];
    m.data()[i] = v * std::exp2(double(i % 9) - 4);
  }
  return m;
}

/// x rounded to BF16 as the GEMM promises: nearest even, once (the exact encoder, from double).
RowMatrix<double> roundedToBf16(const RowMatrix<float>& x) {
  RowMatrix<double> out(x.rows(), x.cols());
  for (Index i = 0; i < x.size(); ++i)
    out.data()[i] = io::detail::bfloat16ToFloat(io::detail::doubleToBfloat16(double(x.data()[i])));
  return out;
}

TEST(Bf16Gemm, TheChoiceIsKeptAndNeverWithoutTheBuild) {
  Bf16GemmGuard guard;
  EXPECT_EQ(bf16GemmChoice(), Bf16Gemm::kWhereFast);
  setBf16Gemm(Bf16Gemm::kNever);
  EXPECT_EQ(bf16GemmChoice(), Bf16Gemm::kNever);
  EXPECT_FALSE(detail::bf16GemmInUse());
  setBf16Gemm(Bf16Gemm::kWherever);
  EXPECT_EQ(detail::bf16GemmInUse(), bf16GemmAvailable());
  setBf16Gemm(Bf16Gemm::kWhereFast);
  EXPECT_EQ(detail::bf16GemmInUse(), bf16GemmFast());
  EXPECT_TRUE(!bf16GemmFast() || bf16GemmAvailable());
#ifndef RETNET_ONEDNN
  EXPECT_FALSE(bf16GemmAvailable());
#endif
}

// y = x·Wᵀ for BF16 W and many rows (the GEMM path: rows > kLinearReducedStreamRows), x and y
// views inside wider matrices. Two checks, both componentwise:
//  - against the exact product of x̂ (x rounded to BF16 once, nearest even) and the stored W:
//    products of BF16 values are exact in float, so only the float32 sums err, by at most
//    γ_n·Σ|x̂||w| (Higham Thm 3.1; (n + 2)·2⁻²⁴ covers γ_n). This fails if x were rounded any other
//    way (truncated, twice) or W read wrongly;
//  - against the exact product of x itself: the bound bf16_gemm.hpp states,
//    (2⁻⁸ + 1.01·(n + 1)·2⁻²⁴)·Σ|x||w|.
/// The CPU's vendor and flags as Linux reports them (/proc/cpuinfo's first processor), or empty.
std::string cpuinfoLine(const std::string& key) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.compare(0, key.size(), key) == 0) return line;
  return "";
}

// The rule of kWhereFast, checked against the kernel's own account of the CPU: AMX-BF16, or
// AVX512-BF16 on an AMD CPU (where oneDNN runs BF16 matmul at all).
TEST(Bf16Gemm, FastWhereAmxOrAmdAvx512Bf16) {
  if (!whyNot().empty()) GTEST_SKIP() << whyNot();
  const std::string flags = cpuinfoLine("flags"), vendor = cpuinfoLine("vendor_id");
  if (flags.empty()) GTEST_SKIP() << "no /proc/cpuinfo to check against";
  const auto has = [&](const std::string& flag) {
    return (flags + " ").find(" " + flag + " ") != std::string::npos;
  };
  const bool amd = vendor.find("AuthenticAMD") != std::string::npos;
  EXPECT_EQ(bf16GemmFast(), has("amx_bf16") || (amd && has("avx512_bf16"))) << vendor << "\n"
                                                                            << flags;
}

TEST(Bf16Gemm, LinearWithinTheStatedBound) {
  if (!whyNot().empty()) GTEST_SKIP() << whyNot();
  Bf16GemmGuard guard;
  setBf16Gemm(Bf16Gemm::kWherever);
  const double u = std::exp2(-24);
  for (Index in : {1, 31, 64, 257, 1024}) {
    for (Index out : {1, 17, 300, 600}) {
      const auto weight = LinearWeight<float>(spread(out, in, 7 * in + out).cast<float>())
                              .converted(WeightType::kBf16);
      const RowMatrix<double> w = weight.dequantized().cast<double>();
      for (Index rows : {stages::kLinearReducedStreamRows + 1, Index(100), Index(513)}) {
        const RowMatrix<float> xWide = spread(rows, in + 5, 3 * rows + in).cast<float>();
        const RowMatrix<float> xf = xWide.leftCols(in);
        RowMatrix<float> yWide = RowMatrix<float>::Constant(rows, out + 3, 7.0f);
        stages::linear<float>(xWide.leftCols(in), weight, yWide.leftCols(out));
        const RowMatrix<double> y = yWide.leftCols(out).cast<double>();
        EXPECT_TRUE((yWide.rightCols(3).array() == 7.0f).all()) << "wrote past y";
        const RowMatrix<double> xr = roundedToBf16(xf), x = xf.cast<double>();
        const RowMatrix<double> rounded = xr * w.transpose(), exact = x * w.transpose();
        const RowMatrix<double> sumBound =
            double(in + 2) * u * (xr.cwiseAbs() * w.cwiseAbs().transpose());
        const RowMatrix<double> stated =
            (std::exp2(-8) + 1.01 * double(in + 1) * u) * (x.cwiseAbs() * w.cwiseAbs().transpose());
        ASSERT_TRUE(((y - rounded).cwiseAbs().array() <= sumBound.array() + 1e-300).all())
            << "in " << in << " out " << out << " rows " << rows << ": max error "
            << (y - rounded).cwiseAbs().maxCoeff();
        ASSERT_TRUE(((y - exact).cwiseAbs().array() <= stated.array() + 1e-300).all())
            << "in " << in << " out " << out << " rows " << rows;
      }
    }
  }
}

// kNever keeps the float32 path (x exact): within the float sums' bound of x·Wᵀ, which the BF16
// GEMM (x rounded) exceeds on these values — so the choice really switches the path.
TEST(Bf16Gemm, NeverKeepsActivationsExact) {
  Bf16GemmGuard guard;
  const Index in = 257, out = 300, rows = 100;
  const auto weight =
      LinearWeight<float>(spread(out, in, 5).cast<float>()).converted(WeightType::kBf16);
  const RowMatrix<double> w = weight.dequantized().cast<double>();
  const RowMatrix<float> xf = spread(rows, in, 6).cast<float>();
  const RowMatrix<double> exact = xf.cast<double>() * w.transpose();
  const RowMatrix<double> bound =
      double(in + 2) * std::exp2(-24) * (xf.cast<double>().cwiseAbs() * w.cwiseAbs().transpose());
  RowMatrix<float> y(rows, out);
  setBf16Gemm(Bf16Gemm::kNever);
  stages::linear<float>(xf, weight, y);
  EXPECT_TRUE(((y.cast<double>() - exact).cwiseAbs().array() <= bound.array() + 1e-300).all());
  if (!whyNot().empty()) GTEST_SKIP() << whyNot();
  setBf16Gemm(Bf16Gemm::kWherever);
  stages::linear<float>(xf, weight, y);
  EXPECT_FALSE(((y.cast<double>() - exact).cwiseAbs().array() <= bound.array() + 1e-300).all())
      << "the BF16 GEMM did not run: x was not rounded";
}

// A stacked weight (q|k|v|g) gives each part's own product, bit for bit; and the thread count
// changes no bit (each column block is one thread's single-threaded oneDNN call).
TEST(Bf16Gemm, StackedPartsAndThreads) {
  if (!whyNot().empty()) GTEST_SKIP() << whyNot();
  Bf16GemmGuard guard;
  setBf16Gemm(Bf16Gemm::kWherever);
  const auto a = LinearWeight<float>(spread(300, 96, 1).cast<float>()).converted(WeightType::kBf16);
  const auto b = LinearWeight<float>(spread(70, 96, 2).cast<float>()).converted(WeightType::kBf16);
  const LinearWeight<float> stacked = LinearWeight<float>::stacked({&a, &b, &a});
  const RowMatrix<float> x = spread(200, 96, 3).cast<float>();
  RowMatrix<float> y(200, 670), ya(200, 300), yb(200, 70);
  stages::linear<float>(x, stacked, y);
  stages::linear<float>(x, a, ya);
  stages::linear<float>(x, b, yb);
  EXPECT_TRUE(y.leftCols(300) == ya && y.middleCols(300, 70) == yb && y.rightCols(300) == ya);
  const int threads = numThreads();
  for (Index rows : {Index(65), Index(200)}) {
    RowMatrix<float> one(rows, 670), two(rows, 670);
    setNumThreads(1);
    stages::linear<float>(x.topRows(rows), stacked, one);
    setNumThreads(2);
    stages::linear<float>(x.topRows(rows), stacked, two);
    EXPECT_TRUE(one == two) << "rows " << rows;
  }
  setNumThreads(threads);
  EXPECT_EQ(numThreads(), threads) << "the GEMM did not put OpenMP's thread count back";
}

// A golden model in BF16, prefilled over more rows than the kernels stream: with the BF16 GEMM,
// the logits stay within a few BF16 roundings of the float32 path's. Each layer's inputs to its
// products are rounded by at most 2⁻⁸ relative, and the normalisations after them do not grow
// that; 0.05 of the largest logit is a loose bound for 2 layers, and a wrong product (a transposed
// W, a wrong stride) is off by O(1).
TEST(Bf16Gemm, ModelPrefillStaysCloseToTheFloatPath) {
  if (!whyNot().empty()) GTEST_SKIP() << whyNot();
  Bf16GemmGuard guard;
  const std::string path = std::string(RETNET_TEST_DATA_DIR) + "/decoder_small.safetensors";
  const auto model = io::loadModel<float>(path, io::LoadOptions{WeightType::kBf16});
  const Index vocab = model.config().vocab, time = 150;
  TokenMatrix tokens(2, time);
  for (Index b = 0; b < 2; ++b)
    for (Index t = 0; t < time; ++t) tokens(b, t) = (7 * t + 3 * b + 1) % vocab;
  setBf16Gemm(Bf16Gemm::kNever);
  const Tensor3<float> reference = model.forwardChunkwise(tokens, 64);
  setBf16Gemm(Bf16Gemm::kWherever);
  const Tensor3<float> fast = model.forwardChunkwise(tokens, 64);
  ASSERT_EQ(fast.size(), reference.size());
  double largest = 0, worst = 0;
  for (Index i = 0; i < reference.size(); ++i) {
    largest = std::max(largest, double(std::abs(reference.data()[i])));
    worst = std::max(worst, double(std::abs(fast.data()[i] - reference.data()[i])));
  }
  EXPECT_LE(worst, 0.05 * largest);
  EXPECT_GT(worst, 0.0) << "the BF16 GEMM did not run";
}

}  // namespace
}  // namespace retnet
