// Reduced-precision weights (linear_weight.hpp, detail/lowp_kernels.hpp): the codecs against the
// exact encoders, the rounding bounds of each format, the linear stage in every kernel build the
// CPU has (and the portable one) against a naive double product, and whole models (every golden
// model directory and file) in each weight type against the same model at full precision.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <retnet/io/load_model.hpp>
#include <retnet/io/quantize.hpp>
#include <retnet/io/safetensors_writer.hpp>
#include <retnet/retnet.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "test_util.hpp"

namespace retnet {
namespace {

namespace fs = std::filesystem;
using testing::randomValues;

const WeightType kReduced[] = {WeightType::kBf16, WeightType::kF16, WeightType::kInt8};

/// Every kernel build this CPU runs: portable always, then AVX2 and AVX-512 where supported.
std::vector<SimdLevel> levels() {
  std::vector<SimdLevel> out{SimdLevel::kPortable};
  for (SimdLevel level : {SimdLevel::kAvx2, SimdLevel::kAvx512})
    if (static_cast<int>(level) <= static_cast<int>(simdSupported())) out.push_back(level);
  return out;
}

/// Restores the kernels' full choice at the end of a test.
struct SimdLimitGuard {
  ~SimdLimitGuard() { setSimdLimit(SimdLevel::kAvx512); }
};

/// Puts the BF16 GEMM's default choice back at the end of a test.
struct Bf16GemmGuard {
  ~Bf16GemmGuard() { setBf16Gemm(Bf16Gemm::kWhereFast); }
};

float floatFromBits(std::uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

/// Float patterns: a prime-stride sweep of all 2^32, plus every pattern near the F16 range ends.
std::vector<float> floatPatterns() {
  std::vector<float> out;
  for (std::uint64_t bits = 0; bits < (1ull << 32); bits += 65521)
    out.push_back(floatFromBits(static_cast<std::uint32_t>(bits)));
  // Around F16's underflow to zero (2^-25), its smallest normal (2^-14) and overflow (65520).
  for (std::uint32_t center : {0x33000000u, 0x38800000u, 0x477FF000u})
    for (std::uint32_t d = 0; d < 20000; ++d) {
      out.push_back(floatFromBits(center - 10000 + d));
      out.push_back(floatFromBits((center - 10000 + d) | 0x80000000u));
    }
  return out;
}

// The fast float encoders are the exact (from double, one rounding) ones on every pattern tried.
TEST(LowpCodecs, FastEncodersAreTheExactOnes) {
  struct Codec {
    const char* name;
    std::uint16_t (*fast)(float);
    std::uint16_t (*exact)(double);
    float (*decode)(std::uint16_t);
  };
  const Codec codecs[] = {
      {"bf16", detail::floatToBf16, io::detail::doubleToBfloat16, detail::bf16ToFloat},
      {"f16", detail::floatToF16, io::detail::doubleToHalf, detail::f16ToFloat}};
  const std::vector<float> patterns = floatPatterns();
  for (const Codec& codec : codecs) {
    for (float f : patterns) {
      const std::uint16_t fast = codec.fast(f), exact = codec.exact(f);
      if (std::isnan(f)) {  // a quiet NaN of the same sign (payloads may differ)
        EXPECT_TRUE(std::isnan(codec.decode(fast))) << codec.name;
        EXPECT_EQ(fast & 0x8000u, exact & 0x8000u) << codec.name;
      } else {
        ASSERT_EQ(fast, exact) << codec.name << " of " << f;
      }
    }
  }
}

/// A (out x in) weight of normal values with a spread of magnitudes (some rows 1000x smaller).
RowMatrix<double> spreadWeight(Index out, Index in, std::uint64_t seed) {
  const auto values = randomValues(static_cast<std::size_t>(out * in), seed);
  RowMatrix<double> w(out, in);
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = values[static_cast<std::size_t>(i)];
  for (Index j = 0; j < out; j += 3) w.row(j) *= 1e-3;
  return w;
}

// The format bounds (linear_weight.hpp), element by element.
TEST(LowpRounding, EachFormatWithinItsBound) {
  for (Index in : {1, 31, 32, 33, 70, 100}) {
    const RowMatrix<double> w = spreadWeight(7, in, 11 + in);
    const LinearWeight<double> full{RowMatrix<double>(w)};
    const RowMatrix<double> bf = full.converted(WeightType::kBf16).dequantized();
    const RowMatrix<double> h = full.converted(WeightType::kF16).dequantized();
    const LinearWeight<double> q8 = full.converted(WeightType::kInt8);
    const RowMatrix<double> q = q8.dequantized();
    for (Index j = 0; j < w.rows(); ++j) {
      for (Index i = 0; i < in; ++i) {
        const double v = w(j, i);
        EXPECT_LE(std::abs(bf(j, i) - v), std::ldexp(std::abs(v), -8)) << j << "," << i;
        // F16: relative 2^-11 in its normal range, absolute 2^-25 (half its subnormal step) below.
        EXPECT_LE(std::abs(h(j, i) - v),
                  std::max(std::ldexp(std::abs(v), -11), std::ldexp(1, -25)));
        // int8: half a step of the group's scale max|w|/127, plus the float product s·q's rounding.
        const Index g = i / 32, begin = 32 * g, count = std::min<Index>(32, in - begin);
        const double amax = w.row(j).segment(begin, count).cwiseAbs().maxCoeff();
        EXPECT_LE(std::abs(q(j, i) - v), amax / 254 * (1 + 1e-6) + std::ldexp(std::abs(v), -23));
        EXPECT_FLOAT_EQ(q8.parts().front().codes.scales[j * q8.scaleGroups() + g],
                        float(amax / 127));
      }
    }
  }
  // An all-zero group keeps a zero scale and zero codes.
  const auto zero = LinearWeight<float>(RowMatrix<float>::Zero(2, 40)).converted(WeightType::kInt8);
  EXPECT_TRUE(zero.dequantized().isZero(0));
}

TEST(LowpRounding, StoredBytesAndShapes) {
  const LinearWeight<float> full(RowMatrix<float>::Ones(10, 70));
  EXPECT_EQ(full.storedBytes(), 4u * 700);
  EXPECT_EQ(full.converted(WeightType::kBf16).storedBytes(), 2u * 700);
  EXPECT_EQ(full.converted(WeightType::kF16).storedBytes(), 2u * 700);
  EXPECT_EQ(full.converted(WeightType::kInt8).storedBytes(), 700u + 4u * 10 * 3);  // 3 groups/row
  for (WeightType type : kReduced) {
    const auto w = full.converted(type);
    EXPECT_EQ(w.type(), type);
    EXPECT_EQ(w.outputs(), 10);
    EXPECT_EQ(w.inputs(), 70);
    EXPECT_TRUE(w.converted(WeightType::kFull).matrix().isOnes(0));  // 1 is exact in each
  }
}

TEST(LowpRounding, ErrorsAreClear) {
  const auto bf = LinearWeight<float>(RowMatrix<float>::Ones(2, 3)).converted(WeightType::kBf16);
  RETNET_EXPECT_THROW_WITH(bf.matrix(), InvalidArgument, "LinearWeight::matrix", "bf16");
  RowMatrix<float> bad = RowMatrix<float>::Ones(2, 3);
  bad(1, 2) = std::numeric_limits<float>::quiet_NaN();
  RETNET_EXPECT_THROW_WITH(LinearWeight<float>(bad).converted(WeightType::kInt8), InvalidArgument,
                           "finite", "int8");
  const std::uint16_t codes[6] = {};
  RETNET_EXPECT_THROW_WITH(LinearWeight<float>::halves(WeightType::kInt8, 2, 3, codes, nullptr),
                           InvalidArgument, "bf16 or f16", "int8");
  const std::int8_t bytes[6] = {};
  RETNET_EXPECT_THROW_WITH(LinearWeight<float>::int8(2, 3, bytes, nullptr, nullptr),
                           InvalidArgument, "scales");
  RowMatrix<float> x(1, 4), y(1, 2);
  RETNET_EXPECT_THROW_WITH(stages::linear<float>(x, bf, y), InvalidArgument, "stages::linear",
                           "(1, 3)");
  EXPECT_EQ(weightTypeFromName("f32"), WeightType::kFull);
  EXPECT_EQ(weightTypeFromName("int8"), WeightType::kInt8);
  EXPECT_FALSE(weightTypeFromName("q4"));
}

template <typename Scalar>
class LowpLinear : public ::testing::Test {};
TYPED_TEST_SUITE(LowpLinear, testing::Scalars, testing::ScalarName);

// y = x·Wᵀ in every kernel build against the naive double product over the stored values, for
// every weight type and row count (streamed in passes of 8 rows, or panels + GEMM beyond). Any
// summation order of n products obeys |ŷ − y| ≤ γ_n Σ|x||w| (Higham, Thm 3.1, γ_n = nu/(1 − nu)),
// so the bound is componentwise: (in + 2)·u·(|x|·|W|ᵀ) with u the Scalar's unit roundoff. x and
// y are views inside wider matrices (row strides ≠ widths), as the layers pass them.
TYPED_TEST(LowpLinear, EveryBuildMatchesTheNaiveProduct) {
  using Scalar = TypeParam;
  SimdLimitGuard guard;
  Bf16GemmGuard bf16;  // x exact: the BF16 GEMM's own bound is test_bf16_gemm's
  setBf16Gemm(Bf16Gemm::kNever);
  const double u = testing::epsilonOf<Scalar>() / 2;
  for (Index in : {1, 5, 16, 31, 32, 33, 64, 100, 257}) {
    for (Index out : {1, 3, 4, 5, 9, 300}) {
      const RowMatrix<double> w = spreadWeight(out, in, 100 * in + out);
      for (Index rows : {1, 2, 3, 4, 5, 7, 8, 9, 17, 65}) {
        const auto xv = randomValues(static_cast<std::size_t>(rows * (in + 3)), in + rows);
        RowMatrix<Scalar> xWide(rows, in + 3);
        for (Index i = 0; i < xWide.size(); ++i)
          xWide.data()[i] = static_cast<Scalar>(xv[static_cast<std::size_t>(i)]);
        const auto x = xWide.leftCols(in);
        for (WeightType type :
             {WeightType::kFull, WeightType::kBf16, WeightType::kF16, WeightType::kInt8}) {
          const auto weight = LinearWeight<Scalar>(w.cast<Scalar>()).converted(type);
          const RowMatrix<double> stored = weight.dequantized().template cast<double>();
          const RowMatrix<double> ref = x.template cast<double>() * stored.transpose();
          const RowMatrix<double> bound =
              (in + 2) * u * (x.template cast<double>().cwiseAbs() * stored.cwiseAbs().transpose());
          for (SimdLevel level : levels()) {
            setSimdLimit(level);
            RowMatrix<Scalar> yWide = RowMatrix<Scalar>::Constant(rows, out + 2, Scalar(7));
            stages::linear<Scalar>(x, weight, yWide.leftCols(out));
            const RowMatrix<double> err =
                (yWide.leftCols(out).template cast<double>() - ref).cwiseAbs();
            ASSERT_TRUE((err.array() <= bound.array() + 1e-300).all())
                << weightTypeName(type) << " " << simdLevelName(level) << " in " << in << " out "
                << out << " rows " << rows << ": max error " << err.maxCoeff();
            EXPECT_TRUE((yWide.rightCols(2).array() == Scalar(7)).all()) << "wrote past y";
          }
        }
      }
    }
  }
}

// The kernels' sums do not depend on the thread count (each output column is one thread's).
TEST(LowpLinear, BitwiseIndependentOfThreads) {
  const RowMatrix<float> w = spreadWeight(1000, 96, 5).cast<float>();
  const auto xv = randomValues(3 * 96, 6);
  RowMatrix<float> x(3, 96);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = float(xv[static_cast<std::size_t>(i)]);
  const int threads = numThreads();
  for (WeightType type : kReduced) {
    const auto weight = LinearWeight<float>(w).converted(type);
    for (Index rows : {1, 3}) {
      RowMatrix<float> one(rows, 1000), two(rows, 1000);
      setNumThreads(1);
      stages::linear<float>(x.topRows(rows), weight, one);
      setNumThreads(2);
      stages::linear<float>(x.topRows(rows), weight, two);
      EXPECT_TRUE(one == two) << weightTypeName(type);
    }
  }
  setNumThreads(threads);
}

TEST(LowpEmbedding, LooksUpTheStoredRows) {
  const RowMatrix<double> table = spreadWeight(9, 40, 3);
  for (WeightType type : kReduced) {
    const auto weight = LinearWeight<double>(RowMatrix<double>(table)).converted(type);
    const RowMatrix<double> stored = weight.dequantized();
    const std::int64_t tokens[3] = {8, 0, 3};
    RowMatrix<double> y(3, 40);
    stages::embed<double>(tokens, weight, 2.0, y);
    for (Index r = 0; r < 3; ++r) EXPECT_TRUE(y.row(r) == 2.0 * stored.row(tokens[r]));
    const std::int64_t bad[1] = {9};
    RETNET_EXPECT_THROW_WITH(stages::embed<double>(bad, weight, 1.0, y.topRows(1)), InvalidArgument,
                             "[0, 9)", "9");
  }
}

// ---- Stacked weights: reduced parts stay separate, used in place.

TEST(LowpStacked, PartsActAsTheirConcatenation) {
  const RowMatrix<double> a = spreadWeight(70, 45, 31), b = spreadWeight(300, 45, 32);
  for (WeightType type : kReduced) {
    const LinearWeight<double> pa = LinearWeight<double>(a).converted(type);
    const LinearWeight<double> pb = LinearWeight<double>(b).converted(type);
    const LinearWeight<double> both = LinearWeight<double>::stacked({&pa, &pb, &pa});
    ASSERT_EQ(both.parts().size(), 3u);
    EXPECT_EQ(both.outputs(), 440);
    EXPECT_EQ(both.storedBytes(), 2 * pa.storedBytes() + pb.storedBytes());
    RowMatrix<double> expected(440, 45);
    expected << pa.dequantized(), pb.dequantized(), pa.dequantized();
    EXPECT_TRUE(both.dequantized() == expected) << weightTypeName(type);
    // Rows across part boundaries, as their own weight (sharing the codes).
    const LinearWeight<double> middle = both.middleRows(60, 320);
    EXPECT_EQ(middle.parts().size(), 3u);
    EXPECT_TRUE(middle.dequantized() == expected.middleRows(60, 320)) << weightTypeName(type);
    // The product over every part: each kernel build and both paths (few rows stream, many rows
    // decode panels), against the dequantized matrix's plain product (double: exact products,
    // sums in another order, so to rounding).
    for (Index rows : {1, 5, 70}) {
      const RowMatrix<double> x = spreadWeight(rows, 45, 33);
      RowMatrix<double> y(rows, 440);
      stages::linear<double>(x, both, y);
      const RowMatrix<double> reference = x * expected.transpose();
      EXPECT_LE((y - reference).cwiseAbs().maxCoeff(), 1e-13 * reference.cwiseAbs().maxCoeff())
          << weightTypeName(type) << " rows " << rows;
    }
    for (SimdLevel level : levels()) {
      setSimdLimit(level);
      const LinearWeight<float> fa = LinearWeight<float>(a.cast<float>()).converted(type);
      const LinearWeight<float> fb = LinearWeight<float>(b.cast<float>()).converted(type);
      const LinearWeight<float> stacked = LinearWeight<float>::stacked({&fa, &fb});
      for (Index rows : {1, 8, 9, 70}) {
        const RowMatrix<float> x = spreadWeight(rows, 45, 34).cast<float>();
        RowMatrix<float> y(rows, 370), ya(rows, 70), yb(rows, 300);
        stages::linear<float>(x, stacked, y);
        stages::linear<float>(x, fa, ya);
        stages::linear<float>(x, fb, yb);
        // The same kernel on the same rows of codes: each output computed alike.
        EXPECT_TRUE(y.leftCols(70) == ya && y.rightCols(300) == yb)
            << weightTypeName(type) << " " << simdLevelName(level) << " rows " << rows;
      }
    }
    setSimdLimit(SimdLevel::kAvx512);
  }
  const LinearWeight<double> full = a, bf16 = full.converted(WeightType::kBf16);
  RETNET_EXPECT_THROW_WITH(LinearWeight<double>::stacked({&full, &bf16}), InvalidArgument,
                           "LinearWeight::stacked", "full", "bf16");
  RETNET_EXPECT_THROW_WITH(bf16.middleRows(60, 11), InvalidArgument, "LinearWeight::middleRows",
                           "[60, 71)", "[0, 70)");
}

// ---- Loading: BF16/F16 tensors kept in their type are used in place (the file mapped).

/// A safetensors file of one (rows x cols) tensor per dtype in `dtypes`, values from `seed`;
/// `shift` extra header bytes move the data section off its 8-byte alignment.
std::vector<unsigned char> weightsFile(const std::vector<io::Dtype>& dtypes, Index rows, Index cols,
                                       std::size_t shift) {
  io::SafetensorsWriter writer;
  for (std::size_t i = 0; i < dtypes.size(); ++i) {
    const RowMatrix<double> w = spreadWeight(rows, cols, 40 + i);
    writer.addTensor("w" + std::to_string(i), dtypes[i], {rows, cols}, w.data());
  }
  std::vector<unsigned char> bytes = writer.bytes();
  std::uint64_t length = 0;
  std::memcpy(&length, bytes.data(), 8);  // little-endian host (x86, ARM)
  bytes.insert(bytes.begin() + 8 + static_cast<std::ptrdiff_t>(length), shift, ' ');
  length += shift;
  std::memcpy(bytes.data(), &length, 8);
  return bytes;
}

void writeFile(const fs::path& path, const std::vector<unsigned char>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

TEST(LowpLoading, HalvesKeptInTheirTypeAreMapped) {
  testing::TempDir dir("lowp-map");
  const std::vector<io::Dtype> dtypes = {io::Dtype::BF16, io::Dtype::F16, io::Dtype::F32};
  for (std::size_t shift :
       {std::size_t(0), std::size_t(1)}) {  // aligned: mapped in place; odd offsets: copied
    const fs::path path = dir.path() / ("w" + std::to_string(shift) + ".safetensors");
    const std::vector<unsigned char> bytes = weightsFile(dtypes, 37, 29, shift);
    writeFile(path, bytes);
    const io::SafetensorsFile file = io::SafetensorsFile::open(path.string());
    const io::SafetensorsFile memory = io::SafetensorsFile::fromBytes(bytes);
    EXPECT_EQ(file.stored("w0").mapped, shift == 0);
    EXPECT_FALSE(memory.stored("w0").mapped);  // an in-memory file's tensors are copies
    const WeightType types[] = {WeightType::kBf16, WeightType::kF16};
    for (std::size_t i = 0; i < dtypes.size(); ++i) {
      const std::string name = "w" + std::to_string(i);
      const RowMatrix<float> values = file.readMatrix<float>(name);
      for (WeightType type : kReduced) {
        const auto w = io::readLinearWeight<float>(file, name, 37, 29, type);
        const auto m = io::readLinearWeight<float>(memory, name, 37, 29, type);
        EXPECT_EQ(w.type(), type);
        // Stored as is, or rounded once from the file's values: as converting them would.
        const RowMatrix<float> expected = LinearWeight<float>(values).converted(type).dequantized();
        EXPECT_TRUE(w.dequantized() == expected) << name << " " << weightTypeName(type);
        EXPECT_TRUE(m.dequantized() == expected) << name << " " << weightTypeName(type);
        if (i < 2 && type == types[i] && shift == 0) {  // in place: the codes are the file's
          const auto* codes = static_cast<const unsigned char*>(w.parts().front().codes.data);
          const auto* raw = static_cast<const unsigned char*>(file.stored(name).data);
          EXPECT_EQ(codes, raw) << name;
        }
      }
      EXPECT_TRUE(io::readLinearWeight<float>(file, name, 37, 29, WeightType::kFull).matrix() ==
                  values);
    }
    RETNET_EXPECT_THROW_WITH(io::readLinearWeight<float>(file, "w0", 29, 37, WeightType::kBf16),
                             FormatError, "w0", "[29, 37]", "[37, 29]");
  }
  // A weight used in place outlives its file object (the mapping is kept by the weight).
  const fs::path path = dir.path() / "w0.safetensors";
  LinearWeight<float> kept;
  RowMatrix<float> values;
  {
    const io::SafetensorsFile file = io::SafetensorsFile::open(path.string());
    kept = io::readLinearWeight<float>(file, "w0", 37, 29, WeightType::kBf16);
    values = file.readMatrix<float>("w0");
  }
  EXPECT_TRUE(kept.dequantized() == values);
}

TEST(LowpLoading, NonFiniteHalvesAreRefused) {
  testing::TempDir dir("lowp-nan");
  for (const auto& [dtype, type, code] : {std::tuple{io::Dtype::BF16, WeightType::kBf16, 0x7FC0},
                                          {io::Dtype::F16, WeightType::kF16, 0x7C00},
                                          {io::Dtype::BF16, WeightType::kInt8, 0xFF80}}) {
    std::vector<unsigned char> bytes = weightsFile({dtype}, 4, 8, 0);
    const std::size_t last = bytes.size() - 2;  // the last element, little-endian
    bytes[last] = static_cast<unsigned char>(code & 0xFF);
    bytes[last + 1] = static_cast<unsigned char>(code >> 8);
    const fs::path path = dir.path() / "bad.safetensors";
    writeFile(path, bytes);
    const io::SafetensorsFile file = io::SafetensorsFile::open(path.string());
    RETNET_EXPECT_THROW_WITH(io::readLinearWeight<float>(file, "w0", 4, 8, type), FormatError, "w0",
                             "infinity or NaN");
    EXPECT_NO_THROW(io::readLinearWeight<float>(file, "w0", 4, 8, WeightType::kFull));
  }
}

// ---- Whole models: every golden checkpoint of each family.

std::vector<fs::path> modelPaths() {
  const fs::path data = RETNET_TEST_DATA_DIR;
  std::vector<fs::path> paths{data / "decoder_small.safetensors",
                              data / "rwkv4" / "rwkv4_model_small.safetensors"};
  for (const char* family : {"fla", "syncdoth"}) {
    std::vector<fs::path> dirs;
    for (const auto& entry : fs::directory_iterator(data / family))
      if (entry.is_directory() && fs::exists(entry.path() / "config.json"))
        dirs.push_back(entry.path());
    std::sort(dirs.begin(), dirs.end());
    paths.insert(paths.end(), dirs.begin(), dirs.end());
  }
  return paths;
}

/// Seeded token ids in [0, vocab), (batch x time).
TokenMatrix randomTokens(Index vocab, Index batch, Index time, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int64_t> id(0, vocab - 1);
  TokenMatrix tokens(batch, time);
  for (Index i = 0; i < tokens.size(); ++i) tokens.data()[i] = id(rng);
  return tokens;
}

/// The largest relative rounding error ‖Ŵ − W‖_F / ‖W‖_F over the dense weights of a model stored
/// in a reduced type (the full model's weights as W).
template <typename Model>
double weightError(const Model& full, const Model& reduced) {
  std::vector<RowMatrix<double>> originals;
  full.forEachWeight([&](const LinearWeight<float>& w) {
    originals.push_back(w.dequantized().template cast<double>());
  });
  double worst = 0;
  std::size_t i = 0;
  reduced.forEachWeight([&](const LinearWeight<float>& w) {
    const RowMatrix<double>& original = originals.at(i++);
    if (original.size() == 0) return;
    const RowMatrix<double> stored = w.dequantized().template cast<double>();
    worst = std::max(worst, (stored - original).norm() / original.norm());
  });
  return worst;
}

/// Relative 2-norm error of all logits, ‖ẑ − z‖ / ‖z‖.
double logitError(const Tensor3<float>& got, const Tensor3<float>& ref) {
  const auto g = Eigen::Map<const Eigen::VectorXf>(got.data(), got.size()).cast<double>();
  const auto r = Eigen::Map<const Eigen::VectorXf>(ref.data(), ref.size()).cast<double>();
  return (g - r).norm() / r.norm();
}

template <typename Model>
void checkModel(const Model& full, const Model& reduced, WeightType type, const std::string& name) {
  const Index vocab = full.config().vocab, batch = 2, time = 48;
  const TokenMatrix tokens = randomTokens(vocab, batch, time, 17);
  const Tensor3<float> reference = full.forwardChunkwise(tokens, 16);
  const Tensor3<float> logits = reduced.forwardChunkwise(tokens, 16);
  // The logits inherit the weights' rounding, amplified by the model: for a linear map exactly
  // ε_w (relative, 2-norm), through the layers of these tiny random models up to 6x of it
  // (observed 2026-11-30 over the golden models and weight types: 1.8-6.2x). Bound: 16 ε_w, plus
  // the float32 rounding of the two forward passes (1e-5). Where a RETNET_ONEDNN build's BF16
  // GEMM runs, the products' inputs are rounded to BF16 as well (relative ≤ 2⁻⁸ each), amplified
  // alike: 16·2⁻⁸ more (observed: 7.4e-3 on fla_small, whose weights are BF16 already).
  const double weights = weightError(full, reduced), error = logitError(logits, reference);
  const bool bf16Gemm = type == WeightType::kBf16 && detail::bf16GemmInUse();
  const double bound = 16 * (weights + (bf16Gemm ? std::exp2(-8) : 0.0)) + 1e-5;
  // The ratio only where the weights changed (a BF16 checkpoint kept as BF16 is exact).
  char ratio[32] = "weights exact";
  if (weights > 0) std::snprintf(ratio, sizeof ratio, "%.1fx", error / weights);
  std::printf("%-30s %-5s weights %.2e logits %.2e (%s)\n", name.c_str(), weightTypeName(type),
              weights, error, ratio);
  EXPECT_LE(error, bound) << name << " " << weightTypeName(type);
  // Top-1 agreement where full precision's choice is clear (a margin over the runner-up of at
  // least twice the bound times the largest logit).
  Index clear = 0, same = 0;
  const double scale =
      Eigen::Map<const Eigen::VectorXf>(reference.data(), reference.size()).cwiseAbs().maxCoeff();
  for (Index p = 0; p < batch * time; ++p) {
    const auto r = Eigen::Map<const Eigen::VectorXf>(reference.data() + p * vocab, vocab);
    const auto l = Eigen::Map<const Eigen::VectorXf>(logits.data() + p * vocab, vocab);
    Index best = 0, got = 0;
    r.maxCoeff(&best);
    l.maxCoeff(&got);
    Eigen::VectorXf others = r;
    others(best) = -std::numeric_limits<float>::infinity();
    if (r(best) - others.maxCoeff() < 2 * bound * scale) continue;
    ++clear;
    same += best == got;
  }
  EXPECT_EQ(same, clear) << name << " " << weightTypeName(type);
  // Decoding step by step (the few-row kernels) equals the chunkwise prefill (panels + GEMM) on
  // the same stored weights, to float rounding through the layers. (A RETNET_ONEDNN build's BF16
  // GEMM rounds the prefill's activations to BF16: this compares the float32 path, and
  // test_bf16_gemm that GEMM.)
  Tensor3<float> exact;
  if (bf16Gemm) {
    Bf16GemmGuard restore;
    setBf16Gemm(Bf16Gemm::kNever);
    exact = reduced.forwardChunkwise(tokens, 16);
  }
  const Tensor3<float>& prefill = exact.size() > 0 ? exact : logits;
  typename Model::State state;
  RowMatrix<float> step;
  double worst = 0, largest = 0;
  for (Index t = 0; t < time; ++t) {
    reduced.decode({tokens(0, t), tokens(1, t)}, state, step);
    for (Index b = 0; b < batch; ++b) {
      const auto l =
          Eigen::Map<const Eigen::VectorXf>(prefill.data() + (b * time + t) * vocab, vocab);
      worst = std::max(worst, double((step.row(b).transpose() - l).cwiseAbs().maxCoeff()));
      largest = std::max(largest, double(l.cwiseAbs().maxCoeff()));
    }
  }
  EXPECT_LE(worst / largest, 2e-4) << name << " " << weightTypeName(type) << " decode vs prefill";
}

TEST(LowpModels, EveryGoldenModelInEveryWeightType) {
  const auto paths = modelPaths();
  ASSERT_GE(paths.size(), 4u);
  for (const fs::path& path : paths) {
    const auto full = io::loadModel<io::AnyModel<float>>(path.string());
    for (WeightType type : kReduced) {
      const auto reduced = io::loadModel<io::AnyModel<float>>(path.string(), io::LoadOptions{type});
      std::visit(
          [&](const auto& f) {
            using Model = std::decay_t<decltype(f)>;
            const Model& r = std::get<Model>(reduced);
            EXPECT_LT(r.storedWeightBytes(), f.storedWeightBytes() * 0.6);
            checkModel(f, r, type, path.filename().string());
          },
          full);
    }
  }
}

// ---- Saving: quantized checkpoints load to the same model without rounding again.

TEST(LowpSaving, QuantizedCheckpointsLoadToTheSameModel) {
  testing::TempDir dir("lowp-save");
  for (const fs::path& path : modelPaths()) {
    const auto full = io::loadModel<io::AnyModel<float>>(path.string());
    for (WeightType type : kReduced) {
      const fs::path target = dir.path() / (path.stem().string() + "_" + weightTypeName(type) +
                                            (fs::is_directory(path) ? "" : ".safetensors"));
      const io::QuantizeSummary summary = io::saveQuantized(path.string(), target.string(), type);
      EXPECT_GE(summary.denseWeights, 4);
      const auto direct = io::loadModel<io::AnyModel<float>>(path.string(), io::LoadOptions{type});
      const auto saved = io::loadModel<io::AnyModel<float>>(target.string(), io::LoadOptions{type});
      // Full precision from the saved file: the stored values themselves.
      const auto widened = io::loadModel<io::AnyModel<float>>(target.string());
      std::visit(
          [&](const auto& f) {
            using Model = std::decay_t<decltype(f)>;
            const Model& a = std::get<Model>(direct);
            const Model& b = std::get<Model>(saved);
            const Model& c = std::get<Model>(widened);
            const std::string what = path.filename().string() + " " + weightTypeName(type);
            EXPECT_EQ(a.storedWeightBytes(), b.storedWeightBytes()) << what;
            // The file's dense tensors: the model's weights, and a tied model's stored head.
            EXPECT_GE(summary.quantizedBytes, b.storedWeightBytes()) << what;
            const TokenMatrix tokens = randomTokens(f.config().vocab, 2, 24, 5);
            // Same codes, same kernels: the same logits, bit for bit.
            const Tensor3<float> la = a.forwardChunkwise(tokens, 8),
                                 lb = b.forwardChunkwise(tokens, 8);
            EXPECT_TRUE(std::equal(la.data(), la.data() + la.size(), lb.data())) << what;
            std::vector<RowMatrix<float>> stored;
            b.forEachWeight(
                [&](const LinearWeight<float>& w) { stored.push_back(w.dequantized()); });
            std::size_t i = 0;
            c.forEachWeight([&](const LinearWeight<float>& w) {
              EXPECT_EQ(w.type(), WeightType::kFull);
              EXPECT_TRUE(w.matrix() == stored.at(i++)) << what;
            });
          },
          full);
      // The dense weights are used in place: mapped, not copied.
      const io::WeightFiles files = io::WeightFiles::open(target.string());
      EXPECT_EQ(files.metadataValue(io::kWeightsMetadataKey), io::weightsMetadataValue(type));
      for (const std::string& name : files.names()) {
        const io::TensorInfo& info = files.info(name);
        EXPECT_EQ(info.begin % io::dtypeSize(info.dtype), 0u) << name;  // aligned layout
        if (info.shape.size() == 2) {
          EXPECT_TRUE(files.fileOf(name).stored(name).mapped) << name;
        }
      }
    }
  }
}

TEST(LowpSaving, ErrorsAreClear) {
  testing::TempDir dir("lowp-save-errors");
  const std::string source =
      (fs::path(RETNET_TEST_DATA_DIR) / "decoder_small.safetensors").string();
  const std::string target = (dir.path() / "q.safetensors").string();
  RETNET_EXPECT_THROW_WITH(io::saveQuantized(source, target, WeightType::kFull), InvalidArgument,
                           "bf16, f16 or int8", "full");
  io::saveQuantized(source, target, WeightType::kInt8);
  RETNET_EXPECT_THROW_WITH(io::saveQuantized(source, target, WeightType::kInt8), InvalidArgument,
                           "exists already");
  // An int8 weight without its scales, with scales of the wrong shape or dtype, or negative ones.
  const io::SafetensorsFile good = io::SafetensorsFile::open(target);
  const std::string name = "layers.0.ffn.fc1.weight", scales = io::int8ScalesName(name);
  const io::TensorInfo& codes = good.info(name);
  const Index rows = codes.shape[0], cols = codes.shape[1], groups = (cols + 31) / 32;
  const io::StoredTensor q = good.stored(name), s = good.stored(scales);
  std::vector<float> negative(static_cast<const float*>(s.data),
                              static_cast<const float*>(s.data) + rows * groups);
  negative[3] = -1;
  const auto file = [&](bool withScales, io::Dtype dtype, Index scaleCols, const float* values) {
    io::SafetensorsWriter writer;
    if (withScales && dtype == io::Dtype::F32)
      writer.addEncoded(scales, dtype, {rows, scaleCols}, values);
    if (withScales && dtype != io::Dtype::F32) {
      const RowMatrix<double> zeros = RowMatrix<double>::Zero(rows, scaleCols);
      writer.addTensor(scales, dtype, {rows, scaleCols}, zeros.data());
    }
    writer.addEncoded(name, io::Dtype::I8, {rows, cols}, q.data);
    return io::SafetensorsFile::fromBytes(writer.bytes(), "crafted");
  };
  const float* good_scales = static_cast<const float*>(s.data);
  RETNET_EXPECT_THROW_WITH(
      io::readLinearWeight<float>(file(false, io::Dtype::F32, groups, good_scales), name, rows,
                                  cols, WeightType::kInt8),
      FormatError, "is I8", scales);
  RETNET_EXPECT_THROW_WITH(
      io::readLinearWeight<float>(file(true, io::Dtype::F32, groups - 1, good_scales), name, rows,
                                  cols, WeightType::kInt8),
      FormatError, scales, "expected shape");
  RETNET_EXPECT_THROW_WITH(io::readLinearWeight<float>(file(true, io::Dtype::BF16, groups, nullptr),
                                                       name, rows, cols, WeightType::kInt8),
                           FormatError, scales, "must be F32, got BF16");
  RETNET_EXPECT_THROW_WITH(
      io::readLinearWeight<float>(file(true, io::Dtype::F32, groups, negative.data()), name, rows,
                                  cols, WeightType::kBf16),
      FormatError, scales, "must lie in");
  EXPECT_NO_THROW(io::readLinearWeight<float>(file(true, io::Dtype::F32, groups, good_scales), name,
                                              rows, cols, WeightType::kInt8));
}

TEST(LowpSaving, HostileSourcesAreRefused) {
  testing::TempDir dir("lowp-save-hostile");
  const RowMatrix<double> w = spreadWeight(3, 40, 7);
  const auto source = [&](const std::string& name,
                          const std::function<void(io::SafetensorsWriter&)>& add) {
    io::SafetensorsWriter writer;
    add(writer);
    const fs::path path = dir.path() / (name + ".safetensors");
    writer.write(path.string());
    return path.string();
  };
  const auto target = [&](const std::string& name) {
    return (dir.path() / (name + "_out.safetensors")).string();
  };
  // A float weight whose scales' name is taken already.
  const std::string taken = source("taken", [&](io::SafetensorsWriter& writer) {
    writer.addTensor("w", io::Dtype::F32, {3, 40}, w.data());
    writer.addTensor("w.scales", io::Dtype::F32, {3, 2}, w.data());
  });
  RETNET_EXPECT_THROW_WITH(io::saveQuantized(taken, target("taken"), WeightType::kInt8),
                           FormatError, "'w'", "w.scales", "already");
  EXPECT_FALSE(fs::exists(target("taken")));
  EXPECT_NO_THROW(io::saveQuantized(taken, target("taken"), WeightType::kBf16));  // no scales
  // An I8 tensor that is not an int8 weight.
  const std::int8_t codes[4] = {1, 2, 3, 4};
  const std::string rank1 = source("rank1", [&](io::SafetensorsWriter& writer) {
    writer.addEncoded("q", io::Dtype::I8, {4}, codes);
  });
  RETNET_EXPECT_THROW_WITH(io::saveQuantized(rank1, target("rank1"), WeightType::kInt8),
                           FormatError, "'q'", "rank 2");
  // Scales so large that s·q overflows float: refused for every storage.
  std::vector<std::int8_t> q(3 * 40, -128);
  std::vector<float> scales(3 * 2, 1e38f);
  const std::string huge = source("huge", [&](io::SafetensorsWriter& writer) {
    writer.addEncoded("w.scales", io::Dtype::F32, {3, 2}, scales.data());
    writer.addEncoded("w", io::Dtype::I8, {3, 40}, q.data());
  });
  const io::SafetensorsFile hugeFile = io::SafetensorsFile::open(huge);
  for (WeightType type : {WeightType::kFull, WeightType::kBf16, WeightType::kInt8}) {
    RETNET_EXPECT_THROW_WITH(io::readLinearWeight<float>(hugeFile, "w", 3, 40, type), FormatError,
                             "w.scales", "must lie in");
  }
  // Empty rank-2 tensors have nothing to quantize: copied as they are (no work per claimed row).
  const std::string empty = source("empty", [&](io::SafetensorsWriter& writer) {
    writer.addTensor("e", io::Dtype::F32, {std::int64_t(1) << 40, 0}, nullptr);
    writer.addTensor("w", io::Dtype::F32, {3, 40}, w.data());
  });
  const io::QuantizeSummary summary = io::saveQuantized(empty, target("empty"), WeightType::kInt8);
  EXPECT_EQ(summary.denseWeights, 1);
  EXPECT_EQ(summary.otherTensors, 1);
  const io::SafetensorsFile out = io::SafetensorsFile::open(target("empty"));
  EXPECT_EQ(out.info("e").dtype, io::Dtype::F32);
  EXPECT_EQ(out.info("w").dtype, io::Dtype::I8);
  EXPECT_EQ(out.info("w.scales").dtype, io::Dtype::F32);
}

#ifdef __linux__
/// The address ranges at which `path` is mapped in this process (/proc/self/maps).
std::vector<std::pair<std::uintptr_t, std::uintptr_t>> mappedRanges(const fs::path& path) {
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;
  std::ifstream maps("/proc/self/maps");
  const std::string file = fs::canonical(path).string();
  for (std::string line; std::getline(maps, line);) {
    if (line.size() < file.size() || line.compare(line.size() - file.size(), file.size(), file))
      continue;
    const std::size_t dash = line.find('-'), space = line.find(' ');
    ranges.emplace_back(std::stoull(line.substr(0, dash), nullptr, 16),
                        std::stoull(line.substr(dash + 1, space - dash - 1), nullptr, 16));
  }
  return ranges;
}

// The model's dense weights point into the mapped file: loading kept no copy of them.
TEST(LowpLoading, ModelWeightsPointIntoTheMappedFile) {
  const fs::path dir = fs::path(RETNET_TEST_DATA_DIR) / "fla" / "fla_small";
  const auto model = io::loadModel<float>(dir.string(), {WeightType::kBf16});
  const auto ranges = mappedRanges(dir / "model.safetensors");
  ASSERT_FALSE(ranges.empty());
  Index parts = 0;
  model.forEachWeight([&](const LinearWeight<float>& w) {
    if (w.empty()) return;  // the head of a tied model
    ASSERT_EQ(w.type(), WeightType::kBf16);
    for (const auto& part : w.parts()) {
      const auto first = reinterpret_cast<std::uintptr_t>(part.codes.data);
      const std::uintptr_t last = first + std::uintptr_t(2 * part.rows * w.inputs());
      bool inside = false;
      for (const auto& [begin, end] : ranges) inside |= first >= begin && last <= end;
      EXPECT_TRUE(inside) << "a part of " << part.rows << " rows lies outside the mapped file";
      ++parts;
    }
  });
  EXPECT_GE(parts, 4 * model.config().layers + 1);  // q, k, v, g as parts, o, the FFN, the table
}

// LoadOptions::map = false: the same weights read into owned memory; the file is never mapped.
TEST(LowpLoading, WithoutMappingTheWeightsAreOwnedCopies) {
  const fs::path dir = fs::path(RETNET_TEST_DATA_DIR) / "fla" / "fla_small";
  io::LoadOptions options{WeightType::kBf16};
  options.map = false;
  const auto copied = io::loadModel<float>(dir.string(), options);
  EXPECT_TRUE(mappedRanges(dir / "model.safetensors").empty());
  Index parts = 0;
  copied.forEachWeight([&](const LinearWeight<float>& w) {
    if (w.empty()) return;
    EXPECT_EQ(w.type(), WeightType::kBf16);
    parts += static_cast<Index>(w.parts().size());
  });
  EXPECT_GE(parts, 4 * copied.config().layers + 1);
  // Same codes, same kernels: the logits of the mapped model, bit for bit.
  const auto mapped = io::loadModel<float>(dir.string(), {WeightType::kBf16});
  const TokenMatrix tokens = randomTokens(copied.config().vocab, 2, 12, 9);
  const Tensor3<float> a = copied.forwardChunkwise(tokens, 4),
                       b = mapped.forwardChunkwise(tokens, 4);
  EXPECT_TRUE(std::equal(a.data(), a.data() + a.size(), b.data()));
}
#endif

// Double activations with reduced weights take the portable kernels: same stored weights, same
// answers as a full-precision double model built from the dequantized weights.
TEST(LowpModels, DoubleActivationsMatchDequantizedModel) {
  const fs::path path = fs::path(RETNET_TEST_DATA_DIR) / "decoder_small.safetensors";
  const auto reduced = io::loadModel<double>(path.string(), {WeightType::kBf16});  // README form
  auto dequantized = io::loadModel<double>(path.string(), io::LoadOptions{WeightType::kBf16});
  dequantized.convertWeights(WeightType::kFull);
  const TokenMatrix tokens = randomTokens(reduced.config().vocab, 2, 20, 3);
  const Tensor3<double> a = reduced.forwardChunkwise(tokens, 8);
  const Tensor3<double> b = dequantized.forwardChunkwise(tokens, 8);
  EXPECT_LE(testing::normwiseError(a, testing::toDoubles(b)), 1e-13);
}

}  // namespace
}  // namespace retnet
