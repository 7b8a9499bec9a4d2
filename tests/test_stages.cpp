// The op tests of the stages (include/retnet/stages/*.hpp, the rotary stage of rotary.hpp), in
// the manner of ggml's test-backend-ops: one test-case struct per op, a table of cases (op x
// shape x variant), and every case run with Scalar = float and double against the op's naive
// double twin (reference/naive_stages.hpp). Each case builds its random inputs from a fixed seed
// (derived from its name), runs the stage, runs the twin and returns the normwise error
//
//   e = max|y − y_ref| / max|y_ref|
//
// which must stay below the op's threshold, a function of the Scalar's machine epsilon ε and the
// case's sizes (justified at each op below). Inputs are exactly representable in float, so the
// float and double runs and the twin see the same numbers and e measures only the arithmetic.
// Outputs written into strided views (a block of a wider buffer) must leave the rest of the buffer
// untouched (else e = inf). GoogleTest runs one test per (case, Scalar), named after both; the
// measured error and the threshold are recorded as test properties (--gtest_output=json).
//
// Where there is no twin to compare with, the same harness checks what must agree: plain
// retention's three forms with each other, torchscale's parallel form with its chunkwise form over
// one chunk, and a form run in two calls (state handed over) with one call.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "reference/naive_rwkv4.hpp"
#include "reference/naive_stages.hpp"
#include "retnet/rotary.hpp"
#include "retnet/stages/decay.hpp"
#include "retnet/stages/elementwise.hpp"
#include "retnet/stages/embedding.hpp"
#include "retnet/stages/ffn.hpp"
#include "retnet/stages/group_norm.hpp"
#include "retnet/stages/linear.hpp"
#include "retnet/stages/norms.hpp"
#include "retnet/stages/retention.hpp"
#include "retnet/stages/token_shift.hpp"
#include "retnet/stages/wkv.hpp"
#include "test_util.hpp"

namespace retnet {
namespace {

using reference::NaiveActivation;
using reference::NaiveForm;
using reference::NaiveMatrix;
using reference::NaiveRotaryLayout;

// ---------------------------------------------------------------------------------------------
// Inputs, views and errors

/// Random inputs from a fixed seed: every value is uniform and exactly a float.
class Inputs {
 public:
  explicit Inputs(std::uint64_t seed) : rng_(seed) {}

  /// (rows x cols) values offset + magnitude·u, u uniform in [−1, 1).
  NaiveMatrix matrix(Index rows, Index cols, double magnitude = 1.0, double offset = 0.0) {
    NaiveMatrix m(rows, cols);
    for (Index r = 0; r < rows; ++r) {
      for (Index c = 0; c < cols; ++c) m(r, c) = value(magnitude, offset);
    }
    return m;
  }
  /// n values center + spread·u (norm weights and biases).
  std::vector<double> vector(Index n, double center, double spread) {
    std::vector<double> v(static_cast<std::size_t>(n));
    for (double& x : v) x = value(spread, center);
    return v;
  }
  /// A token id in [0, vocab).
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

template <typename Scalar>
RowMatrix<Scalar> as(const NaiveMatrix& m) {
  return m.cast<Scalar>();
}
template <typename Scalar>
std::vector<Scalar> as(const std::vector<double>& v) {
  return std::vector<Scalar>(v.begin(), v.end());
}
template <typename Derived>
NaiveMatrix toDouble(const Eigen::MatrixBase<Derived>& m) {
  return m.template cast<double>();
}

/// A (rows x cols) matrix, alone or (strided) as columns [pad, pad + cols) of a wider row-major
/// buffer whose other columns hold a sentinel that the stage must not touch.
template <typename Scalar>
class Buffer {
 public:
  Buffer(Index rows, Index cols, bool strided, Index pad = 3)
      : pad_(strided ? pad : 0), cols_(cols), data_(rows, cols + 2 * pad_) {
    data_.setConstant(kSentinel);
  }
  Buffer(const NaiveMatrix& values, bool strided, Index pad = 3)
      : Buffer(values.rows(), values.cols(), strided, pad) {
    view() = values.cast<Scalar>();
  }

  Eigen::Block<RowMatrix<Scalar>> view() { return data_.middleCols(pad_, cols_); }
  NaiveMatrix values() const { return data_.middleCols(pad_, cols_).template cast<double>(); }
  /// The columns outside the view still hold the sentinel.
  bool padIntact() const {
    const Index right = data_.cols() - pad_ - cols_;
    return (data_.leftCols(pad_).array() == kSentinel).all() &&
           (data_.rightCols(right).array() == kSentinel).all();
  }

 private:
  static constexpr Scalar kSentinel = Scalar(-777);
  Index pad_, cols_;
  RowMatrix<Scalar> data_;
};

/// max|y − ref| / max|ref| (max|y − ref| when ref is zero); NaN counts as infinite.
double normwiseError(const NaiveMatrix& y, const NaiveMatrix& ref) {
  if (y.rows() != ref.rows() || y.cols() != ref.cols()) {
    return std::numeric_limits<double>::infinity();
  }
  double maxDiff = 0, maxRef = 0;
  for (Index r = 0; r < ref.rows(); ++r) {
    for (Index c = 0; c < ref.cols(); ++c) {
      const double d = std::abs(y(r, c) - ref(r, c));
      maxDiff = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(maxDiff, d);
      maxRef = std::max(maxRef, std::abs(ref(r, c)));
    }
  }
  return maxRef > 0 ? maxDiff / maxRef : maxDiff;
}

/// `error`, or inf when a buffer's padding was written.
double unlessPadTouched(double error, bool intact) {
  return intact ? error : std::numeric_limits<double>::infinity();
}

constexpr double kDoubleEpsilon = std::numeric_limits<double>::epsilon();

Activation toActivation(NaiveActivation a) {
  switch (a) {
    case NaiveActivation::kSwish:
      return Activation::kSwish;
    case NaiveActivation::kGelu:
      return Activation::kGelu;
    case NaiveActivation::kSigmoid:
      return Activation::kSigmoid;
    default:
      return Activation::kReluSquared;
  }
}
const char* nameOf(NaiveActivation a) { return activationName(toActivation(a)); }

std::string str(Index value) { return std::to_string(value); }

// ---------------------------------------------------------------------------------------------
// The harness

enum class Precision { kFloat, kDouble };

/// One op at one shape: its name, its threshold and a run that returns the normwise error.
struct OpCase {
  virtual ~OpCase() = default;
  virtual std::string op() const = 0;
  /// Shape parameters and variant, as a test-name fragment ([A-Za-z0-9_]).
  virtual std::string shape() const = 0;
  /// The largest normwise error accepted for a Scalar of machine epsilon `eps`.
  virtual double threshold(double eps) const = 0;
  virtual double error(Precision precision) const = 0;

  std::string name() const { return op() + "_" + shape(); }
  /// The fixed seed of the case's inputs (FNV-1a of its name): the same in both precisions.
  std::uint64_t seed() const {
    std::uint64_t hash = 14695981039346656037ULL;
    for (char c : name()) hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
    return hash;
  }
};

/// Dispatches error() to Derived::run<float> or run<double>.
template <typename Derived>
struct TypedCase : OpCase {
  double error(Precision precision) const final {
    const auto& self = static_cast<const Derived&>(*this);
    return precision == Precision::kFloat ? self.template run<float>()
                                          : self.template run<double>();
  }
};

// ---------------------------------------------------------------------------------------------
// Dense layer: y = x Wᵀ.
//
// Threshold 4·ε·sqrt(in). Each output is a dot product of length n = in. With inputs of random
// sign the rounding errors of the running sums add like a random walk: about ε·n/sqrt(6) times
// the terms' rms, against outputs of rms sqrt(n) times it, i.e. e ≈ 0.4·ε·sqrt(n) per output and
// up to ~4x that over a few thousand outputs. The twin's own double error adds the same order to
// the double run. (Blocked and vectorised sums, as Eigen's, do better.)

struct LinearCase : TypedCase<LinearCase> {
  Index rows, in, out;
  bool strided;  // x and y are columns of wider buffers

