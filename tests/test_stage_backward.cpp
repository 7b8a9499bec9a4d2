// The backward stages (the `...Backward` functions beside the forward ones in
// include/retnet/stages/*.hpp and rotary.hpp, and stages/loss.hpp) against central finite
// differences of their forward stages, in double.
//
// Every stage y = f(p) is checked through the scalar L(p) = Σ dY ⊙ f(p), dY a fixed random
// upstream gradient: the backward's gradient of L with respect to every element p_i of every
// input and weight must match
//
//   (L(p + h e_i) − L(p − h e_i)) / 2h,   h = 1e-6 · max(1, |p_i|)
//
// (the denominator is the difference of the two perturbed values actually stored, so the step's
// own rounding does not count). The normwise error max|g − fd| / max|fd| per gradient tensor must
// stay below kFdTolerance = 1e-6. Why that bound: the central difference's truncation error is
// h²/6 · |L'''| ≈ 2e-13 relative for these smooth functions of O(1) inputs, and its rounding
// error is about u · |L| / h with u = 1.1e-16 and |L| ≤ ~30 (sums of at most a few hundred O(1)
// products), i.e. ≤ ~3e-9 absolute against gradients of O(0.1..1): ~1e-8 relative at worst,
// typically 1e-10. A wrong term in a backward moves the gradient by far more than 1e-6 (a
// missing factor, a dropped rank-one correction of a norm, a tanh-gelu instead of the erf one,
// ~1e-3 of the gradient). (relu² has a kink at 0; inputs there within h are improbable and its
// derivative is continuous, so the difference is still within O(h).)
//
// Then each backward in float against the same backward in double, on the same inputs (every
// input is exactly a float): a normwise error below kFloatTolerance = 1e-4. Float's unit
// roundoff is 6e-8; a gradient element is a sum of at most a few hundred products plus a few
// element-wise operations, so its error is at most ~n·u ≈ 3e-5 in the worst case (typically
// √n·u ≈ 1e-6): 1e-4 bounds that with margin and still fails any float-only mistake (a
// precision loss of the loss's or a norm's cancellation, a wrong constant cast).
//
// Also: accumulation (a second call doubles every accumulated gradient), the in-place forms the
// headers allow, views into wider buffers, the cross-entropy's ignore index and hand-computed
// values, and every argument check throwing retnet::InvalidArgument.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "retnet/rotary.hpp"
#include "retnet/stages/elementwise.hpp"
#include "retnet/stages/embedding.hpp"
#include "retnet/stages/ffn.hpp"
#include "retnet/stages/group_norm.hpp"
#include "retnet/stages/linear.hpp"
#include "retnet/stages/loss.hpp"
#include "retnet/stages/norms.hpp"
#include "test_util.hpp"

namespace retnet {
namespace {

using Matrix = RowMatrix<double>;

constexpr double kFdTolerance = 1e-6;     // see the file comment
constexpr double kFloatTolerance = 1e-4;  // see the file comment
constexpr double kEps = 1e-6;             // the norms' eps (torchscale's)

// ---------------------------------------------------------------------------------------------
// Inputs, finite differences, errors

/// Random values from a fixed seed, each exactly a float.
class Random {
 public:
  explicit Random(std::uint64_t seed) : rng_(seed) {}

  /// (rows x cols) values offset + magnitude·u, u uniform in [−1, 1).
  Matrix matrix(Index rows, Index cols, double magnitude = 1.0, double offset = 0.0) {
    Matrix m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = value(magnitude, offset);
    return m;
  }
  std::vector<double> vector(Index n, double center, double spread) {
    std::vector<double> v(static_cast<std::size_t>(n));
    for (double& x : v) x = value(spread, center);
    return v;
  }
  std::int64_t token(Index vocab) {
    return std::uniform_int_distribution<std::int64_t>(0, vocab - 1)(rng_);
  }

