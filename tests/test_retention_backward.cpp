// stages::retentionBackward (detail/retention_backward.hpp): the backward of one head's retention
// core in the parallel and chunkwise forms, against central finite differences of a naive double
// forward written here straight from the formula.
//
// The loss is L = Σ dOut ⊙ out + Σ dS ⊙ S, dOut and dS fixed random upstream gradients (dS may be
// absent), and the gradients are those with respect to q, k, v and the entering state S0.
// torchscale's normalisation factors f_i are constants of its autograd (detach(),
// shared/golden/grad/README.md §3.1), so the finite differences are of the naive forward with
// the factors FROZEN at their unperturbed values; without normalisation (kNone) there are no
// factors and the plain finite differences must agree as well.
//
// Tolerances (normwise, max|g − ref| / max|ref| per gradient tensor):
// - finite differences, kFdTolerance = 1e-6: central differences with h = 1e-6·max(1, |p|) have
//   truncation error h²/6·|L'''| ≈ 1e-13 relative here (L is a polynomial of degree ≤ 3 in each
//   entry with the factors frozen) and rounding error ≈ u·|L|/h with u = 1.1e-16 and |L| ≤ ~1e3
//   (at most ~20 rows of sums of ~20 O(1)..O(10) products): ≤ 1e-7 absolute against gradients of
//   O(1..10), so ≤ ~1e-7 relative at worst, typically 1e-9. A wrong term (a missing decay power,
//   the scale on the wrong side, a factor not applied, a dropped cross or state term) moves a
//   gradient by ≥ 1e-3 of its size.
// - naive forward vs stages::retention, parallel vs chunkwise backward without normalisation,
//   kExactTolerance = 1e-12: both sides are the same sums in double in another order; each
//   element sums ≤ T·(dk + dv) products (≤ ~4000 at T = 300), so the rounding difference is
//   ≤ ~√n·u·(size of the largest terms) ≈ 1e-14 relative to the largest gradient, with the terms
//   at most ~10x the result where signs cancel: 1e-12 keeps a margin of ~10.
// - float vs double backward on the same inputs (every input is exactly a float),
//   kFloatTolerance = 1e-4: float's unit roundoff is 6e-8; a gradient element is a sum of at most
//   a few hundred products of values whose own float errors are a few u (γ^m rounded to float,
//   the recomputed factor f_i — continuous in its inputs, so its rounding moves it by ≤ n·u —
//   and the chunk-entering states, themselves sums of ≤ T products), so its error is at most
//   ~n·u ≈ 3e-5 in the worst case (typically √n·u ≈ 1e-6); 1e-4 bounds that with margin and still
//   fails any float-only mistake (a cast of a constant, a power taken in float).
// Eigen is built here with EIGEN_RUNTIME_NO_MALLOC: a repeated call with the same scratch must
// not allocate (checked where Eigen's assertions are on, i.e. without NDEBUG).
#define EIGEN_RUNTIME_NO_MALLOC
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "retnet/stages/retention.hpp"
#include "test_util.hpp"

namespace retnet {
namespace {

using Matrix = RowMatrix<double>;

constexpr double kFdTolerance = 1e-6;         // see the file comment
constexpr double kExactTolerance = 1e-12;     // see the file comment
constexpr double kFloatTolerance = 1e-4;      // see the file comment
constexpr double kNearOne = 1.0 - 1.0 / 512;  // γ = 1 − 2^-9

// ---------------------------------------------------------------------------------------------
// Cases and inputs

struct Config {
  RetentionNormalization normalization = RetentionNormalization::kNone;
  Form form = Form::kParallel;
  Index chunk = 0;  // chunkwise only
  Index time = 11, dk = 4, dv = 3;
  double gamma = kNearOne;
  double scale = 1.0;
  ScaleSide side = ScaleSide::kQuery;
  bool stateIsZero = false;
  bool withStateGradient = true;  // dS given (else the loss does not read the final state)
  double queryMagnitude = 1.2;