  LinearCase(Index rows, Index in, Index out, bool strided = false)
      : rows(rows), in(in), out(out), strided(strided) {}
  std::string op() const override { return "linear"; }
  std::string shape() const override {
    return "rows" + str(rows) + "_in" + str(in) + "_out" + str(out) + (strided ? "_strided" : "");
  }
  double threshold(double eps) const override {
    return 4 * eps * std::sqrt(static_cast<double>(in));
  }

  template <typename Scalar>
  double run() const {
    Inputs inputs(seed());
    const NaiveMatrix x = inputs.matrix(rows, in), w = inputs.matrix(out, in);
    const LinearWeight<Scalar> weight(as<Scalar>(w));
    Buffer<Scalar> xs(x, strided), y(rows, out, strided);
    stages::linear<Scalar>(xs.view(), weight, y.view());
    return unlessPadTouched(normwiseError(y.values(), reference::naiveLinear(x, w)),
                            y.padIntact() && xs.padIntact());
  }
};

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = x / sqrt(mean(x²) + eps) [⊙ w], with and without a weight, in place or not.
//
// Threshold 4·ε·sqrt(n) + 4·ε. The mean square is a sum of n positive terms (relative error
// ~ε·sqrt(n/3) for random rounding), halved by the sqrt; then a division or product, a multiply by
// w: a few ε. eps is 1e-2 in most cases, so that dropping or misplacing it shows (it moves y by
// ~1% of x's mean square of 1/3); one case uses 1e-6 with values of 1e-3 (mean square 3e-7,
// comparable to eps).

struct RmsNormCase : TypedCase<RmsNormCase> {
  Index rows, n;
  bool weighted, inPlace, strided;
  double eps, magnitude;

  RmsNormCase(Index rows, Index n, bool weighted, bool inPlace, bool strided = false,
              double eps = 1e-2, double magnitude = 1.0)
      : rows(rows),
        n(n),
        weighted(weighted),
        inPlace(inPlace),
        strided(strided),
        eps(eps),
        magnitude(magnitude) {}
  std::string op() const override { return "rmsNorm"; }
  std::string shape() const override {
    return "rows" + str(rows) + "_n" + str(n) + (weighted ? "_weight" : "_noweight") +
           (inPlace ? "_inplace" : "") + (strided ? "_strided" : "") +
           (magnitude < 1 ? "_small_eps1em6" : "");
  }
  double threshold(double e) const override {
    return 4 * e * std::sqrt(static_cast<double>(n)) + 4 * e;
  }

  template <typename Scalar>
  double run() const {
    Inputs inputs(seed());
    const NaiveMatrix x = inputs.matrix(rows, n, magnitude);
    const std::vector<double> w = weighted ? inputs.vector(n, 1.0, 0.5) : std::vector<double>{};
    const std::vector<Scalar> ws = as<Scalar>(w);
    const Scalar* wp = weighted ? ws.data() : nullptr;
    Buffer<Scalar> xs(x, strided), ys(rows, n, strided);
    Buffer<Scalar>& y = inPlace ? xs : ys;
    stages::rmsNorm<Scalar>(xs.view(), wp, eps, y.view());
    return unlessPadTouched(normwiseError(y.values(), reference::naiveRmsNorm(x, w, eps)),
                            y.padIntact() && xs.padIntact());
  }
};

// ---------------------------------------------------------------------------------------------
// LayerNorm: y = (x − μ) / sqrt(σ² + eps) ⊙ w + b.
//
// Threshold 4·ε·sqrt(n)·(1 + 2·|offset|). The mean and the variance are sums of n terms
// (relative error ~ε·sqrt(n)); the mean's absolute error, ~ε·sqrt(n)·|offset| for rows centred
// at `offset`, enters every deviation x − μ, which have std ≈ 0.58 (values uniform in [−1, 1)
// around the offset): hence the factor 1 + |offset|/0.58. A one-pass variance (E[x²] − μ²) would
// lose ~ε·offset² instead and fail the offset case.

struct LayerNormCase : TypedCase<LayerNormCase> {
  Index rows, n;
  double offset, eps;

  LayerNormCase(Index rows, Index n, double offset, double eps = 1e-2)
      : rows(rows), n(n), offset(offset), eps(eps) {}
  std::string op() const override { return "layerNorm"; }
  std::string shape() const override {
    return "rows" + str(rows) + "_n" + str(n) + "_offset" + str(static_cast<Index>(offset));
  }
  double threshold(double e) const override {
    return 4 * e * std::sqrt(static_cast<double>(n)) * (1 + 2 * std::abs(offset));
  }

  template <typename Scalar>
  double run() const {
    Inputs inputs(seed());
    const NaiveMatrix x = inputs.matrix(rows, n, 1.0, offset);
    const std::vector<double> w = inputs.vector(n, 1.0, 0.5), b = inputs.vector(n, 0.0, 0.5);
    const std::vector<Scalar> ws = as<Scalar>(w), bs = as<Scalar>(b);
    Buffer<Scalar> y(x, false);  // in place
    stages::layerNorm<Scalar>(y.view(), ws.data(), bs.data(), eps, y.view());
    return normwiseError(y.values(), reference::naiveLayerNorm(x, w, b, eps));
  }
};

// ---------------------------------------------------------------------------------------------
// Activations: x <- act(x), swish and gelu.
//
// Threshold 8·ε. Element-wise: an exp or erf (Eigen's are accurate to a few ulp), an add, a
// product and a division, each rounding once; relative to max|ref| (inputs span [−8, 8) so the
// tails, where swish and gelu vanish, are visited).

struct ActivateCase : TypedCase<ActivateCase> {
  Index rows, n;
  NaiveActivation activation;

  ActivateCase(Index rows, Index n, NaiveActivation activation)
      : rows(rows), n(n), activation(activation) {}
  std::string op() const override { return "activate"; }
  std::string shape() const override {
    return std::string(nameOf(activation)) + "_rows" + str(rows) + "_n" + str(n);
  }
  double threshold(double e) const override { return 8 * e; }

  template <typename Scalar>
  double run() const {
    Inputs inputs(seed());
    const NaiveMatrix x = inputs.matrix(rows, n, 8.0);
    Buffer<Scalar> y(x, true);
    stages::activate<Scalar>(y.view(), toActivation(activation));
    return unlessPadTouched(normwiseError(y.values(), reference::naiveActivate(x, activation)),
                            y.padIntact());
  }
};

// ---------------------------------------------------------------------------------------------
// Token shift (RWKV): out = μ ⊙ x_t + (1 − μ) ⊙ x_{t−1}, the carried row before each sequence.
//
// Threshold 2·ε: two products and a sum of terms no larger than max|ref|'s inputs (μ in [0, 1]),
// plus the rounding of 1 − μ.

struct TokenShiftCase : TypedCase<TokenShiftCase> {
  Index batch, time, n;