 private:
  double value(double magnitude, double offset) {
    const double u = std::uniform_real_distribution<double>(-1.0, 1.0)(rng_);
    return static_cast<double>(static_cast<float>(offset + magnitude * u));
  }
  std::mt19937_64 rng_;
};

/// Σ dY ⊙ y.
double contract(const Matrix& dY, const Matrix& y) { return (dY.array() * y.array()).sum(); }

/// The central differences of loss() with respect to each of the `rows`·`cols` values at
/// `values` (row-major), each perturbed in place and restored.
Matrix numericGradient(double* values, Index rows, Index cols,
                       const std::function<double()>& loss) {
  Matrix g(rows, cols);
  for (Index i = 0; i < rows * cols; ++i) {
    const double v = values[i], h = 1e-6 * std::max(1.0, std::abs(v));
    values[i] = v + h;
    const double up = values[i], plus = loss();
    values[i] = v - h;
    const double down = values[i], minus = loss();
    values[i] = v;
    g.data()[i] = (plus - minus) / (up - down);
  }
  return g;
}
Matrix numericGradient(Matrix& m, const std::function<double()>& loss) {
  return numericGradient(m.data(), m.rows(), m.cols(), loss);
}
Matrix numericGradient(std::vector<double>& v, const std::function<double()>& loss) {
  return numericGradient(v.data(), 1, static_cast<Index>(v.size()), loss);
}

/// max|a − ref| / max|ref| (max|a − ref| when ref is zero); NaN and shape mismatches count as
/// infinite.
double normwiseError(const Matrix& a, const Matrix& ref) {
  if (a.rows() != ref.rows() || a.cols() != ref.cols()) {
    return std::numeric_limits<double>::infinity();
  }
  const double diff = (a - ref).cwiseAbs().maxCoeff(), scale = ref.cwiseAbs().maxCoeff();
  if (std::isnan(diff)) return std::numeric_limits<double>::infinity();
  return scale > 0 ? diff / scale : diff;
}

Matrix rowOf(const std::vector<double>& v) {
  return Eigen::Map<const Matrix>(v.data(), 1, static_cast<Index>(v.size()));
}
template <typename Scalar>
std::vector<Scalar> as(const std::vector<double>& v) {
  return std::vector<Scalar>(v.begin(), v.end());
}
template <typename Scalar>
Matrix toDouble(const std::vector<Scalar>& v) {
  return rowOf(std::vector<double>(v.begin(), v.end()));
}

/// Named gradients, in a fixed order.
struct Gradients {
  std::vector<std::string> names;
  std::vector<Matrix> values;
};

/// Every gradient of `analytic` within `tolerance` of the same one of `reference`.
void expectMatch(const Gradients& analytic, const Gradients& reference, double tolerance,
                 const std::string& what) {
  ASSERT_EQ(analytic.values.size(), reference.values.size()) << what;
  for (std::size_t i = 0; i < analytic.values.size(); ++i) {
    const double e = normwiseError(analytic.values[i], reference.values[i]);
    EXPECT_LT(e, tolerance) << what << ": gradient " << analytic.names[i];
  }
}

/// Runs the three checks of a case: backward<double> against finite differences,
/// backward<float> against backward<double>.
template <typename Case>
void checkCase(Case& c, const std::string& what) {
  SCOPED_TRACE(what);
  const Gradients exact = c.template backward<double>();
  expectMatch(exact, c.numeric(), kFdTolerance, what + " (double vs finite differences)");
  expectMatch(c.template backward<float>(), exact, kFloatTolerance, what + " (float vs double)");
}

std::string str(Index v) { return std::to_string(v); }

// ---------------------------------------------------------------------------------------------
// linear

struct LinearCase {
  Matrix x, W, dY;
  LinearCase(Index rows, Index in, Index out, std::uint64_t seed) {
    Random random(seed);
    x = random.matrix(rows, in);
    W = random.matrix(out, in, 0.5);
    dY = random.matrix(rows, out);
  }
  template <typename Scalar>
  Gradients backward() const {
    const LinearWeight<Scalar> weight(W.cast<Scalar>());
    RowMatrix<Scalar> dx(x.rows(), x.cols()), dW = RowMatrix<Scalar>::Zero(W.rows(), W.cols());
    stages::linearBackward<Scalar>(x.cast<Scalar>(), weight, dY.cast<Scalar>(), dx, dW);
    return {{"dx", "dW"}, {dx.template cast<double>(), dW.template cast<double>()}};
  }
  Matrix forward() const {
    Matrix y(x.rows(), W.rows());
    stages::linear<double>(x, LinearWeight<double>(W), y);
    return y;
  }
  Gradients numeric() {
    const auto loss = [&] { return contract(dY, forward()); };
    return {{"dx", "dW"}, {numericGradient(x, loss), numericGradient(W, loss)}};
  }
};

TEST(LinearBackward, MatchesFiniteDifferences) {
  // rows 1 (the matrix-vector path), <= 8 (the forward's dot path), more (GEMM); odd widths.
  const Index shapes[][3] = {{1, 1, 1}, {1, 5, 3}, {2, 3, 2}, {3, 4, 7}, {9, 7, 5}, {12, 2, 9}};
  std::uint64_t seed = 1;
  for (const auto& s : shapes) {
    LinearCase c(s[0], s[1], s[2], seed++);
    checkCase(c, "rows " + str(s[0]) + " in " + str(s[1]) + " out " + str(s[2]));
  }
}

TEST(LinearBackward, ManyColumnBlocksIntoStridedViews) {
  // Widths beyond kLinearColumnBlock (several blocks of dx's columns and dW's rows), against
  // the products written as loops; dx and dW are views into wider buffers whose other entries
  // must stay untouched.
  const Index rows = 11, in = 300, out = 270, pad = 2;
  LinearCase c(rows, in, out, 99);
  Matrix dxRef = Matrix::Zero(rows, in), dWRef = Matrix::Zero(out, in);
  for (Index r = 0; r < rows; ++r) {
    for (Index i = 0; i < in; ++i) {
      for (Index j = 0; j < out; ++j) {
        dxRef(r, i) += c.dY(r, j) * c.W(j, i);
        dWRef(j, i) += c.dY(r, j) * c.x(r, i);
      }
    }
  }
  Matrix dxBuffer = Matrix::Constant(rows, in + 2 * pad, -777.0);
  Matrix dWBuffer = Matrix::Constant(out + 2 * pad, in + 2 * pad, -777.0);
  dWBuffer.block(pad, pad, out, in).setZero();
  stages::linearBackward<double>(c.x, LinearWeight<double>(c.W), c.dY, dxBuffer.middleCols(pad, in),
                                 dWBuffer.block(pad, pad, out, in));
  EXPECT_LT(normwiseError(dxBuffer.middleCols(pad, in), dxRef), 1e-14);
  EXPECT_LT(normwiseError(dWBuffer.block(pad, pad, out, in), dWRef), 1e-14);
  dxBuffer.middleCols(pad, in).setConstant(-777.0);
  dWBuffer.block(pad, pad, out, in).setConstant(-777.0);
  EXPECT_TRUE((dxBuffer.array() == -777.0).all());
  EXPECT_TRUE((dWBuffer.array() == -777.0).all());
}

TEST(LinearBackward, AccumulatesAndMayWriteOverX) {
  const LinearCase c(6, 5, 4, 7);
  const LinearWeight<double> weight(c.W);
  const Gradients once = c.backward<double>();
  // dW accumulates: a second call doubles it. dx is written, or added to with `accumulate`.
  Matrix dx = Matrix::Constant(6, 5, 3.0), dW = Matrix::Zero(4, 5);
  stages::linearBackward<double>(c.x, weight, c.dY, dx, dW);
  EXPECT_LT(normwiseError(dx, once.values[0]), 1e-15);
  stages::linearBackward<double>(c.x, weight, c.dY, dx, dW, /*accumulate=*/true);
  EXPECT_LT(normwiseError(dx, 2 * once.values[0]), 1e-15);
  EXPECT_LT(normwiseError(dW, 2 * once.values[1]), 1e-15);
  // The parts alone.
  Matrix dxPart = Matrix::Ones(6, 5), dWPart = Matrix::Zero(4, 5);
  stages::linearBackwardInput<double>(c.dY, weight, dxPart, /*accumulate=*/true);
  stages::linearBackwardWeight<double>(c.x, c.dY, dWPart);
  EXPECT_LT(normwiseError(dxPart, once.values[0] + Matrix::Ones(6, 5)), 1e-15);
  EXPECT_LT(normwiseError(dWPart, once.values[1]), 1e-15);
  // dx may be x itself: dW is computed first.
  Matrix xInPlace = c.x, dWInPlace = Matrix::Zero(4, 5);
  stages::linearBackward<double>(xInPlace, weight, c.dY, xInPlace, dWInPlace);
  EXPECT_LT(normwiseError(xInPlace, once.values[0]), 1e-15);
  EXPECT_LT(normwiseError(dWInPlace, once.values[1]), 1e-15);
}

// ---------------------------------------------------------------------------------------------
// activations

struct ActivationCase {
  Matrix x, dY;
  Activation activation;
  ActivationCase(Index rows, Index cols, Activation a, std::uint64_t seed) : activation(a) {
    Random random(seed);
    x = random.matrix(rows, cols, 4.0);
    dY = random.matrix(rows, cols);
  }
  template <typename Scalar>
  Gradients backward() const {
    RowMatrix<Scalar> dx(x.rows(), x.cols());
    stages::activateBackward<Scalar>(x.cast<Scalar>(), activation, dY.cast<Scalar>(), dx);
    return {{"dx"}, {dx.template cast<double>()}};
  }
  Gradients numeric() {
    const auto loss = [&] {
      Matrix y = x;
      stages::activate<double>(y, activation);
      return contract(dY, y);
    };
    return {{"dx"}, {numericGradient(x, loss)}};
  }
};

const Activation kActivations[] = {Activation::kSwish, Activation::kGelu, Activation::kSigmoid,
                                   Activation::kReluSquared};

TEST(ActivateBackward, MatchesFiniteDifferences) {
  // Widths across kActivationPiece (256): a row in two pieces.
  const Index shapes[][2] = {{1, 1}, {3, 7}, {2, 300}, {37, 3}};
  std::uint64_t seed = 100;
  for (Activation a : kActivations) {
    for (const auto& s : shapes) {
      ActivationCase c(s[0], s[1], a, seed++);
      checkCase(c, std::string(activationName(a)) + " rows " + str(s[0]) + " n " + str(s[1]));
    }
  }
}

TEST(ActivateBackward, InPlaceAndFarTails) {
  for (Activation a : kActivations) {
    SCOPED_TRACE(activationName(a));
    const ActivationCase c(4, 9, a, 7);
    const Matrix expected = c.backward<double>().values[0];
    Matrix inPlace = c.dY;  // dx may be dy
    stages::activateBackward<double>(c.x, a, inPlace, inPlace);
    EXPECT_LT(normwiseError(inPlace, expected), 1e-15);
    Matrix overX = c.x;  // or x
    stages::activateBackward<double>(overX, a, c.dY, overX);
    EXPECT_LT(normwiseError(overX, expected), 1e-15);
    // Far tails: finite, and the limits 0 (left) and, but for relu², the slope at +inf.
    for (bool isFloat : {false, true}) {
      const RowMatrix<double> z =
          (RowMatrix<double>(1, 4) << -1000.0, -60.0, 60.0, 1000.0).finished();
      RowMatrix<double> d(1, 4);
      if (isFloat) {
        RowMatrix<float> df(1, 4);
        stages::activateBackward<float>(z.cast<float>(), a, RowMatrix<float>::Ones(1, 4), df);
        d = df.cast<double>();
      } else {
        stages::activateBackward<double>(z, a, RowMatrix<double>::Ones(1, 4), d);
      }
      EXPECT_TRUE(d.allFinite()) << d;
      EXPECT_LT(std::abs(d(0, 0)), 1e-20);
      EXPECT_LT(std::abs(d(0, 1)), 1e-20);
      if (a == Activation::kSwish || a == Activation::kGelu) {
        EXPECT_EQ(d(0, 3), 1.0);
      }
      if (a == Activation::kSigmoid) {
        EXPECT_LT(d(0, 3), 1e-20);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// rmsNorm and layerNorm

struct RmsNormCase {
  Matrix x, dY;
  std::vector<double> w;  // empty: no weight
  RmsNormCase(Index rows, Index n, bool weighted, std::uint64_t seed) {
    Random random(seed);
    x = random.matrix(rows, n);
    dY = random.matrix(rows, n);
    if (weighted) w = random.vector(n, 1.0, 0.5);
  }
  template <typename Scalar>
  Gradients backward() const {
    const std::vector<Scalar> weight = as<Scalar>(w);
    std::vector<Scalar> dw(w.size(), Scalar(0));
    RowMatrix<Scalar> dx(x.rows(), x.cols());
    stages::rmsNormBackward<Scalar>(x.cast<Scalar>(), w.empty() ? nullptr : weight.data(), kEps,
                                    dY.cast<Scalar>(), dx, w.empty() ? nullptr : dw.data());
    if (w.empty()) return {{"dx"}, {dx.template cast<double>()}};
    return {{"dx", "dw"}, {dx.template cast<double>(), toDouble(dw)}};
  }
  Gradients numeric() {
    const auto loss = [&] {
      Matrix y(x.rows(), x.cols());
      stages::rmsNorm<double>(x, w.empty() ? nullptr : w.data(), kEps, y);
      return contract(dY, y);
    };
    if (w.empty()) return {{"dx"}, {numericGradient(x, loss)}};
    return {{"dx", "dw"}, {numericGradient(x, loss), numericGradient(w, loss)}};
  }
};

struct LayerNormCase {
  Matrix x, dY;
  std::vector<double> w, b;
  LayerNormCase(Index rows, Index n, std::uint64_t seed) {
    Random random(seed);
    x = random.matrix(rows, n, 1.0, 0.75);  // off zero: the mean matters
    dY = random.matrix(rows, n);
    w = random.vector(n, 1.0, 0.5);
    b = random.vector(n, 0.0, 0.5);
  }
  template <typename Scalar>
  Gradients backward() const {
    const std::vector<Scalar> weight = as<Scalar>(w);
    std::vector<Scalar> dw(w.size(), Scalar(0)), db(b.size(), Scalar(0));
    RowMatrix<Scalar> dx(x.rows(), x.cols());
    stages::layerNormBackward<Scalar>(x.cast<Scalar>(), weight.data(), 1e-5, dY.cast<Scalar>(), dx,
                                      dw.data(), db.data());
    return {{"dx", "dw", "db"}, {dx.template cast<double>(), toDouble(dw), toDouble(db)}};
  }
  Gradients numeric() {
    const auto loss = [&] {
      Matrix y(x.rows(), x.cols());
      stages::layerNorm<double>(x, w.data(), b.data(), 1e-5, y);
      return contract(dY, y);
    };
    return {{"dx", "dw", "db"},
            {numericGradient(x, loss), numericGradient(w, loss), numericGradient(b, loss)}};
  }
};

// Widths >= 3: at n = 1 (RMSNorm) or n = 2 (LayerNorm) the normalised row does not depend on x
// but through eps, and dx is eps-sized, below the differences' noise.
const Index kNormShapes[][2] = {{1, 3}, {4, 7}, {3, 16}, {40, 5}};  // 40 rows: two row blocks

TEST(RmsNormBackward, MatchesFiniteDifferences) {
  std::uint64_t seed = 200;
  for (bool weighted : {false, true}) {
    for (const auto& s : kNormShapes) {
      RmsNormCase c(s[0], s[1], weighted, seed++);
      checkCase(c, std::string(weighted ? "weighted" : "plain") + " rows " + str(s[0]) + " n " +
                       str(s[1]));
    }
  }
}

TEST(LayerNormBackward, MatchesFiniteDifferences) {
  std::uint64_t seed = 300;
  for (const auto& s : kNormShapes) {
    LayerNormCase c(s[0], s[1], seed++);
    checkCase(c, "rows " + str(s[0]) + " n " + str(s[1]));
  }
}

TEST(NormBackward, AccumulatesAndWorksInPlace) {
  const RmsNormCase rms(35, 6, true, 11);
  const Gradients once = rms.backward<double>();
  std::vector<double> dw(6, 0.0);
  Matrix dx = rms.dY;  // in place: dx is dy
  stages::rmsNormBackward<double>(rms.x, rms.w.data(), kEps, dx, dx, dw.data());
  EXPECT_LT(normwiseError(dx, once.values[0]), 1e-15);
  Matrix overX = rms.x;  // or x
  stages::rmsNormBackward<double>(overX, rms.w.data(), kEps, rms.dY, overX, dw.data());
  EXPECT_LT(normwiseError(overX, once.values[0]), 1e-15);
  EXPECT_LT(normwiseError(rowOf(dw), 2 * once.values[1]), 1e-15);

  const LayerNormCase ln(35, 6, 12);
  const Gradients lnOnce = ln.backward<double>();
  std::vector<double> lw(6, 0.0), lb(6, 0.0);
  Matrix ldx = ln.dY;
  stages::layerNormBackward<double>(ln.x, ln.w.data(), 1e-5, ldx, ldx, lw.data(), lb.data());
  EXPECT_LT(normwiseError(ldx, lnOnce.values[0]), 1e-15);
  Matrix lOverX = ln.x;
  stages::layerNormBackward<double>(lOverX, ln.w.data(), 1e-5, ln.dY, lOverX, lw.data(), lb.data());
  EXPECT_LT(normwiseError(lOverX, lnOnce.values[0]), 1e-15);
  EXPECT_LT(normwiseError(rowOf(lw), 2 * lnOnce.values[1]), 1e-15);
  EXPECT_LT(normwiseError(rowOf(lb), 2 * lnOnce.values[2]), 1e-15);
}

// ---------------------------------------------------------------------------------------------
// rotary

struct RotaryCase {
  Matrix x, dY;
  Index dk, start;
  RotaryLayout layout;
  RotaryCase(Index rows, Index heads, Index keyDim, RotaryLayout l, Index first, std::uint64_t seed)
      : dk(keyDim), start(first), layout(l) {
    Random random(seed);
    x = random.matrix(rows, heads * dk);
    dY = random.matrix(rows, heads * dk);
  }
  template <typename Scalar>
  Gradients backward() const {
    const RotaryEmbedding<Scalar> rope(dk, layout);
    RotaryTable<Scalar> table;
    rope.fillTable(start, x.rows(), table);
    RowMatrix<Scalar> dx = dY.cast<Scalar>();
    stages::rotateBackward(rope, table, dx);
    return {{"dx"}, {dx.template cast<double>()}};
  }
  Gradients numeric() {
    const RotaryEmbedding<double> rope(dk, layout);
    RotaryTable<double> table;
    rope.fillTable(start, x.rows(), table);
    const auto loss = [&] {
      Matrix y = x;
      stages::rotate(rope, table, y);
      return contract(dY, y);
    };
    return {{"dx"}, {numericGradient(x, loss)}};
  }
};

TEST(RotateBackward, MatchesFiniteDifferences) {
  // (rows, heads, dk, start)
  const Index shapes[][4] = {{1, 1, 2, 0}, {5, 1, 6, 3}, {3, 3, 4, 1000}, {2, 2, 10, 17}};
  std::uint64_t seed = 400;
  for (RotaryLayout layout : {RotaryLayout::kInterleaved, RotaryLayout::kHalfSplit}) {
    for (const auto& s : shapes) {
      RotaryCase c(s[0], s[1], s[2], layout, s[3], seed++);
      checkCase(c, std::string(layout == RotaryLayout::kHalfSplit ? "half-split" : "interleaved") +
                       " rows " + str(s[0]) + " heads " + str(s[1]) + " dk " + str(s[2]) +
                       " start " + str(s[3]));
    }
  }
}

TEST(RotateBackward, UndoesTheForward) {
  const RotaryCase c(4, 2, 8, RotaryLayout::kHalfSplit, 5, 9);
  const RotaryEmbedding<double> rope(8, RotaryLayout::kHalfSplit);
  RotaryTable<double> table;
  rope.fillTable(5, 4, table);
  Matrix y = c.x;
  stages::rotate(rope, table, y);
  stages::rotateBackward(rope, table, y);
  EXPECT_LT(normwiseError(y, c.x), 1e-15);
}

// ---------------------------------------------------------------------------------------------
// groupNormGate

struct GroupNormCase {
  Matrix o, g, dY;
  std::vector<double> w;  // empty: no weight
  Index heads;
  Activation gate;
  GroupNormCase(Index rows, Index h, Index dv, bool weighted, Activation a, std::uint64_t seed)
      : heads(h), gate(a) {
    Random random(seed);
    o = random.matrix(rows, h * dv);
    g = random.matrix(rows, h * dv, 3.0);
    dY = random.matrix(rows, h * dv);
    if (weighted) w = random.vector(dv, 1.0, 0.5);
  }
  template <typename Scalar>
  Gradients backward() const {
    const std::vector<Scalar> weight = as<Scalar>(w);
    std::vector<Scalar> dw(w.size(), Scalar(0));
    RowMatrix<Scalar> dO(o.rows(), o.cols()), dG(o.rows(), o.cols());
    stages::groupNormGateBackward<Scalar>(
        o.cast<Scalar>(), heads, w.empty() ? nullptr : weight.data(), kEps, g.cast<Scalar>(), gate,
        dY.cast<Scalar>(), dO, dG, w.empty() ? nullptr : dw.data());
    Gradients out{{"dO", "dG"}, {dO.template cast<double>(), dG.template cast<double>()}};
    if (!w.empty()) {
      out.names.push_back("dw");
      out.values.push_back(toDouble(dw));
    }
    return out;
  }
  Gradients numeric() {
    const auto loss = [&] {
      Matrix y = o, gates = g;
      stages::groupNormGate<double>(y, heads, w.empty() ? nullptr : w.data(), kEps, gates, gate);
      return contract(dY, y);
    };
    Gradients out{{"dO", "dG"}, {numericGradient(o, loss), numericGradient(g, loss)}};
    if (!w.empty()) {
      out.names.push_back("dw");
      out.values.push_back(numericGradient(w, loss));
    }
    return out;
  }
};

TEST(GroupNormGateBackward, MatchesFiniteDifferences) {
  // (rows, heads, dv): one head, several, odd dv, 40 rows (two row blocks), dv across a piece.
  const Index shapes[][3] = {{1, 1, 3}, {4, 3, 5}, {40, 2, 4}, {2, 1, 300}};
  std::uint64_t seed = 500;
  for (Activation gate : {Activation::kSwish, Activation::kGelu}) {
    for (bool weighted : {false, true}) {
      for (const auto& s : shapes) {
        GroupNormCase c(s[0], s[1], s[2], weighted, gate, seed++);
        checkCase(c, std::string(activationName(gate)) + (weighted ? " weighted" : " plain") +
                         " rows " + str(s[0]) + " heads " + str(s[1]) + " dv " + str(s[2]));
      }
    }
  }
}

TEST(GroupNormGateBackward, AccumulatesTheWeight) {
  const GroupNormCase c(5, 2, 3, true, Activation::kSwish, 13);
  const Gradients once = c.backward<double>();
  std::vector<double> dw(3, 0.0);
  Matrix dO(5, 6), dG(5, 6);
  for (int call = 0; call < 2; ++call) {
    stages::groupNormGateBackward<double>(c.o, 2, c.w.data(), kEps, c.g, Activation::kSwish, c.dY,
                                          dO, dG, dw.data());
  }
  EXPECT_LT(normwiseError(dO, once.values[0]), 1e-15);
  EXPECT_LT(normwiseError(dG, once.values[1]), 1e-15);
  EXPECT_LT(normwiseError(rowOf(dw), 2 * once.values[2]), 1e-15);
}

template <typename Scalar>
void expectZeroRowsGetZeroGradients(double eps) {
  // A padded row: o = 0 and dy = 0 (golden/grad README §3.2). With eps = 1e-300 (double) or
  // 1e-24 (float), rsqrt(eps)³ overflows; the backward must still give exact zeros, not NaN.
  GroupNormCase c(3, 2, 4, true, Activation::kSwish, 51);
  c.o.row(1).setZero();
  c.dY.row(1).setZero();
  const std::vector<Scalar> w = as<Scalar>(c.w);
  std::vector<Scalar> dw(4, Scalar(0));
  RowMatrix<Scalar> dO(3, 8), dG(3, 8);
  stages::groupNormGateBackward<Scalar>(c.o.cast<Scalar>(), 2, w.data(), eps, c.g.cast<Scalar>(),
                                        Activation::kSwish, c.dY.cast<Scalar>(), dO, dG, dw.data());
  EXPECT_TRUE(dO.allFinite() && dG.allFinite());
  EXPECT_TRUE((dO.row(1).array() == Scalar(0)).all()) << dO.row(1);
  EXPECT_TRUE((dG.row(1).array() == Scalar(0)).all()) << dG.row(1);
  EXPECT_TRUE(std::all_of(dw.begin(), dw.end(), [](Scalar e) { return std::isfinite(e); }));
  RowMatrix<Scalar> dx(3, 8);
  std::vector<Scalar> dwNorm(8, Scalar(0));
  const std::vector<Scalar> wNorm(8, Scalar(1));
  stages::rmsNormBackward<Scalar>(c.o.cast<Scalar>(), wNorm.data(), eps, c.dY.cast<Scalar>(), dx,
                                  dwNorm.data());
  EXPECT_TRUE(dx.allFinite());
  EXPECT_TRUE((dx.row(1).array() == Scalar(0)).all()) << dx.row(1);
}

TEST(GroupNormGateBackward, ZeroPaddedRowsGetZeroGradients) {
  expectZeroRowsGetZeroGradients<double>(1e-300);
  expectZeroRowsGetZeroGradients<double>(1e-24);
  expectZeroRowsGetZeroGradients<float>(1e-24);
}

// ---------------------------------------------------------------------------------------------
// gatedFeedForward

enum class FfnVariant { kGluGelu, kGluSwish, kSwiglu };

struct FfnCase {
  Matrix x, Wa, Wb, Wout, dY;
  FfnVariant variant;
  FfnCase(Index rows, Index D, Index F, FfnVariant v, std::uint64_t seed) : variant(v) {
    Random random(seed);
    x = random.matrix(rows, D);
    Wa = random.matrix(F, D, 0.8);
    Wb = random.matrix(F, D, 0.8);
    Wout = random.matrix(D, F, 0.3);
    dY = random.matrix(rows, D);
  }
  template <typename Scalar>
  FeedForwardWeights<Scalar> weights(const Matrix& a, const Matrix& b, const Matrix& out) const {
    const LinearWeight<Scalar> wa(a.cast<Scalar>()), wb(b.cast<Scalar>()), wo(out.cast<Scalar>());
    switch (variant) {
      case FfnVariant::kGluGelu:
        return FeedForwardWeights<Scalar>::glu(wa, wb, wo, Activation::kGelu);
      case FfnVariant::kGluSwish:
        return FeedForwardWeights<Scalar>::glu(wa, wb, wo, Activation::kSwish);
      default:
        return FeedForwardWeights<Scalar>::swiglu(wa, wb, wo);
    }
  }
  template <typename Scalar>
  Gradients backward() const {
    const Index rows = x.rows(), D = x.cols(), F = Wa.rows();
    RowMatrix<Scalar> pre(rows, 2 * F), activated(rows, F), y(rows, D);
    RowMatrix<Scalar> dHidden(rows, 2 * F), dx(rows, D);
    RowMatrix<Scalar> dWIn = RowMatrix<Scalar>::Zero(2 * F, D);
    RowMatrix<Scalar> dWOut = RowMatrix<Scalar>::Zero(D, F);
    const RowMatrix<Scalar> input = x.cast<Scalar>();
    const FeedForwardWeights<Scalar> w = weights<Scalar>(Wa, Wb, Wout);
    stages::gatedFeedForwardTraining<Scalar>(input, w, pre, activated, y);
    stages::gatedFeedForwardBackward<Scalar>(input, w, pre, dY.cast<Scalar>(), activated, dHidden,
                                             dx, dWIn, dWOut);
    return {{"dx", "dWa", "dWb", "dWout"},
            {dx.template cast<double>(), dWIn.topRows(F).template cast<double>(),
             dWIn.bottomRows(F).template cast<double>(), dWOut.template cast<double>()}};
  }
  Matrix forward(Matrix* hiddenOut = nullptr) const {
    Matrix hidden(x.rows(), 2 * Wa.rows()), y(x.rows(), x.cols());
    stages::gatedFeedForward<double>(x, weights<double>(Wa, Wb, Wout), hidden, y);
    if (hiddenOut != nullptr) *hiddenOut = hidden;
    return y;
  }
  Gradients numeric() {
    const auto loss = [&] { return contract(dY, forward()); };
    return {{"dx", "dWa", "dWb", "dWout"},
            {numericGradient(x, loss), numericGradient(Wa, loss), numericGradient(Wb, loss),
             numericGradient(Wout, loss)}};
  }
};

const char* nameOf(FfnVariant v) {
  return v == FfnVariant::kGluGelu    ? "glu_gelu"
         : v == FfnVariant::kGluSwish ? "glu_swish"
                                      : "swiglu";
}

TEST(GatedFeedForwardBackward, MatchesFiniteDifferences) {
  // (rows, D, F): rows 1, odd widths, F across a piece of 256, rows > 8 (the forward's GEMMs).
  const Index shapes[][3] = {{1, 3, 2}, {5, 4, 7}, {3, 4, 260}, {10, 5, 3}};
  std::uint64_t seed = 600;
  for (FfnVariant v : {FfnVariant::kGluGelu, FfnVariant::kGluSwish, FfnVariant::kSwiglu}) {
    for (const auto& s : shapes) {
      FfnCase c(s[0], s[1], s[2], v, seed++);
      checkCase(
          c, std::string(nameOf(v)) + " rows " + str(s[0]) + " D " + str(s[1]) + " F " + str(s[2]));
    }
  }
}

// The training forward gives the forward's y bit for bit; the backward leaves h as both computed
// it (bit for bit, whatever the buffers' strides: detail::gatedActivation) and accumulates.
TEST(GatedFeedForwardBackward, TrainingForwardIsTheForwardAndTheBackwardAccumulates) {
  for (const Index F : {9, 260}) {  // odd widths, and more than a piece (kActivationPiece)
    const FfnCase c(6, 5, F, FfnVariant::kGluGelu, 21);
    Matrix forwardHidden;
    const Matrix y = c.forward(&forwardHidden);
    const Gradients once = c.backward<double>();
    const auto weights = c.weights<double>(c.Wa, c.Wb, c.Wout);
    Matrix pre(6, 2 * F), activated(6, F), yTraining(6, 5);
    stages::gatedFeedForwardTraining<double>(c.x, weights, pre, activated, yTraining);
    EXPECT_TRUE(yTraining == y) << F;
    EXPECT_TRUE(activated == forwardHidden.leftCols(F)) << F;
    EXPECT_TRUE(pre.rightCols(F) == forwardHidden.rightCols(F)) << F;
    Matrix dHidden(6, 2 * F), dx = Matrix::Ones(6, 5);
    Matrix dWIn = Matrix::Zero(2 * F, 5), dWOut = Matrix::Zero(5, F);
    activated.setZero();
    for (int call = 0; call < 2; ++call) {
      stages::gatedFeedForwardBackward<double>(c.x, weights, pre, c.dY, activated, dHidden, dx,
                                               dWIn, dWOut, /*accumulate=*/true);
    }
    EXPECT_TRUE(activated == forwardHidden.leftCols(F)) << F;
    EXPECT_LT(normwiseError(dx, 2 * once.values[0] + Matrix::Ones(6, 5)), 1e-15);
    EXPECT_LT(normwiseError(dWIn.topRows(F), 2 * once.values[1]), 1e-15);
    EXPECT_LT(normwiseError(dWIn.bottomRows(F), 2 * once.values[2]), 1e-15);
    EXPECT_LT(normwiseError(dWOut, 2 * once.values[3]), 1e-15);
  }
}

// ---------------------------------------------------------------------------------------------
// embed, and a tied head

struct EmbedCase {
  std::vector<std::int64_t> tokens;
  Matrix table, dY;
  double scale;
  EmbedCase(Index rows, Index vocab, Index D, double s, std::uint64_t seed) : scale(s) {
    Random random(seed);
    for (Index r = 0; r < rows; ++r) tokens.push_back(random.token(vocab));
    table = random.matrix(vocab, D);
    dY = random.matrix(rows, D);
  }
  template <typename Scalar>
  Gradients backward() const {
    RowMatrix<Scalar> dTable = RowMatrix<Scalar>::Zero(table.rows(), table.cols());
    stages::embedBackward<Scalar>(tokens.data(), dY.cast<Scalar>(), scale, dTable);
    return {{"dE"}, {dTable.template cast<double>()}};
  }
  Gradients numeric() {
    const auto loss = [&] {
      Matrix y(dY.rows(), dY.cols());
      stages::embed<double>(tokens.data(), table, scale, y);
      return contract(dY, y);
    };
    return {{"dE"}, {numericGradient(table, loss)}};
  }
};

TEST(EmbedBackward, MatchesFiniteDifferences) {
  // (rows, vocab, D): 9 rows over 4 ids repeat some; rows 1.
  const Index shapes[][3] = {{1, 3, 2}, {9, 4, 3}, {6, 10, 5}};
  std::uint64_t seed = 700;
  for (double scale : {1.0, std::sqrt(8.0)}) {
    for (const auto& s : shapes) {
      EmbedCase c(s[0], s[1], s[2], scale, seed++);
      checkCase(c, "rows " + str(s[0]) + " vocab " + str(s[1]) + " D " + str(s[2]) + " scale " +
                       std::to_string(scale));
    }
  }
}

TEST(EmbedBackward, RepeatedTokensAccumulate) {
  const std::vector<std::int64_t> tokens{2, 0, 2, 2};
  const Matrix dY = (Matrix(4, 2) << 1, 2, 3, 4, 5, 6, 7, 8).finished();
  Matrix dE = Matrix::Ones(3, 2);
  stages::embedBackward<double>(tokens.data(), dY, 0.5, dE);
  const Matrix expected = (Matrix(3, 2) << 1 + 1.5, 1 + 2, 1, 1, 1 + 6.5, 1 + 8).finished();
  EXPECT_EQ(dE, expected);
}

TEST(EmbedBackward, TiedHead) {
  // L = Σ dLogits ⊙ (embed(tokens, E, scale) · Eᵀ): the table's gradient is the head's part
  // (linearBackward into dE) plus the lookup's scatter-add.
  const Index rows = 5, vocab = 6, D = 4;
  const double scale = 2.0;
  EmbedCase c(rows, vocab, D, scale, 31);
  const Matrix dLogits = Random(32).matrix(rows, vocab);
  const auto loss = [&] {
    Matrix y(rows, D), logits(rows, vocab);
    stages::embed<double>(c.tokens.data(), c.table, scale, y);
    stages::linear<double>(y, LinearWeight<double>(c.table), logits);
    return contract(dLogits, logits);
  };
  Matrix y(rows, D), dy(rows, D), dE = Matrix::Zero(vocab, D);
  stages::embed<double>(c.tokens.data(), c.table, scale, y);
  stages::linearBackward<double>(y, LinearWeight<double>(c.table), dLogits, dy, dE);
  stages::embedBackward<double>(c.tokens.data(), dy, scale, dE);
  EXPECT_LT(normwiseError(dE, numericGradient(c.table, loss)), kFdTolerance);
}

// ---------------------------------------------------------------------------------------------
// cross-entropy

struct CrossEntropyCase {
  Matrix logits;
  std::vector<std::int64_t> targets;
  std::int64_t ignore;
  CrossEntropyCase(Index rows, Index vocab, std::int64_t ignoreIndex, std::uint64_t seed)
      : ignore(ignoreIndex) {
    Random random(seed);
    logits = random.matrix(rows, vocab, 3.0, 1.0);
    for (Index r = 0; r < rows; ++r) {
      targets.push_back(r % 3 == 1 ? ignore : random.token(vocab));  // every third row ignored
    }
  }
  template <typename Scalar>
  Gradients backward() const {
    RowMatrix<Scalar> d(logits.rows(), logits.cols());
    const double loss =
        stages::crossEntropyBackward<Scalar>(logits.cast<Scalar>(), targets.data(), ignore, d);
    return {{"dLogits", "loss"}, {d.template cast<double>(), Matrix::Constant(1, 1, loss)}};
  }
  Gradients numeric() {
    const auto loss = [&] { return stages::crossEntropy<double>(logits, targets.data(), ignore); };
    return {{"dLogits", "loss"}, {numericGradient(logits, loss), Matrix::Constant(1, 1, loss())}};
  }
};

TEST(CrossEntropy, MatchesFiniteDifferences) {
  const Index shapes[][2] = {{1, 1}, {1, 5}, {4, 7}, {40, 3}, {3, 300}};
  std::uint64_t seed = 800;
  for (std::int64_t ignore : {stages::kIgnoreIndex, std::int64_t{2}}) {
    for (const auto& s : shapes) {
      CrossEntropyCase c(s[0], s[1], ignore, seed++);
      checkCase(c,
                "rows " + str(s[0]) + " vocab " + str(s[1]) + " ignore " + std::to_string(ignore));
    }
  }
}

TEST(CrossEntropy, HandComputed) {
  // Row 0: z = (0, 0), t = 0: ln 2, softmax (1/2, 1/2). Row 1: z = (0, ln 3), t = 1: ln(4/3),
  // softmax (1/4, 3/4). Row 2 ignored. L = (ln 2 + ln(4/3)) / 2 = ln(8/3) / 2;
  // dz = (softmax − onehot) / 2.
  const Matrix z = (Matrix(3, 2) << 0, 0, 0, std::log(3.0), 5, -5).finished();
  const std::vector<std::int64_t> t{0, 1, -100};
  Matrix d(3, 2);
  const double loss = stages::crossEntropyBackward<double>(z, t.data(), -100, d);
  EXPECT_NEAR(loss, std::log(8.0 / 3.0) / 2, 1e-15);
  EXPECT_NEAR(stages::crossEntropy<double>(z, t.data()), std::log(8.0 / 3.0) / 2, 1e-15);
  const Matrix expected = (Matrix(3, 2) << -0.25, 0.25, 0.125, -0.125, 0, 0).finished();
  EXPECT_LT((d - expected).cwiseAbs().maxCoeff(), 1e-16);
  // Row (1, 2, 3), t = 2: ln(e + e² + e³) − 3 = ln(1 + e⁻¹ + e⁻²).
  const Matrix one = (Matrix(1, 3) << 1, 2, 3).finished();
  const std::int64_t two = 2;
  EXPECT_NEAR(stages::crossEntropy<double>(one, &two),
              std::log(1 + std::exp(-1.0) + std::exp(-2.0)), 1e-15);
}

TEST(CrossEntropy, StableIgnoredInPlace) {
  // Logits far beyond exp's range: the max is subtracted first.
  const Matrix big = (Matrix(2, 2) << 1000, 0, -1000, 1000).finished();
  const std::vector<std::int64_t> t{1, 1};
  for (bool isFloat : {false, true}) {
    Matrix d(2, 2);
    double loss = 0;
    if (isFloat) {
      RowMatrix<float> df(2, 2);
      loss = stages::crossEntropyBackward<float>(big.cast<float>(), t.data(), -100, df);
      d = df.cast<double>();
    } else {
      loss = stages::crossEntropyBackward<double>(big, t.data(), -100, d);
    }
    EXPECT_DOUBLE_EQ(loss, 500.0);
    const Matrix expected = (Matrix(2, 2) << 0.5, -0.5, 0, 0).finished();
    EXPECT_LT((d - expected).cwiseAbs().maxCoeff(), 1e-7);
  }
  // Every row ignored: loss 0, gradient 0 (PyTorch would return NaN).
  const std::vector<std::int64_t> none{-100, -100};
  Matrix d = Matrix::Ones(2, 2);
  EXPECT_EQ(stages::crossEntropyBackward<double>(big, none.data(), -100, d), 0.0);
  EXPECT_EQ(stages::crossEntropy<double>(big, none.data()), 0.0);
  EXPECT_TRUE((d.array() == 0.0).all());
  // In place: dLogits is the logits.
  const CrossEntropyCase c(7, 5, -100, 41);
  const Gradients expected = c.backward<double>();
  Matrix inPlace = c.logits;
  const double loss =
      stages::crossEntropyBackward<double>(inPlace, c.targets.data(), -100, inPlace);
  EXPECT_EQ(loss, expected.values[1](0, 0));
  EXPECT_LT(normwiseError(inPlace, expected.values[0]), 1e-15);
}

// ---------------------------------------------------------------------------------------------
// no rows

TEST(BackwardEmpty, NoRowsLeaveTheGradientsAlone) {
  const Matrix none(0, 4), noneOut(0, 5);
  Matrix dx(0, 4), dW = Matrix::Ones(5, 4);
  stages::linearBackward<double>(none, LinearWeight<double>(Matrix::Ones(5, 4)), noneOut, dx, dW);
  EXPECT_TRUE((dW.array() == 1.0).all());
  std::vector<double> w(4, 1.0), dw(4, 1.0), db(4, 1.0);
  stages::rmsNormBackward<double>(none, w.data(), kEps, none, dx, dw.data());
  stages::layerNormBackward<double>(none, w.data(), kEps, none, dx, dw.data(), db.data());
  stages::groupNormGateBackward<double>(none, 1, w.data(), kEps, none, Activation::kSwish, none, dx,
                                        dx, dw.data());
  EXPECT_TRUE(std::all_of(dw.begin(), dw.end(), [](double e) { return e == 1.0; }));
  EXPECT_TRUE(std::all_of(db.begin(), db.end(), [](double e) { return e == 1.0; }));
  Matrix dLogits(0, 4);
  EXPECT_EQ(stages::crossEntropyBackward<double>(none, nullptr, -100, dLogits), 0.0);
  EXPECT_EQ(stages::crossEntropy<double>(none, nullptr), 0.0);
  Matrix dE = Matrix::Ones(3, 4);
  stages::embedBackward<double>(nullptr, none, 1.0, dE);
  EXPECT_TRUE((dE.array() == 1.0).all());
}

// ---------------------------------------------------------------------------------------------
// argument checks

TEST(BackwardArguments, AreChecked) {
  const Matrix x = Matrix::Ones(3, 4);
  Matrix m33(3, 3), m34(3, 4), m35(3, 5), m44(4, 4), m43(4, 3);
  const LinearWeight<double> W(Matrix::Ones(5, 4));  // out 5, in 4
  const Matrix dy = Matrix::Ones(3, 5);
  Matrix dW = Matrix::Zero(5, 4);
  // linear
  RETNET_EXPECT_THROW_WITH(stages::linearBackward<double>(x, W, dy, m35, dW), InvalidArgument,
                           "stages::linearBackward", "dx (rows x in)", "(3, 4)", "(3, 5)");
  RETNET_EXPECT_THROW_WITH(stages::linearBackward<double>(x, W, dy, m34, m44), InvalidArgument,
                           "stages::linearBackward", "dW (out x in)", "(5, 4)");
  RETNET_EXPECT_THROW_WITH(stages::linearBackward<double>(x, W, m34, m34, dW), InvalidArgument,
                           "stages::linearBackward", "dy (rows x out)");
  RETNET_EXPECT_THROW_WITH(stages::linearBackward<double>(m35, W, dy, m34, dW), InvalidArgument,
                           "stages::linearBackward", "x (rows x in)");
  const LinearWeight<double> halves = W.converted(WeightType::kBf16);
  RETNET_EXPECT_THROW_WITH(stages::linearBackward<double>(x, halves, dy, m34, dW), InvalidArgument,
                           "stages::linearBackward", "full precision", "bf16");
  RETNET_EXPECT_THROW_WITH(stages::linearBackwardInput<double>(dy, halves, m34), InvalidArgument,
                           "stages::linearBackwardInput", "full precision");
  RETNET_EXPECT_THROW_WITH(stages::linearBackwardInput<double>(dy, W, m35), InvalidArgument,
                           "stages::linearBackwardInput", "dx (rows x in)");
  RETNET_EXPECT_THROW_WITH(stages::linearBackwardWeight<double>(x, Matrix(4, 5), dW),
                           InvalidArgument, "stages::linearBackwardWeight", "dy (rows x out)");
  RETNET_EXPECT_THROW_WITH(stages::linearBackwardWeight<double>(x, dy, m44), InvalidArgument,
                           "stages::linearBackwardWeight", "dW (out x in)");
  EXPECT_TRUE((dW.array() == 0.0).all());  // nothing written before a throw
  // activations
  RETNET_EXPECT_THROW_WITH(stages::activateBackward<double>(x, Activation::kGelu, m35, m34),
                           InvalidArgument, "stages::activateBackward", "dy");
  RETNET_EXPECT_THROW_WITH(stages::activateBackward<double>(x, Activation::kGelu, x, m35),
                           InvalidArgument, "stages::activateBackward", "dx");
  // norms
  std::vector<double> v4(4, 1.0), d4(4, 0.0);
  RETNET_EXPECT_THROW_WITH(stages::rmsNormBackward<double>(x, nullptr, kEps, m35, m34, nullptr),
                           InvalidArgument, "stages::rmsNormBackward", "dy");
  RETNET_EXPECT_THROW_WITH(stages::rmsNormBackward<double>(x, nullptr, kEps, x, m33, nullptr),
                           InvalidArgument, "stages::rmsNormBackward", "dx");
  RETNET_EXPECT_THROW_WITH(stages::rmsNormBackward<double>(x, v4.data(), kEps, x, m34, nullptr),
                           InvalidArgument, "stages::rmsNormBackward", "dw");
  RETNET_EXPECT_THROW_WITH(stages::rmsNormBackward<double>(x, nullptr, kEps, x, m34, d4.data()),
                           InvalidArgument, "stages::rmsNormBackward", "dw");
  RETNET_EXPECT_THROW_WITH(
      stages::layerNormBackward<double>(x, v4.data(), kEps, m35, m34, d4.data(), d4.data()),
      InvalidArgument, "stages::layerNormBackward", "dy");
  RETNET_EXPECT_THROW_WITH(
      stages::layerNormBackward<double>(x, v4.data(), kEps, x, m35, d4.data(), d4.data()),
      InvalidArgument, "stages::layerNormBackward", "dx");
  RETNET_EXPECT_THROW_WITH(
      stages::layerNormBackward<double>(x, nullptr, kEps, x, m34, d4.data(), d4.data()),
      InvalidArgument, "stages::layerNormBackward", "needed");
  RETNET_EXPECT_THROW_WITH(
      stages::layerNormBackward<double>(x, v4.data(), kEps, x, m34, d4.data(), nullptr),
      InvalidArgument, "stages::layerNormBackward", "needed");
  EXPECT_TRUE(std::all_of(d4.begin(), d4.end(), [](double e) { return e == 0.0; }));
  // rotary
  const RotaryEmbedding<double> rope(4);
  RotaryTable<double> table;
  rope.fillTable(0, 3, table);
  RETNET_EXPECT_THROW_WITH(stages::rotateBackward(rope, table, m35), InvalidArgument,
                           "stages::rotateBackward", "multiple of the key dim");
  Matrix tall(4, 4);
  RETNET_EXPECT_THROW_WITH(stages::rotateBackward(rope, table, tall), InvalidArgument,
                           "stages::rotateBackward", "table");
  // groupNormGate
  std::vector<double> v2(2, 1.0), d2(2, 0.0);
  RETNET_EXPECT_THROW_WITH(stages::groupNormGateBackward<double>(
                               x, 3, nullptr, kEps, x, Activation::kSwish, x, m34, m44, nullptr),
                           InvalidArgument, "stages::groupNormGateBackward", "heads (3)");
  RETNET_EXPECT_THROW_WITH(stages::groupNormGateBackward<double>(
                               x, 0, nullptr, kEps, x, Activation::kSwish, x, m34, m34, nullptr),
                           InvalidArgument, "stages::groupNormGateBackward", "heads (0)");
  RETNET_EXPECT_THROW_WITH(stages::groupNormGateBackward<double>(
                               x, 2, nullptr, kEps, m35, Activation::kSwish, x, m34, m34, nullptr),
                           InvalidArgument, "stages::groupNormGateBackward", "g (o's shape)");
  RETNET_EXPECT_THROW_WITH(stages::groupNormGateBackward<double>(
                               x, 2, nullptr, kEps, x, Activation::kSwish, m35, m34, m34, nullptr),
                           InvalidArgument, "stages::groupNormGateBackward", "dy (o's shape)");
  RETNET_EXPECT_THROW_WITH(stages::groupNormGateBackward<double>(
                               x, 2, nullptr, kEps, x, Activation::kSwish, x, m35, m34, nullptr),
                           InvalidArgument, "stages::groupNormGateBackward", "dO (o's shape)");
  RETNET_EXPECT_THROW_WITH(stages::groupNormGateBackward<double>(
                               x, 2, nullptr, kEps, x, Activation::kSwish, x, m34, m35, nullptr),
                           InvalidArgument, "stages::groupNormGateBackward", "dG (o's shape)");
  RETNET_EXPECT_THROW_WITH(stages::groupNormGateBackward<double>(
                               x, 2, v2.data(), kEps, x, Activation::kSwish, x, m34, m34, nullptr),
                           InvalidArgument, "stages::groupNormGateBackward", "dw");
  // gatedFeedForward: D = 4, F = 2
  const auto ffn = FeedForwardWeights<double>::glu(Matrix::Ones(2, 4), Matrix::Ones(2, 4),
                                                   Matrix::Ones(4, 2), Activation::kGelu);
  Matrix pre(3, 4), act(3, 2), dh(3, 4), dWIn = Matrix::Zero(4, 4), dWOut = Matrix::Zero(4, 2);
  const char* ffnWhere = "stages::gatedFeedForwardBackward";
  const auto ffnBackward = [&](const Matrix& in, const FeedForwardWeights<double>& w,
                               const Matrix& preActivation, const Matrix& dy, Matrix& activated,
                               Matrix& dHidden, Matrix& dx, Matrix& gradIn, Matrix& gradOut) {
    stages::gatedFeedForwardBackward<double>(in, w, preActivation, dy, activated, dHidden, dx,
                                             gradIn, gradOut);
  };
  Matrix m35b = m35, m34b = m34, m34c = m34, m43b = m43, m44b = m44;
  RETNET_EXPECT_THROW_WITH(ffnBackward(m35, ffn, pre, x, act, dh, m34b, dWIn, dWOut),
                           InvalidArgument, ffnWhere, "x (rows x D)");
  RETNET_EXPECT_THROW_WITH(ffnBackward(x, ffn, m35, x, act, dh, m34b, dWIn, dWOut), InvalidArgument,
                           ffnWhere, "preActivation (rows x 2F)");
  RETNET_EXPECT_THROW_WITH(ffnBackward(x, ffn, pre, m35, act, dh, m34b, dWIn, dWOut),
                           InvalidArgument, ffnWhere, "dy (rows x D)");
  RETNET_EXPECT_THROW_WITH(ffnBackward(x, ffn, pre, x, m34c, dh, m34b, dWIn, dWOut),
                           InvalidArgument, ffnWhere, "activated (rows x F)");
  RETNET_EXPECT_THROW_WITH(ffnBackward(x, ffn, pre, x, act, m35b, m34b, dWIn, dWOut),
                           InvalidArgument, ffnWhere, "dHidden (rows x 2F)");
  RETNET_EXPECT_THROW_WITH(ffnBackward(x, ffn, pre, x, act, dh, m35b, dWIn, dWOut), InvalidArgument,
                           ffnWhere, "dx (rows x D)");
  RETNET_EXPECT_THROW_WITH(ffnBackward(x, ffn, pre, x, act, dh, m34b, m43b, dWOut), InvalidArgument,
                           ffnWhere, "dWIn (2F x D)");
  RETNET_EXPECT_THROW_WITH(ffnBackward(x, ffn, pre, x, act, dh, m34b, dWIn, m44b), InvalidArgument,
                           ffnWhere, "dWOut (D x F)");
  const FeedForwardWeights<double> reduced{ffn.input.converted(WeightType::kInt8), ffn.output,
                                           Activation::kGelu};
  RETNET_EXPECT_THROW_WITH(ffnBackward(x, reduced, pre, x, act, dh, m34b, dWIn, dWOut),
                           InvalidArgument, ffnWhere, "full precision", "int8");
  const char* trainingWhere = "stages::gatedFeedForwardTraining";
  Matrix y(3, 4);
  RETNET_EXPECT_THROW_WITH(stages::gatedFeedForwardTraining<double>(x, ffn, m35b, act, y),
                           InvalidArgument, trainingWhere, "preActivation (rows x 2F)");
  RETNET_EXPECT_THROW_WITH(stages::gatedFeedForwardTraining<double>(x, ffn, pre, m34c, y),
                           InvalidArgument, trainingWhere, "activated (rows x F)");
  RETNET_EXPECT_THROW_WITH(stages::gatedFeedForwardTraining<double>(m35, ffn, pre, act, y),
                           InvalidArgument, trainingWhere, "x (rows x D)");
  RETNET_EXPECT_THROW_WITH(stages::gatedFeedForwardTraining<double>(x, ffn, pre, act, m35b),
                           InvalidArgument, trainingWhere, "y (rows x D)");
  EXPECT_TRUE((dWIn.array() == 0.0).all() && (dWOut.array() == 0.0).all());
  // embed
  const std::vector<std::int64_t> tokens{0, 3, 1}, bad{0, 4, 1}, negative{-1, 0, 0};
  Matrix dE = Matrix::Zero(4, 4);
  RETNET_EXPECT_THROW_WITH(stages::embedBackward<double>(tokens.data(), m35, 1.0, dE),
                           InvalidArgument, "stages::embedBackward", "dy (rows x D)");
  RETNET_EXPECT_THROW_WITH(stages::embedBackward<double>(bad.data(), x, 1.0, dE), InvalidArgument,
                           "stages::embedBackward", "[0, 4)", "got 4");
  RETNET_EXPECT_THROW_WITH(stages::embedBackward<double>(negative.data(), x, 1.0, dE),
                           InvalidArgument, "stages::embedBackward", "got -1");
  RETNET_EXPECT_THROW_WITH(stages::embedBackward<double>(nullptr, x, 1.0, dE), InvalidArgument,
                           "stages::embedBackward", "null");
  EXPECT_TRUE((dE.array() == 0.0).all());  // checked before the first write
  // cross-entropy
  const std::vector<std::int64_t> targets{0, -100, 4}, outside{0, 5, 1}, below{0, -1, 1};
  Matrix logits = Matrix::Zero(3, 5), dLogits = Matrix::Constant(3, 5, 7.0);
  RETNET_EXPECT_THROW_WITH(stages::crossEntropy<double>(logits, outside.data()), InvalidArgument,
                           "stages::crossEntropy", "[0, 5)", "got 5", "row 1");
  RETNET_EXPECT_THROW_WITH(stages::crossEntropy<double>(logits, below.data()), InvalidArgument,
                           "stages::crossEntropy", "got -1");
  RETNET_EXPECT_THROW_WITH(stages::crossEntropy<double>(logits, targets.data(), -1),
                           InvalidArgument, "stages::crossEntropy", "got -100");
  RETNET_EXPECT_THROW_WITH(stages::crossEntropy<double>(logits, nullptr), InvalidArgument,
                           "stages::crossEntropy", "null");
  RETNET_EXPECT_THROW_WITH(stages::crossEntropy<double>(Matrix(3, 0), targets.data()),
                           InvalidArgument, "stages::crossEntropy", "non-empty");
  RETNET_EXPECT_THROW_WITH(
      stages::crossEntropyBackward<double>(logits, outside.data(), -100, dLogits), InvalidArgument,
      "stages::crossEntropyBackward", "got 5");
  RETNET_EXPECT_THROW_WITH(stages::crossEntropyBackward<double>(logits, targets.data(), -100, m34),
                           InvalidArgument, "stages::crossEntropyBackward", "dLogits");
  EXPECT_TRUE((dLogits.array() == 7.0).all());  // checked before the first write
}

}  // namespace
}  // namespace retnet