  RetentionHead head() const { return {gamma, normalization, scale, side}; }
  std::string name() const {
    std::string s = normalization == RetentionNormalization::kNone ? "none " : "torchscale ";
    s += formName(form);
    if (form == Form::kChunkwise) s += " C=" + std::to_string(chunk);
    s += " T=" + std::to_string(time) + " dk=" + std::to_string(dk) + " dv=" + std::to_string(dv);
    s += " gamma=" + std::to_string(gamma) + " scale=" + std::to_string(scale);
    s += side == ScaleSide::kKey ? " (key)" : " (query)";
    s += stateIsZero ? " S0=0" : " S0!=0";
    s += withStateGradient ? " dS" : " no dS";
    if (queryMagnitude != 1.2) s += " |q|~" + std::to_string(queryMagnitude);
    return s;
  }
};

/// Random values from a fixed seed, each exactly a float.
class Random {
 public:
  explicit Random(std::uint64_t seed) : rng_(seed) {}
  Matrix matrix(Index rows, Index cols, double magnitude) {
    Matrix m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) {
      const double u = std::uniform_real_distribution<double>(-1.0, 1.0)(rng_);
      m.data()[i] = static_cast<double>(static_cast<float>(magnitude * u));
    }
    return m;
  }

 private:
  std::mt19937_64 rng_;
};

struct Inputs {
  Matrix q, k, v, S0, dOut, dS;
  Inputs(const Config& c, std::uint64_t seed) {
    Random random(seed);
    q = random.matrix(c.time, c.dk, c.queryMagnitude);
    k = random.matrix(c.time, c.dk, 1.2);
    v = random.matrix(c.time, c.dv, 1.0);
    // Column abs-sums of S0 of ~2·dk against L ≈ C: torchscale's sigma exceeds 1 for short chunks.
    S0 = c.stateIsZero ? Matrix::Zero(c.dk, c.dv) : random.matrix(c.dk, c.dv, 2.0);
    dOut = random.matrix(c.time, c.dv, 1.0);
    dS = random.matrix(c.dk, c.dv, 1.0);
  }
};

double normwiseError(const Matrix& a, const Matrix& ref) {
  if (a.rows() != ref.rows() || a.cols() != ref.cols()) {
    return std::numeric_limits<double>::infinity();
  }
  const double diff = (a - ref).cwiseAbs().maxCoeff(), scale = ref.cwiseAbs().maxCoeff();
  if (std::isnan(diff)) return std::numeric_limits<double>::infinity();
  return scale > 0 ? diff / scale : diff;
}

// ---------------------------------------------------------------------------------------------
// The naive forward: O(T²) loops over the explicit decay mask, in double.

struct NaiveForward {
  Matrix out;                   // (T x dv)
  Matrix state;                 // (dk x dv) the state after the last row
  std::vector<double> factors;  // f_t
};

/// out_t = U_t / f_t with U_t = Σ_{j<=t} s·γ^(t−j) (q_t·k_j) v_j + s_q·γ^(t+1) q_t S0, and
/// S = γ^T S0 + s_k Σ_j γ^(T−1−j) k_jᵀ v_j (s_q, s_k: s on the query or key side, else 1).
/// f_t is torchscale's factor of the form (1 without normalisation), or `frozen`'s entry t.
NaiveForward naiveForward(const Config& c, const Matrix& q, const Matrix& k, const Matrix& v,
                          const Matrix& S0, const std::vector<double>* frozen = nullptr) {
  const Index T = q.rows(), dk = q.cols(), dv = v.cols();
  const Index C = c.form == Form::kParallel ? T : c.chunk;  // the chunk the factors restart at
  const double s = c.scale, sq = c.side == ScaleSide::kQuery ? s : 1.0,
               sk = c.side == ScaleSide::kKey ? s : 1.0;
  const auto power = [&](Index m) { return std::pow(c.gamma, static_cast<double>(m)); };
  // The state after the first n rows.
  const auto stateAfter = [&](Index n) {
    Matrix S = power(n) * S0;
    for (Index j = 0; j < n; ++j) {
      for (Index a = 0; a < dk; ++a) {
        for (Index b = 0; b < dv; ++b) S(a, b) += sk * power(n - 1 - j) * k(j, a) * v(j, b);
      }
    }
    return S;
  };
  NaiveForward r{Matrix::Zero(T, dv), stateAfter(T), std::vector<double>(T, 1.0)};
  double sigma = 1;
  for (Index t = 0; t < T; ++t) {
    const Index chunkStart = t / C * C, i = t - chunkStart;
    if (c.normalization == RetentionNormalization::kTorchscale && i == 0) {
      // sigma: the largest column abs-sum of the state entering the chunk over L, floored at 1.
      double L = 0;
      for (Index m = 0; m < C; ++m) L += power(m);
      sigma = std::max(stateAfter(chunkStart).cwiseAbs().colwise().sum().maxCoeff() / L, 1.0);
    }
    double absSum = 0, rowSum = 0;
    for (Index j = 0; j <= t; ++j) {
      const double p = s * power(t - j) * q.row(t).dot(k.row(j));
      r.out.row(t) += p * v.row(j);
      if (j >= chunkStart) absSum += std::abs(p);
    }
    for (Index m = 0; m <= i; ++m) rowSum += power(m);
    for (Index b = 0; b < dv; ++b) {
      for (Index a = 0; a < dk; ++a) r.out(t, b) += sq * power(t + 1) * q(t, a) * S0(a, b);
    }
    if (c.normalization == RetentionNormalization::kTorchscale) {
      const double rowNorm = std::sqrt(rowSum);
      double factor = std::max(std::max(absSum / rowNorm, 1.0), sigma);
      if (c.form == Form::kParallel) factor = std::min(factor, 5e4);
      r.factors[t] = rowNorm * factor;
    }
    if (frozen != nullptr) r.factors[t] = (*frozen)[t];
    r.out.row(t) /= r.factors[t];
  }
  return r;
}

double naiveLoss(const Config& c, const Inputs& in, const std::vector<double>* frozen) {
  const NaiveForward f = naiveForward(c, in.q, in.k, in.v, in.S0, frozen);
  double loss = (in.dOut.array() * f.out.array()).sum();
  if (c.withStateGradient) loss += (in.dS.array() * f.state.array()).sum();
  return loss;
}

/// The central differences of loss() with respect to each value of m, perturbed in place and
/// restored (the denominator is the difference of the stored perturbed values).
Matrix numericGradient(Matrix& m, const std::function<double()>& loss) {
  Matrix g(m.rows(), m.cols());
  for (Index i = 0; i < m.size(); ++i) {
    const double x = m.data()[i], h = 1e-6 * std::max(1.0, std::abs(x));
    m.data()[i] = x + h;
    const double up = m.data()[i], plus = loss();
    m.data()[i] = x - h;
    const double down = m.data()[i], minus = loss();
    m.data()[i] = x;
    g.data()[i] = (plus - minus) / (up - down);
  }
  return g;
}

struct Gradients {
  Matrix dq, dk, dv, dS0;
};

/// Finite differences of the naive loss; `freeze`: with the factors of the unperturbed inputs.
Gradients numericGradients(const Config& c, Inputs in, bool freeze) {
  const std::vector<double> factors = naiveForward(c, in.q, in.k, in.v, in.S0).factors;
  const auto loss = [&] { return naiveLoss(c, in, freeze ? &factors : nullptr); };
  Gradients g;
  g.dq = numericGradient(in.q, loss);
  g.dk = numericGradient(in.k, loss);
  g.dv = numericGradient(in.v, loss);
  g.dS0 = numericGradient(in.S0, loss);
  return g;
}

/// stages::retentionBackward in Scalar, the gradients as double.
template <typename Scalar>
Gradients backward(const Config& c, const Inputs& in, RetentionBackwardScratch<Scalar>& scratch) {
  const RetentionPlan<Scalar> plan(c.head(), c.form, c.chunk, c.time);
  const RowMatrix<Scalar> q = in.q.cast<Scalar>(), k = in.k.cast<Scalar>(), v = in.v.cast<Scalar>(),
                          S0 = in.S0.cast<Scalar>(), dOut = in.dOut.cast<Scalar>(),
                          dS = in.dS.cast<Scalar>();
  RowMatrix<Scalar> dq(c.time, c.dk), dk(c.time, c.dk), dv(c.time, c.dv), dS0(c.dk, c.dv);
  stages::retentionBackward<Scalar>(plan, q, k, v, S0, 0, c.stateIsZero, dOut,
                                    c.withStateGradient ? dS.data() : nullptr, dq, dk, dv,
                                    dS0.data(), scratch);
  return {dq.template cast<double>(), dk.template cast<double>(), dv.template cast<double>(),
          dS0.template cast<double>()};
}
template <typename Scalar>
Gradients backward(const Config& c, const Inputs& in) {
  RetentionBackwardScratch<Scalar> scratch;
  return backward<Scalar>(c, in, scratch);
}

void expectMatch(const Gradients& g, const Gradients& ref, double tolerance,
                 const std::string& what) {
  EXPECT_LT(normwiseError(g.dq, ref.dq), tolerance) << what << ": dq";
  EXPECT_LT(normwiseError(g.dk, ref.dk), tolerance) << what << ": dk";
  EXPECT_LT(normwiseError(g.dv, ref.dv), tolerance) << what << ": dv";
  EXPECT_LT(normwiseError(g.dS0, ref.dS0), tolerance) << what << ": dS0";
}

/// The grid: {none, torchscale} × {parallel, chunkwise C = 1, 3, 8, 20} at T = 11 (3 and 8 leave a
/// ragged last chunk, 20 > T) × S0 zero or not × γ ∈ {1 − 2^-9, 0.5} × scale {0.25 on the key,
/// 0.25 on the query, 1}; dS given in every other case. Then T = 1, dk > dv, and the parallel
/// factor at its 5e4 cap.
std::vector<Config> grid() {
  std::vector<Config> configs;
  int n = 0;
  for (const auto normalization :
       {RetentionNormalization::kNone, RetentionNormalization::kTorchscale}) {
    for (const Index chunk : {Index(0), Index(1), Index(3), Index(8), Index(20)}) {
      for (const bool zero : {false, true}) {
        for (const double gamma : {kNearOne, 0.5}) {
          for (int scaling = 0; scaling < 3; ++scaling) {
            Config c;
            c.normalization = normalization;
            c.form = chunk == 0 ? Form::kParallel : Form::kChunkwise;
            c.chunk = chunk;
            c.stateIsZero = zero;
            c.gamma = gamma;
            c.scale = scaling == 2 ? 1.0 : 0.25;
            c.side = scaling == 0 ? ScaleSide::kKey : ScaleSide::kQuery;
            c.withStateGradient = ++n % 2 == 0;
            configs.push_back(c);
          }
        }
      }
    }
  }
  for (const auto normalization :
       {RetentionNormalization::kNone, RetentionNormalization::kTorchscale}) {
    for (const Index chunk : {Index(0), Index(1), Index(4)}) {
      for (const bool zero : {false, true}) {
        Config c;  // T = 1
        c.normalization = normalization;
        c.form = chunk == 0 ? Form::kParallel : Form::kChunkwise;
        c.chunk = chunk;
        c.time = 1;
        c.stateIsZero = zero;
        c.scale = 0.25;
        c.side = zero ? ScaleSide::kKey : ScaleSide::kQuery;
        configs.push_back(c);
      }
    }
    for (const Index chunk : {Index(0), Index(5)}) {
      Config c;  // dk > dv, γ = 0
      c.normalization = normalization;
      c.form = chunk == 0 ? Form::kParallel : Form::kChunkwise;
      c.chunk = chunk;
      c.time = 13;
      c.dk = 6;
      c.dv = 2;
      c.gamma = 0.0;
      c.scale = 0.25;
      c.side = ScaleSide::kKey;
      configs.push_back(c);
    }
  }
  Config capped;  // |q·k| sums far beyond 5e4: the parallel factor at its cap
  capped.normalization = RetentionNormalization::kTorchscale;
  capped.queryMagnitude = 3e5;
  configs.push_back(capped);
  return configs;
}

// ---------------------------------------------------------------------------------------------
// Tests

TEST(RetentionBackward, NaiveForwardMatchesTheStage) {
  std::uint64_t seed = 1;
  for (const Config& c : grid()) {
    SCOPED_TRACE(c.name());
    const Inputs in(c, seed++);
    const NaiveForward ref = naiveForward(c, in.q, in.k, in.v, in.S0);
    const RetentionPlan<double> plan(c.head(), c.form, c.chunk, c.time);
    RetentionScratch<double> scratch;
    Matrix S = in.S0, out(c.time, c.dv);
    stages::retention<double>(plan, in.q, in.k, in.v, S, 0, c.stateIsZero, out, scratch);
    EXPECT_LT(normwiseError(out, ref.out), kExactTolerance);
    EXPECT_LT(normwiseError(S, ref.state), kExactTolerance);
  }
}

TEST(RetentionBackward, MatchesFrozenFactorFiniteDifferences) {
  std::uint64_t seed = 1000;
  for (const Config& c : grid()) {
    SCOPED_TRACE(c.name());
    const Inputs in(c, seed++);
    const Gradients exact = backward<double>(c, in);
    expectMatch(exact, numericGradients(c, in, /*freeze=*/true), kFdTolerance,
                c.name() + " (double vs frozen finite differences)");
    if (c.normalization == RetentionNormalization::kNone) {
      expectMatch(exact, numericGradients(c, in, /*freeze=*/false), kFdTolerance,
                  c.name() + " (double vs plain finite differences)");
    }
  }
}

TEST(RetentionBackward, TorchscaleFactorsAreNotDifferentiated) {
  // The frozen and the plain finite differences of torchscale's forms differ by the factors'
  // own derivatives: the backward follows the frozen ones (a guard that the grid's torchscale
  // cases exercise the factors at all: iota and sigma above 1).
  Config c;
  c.normalization = RetentionNormalization::kTorchscale;
  c.form = Form::kChunkwise;
  c.chunk = 3;
  const Inputs in(c, 77);
  const Gradients exact = backward<double>(c, in);
  const Gradients plain = numericGradients(c, in, /*freeze=*/false);
  EXPECT_GT(normwiseError(exact.dq, plain.dq), 1e-3);
  expectMatch(exact, numericGradients(c, in, /*freeze=*/true), kFdTolerance, "frozen");
}

TEST(RetentionBackward, FloatMatchesDouble) {
  std::uint64_t seed = 2000;
  for (const Config& c : grid()) {
    SCOPED_TRACE(c.name());
    const Inputs in(c, seed++);
    expectMatch(backward<float>(c, in), backward<double>(c, in), kFloatTolerance,
                c.name() + " (float vs double)");
  }
}

TEST(RetentionBackward, ParallelAndChunkwiseAgreeWithoutNormalization) {
  // Long inputs too: several row blocks (kRowBlock = 128) in the parallel form and in a chunk of
  // 160, and one scratch reused across shapes (it only grows; results are bit-identical).
  std::uint64_t seed = 3000;
  RetentionBackwardScratch<double> shared;
  for (const Index time : {Index(11), Index(300)}) {
    for (const bool zero : {false, true}) {
      for (const ScaleSide side : {ScaleSide::kKey, ScaleSide::kQuery}) {
        Config parallel;
        parallel.time = time;
        parallel.dk = 5;
        parallel.dv = 7;
        parallel.gamma = time > 100 ? 1.0 - 1.0 / 32 : kNearOne;
        parallel.scale = 0.25;
        parallel.side = side;
        parallel.stateIsZero = zero;
        const Inputs in(parallel, seed++);
        const Gradients ref = backward<double>(parallel, in);
        for (const Index chunk : {Index(1), Index(4), Index(7), Index(160), Index(1000)}) {
          Config chunkwise = parallel;
          chunkwise.form = Form::kChunkwise;
          chunkwise.chunk = chunk;
          const Gradients g = backward<double>(chunkwise, in, shared);
          expectMatch(g, ref, kExactTolerance, chunkwise.name() + " vs parallel");
          const Gradients again = backward<double>(chunkwise, in, shared);
          EXPECT_TRUE(again.dq == g.dq && again.dk == g.dk && again.dv == g.dv &&
                      again.dS0 == g.dS0)
              << "not deterministic: " << chunkwise.name();
        }
      }
    }
  }
}

TEST(RetentionBackward, LongInputsSpotCheckedByFiniteDifferences) {
  // T = 300 with torchscale's factors: the parallel form over three row blocks, chunks of 160
  // (two blocks, a ragged last chunk) and of 64; 24 entries of each gradient by finite
  // differences of the frozen-factor forward.
  std::uint64_t seed = 4000;
  for (const Index chunk : {Index(0), Index(160), Index(64)}) {
    Config c;
    c.normalization = RetentionNormalization::kTorchscale;
    c.form = chunk == 0 ? Form::kParallel : Form::kChunkwise;
    c.chunk = chunk;
    c.time = 300;
    c.gamma = 1.0 - 1.0 / 64;
    c.scale = 0.25;
    c.side = ScaleSide::kKey;
    SCOPED_TRACE(c.name());
    Inputs in(c, seed++);
    const Gradients exact = backward<double>(c, in);
    const std::vector<double> factors = naiveForward(c, in.q, in.k, in.v, in.S0).factors;
    const auto loss = [&] { return naiveLoss(c, in, &factors); };
    std::mt19937_64 pick(seed);
    const auto spot = [&](Matrix& m, const Matrix& g, const char* name) {
      double maxDiff = 0;
      for (int n = 0; n < 24; ++n) {
        const Index i = std::uniform_int_distribution<Index>(0, m.size() - 1)(pick);
        const double x = m.data()[i], h = 1e-6 * std::max(1.0, std::abs(x));
        m.data()[i] = x + h;
        const double up = m.data()[i], plus = loss();
        m.data()[i] = x - h;
        const double down = m.data()[i], minus = loss();
        m.data()[i] = x;
        maxDiff = std::max(maxDiff, std::abs((plus - minus) / (up - down) - g.data()[i]));
      }
      EXPECT_LT(maxDiff / g.cwiseAbs().maxCoeff(), kFdTolerance) << name;
    };
    spot(in.q, exact.dq, "dq");
    spot(in.k, exact.dk, "dk");
    spot(in.v, exact.dv, "dv");
    spot(in.S0, exact.dS0, "dS0");
  }
}

TEST(RetentionBackward, StridedViewsAndOptionalStateGradients) {
  // q, k, v, dOut and the gradients as head slices of wider rows (as the layers pass them) give
  // the dense results bit for bit, and leave the rest of the rows alone; without dS0 wanted,
  // dq, dk and dv are unchanged.
  Config c;
  c.normalization = RetentionNormalization::kTorchscale;
  c.form = Form::kChunkwise;
  c.chunk = 4;
  c.scale = 0.25;
  const Inputs in(c, 5000);
  const Gradients dense = backward<double>(c, in);
  const Index pad = 3;
  Matrix wideQ = Matrix::Constant(c.time, c.dk + 2 * pad, 9.0), wideK = wideQ;
  Matrix wideV = Matrix::Constant(c.time, c.dv + 2 * pad, 9.0), wideDOut = wideV;
  wideQ.middleCols(pad, c.dk) = in.q;
  wideK.middleCols(pad, c.dk) = in.k;
  wideV.middleCols(pad, c.dv) = in.v;
  wideDOut.middleCols(pad, c.dv) = in.dOut;
  Matrix dq = Matrix::Constant(c.time, c.dk + 2 * pad, -777.0), dk = dq;
  Matrix dv = Matrix::Constant(c.time, c.dv + 2 * pad, -777.0);
  const RetentionPlan<double> plan(c.head(), c.form, c.chunk, c.time);
  RetentionBackwardScratch<double> scratch;
  stages::retentionBackward<double>(
      plan, wideQ.middleCols(pad, c.dk), wideK.middleCols(pad, c.dk), wideV.middleCols(pad, c.dv),
      in.S0, 0, false, wideDOut.middleCols(pad, c.dv), in.dS.data(), dq.middleCols(pad, c.dk),
      dk.middleCols(pad, c.dk), dv.middleCols(pad, c.dv), nullptr, scratch);
  EXPECT_TRUE(dq.middleCols(pad, c.dk) == dense.dq);
  EXPECT_TRUE(dk.middleCols(pad, c.dk) == dense.dk);
  EXPECT_TRUE(dv.middleCols(pad, c.dv) == dense.dv);
  for (Matrix* m : {&dq, &dk, &dv}) {
    EXPECT_TRUE((m->leftCols(pad).array() == -777.0).all());
    EXPECT_TRUE((m->rightCols(pad).array() == -777.0).all());
  }
}

TEST(RetentionBackward, ARepeatedCallAllocatesNothing) {
  // Once the scratch has grown to a call's shape, the same call allocates nothing (Eigen aborts
  // on an allocation while forbidden, in builds with its assertions on).
  for (const Index chunk : {Index(0), Index(16), Index(160)}) {
    Config c;
    c.normalization = RetentionNormalization::kTorchscale;
    c.form = chunk == 0 ? Form::kParallel : Form::kChunkwise;
    c.chunk = chunk;
    c.time = 300;
    SCOPED_TRACE(c.name());
    const Inputs in(c, 6000);
    const RetentionPlan<double> plan(c.head(), c.form, c.chunk, c.time);
    RetentionBackwardScratch<double> scratch;
    Matrix dq(c.time, c.dk), dk(c.time, c.dk), dv(c.time, c.dv), dS0(c.dk, c.dv);
    stages::retentionBackward<double>(plan, in.q, in.k, in.v, in.S0, 0, false, in.dOut,
                                      in.dS.data(), dq, dk, dv, dS0.data(), scratch);
    const Matrix first = dq;
    Eigen::internal::set_is_malloc_allowed(false);
    stages::retentionBackward<double>(plan, in.q, in.k, in.v, in.S0, 0, false, in.dOut,
                                      in.dS.data(), dq, dk, dv, dS0.data(), scratch);
    Eigen::internal::set_is_malloc_allowed(true);
    EXPECT_TRUE(dq == first);
  }
}

TEST(RetentionBackward, EmptyInputPassesTheStateGradientThrough) {
  // time = 0: S = S0, so dS0 = dS (zero without dS).
  for (const Form form : {Form::kParallel, Form::kChunkwise}) {
    const RetentionPlan<double> plan(RetentionHead{0.9}, form, 4, 0);
    RetentionBackwardScratch<double> scratch;
    const Matrix none(0, 3), S0 = Matrix::Ones(3, 2), dS = Matrix::Constant(3, 2, 2.5);
    Matrix dq(0, 3), dk(0, 3), dv(0, 2), dS0 = Matrix::Constant(3, 2, -1.0);
    stages::retentionBackward<double>(plan, none, none, Matrix(0, 2), S0, 0, false, Matrix(0, 2),
                                      dS.data(), dq, dk, dv, dS0.data(), scratch);
    EXPECT_TRUE(dS0 == dS);
    stages::retentionBackward<double>(plan, none, none, Matrix(0, 2), S0, 0, false, Matrix(0, 2),
                                      nullptr, dq, dk, dv, dS0.data(), scratch);
    EXPECT_TRUE(dS0.isZero(0));
  }
}

TEST(RetentionBackward, RejectsBadArguments) {
  const Index T = 5, dk = 3, dv = 2;
  const Matrix q = Matrix::Ones(T, dk), k = q, v = Matrix::Ones(T, dv), S0 = Matrix::Zero(dk, dv);
  const Matrix dOut = Matrix::Ones(T, dv);
  Matrix dq(T, dk), dkm(T, dk), dvm(T, dv), dS0(dk, dv);
  RetentionBackwardScratch<double> scratch;
  const RetentionHead head{0.9};
  const RetentionPlan<double> parallel(head, Form::kParallel, 0, T);
  const RetentionPlan<double> chunkwise(head, Form::kChunkwise, 2, T);
  const auto call = [&](const RetentionPlan<double>& plan, const Matrix& qq, const Matrix& kk,
                        const Matrix& vv, const Matrix& ss, Index start, const Matrix& oo,
                        Matrix& gq, Matrix& gk, Matrix& gv) {
    stages::retentionBackward<double>(plan, qq, kk, vv, ss, start, false, oo, nullptr, gq, gk, gv,
                                      dS0.data(), scratch);
  };
  const auto bad = [](Index rows, Index cols) { return Matrix(Matrix::Zero(rows, cols)); };
  call(parallel, q, k, v, S0, 0, dOut, dq, dkm, dvm);   // fine
  call(chunkwise, q, k, v, S0, 0, dOut, dq, dkm, dvm);  // fine
  const char* where = "stages::retentionBackward";
  RETNET_EXPECT_THROW_WITH(call(parallel, q, bad(T, dk + 1), v, S0, 0, dOut, dq, dkm, dvm),
                           InvalidArgument, where, "k");
  RETNET_EXPECT_THROW_WITH(call(parallel, q, k, bad(T + 1, dv), S0, 0, dOut, dq, dkm, dvm),
                           InvalidArgument, where, "v's rows");
  RETNET_EXPECT_THROW_WITH(call(parallel, q, k, v, bad(dv, dk), 0, dOut, dq, dkm, dvm),
                           InvalidArgument, where, "S0");
  RETNET_EXPECT_THROW_WITH(call(parallel, q, k, v, S0, 0, bad(T, dv + 1), dq, dkm, dvm),
                           InvalidArgument, where, "dOut");
  Matrix wrongQ = bad(T, dk + 1), wrongV = bad(T - 1, dv);
  RETNET_EXPECT_THROW_WITH(call(parallel, q, k, v, S0, 0, dOut, wrongQ, dkm, dvm), InvalidArgument,
                           where, "dq");
  RETNET_EXPECT_THROW_WITH(call(parallel, q, k, v, S0, 0, dOut, dq, wrongQ, dvm), InvalidArgument,
                           where, "dk");
  RETNET_EXPECT_THROW_WITH(call(parallel, q, k, v, S0, 0, dOut, dq, dkm, wrongV), InvalidArgument,
                           where, "dv");
  RETNET_EXPECT_THROW_WITH(call(parallel, q, k, v, S0, -1, dOut, dq, dkm, dvm), InvalidArgument,
                           where, "start");
  // S0 as a strided block is refused (the state is a dense (dk x dv) block).
  const Matrix wideS0 = Matrix::Zero(dk, dv + 2);
  RETNET_EXPECT_THROW_WITH(
      stages::retentionBackward<double>(parallel, q, k, v, wideS0.leftCols(dv), 0, false, dOut,
                                        nullptr, dq, dkm, dvm, nullptr, scratch),
      InvalidArgument, where, "dense");
  // The plan must be this call's: a parallel plan of another length, a chunkwise one too short.
  const RetentionPlan<double> longer(head, Form::kParallel, 0, T + 1);
  RETNET_EXPECT_THROW_WITH(call(longer, q, k, v, S0, 0, dOut, dq, dkm, dvm), InvalidArgument, where,
                           "plan");
  const RetentionPlan<double> shorter(head, Form::kChunkwise, 2, T - 1);
  RETNET_EXPECT_THROW_WITH(call(shorter, q, k, v, S0, 0, dOut, dq, dkm, dvm), InvalidArgument,
                           where, "plan");
  // The recurrent form has no backward.
  const RetentionPlan<double> recurrent(head, Form::kRecurrent, 0, T);
  RETNET_EXPECT_THROW_WITH(call(recurrent, q, k, v, S0, 0, dOut, dq, dkm, dvm), InvalidArgument,
                           where, "recurrent", "parallel or chunkwise");
}

}  // namespace
}  // namespace retnet