  TokenShiftCase(Index batch, Index time, Index n) : batch(batch), time(time), n(n) {}
  std::string op() const override { return "token_shift"; }
  std::string shape() const override { return "b" + str(batch) + "_t" + str(time) + "_n" + str(n); }
  double threshold(double e) const override { return 2 * e; }

  template <typename Scalar>
  double run() const {
    Inputs inputs(seed());
    const NaiveMatrix x = inputs.matrix(batch * time, n), previous = inputs.matrix(batch, n);
    const std::vector<double> mu = inputs.vector(n, 0.5, 0.5);
    const RowMatrix<Scalar> xs = as<Scalar>(x), ps = as<Scalar>(previous);
    const std::vector<Scalar> ms = as<Scalar>(mu);
    Buffer<Scalar> y(batch * time, n, true);
    stages::tokenShiftMix<Scalar>(xs, batch, time, ps, ms.data(), y.view());
    return unlessPadTouched(
        normwiseError(y.values(), reference::naiveTokenShiftMix(x, time, previous, mu)),
        y.padIntact());
  }
};

// ---------------------------------------------------------------------------------------------
// WKV (RWKV-4), every form, in two calls with the state handed over, against the direct sums of
// its definition in long double (reference/naive_rwkv4.hpp).
//
// Threshold 64·ε·(1 + K + |u|) (float: ~5e-4 at K = 50; double: ~1e-12), K the largest |k|.
// Every weight is e^(logit − max) with logits of magnitude up to K + |u| formed in Scalar, so each
// carries a relative error of ~ε·(K + |u|); the output, a convex combination of the v's, inherits
// that times a small factor. The recurrence also rounds pp + w at every step (at pp ≈ K the spacing
// is ~ε·K, up to 1% of the slowest w in float), a drift that grows with T: the golden data measure
// 1.9e-5 (160·ε) for BlinkDL's own float32 at T = 1000, K = 50; the bound leaves 3x over that.

struct WkvCase : TypedCase<WkvCase> {
  Index time, channels, chunk, split;
  Form form;
  double decayLow, decayHigh, keys;

  WkvCase(Form form, Index time, Index channels, Index chunk, Index split, double decayLow,
          double decayHigh, double keys)
      : time(time),
        channels(channels),
        chunk(chunk),
        split(split),
        form(form),
        decayLow(decayLow),
        decayHigh(decayHigh),
        keys(keys) {}
  std::string op() const override { return "wkv"; }
  std::string shape() const override {
    return std::string(formName(form)) + "_t" + str(time) + "_a" + str(channels) + "_chunk" +
           str(chunk) + "_split" + str(split) + "_k" + str(static_cast<Index>(keys));
  }
  double threshold(double e) const override { return 64 * e * (1 + keys + 3); }

  template <typename Scalar>
  double run() const {
    Inputs inputs(seed());
    const NaiveMatrix k = inputs.matrix(time, channels, keys), v = inputs.matrix(time, channels);
    const std::vector<double> decay =
        inputs.vector(channels, (decayLow + decayHigh) / 2, (decayHigh - decayLow) / 2);
    const std::vector<double> u = inputs.vector(channels, 0.0, 3.0);
    std::vector<std::vector<double>> kRows, vRows;  // the twin's (T) x (A) layout
    for (Index t = 0; t < time; ++t) {
      kRows.emplace_back();
      vRows.emplace_back();
      for (Index c = 0; c < channels; ++c) {
        kRows.back().push_back(k(t, c));
        vRows.back().push_back(v(t, c));
      }
    }
    NaiveMatrix reference(time, channels);
    std::vector<Scalar> w(static_cast<std::size_t>(channels)), us = as<Scalar>(u);
    for (Index c = 0; c < channels; ++c) {
      const auto at = static_cast<std::size_t>(c);
      w[at] = static_cast<Scalar>(-std::exp(decay[at]));
      for (Index t = 0; t < time; ++t)
        reference(t, c) = reference::naiveWkv(kRows, vRows, -std::exp(decay[at]), u[at], at,
                                              static_cast<std::size_t>(t));
    }
    const RowMatrix<Scalar> ks = as<Scalar>(k), vs = as<Scalar>(v);
    std::vector<Scalar> aa(w.size(), Scalar(0)), bb(w.size(), Scalar(0)),
        pp(w.size(), static_cast<Scalar>(kWkvEmptyExponent));
    const WkvStateView<Scalar> state{aa.data(), bb.data(), pp.data()};
    Buffer<Scalar> y(time, channels, true);
    // Two calls, the state handed over at `split`.
    stages::wkv<Scalar>(form, ks.topRows(split), vs.topRows(split), w.data(), us.data(), chunk,
                        state, y.view().topRows(split));
    if (split < time) {
      stages::wkv<Scalar>(form, ks.bottomRows(time - split), vs.bottomRows(time - split), w.data(),
                          us.data(), chunk, state, y.view().bottomRows(time - split));
    }
    return unlessPadTouched(normwiseError(y.values(), reference), y.padIntact());
  }
};

// ---------------------------------------------------------------------------------------------
// Residual sum: y <- y + x.
//
// Threshold ε: one rounding per element, at most ε/2 of |y + x| <= max|ref|.

struct AddToCase : TypedCase<AddToCase> {
  Index rows, n;
  bool strided;

  AddToCase(Index rows, Index n, bool strided) : rows(rows), n(n), strided(strided) {}
  std::string op() const override { return "addTo"; }
  std::string shape() const override {
    return "rows" + str(rows) + "_n" + str(n) + (strided ? "_strided" : "");
  }
  double threshold(double e) const override { return e; }

  template <typename Scalar>
  double run() const {
    Inputs inputs(seed());
    const NaiveMatrix x = inputs.matrix(rows, n), y0 = inputs.matrix(rows, n);
    Buffer<Scalar> xs(x, strided), y(y0, strided, 5);
    stages::addTo<Scalar>(xs.view(), y.view());
    return unlessPadTouched(normwiseError(y.values(), reference::naiveAdd(x, y0)),
                            y.padIntact() && xs.padIntact());
  }
};

// ---------------------------------------------------------------------------------------------
// Group norm and gate: per row and head, o_h <- o_h / sqrt(mean(o_h²) + eps) [⊙ w] ⊙ act(g_h).
//
// Threshold 4·ε·sqrt(dv) + 8·ε: RMSNorm's bound over the dv values of a head, plus the gate's
// activation (8·ε, as above) and product. Cases with o of magnitude 1e-3 (mean square 3e-7)
// against eps = 1e-6 make eps matter, as torchscale's recurrent vs parallel outputs do.

struct GroupNormGateCase : TypedCase<GroupNormGateCase> {
  Index rows, heads, dv;
  bool weighted;
  NaiveActivation activation;
  double magnitude, eps;

  GroupNormGateCase(Index rows, Index heads, Index dv, bool weighted, NaiveActivation activation,
                    double magnitude = 1.0, double eps = 1e-6)
      : rows(rows),
        heads(heads),
        dv(dv),
        weighted(weighted),
        activation(activation),
        magnitude(magnitude),
        eps(eps) {}
  std::string op() const override { return "groupNormGate"; }
  std::string shape() const override {
    return std::string(weighted ? "weight" : "noweight") + "_" + nameOf(activation) + "_rows" +
           str(rows) + "_heads" + str(heads) + "_dv" + str(dv) + (magnitude < 1 ? "_small" : "");
  }
  double threshold(double e) const override {
    return 4 * e * std::sqrt(static_cast<double>(dv)) + 8 * e;
  }

  template <typename Scalar>
  double run() const {
    Inputs inputs(seed());
    const NaiveMatrix o = inputs.matrix(rows, heads * dv, magnitude);
    const NaiveMatrix g = inputs.matrix(rows, heads * dv, 4.0);
    const std::vector<double> w = weighted ? inputs.vector(dv, 1.0, 0.5) : std::vector<double>{};
    const std::vector<Scalar> ws = as<Scalar>(w);
    Buffer<Scalar> os(o, true), gs(g, true);
    stages::groupNormGate<Scalar>(os.view(), heads, weighted ? ws.data() : nullptr, eps, gs.view(),
                                  toActivation(activation));
    const NaiveMatrix ref = reference::naiveGroupNormGate(o, heads, w, eps, g, activation);
    return unlessPadTouched(normwiseError(os.values(), ref), os.padIntact() && gs.padIntact());
  }
};

// ---------------------------------------------------------------------------------------------
// Gated feed-forward: y = (act(x W_aᵀ) ⊙ x W_bᵀ) W_outᵀ; GLU (gelu, swish) and SwiGLU.
//
// Threshold 4·ε·(sqrt(D) + sqrt(F)) + 8·ε: the first products (length D) give the hidden values
// a relative error ~ε·sqrt(D), carried through the activation (8·ε) and the gate into the second
// product (length F), which adds its own ~ε·sqrt(F) (see linear).

enum class FfnKind { kGluGelu, kGluSwish, kSwiGlu };

struct FeedForwardCase : TypedCase<FeedForwardCase> {
  Index rows, D, F;
  FfnKind kind;

  FeedForwardCase(Index rows, Index D, Index F, FfnKind kind)
      : rows(rows), D(D), F(F), kind(kind) {}
  std::string op() const override { return "gatedFeedForward"; }
  std::string shape() const override {
    const char* k = kind == FfnKind::kGluGelu    ? "glu_gelu"
                    : kind == FfnKind::kGluSwish ? "glu_swish"
                                                 : "swiglu";
    return std::string(k) + "_rows" + str(rows) + "_D" + str(D) + "_F" + str(F);
  }
  double threshold(double e) const override {
    return 4 * e * (std::sqrt(static_cast<double>(D)) + std::sqrt(static_cast<double>(F))) + 8 * e;
  }

  template <typename Scalar>
  double run() const {
    Inputs inputs(seed());
    const NaiveMatrix x = inputs.matrix(rows, D, 2.0);
    const NaiveMatrix a = inputs.matrix(F, D), b = inputs.matrix(F, D), out = inputs.matrix(D, F);
    const NaiveActivation act =
        kind == FfnKind::kGluGelu ? NaiveActivation::kGelu : NaiveActivation::kSwish;
    const FeedForwardWeights<Scalar> weights =
        kind == FfnKind::kSwiGlu
            ? FeedForwardWeights<Scalar>::swiglu(as<Scalar>(a), as<Scalar>(b), as<Scalar>(out))
            : FeedForwardWeights<Scalar>::glu(as<Scalar>(a), as<Scalar>(b), as<Scalar>(out),
                                              toActivation(act));
    const RowMatrix<Scalar> xs = as<Scalar>(x);
    RowMatrix<Scalar> hidden(rows, 2 * F), y(rows, D);
    stages::gatedFeedForward<Scalar>(xs, weights, hidden, y);
    return normwiseError(toDouble(y), reference::naiveGatedFeedForward(x, a, b, out, act));
  }
};

// ---------------------------------------------------------------------------------------------
// Embedding: y_r = scale · E[token_r].
//
// Threshold 2·ε: the scale rounded to Scalar (ε/2) and one product (ε/2).

struct EmbedCase : TypedCase<EmbedCase> {
  Index rows, vocab, D;
  double scale;

  EmbedCase(Index rows, Index vocab, Index D, double scale)
      : rows(rows), vocab(vocab), D(D), scale(scale) {}
  std::string op() const override { return "embed"; }
  std::string shape() const override {
    return "rows" + str(rows) + "_vocab" + str(vocab) + "_D" + str(D) +
           (scale == 1.0 ? "_scale1" : "_scaleSqrtD");
  }
  double threshold(double e) const override { return 2 * e; }

  template <typename Scalar>
  double run() const {
    Inputs inputs(seed());
    const NaiveMatrix table = inputs.matrix(vocab, D);
    std::vector<std::int64_t> tokens = {0, vocab - 1};  // both ends of the table
    while (static_cast<Index>(tokens.size()) < rows) tokens.push_back(inputs.token(vocab));
    tokens.resize(static_cast<std::size_t>(rows));
    Buffer<Scalar> y(rows, D, true);
    stages::embed<Scalar>(tokens.data(), as<Scalar>(table), scale, y.view());
    return unlessPadTouched(normwiseError(y.values(), reference::naiveEmbed(tokens, table, scale)),
                            y.padIntact());
  }
};

// ---------------------------------------------------------------------------------------------
// Decay schedule: γ_h = 1 − 2^(−5−h), one head and the vector of all.
//
// Threshold 0: 2^(−5−h) and 1 − 2^(−5−h) are exact in double for h < 48, and γ rounded to float
// (as the layers store it) is exact for h < 19 and the same rounding on both sides beyond. The
// schedule is double-only; the float run compares the values rounded to float.

struct DecayCase : TypedCase<DecayCase> {
  Index heads;

  explicit DecayCase(Index heads) : heads(heads) {}
  std::string op() const override { return "retnetDecay"; }
  std::string shape() const override { return "heads" + str(heads); }
  double threshold(double) const override { return 0; }

  template <typename Scalar>
  double run() const {
    const std::vector<double> all = stages::retnetDecays(heads);
    if (static_cast<Index>(all.size()) != heads) return std::numeric_limits<double>::infinity();
    NaiveMatrix got(heads, 2), ref(heads, 2);
    for (Index h = 0; h < heads; ++h) {
      got(h, 0) = static_cast<Scalar>(stages::retnetDecay(h));
      got(h, 1) = static_cast<Scalar>(all[static_cast<std::size_t>(h)]);
      ref(h, 0) = ref(h, 1) = static_cast<Scalar>(reference::naiveRetnetDecay(h));
    }
    return normwiseError(got, ref);
  }
};

// ---------------------------------------------------------------------------------------------
// Rotary: the table cos/sin(pθ_i) at positions p = start + t and the rotation of every head of
// every row by it, both layouts.
//
// Threshold 4·ε, plus 4·ε_d·(start + rows) when dk > 2. The table is computed in double and
// rounded to Scalar (ε/2 each); a rotated element a·cos − b·sin adds two products and a sum:
// together < 4·ε of max|ref|. The second term is the angle's own conditioning: pθ_i computed in
// double (by the stage and by the twin, which takes θ from its own formula, 1 ulp apart) is off
// by up to ~2·ε_d·pθ_i, θ_i <= 1, which moves cos and sin by as much: 2e-10 at p = 10⁶,
// invisible in float and dominant in double. With dk = 2, θ_0 = 1 exactly in both layouts, the
// angle is p itself and exact, and the table must be right to 4·ε at any position.

struct RotaryCase : TypedCase<RotaryCase> {
  RotaryLayout layout;
  Index rows, heads, dk;
  std::int64_t start;
  bool strided;  // x is the q part of a (rows x 2·heads·dk + pad) buffer

  RotaryCase(RotaryLayout layout, Index rows, Index heads, Index dk, std::int64_t start,
             bool strided = false)
      : layout(layout), rows(rows), heads(heads), dk(dk), start(start), strided(strided) {}
  std::string op() const override { return "rotary"; }
  std::string shape() const override {
    return std::string(layout == RotaryLayout::kInterleaved ? "interleaved" : "halfsplit") +
           "_rows" + str(rows) + "_heads" + str(heads) + "_dk" + str(dk) + "_start" +
           std::to_string(start) + (strided ? "_strided" : "");
  }
  double threshold(double e) const override {
    return 4 * e + (dk > 2 ? 4 * kDoubleEpsilon * static_cast<double>(start + rows) : 0.0);
  }

  template <typename Scalar>
  double run() const {
    Inputs inputs(seed());
    const NaiveMatrix x = inputs.matrix(rows, heads * dk);
    const NaiveRotaryLayout naiveLayout = layout == RotaryLayout::kInterleaved
                                              ? NaiveRotaryLayout::kInterleaved
                                              : NaiveRotaryLayout::kHalfSplit;
    const RotaryEmbedding<Scalar> rope(dk, layout);
    RotaryTable<Scalar> table;
    rope.fillTable(start, rows, table);
    Buffer<Scalar> y(x, strided, heads * dk);
    stages::rotate<Scalar>(rope, table, y.view());
    const reference::NaiveRotaryTable ref =
        reference::naiveRotaryTable(dk, naiveLayout, start, rows);
    const double tableError =
        std::max(normwiseError(toDouble(table.cosines.topRows(rows)), ref.cosines),
                 normwiseError(toDouble(table.sines.topRows(rows)), ref.sines));
    const double rotated =
        normwiseError(y.values(), reference::naiveRotate(x, dk, naiveLayout, start));
    return unlessPadTouched(std::max(tableError, rotated), y.padIntact());
  }
};

// ---------------------------------------------------------------------------------------------
// Retention: one head in one form, with a normalisation policy and the q·k scale on either side,
// from an incoming state; output and outgoing state against naiveRetentionStage.
//
// Threshold 8·ε·(sqrt(dk) + sqrt(T)). Each output sums at most T terms γ^(t−j)(q_t·k_j)v_j (and
// dk·dv of q S), each a dot product of length dk: ~ε·sqrt(dk) relative per term, ~ε·sqrt(T)
// from the sum over j (random walk, as for linear), with γ^m rounded to Scalar (ε/2). torchscale's
// factor is made of abs-sums of the same terms (positive, so no worse) and max() of them, which is
// continuous, so it adds a few ε. The state (dk x dv) is a sum of T outer products: the same bound.
// The factor 8 covers the tail over T·dv outputs and the different association of the kernel's
// paths (blocks of 128 rows; past 2·dk rows into a chunk, earlier keys go through the state).

/// A description of one retention run.
struct RetentionSetup {
  Form form = Form::kParallel;
  RetentionNormalization normalization = RetentionNormalization::kNone;
  double scale = 1.0;
  ScaleSide side = ScaleSide::kQuery;
  Index T = 37, dk = 8, dv = 6, chunk = 16;
  double gamma = 31.0 / 32.0;
  std::string gammaName = "g31of32";
  bool incomingState = true;  // else S = 0 and stateIsZero
  Index start = 5;
  bool strided = true;     // q, k, v, out: one head's columns of a 3-head buffer
  double qkMagnitude = 1;  // magnitude of q and k (large: torchscale's parallel clamp)

  std::string name() const {
    std::string s = formName(form);
    s += normalization == RetentionNormalization::kNone ? "_none" : "_torchscale";
    s += scale == 1.0 ? "_s1" : side == ScaleSide::kKey ? "_sKey" : "_sQuery";
    s += "_T" + str(T) + "_dk" + str(dk) + "_dv" + str(dv);
    if (form == Form::kChunkwise) s += "_C" + str(chunk);
    s += "_" + gammaName;
    s += incomingState ? "_state_start" + str(start) : "_zerostate";
    s += strided ? "_strided" : "_onehead";
    if (qkMagnitude != 1) s += "_qk" + str(static_cast<Index>(qkMagnitude));
    return s;
  }
  double threshold(double e) const {
    return 8 * e * (std::sqrt(static_cast<double>(dk)) + std::sqrt(static_cast<double>(T)));
  }
  reference::NaiveRetentionSpec spec() const {
    reference::NaiveRetentionSpec s;
    s.gamma = gamma;
    s.torchscale = normalization == RetentionNormalization::kTorchscale;
    s.scale = scale;
    s.scaleOnKey = side == ScaleSide::kKey;
    s.form = form == Form::kParallel    ? NaiveForm::kParallel
             : form == Form::kChunkwise ? NaiveForm::kChunkwise
                                        : NaiveForm::kRecurrent;
    s.chunk = chunk;
    s.start = incomingState ? start : 0;
    return s;
  }
};

void setGamma(RetentionSetup& s, double gamma, const char* name) {
  s.gamma = gamma;
  s.gammaName = name;
}

/// Random q, k, v of a 3-head layout and an incoming state of one head (zeros if none).
struct RetentionInputs {
  static constexpr Index kHeads = 3, kHead = 1;  // the head under test, when strided
  NaiveMatrix q, k, v;                           // (T x 3·dk), (T x 3·dk), (T x 3·dv)
  NaiveMatrix state;                             // (dk x dv)

  RetentionInputs(const RetentionSetup& s, std::uint64_t seed) {
    Inputs inputs(seed);
    q = inputs.matrix(s.T, kHeads * s.dk, s.qkMagnitude);
    k = inputs.matrix(s.T, kHeads * s.dk, s.qkMagnitude);
    v = inputs.matrix(s.T, kHeads * s.dv);
    // Magnitude 8: the state's largest column abs-sum over L (~12 for γ = 31/32, C = 16) is then
    // a few units, so torchscale's sigma competes with the rows' own iota.
    state = s.incomingState ? inputs.matrix(s.dk, s.dv, 8.0) : NaiveMatrix::Zero(s.dk, s.dv);
  }
  NaiveMatrix headQ(const RetentionSetup& s) const { return q.middleCols(kHead * s.dk, s.dk); }
  NaiveMatrix headK(const RetentionSetup& s) const { return k.middleCols(kHead * s.dk, s.dk); }
  NaiveMatrix headV(const RetentionSetup& s) const { return v.middleCols(kHead * s.dv, s.dv); }
};

/// The stage's output and final state for rows [begin, end) of the inputs.
struct RetentionRun {
  NaiveMatrix out, state;
  bool padIntact = true;
};

template <typename Scalar>
RetentionRun runRetention(const RetentionSetup& s, const RetentionInputs& in, Index begin,
                          Index end, const NaiveMatrix& stateIn, Index start, bool stateIsZero,
                          RetentionScratch<Scalar>& scratch) {
  const Index rows = end - begin, h = s.strided ? RetentionInputs::kHead : 0;
  const Index kw = s.strided ? s.dk * RetentionInputs::kHeads : s.dk;
  const Index vw = s.strided ? s.dv * RetentionInputs::kHeads : s.dv;
  const Index kc = s.strided ? 0 : RetentionInputs::kHead * s.dk;  // contiguous: copy one head
  const Index vc = s.strided ? 0 : RetentionInputs::kHead * s.dv;
  const RowMatrix<Scalar> q = as<Scalar>(in.q.block(begin, kc, rows, kw));
  const RowMatrix<Scalar> k = as<Scalar>(in.k.block(begin, kc, rows, kw));
  const RowMatrix<Scalar> v = as<Scalar>(in.v.block(begin, vc, rows, vw));
  RowMatrix<Scalar> S = as<Scalar>(stateIn);
  Buffer<Scalar> out(rows, s.dv, s.strided, s.dv);
  const RetentionHead head{s.gamma, s.normalization, s.scale, s.side};
  const RetentionPlan<Scalar> plan(head, s.form, s.chunk, rows);
  stages::retention<Scalar>(plan, q.middleCols(h * s.dk, s.dk), k.middleCols(h * s.dk, s.dk),
                            v.middleCols(h * s.dv, s.dv), S, start, stateIsZero, out.view(),
                            scratch);
  return {out.values(), toDouble(S), out.padIntact()};
}

struct RetentionCase : TypedCase<RetentionCase> {
  RetentionSetup s;

  explicit RetentionCase(RetentionSetup setup) : s(std::move(setup)) {}
  std::string op() const override { return "retention"; }
  std::string shape() const override { return s.name(); }
  double threshold(double e) const override { return s.threshold(e); }

  template <typename Scalar>
  double run() const {
    const RetentionInputs in(s, seed());
    RetentionScratch<Scalar> scratch;
    const RetentionRun got =
        runRetention<Scalar>(s, in, 0, s.T, in.state, s.spec().start, !s.incomingState, scratch);
    const reference::NaiveRetentionOutput ref =
        reference::naiveRetentionStage(in.headQ(s), in.headK(s), in.headV(s), in.state, s.spec());
    return unlessPadTouched(
        std::max(normwiseError(got.out, ref.out), normwiseError(got.state, ref.state)),
        got.padIntact);
  }
};

// The forms against each other, where they must agree: plain retention's parallel, chunkwise and
// recurrent forms (output and state) on the same input; torchscale's parallel form and its
// chunkwise form with C >= T and no incoming state (one chunk: the same factor, while the
// parallel clamp at 5e4 is not reached). Threshold: twice retention's, both sides rounding.

struct FormsAgreeCase : TypedCase<FormsAgreeCase> {
  RetentionSetup s;  // form ignored; chunk used by the chunkwise run

  explicit FormsAgreeCase(RetentionSetup setup) : s(std::move(setup)) {}
  std::string op() const override { return "retentionFormsAgree"; }
  std::string shape() const override {
    RetentionSetup named = s;
    named.form = Form::kChunkwise;  // the name shows the chunk
    return named.name();
  }
  double threshold(double e) const override { return 2 * s.threshold(e); }

  template <typename Scalar>
  double run() const {
    const RetentionInputs in(s, seed());
    RetentionScratch<Scalar> scratch;
    const auto runForm = [&](Form form) {
      RetentionSetup f = s;
      f.form = form;
      return runRetention<Scalar>(f, in, 0, s.T, in.state, s.spec().start, !s.incomingState,
                                  scratch);
    };
    const RetentionRun parallel = runForm(Form::kParallel), chunkwise = runForm(Form::kChunkwise);
    bool intact = parallel.padIntact && chunkwise.padIntact;
    double error = std::max(normwiseError(chunkwise.out, parallel.out),
                            normwiseError(chunkwise.state, parallel.state));
    if (s.normalization == RetentionNormalization::kNone) {
      const RetentionRun recurrent = runForm(Form::kRecurrent);
      intact = intact && recurrent.padIntact;
      error = std::max({error, normwiseError(parallel.out, recurrent.out),
                        normwiseError(parallel.state, recurrent.state)});
    }
    return unlessPadTouched(error, intact);
  }
};

// State handoff: the form over rows [0, split) from a zero state, then over [split, T) from the
// state it returned (start = split), against the twin over all T rows in one call. torchscale's
// chunkwise factors restart at each call, so its split is a multiple of C. Threshold: retention's.

struct HandoffCase : TypedCase<HandoffCase> {
  RetentionSetup s;
  Index split;

  HandoffCase(RetentionSetup setup, Index split) : s(std::move(setup)), split(split) {
    s.incomingState = false;
    s.start = 0;
  }
  std::string op() const override { return "retentionHandoff"; }
  std::string shape() const override { return s.name() + "_split" + str(split); }
  double threshold(double e) const override { return s.threshold(e); }

  template <typename Scalar>
  double run() const {
    const RetentionInputs in(s, seed());
    RetentionScratch<Scalar> scratch;  // shared by both calls, as a layer's is
    const RetentionRun first = runRetention<Scalar>(s, in, 0, split, in.state, 0, true, scratch);
    const RetentionRun second =
        runRetention<Scalar>(s, in, split, s.T, first.state, split, false, scratch);
    NaiveMatrix out(s.T, s.dv);
    out << first.out, second.out;
    const reference::NaiveRetentionOutput ref =
        reference::naiveRetentionStage(in.headQ(s), in.headK(s), in.headV(s), in.state, s.spec());
    return unlessPadTouched(
        std::max(normwiseError(out, ref.out), normwiseError(second.state, ref.state)),
        first.padIntact && second.padIntact);
  }
};

// ---------------------------------------------------------------------------------------------
// The table of cases

std::vector<std::unique_ptr<OpCase>> makeCases() {
  std::vector<std::unique_ptr<OpCase>> cases;
  const auto add = [&](auto c) { cases.push_back(std::make_unique<decltype(c)>(std::move(c))); };

  // Dense layer: rows <= 4 take the dot-product path, more rows the GEMM; out > 256 spans
  // several column blocks; 1x1; an input and an output in strided views.
  add(LinearCase(1, 1, 1));
  add(LinearCase(1, 64, 600));
  add(LinearCase(4, 64, 600));
  add(LinearCase(5, 64, 600));
  add(LinearCase(37, 96, 300));
  add(LinearCase(37, 512, 40));
  add(LinearCase(3, 48, 20, true));
  add(LinearCase(9, 48, 20, true));

  // RMSNorm: with and without a weight, in place, strided, one row and a ragged block of rows
  // (row blocks of 32), eps comparable to the mean square.
  add(RmsNormCase(1, 64, false, false));
  add(RmsNormCase(37, 64, false, false));
  add(RmsNormCase(37, 64, true, false));
  add(RmsNormCase(37, 64, true, true));
  add(RmsNormCase(5, 1, true, true));
  add(RmsNormCase(37, 48, true, false, true));
  add(RmsNormCase(7, 64, true, false, false, 1e-6, 1e-3));

  // LayerNorm: centred and far from zero (two-pass variance), one element (variance 0).
  add(LayerNormCase(37, 64, 0.0));
  add(LayerNormCase(5, 64, 100.0));
  add(LayerNormCase(3, 1, 0.0));

  // Activations, strided.
  add(ActivateCase(37, 48, NaiveActivation::kSwish));
  add(ActivateCase(37, 48, NaiveActivation::kGelu));
  add(ActivateCase(1, 1, NaiveActivation::kGelu));
  add(ActivateCase(37, 48, NaiveActivation::kSigmoid));
  add(ActivateCase(37, 48, NaiveActivation::kReluSquared));
  add(TokenShiftCase(1, 1, 5));
  add(TokenShiftCase(3, 17, 40));
  add(TokenShiftCase(2, 40, 1));
  // WKV: one channel block and several (64 per block), T = 1, ragged chunks, chunk > T, a split
  // off the chunk grid, time_decay over [−8, 3] (w from −20 to −3.4e-4) with keys up to ±50.
  for (const Form form : {Form::kRecurrent, Form::kParallel, Form::kChunkwise}) {
    add(WkvCase(form, 1, 3, 4, 1, -3, 1, 5));
    add(WkvCase(form, 37, 70, 8, 13, -3, 1, 5));
    add(WkvCase(form, 300, 16, 16, 101, -8, 3, 50));
  }
  add(WkvCase(Form::kChunkwise, 37, 5, 100, 37, -3, 1, 5));  // chunk > T
  add(WkvCase(Form::kChunkwise, 37, 5, 1, 20, -8, 3, 50));   // chunk 1

  // Residual sum.
  add(AddToCase(37, 48, false));
  add(AddToCase(5, 16, true));

  // Group norm + gate: weightless (torchscale) and weighted (FLA), one head and several, values
  // small enough that eps matters, a gelu gate.
  add(GroupNormGateCase(37, 1, 16, false, NaiveActivation::kSwish));
  add(GroupNormGateCase(37, 4, 16, false, NaiveActivation::kSwish));
  add(GroupNormGateCase(37, 4, 16, true, NaiveActivation::kSwish));
  add(GroupNormGateCase(5, 1, 16, true, NaiveActivation::kSwish));
  add(GroupNormGateCase(9, 3, 8, false, NaiveActivation::kSwish, 1e-3));
  add(GroupNormGateCase(9, 3, 8, true, NaiveActivation::kGelu, 1e-3));

  // Gated FFN: GLU with gelu and swish, SwiGLU; decode rows (dot path) and a prefill (GEMM).
  add(FeedForwardCase(1, 64, 96, FfnKind::kGluGelu));
  add(FeedForwardCase(37, 64, 96, FfnKind::kGluGelu));
  add(FeedForwardCase(37, 64, 96, FfnKind::kGluSwish));
  add(FeedForwardCase(3, 48, 300, FfnKind::kSwiGlu));
  add(FeedForwardCase(37, 48, 300, FfnKind::kSwiGlu));

  // Embedding.
  add(EmbedCase(37, 50, 48, 1.0));
  add(EmbedCase(37, 50, 48, std::sqrt(48.0)));
  add(EmbedCase(1, 1, 8, std::sqrt(8.0)));

  // Decay schedule.
  add(DecayCase(1));
  add(DecayCase(32));

  // Rotary: both layouts, several heads, a start offset, strided, one pair (dk = 2) at large
  // positions, and dk = 64 (the half-split partner n = 32 apart).
  for (RotaryLayout layout : {RotaryLayout::kInterleaved, RotaryLayout::kHalfSplit}) {
    add(RotaryCase(layout, 37, 3, 8, 0));
    add(RotaryCase(layout, 37, 3, 8, 1000, true));
    add(RotaryCase(layout, 5, 2, 64, 17));
    add(RotaryCase(layout, 33, 1, 2, 0));
    add(RotaryCase(layout, 9, 2, 2, 1000000));
    add(RotaryCase(layout, 9, 2, 2, std::int64_t(3) << 32));
    add(RotaryCase(layout, 9, 2, 8, 1000000));
  }

  // Retention: every form x normalisation x scale (1, and dk^(−1/2) on the key or the query), on
  // a base shape (T 37, chunk 16 with a ragged last chunk of 5, γ = 31/32, an incoming state at
  // start 5, one head's columns of a 3-head buffer); then the edge shapes per form and
  // normalisation.
  const double invSqrtDk = 1.0 / std::sqrt(8.0);
  for (Form form : {Form::kParallel, Form::kChunkwise, Form::kRecurrent}) {
    for (RetentionNormalization norm :
         {RetentionNormalization::kNone, RetentionNormalization::kTorchscale}) {
      RetentionSetup base;
      base.form = form;
      base.normalization = norm;
      for (const auto& [scale, side] :
           {std::pair{1.0, ScaleSide::kQuery}, std::pair{invSqrtDk, ScaleSide::kKey},
            std::pair{invSqrtDk, ScaleSide::kQuery}}) {
        RetentionSetup s = base;
        s.scale = scale;
        s.side = side;
        add(RetentionCase(s));
      }
      // Edges with the scale where each family puts it: torchscale on k, FLA (plain) on q.
      base.scale = invSqrtDk;
      base.side = norm == RetentionNormalization::kTorchscale ? ScaleSide::kKey : ScaleSide::kQuery;
      const auto edge = [&](auto&& change) {
        RetentionSetup s = base;
        change(s);
        add(RetentionCase(s));
      };
      edge([](RetentionSetup& s) { s.T = 1; });
      edge([](RetentionSetup& s) {
        s.incomingState = false;
        s.strided = false;
      });
      edge([](RetentionSetup& s) { setGamma(s, 0.0, "g0"); });
      edge([](RetentionSetup& s) { setGamma(s, 1.0, "g1"); });
      edge([](RetentionSetup& s) { setGamma(s, 1 - std::ldexp(1.0, -12), "g1m2pm12"); });
      // T = 300, dk = 8: row blocks of 128 from 128 on are past 2·dk rows, so the kernel takes
      // the earlier keys through the state (chunk 256: the first chunk, ragged second chunk).
      edge([](RetentionSetup& s) {
        s.T = 300;
        s.chunk = 256;
        setGamma(s, 1 - std::ldexp(1.0, -12), "g1m2pm12");
      });
      edge([](RetentionSetup& s) {
        s.T = 300;
        s.chunk = 256;
        setGamma(s, 1.0, "g1");
      });
      if (form == Form::kChunkwise) {
        edge([](RetentionSetup& s) { s.chunk = 1; });
        edge([](RetentionSetup& s) { s.chunk = 64; });  // C > T
        edge([](RetentionSetup& s) {                    // T a multiple of C
          s.T = 32;
          s.chunk = 8;
        });
      }
      if (form == Form::kRecurrent) {
        edge([](RetentionSetup& s) { s.start = 100000; });
      }
      if (norm == RetentionNormalization::kTorchscale && form != Form::kRecurrent) {
        // q·k ~ 1e4 · dk: the abs-sums pass 5e4, where the parallel form clamps its factor.
        edge([](RetentionSetup& s) {
          s.incomingState = false;
          s.qkMagnitude = 200;
        });
      }
    }
  }

  // The forms against each other (plain retention), and torchscale parallel vs chunkwise C >= T.
  {
    RetentionSetup s;
    s.scale = invSqrtDk;
    add(FormsAgreeCase(s));
    s.side = ScaleSide::kKey;
    add(FormsAgreeCase(s));
    RetentionSetup t = s;
    t.T = 1;
    add(FormsAgreeCase(t));
    t = s;
    setGamma(t, 0.0, "g0");
    add(FormsAgreeCase(t));
    t = s;
    t.T = 300;
    t.chunk = 256;
    setGamma(t, 1.0, "g1");
    add(FormsAgreeCase(t));
    t = s;
    t.normalization = RetentionNormalization::kTorchscale;
    t.incomingState = false;
    t.chunk = 64;
    add(FormsAgreeCase(t));
    t.T = 300;
    t.chunk = 300;
    add(FormsAgreeCase(t));
  }

  // State handoff between two calls.
  for (Form form : {Form::kParallel, Form::kChunkwise, Form::kRecurrent}) {
    RetentionSetup s;
    s.form = form;
    s.T = 48;
    s.scale = invSqrtDk;
    add(HandoffCase(s, 21));
    if (form != Form::kParallel) {
      s.normalization = RetentionNormalization::kTorchscale;
      s.side = ScaleSide::kKey;
      add(HandoffCase(s, 32));
    }
  }
  return cases;
}

const std::vector<std::unique_ptr<OpCase>>& allCases() {
  static const std::vector<std::unique_ptr<OpCase>> cases = makeCases();
  return cases;
}

struct StageParam {
  const OpCase* op;
  Precision precision;
};

const char* precisionName(Precision p) { return p == Precision::kFloat ? "float" : "double"; }

void PrintTo(const StageParam& p, std::ostream* os) {
  *os << p.op->name() << " (" << precisionName(p.precision) << ")";
}

std::vector<StageParam> stageParams() {
  std::vector<StageParam> params;
  for (const auto& c : allCases()) {
    params.push_back({c.get(), Precision::kFloat});
    params.push_back({c.get(), Precision::kDouble});
  }
  return params;
}

class StageOp : public ::testing::TestWithParam<StageParam> {};

TEST_P(StageOp, MatchesTwin) {
  const StageParam& p = GetParam();
  const double eps =
      p.precision == Precision::kFloat ? testing::epsilonOf<float>() : testing::epsilonOf<double>();
  const double error = p.op->error(p.precision), threshold = p.op->threshold(eps);
  RecordProperty("error", ::testing::PrintToString(error));
  RecordProperty("threshold", ::testing::PrintToString(threshold));
  EXPECT_LE(error, threshold) << p.op->name() << " in " << precisionName(p.precision);
}

INSTANTIATE_TEST_SUITE_P(Stages, StageOp, ::testing::ValuesIn(stageParams()),
                         [](const ::testing::TestParamInfo<StageParam>& info) {
                           return info.param.op->name() + "_" + precisionName(info.param.precision);
                         });

// ---------------------------------------------------------------------------------------------
// The callers' mistakes the stages' helpers check (the stage functions themselves take validated
// arguments and only assert).

// A plan kept from call to call (RetentionPlan::serves): the same head, form and chunk; the
// parallel form's exact length, or at most the plan's for the others, whose tables then give
// the same bits as a plan made for the call.
TEST(StageArguments, APlanServesTheCallsItsTablesFit) {
  const RetentionHead head{0.9, RetentionNormalization::kTorchscale, 0.25, ScaleSide::kKey};
  const RetentionPlan<double> chunkwise(head, Form::kChunkwise, 16, 100);
  EXPECT_TRUE(chunkwise.serves(head, Form::kChunkwise, 16, 100));
  EXPECT_TRUE(chunkwise.serves(head, Form::kChunkwise, 16, 7));
  EXPECT_FALSE(chunkwise.serves(head, Form::kChunkwise, 16, 101));
  EXPECT_FALSE(chunkwise.serves(head, Form::kChunkwise, 8, 100));
  EXPECT_FALSE(chunkwise.serves(head, Form::kParallel, 16, 100));
  std::vector<RetentionHead> others(4, head);  // one field changed in each
  others[0].gamma = 0.8;
  others[1].normalization = RetentionNormalization::kNone;
  others[2].scale = 0.5;
  others[3].scaleSide = ScaleSide::kQuery;
  for (std::size_t i = 0; i < others.size(); ++i)
    EXPECT_FALSE(chunkwise.serves(others[i], Form::kChunkwise, 16, 100)) << "field " << i;
  const RetentionPlan<double> parallel(head, Form::kParallel, 0, 40);
  EXPECT_TRUE(parallel.serves(head, Form::kParallel, 99, 40));  // no chunk in this form
  EXPECT_FALSE(parallel.serves(head, Form::kParallel, 0, 39));

  // Chunk 16 over 30 rows (a ragged second chunk) and chunk 64 > 30: plans made for 100 rows.
  const RowMatrix<double> q = RowMatrix<double>::Random(30, 4),
                          k = RowMatrix<double>::Random(30, 4);
  const RowMatrix<double> v = RowMatrix<double>::Random(30, 3),
                          S0 = RowMatrix<double>::Random(4, 3);
  RetentionScratch<double> scratch;
  for (const Index chunk : {16, 64}) {
    for (const Index planTime : {30, 100}) {
      SCOPED_TRACE("chunk " + std::to_string(chunk) + ", plan for " + std::to_string(planTime));
      const RetentionPlan<double> fits(head, Form::kChunkwise, chunk, 30);
      const RetentionPlan<double> plan(head, Form::kChunkwise, chunk, planTime);
      RowMatrix<double> S = S0, expectedS = S0, out(30, 3), expected(30, 3);
      stages::retention<double>(fits, q, k, v, expectedS, 5, false, expected, scratch);
      stages::retention<double>(plan, q, k, v, S, 5, false, out, scratch);
      EXPECT_TRUE(out == expected);
      EXPECT_TRUE(S == expectedS);
    }
  }
}

TEST(StageArguments, DecaySchedulesAreChecked) {
  EXPECT_NO_THROW(stages::checkDecays("test", {0.0, 0.5, 1.0}, 3));
  RETNET_EXPECT_THROW_WITH(stages::checkDecays("test", {0.5, 0.5}, 3), InvalidArgument, "test",
                           "one decay per head (3)", "got 2");
  RETNET_EXPECT_THROW_WITH(stages::checkDecays("test", {0.5, 1.5}, 2), InvalidArgument, "test",
                           "[0, 1]", "1.5");
  RETNET_EXPECT_THROW_WITH(stages::checkDecays("test", {std::nan("")}, 1), InvalidArgument,
                           "gamma");
}

TEST(StageArguments, WeightShapesAreChecked) {
  const RowMatrix<float> a = RowMatrix<float>::Zero(6, 4), out = RowMatrix<float>::Zero(4, 6);
  RETNET_EXPECT_THROW_WITH(
      FeedForwardWeights<float>::glu(a, RowMatrix<float>::Zero(6, 3), out, Activation::kGelu),
      InvalidArgument, "FeedForwardWeights::glu", "(6, 4)", "(6, 3)");
  RETNET_EXPECT_THROW_WITH(FeedForwardWeights<float>::swiglu(a, a, RowMatrix<float>::Zero(4, 5)),
                           InvalidArgument, "FeedForwardWeights::swiglu", "(4, 6)", "(4, 5)");
  const LinearWeight<float> wide = a, narrow = RowMatrix<float>::Zero(2, 3);
  RETNET_EXPECT_THROW_WITH(LinearWeight<float>::stacked({&wide, &narrow}), InvalidArgument,
                           "LinearWeight::stacked", "4", "3");
  const LinearWeight<float> halves = narrow.converted(WeightType::kBf16);
  RETNET_EXPECT_THROW_WITH(LinearWeight<float>::stacked({&narrow, &halves}), InvalidArgument,
                           "LinearWeight::stacked", "full", "bf16");
  RETNET_EXPECT_THROW_WITH(RotaryEmbedding<float>(7), InvalidArgument, "RotaryEmbedding", "7");
  RETNET_EXPECT_THROW_WITH(RotaryEmbedding<float>(0, RotaryLayout::kHalfSplit), InvalidArgument,
                           "RotaryEmbedding", "0");
}

}  // namespace
}  // namespace retnet
