// Single-head retention: the three forms against a naive double-precision reference, against
// each other, across state handoffs, and on bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>

#include "reference/naive_retention.hpp"
#include "retnet/retention.hpp"
#include "test_util.hpp"

namespace retnet {
namespace {

using testing::epsilonOf;
using testing::normwiseError;
using testing::randomValues;
using testing::toDoubles;
using testing::toTensor;

// Feature sizes: dk != dv so a transposed state or swapped dimension cannot pass.
constexpr Index kKeyDim = 8;
constexpr Index kValueDim = 12;

// Tolerance, normwise relative (max|y - ref| / max|ref|). Each output is a sum of up to
// T·(dk + 1) rounded products; with inputs of random sign the rounding errors add like a
// random walk, so the error grows like ε·sqrt(T·dk) relative to the largest output (which
// itself grows like sqrt(T) for γ = 1, or stays O(1) for γ < 1, keeping the ratio bounded).
// The factor 8 covers the tails of that walk and the rounding of γ^m to Scalar in the masks;
// the measured ratio error / (ε·sqrt(T·dk)) lies between 1 and 2 on this grid. For double this is
// about 1e-13 at T = 1000, for float about 6e-5.
template <typename Scalar>
double tolerance(Index time) {
  return 8.0 * epsilonOf<Scalar>() * std::sqrt(static_cast<double>(time * kKeyDim));
}

struct Inputs {
  Index batch, time;
  std::vector<double> q, k, v;
};

Inputs makeInputs(Index batch, Index time, std::uint64_t seed) {
  const auto n = static_cast<std::size_t>(batch * time);
  // q·k is O(1) for entries of variance 1/dk.
  const double scale = 1.0 / std::sqrt(static_cast<double>(kKeyDim));
  return {batch, time, randomValues(n * kKeyDim, seed, scale),
          randomValues(n * kKeyDim, seed + 1, scale), randomValues(n * kValueDim, seed + 2)};
}

template <typename Scalar>
struct Tensors {
  Tensor3<Scalar> q, k, v;
  explicit Tensors(const Inputs& in)
      : q(toTensor<Scalar>(in.q, in.batch, in.time, kKeyDim)),
        k(toTensor<Scalar>(in.k, in.batch, in.time, kKeyDim)),
        v(toTensor<Scalar>(in.v, in.batch, in.time, kValueDim)) {}
};

const double kGammas[] = {0.0, 0.5, 31.0 / 32.0, 1.0 - std::ldexp(1.0, -12), 1.0};

template <typename Scalar>
class RetentionTest : public ::testing::Test {};
TYPED_TEST_SUITE(RetentionTest, testing::Scalars, testing::ScalarName);

TYPED_TEST(RetentionTest, EveryFormMatchesNaiveReferenceOverTheGrid) {
  using Scalar = TypeParam;
  std::uint64_t seed = 100;
  for (const Index batch : {1, 3}) {
    for (const Index time : {1, 2, 7, 64, 129, 1000}) {
      const Inputs in = makeInputs(batch, time, seed += 10);
      const Tensors<Scalar> t(in);
      for (const double gamma : kGammas) {
        SCOPED_TRACE(::testing::Message()
                     << "batch " << batch << " T " << time << " gamma " << gamma);
        const auto ref =
            reference::naiveRetention(in.q, in.k, in.v, batch, time, kKeyDim, kValueDim, gamma);
        const Retention<Scalar> retention(static_cast<Scalar>(gamma));
        const double tol = tolerance<Scalar>(time);

        RetentionState<Scalar> state;
        const Tensor3<Scalar> parallel = retention.forwardParallel(t.q, t.k, t.v, state);
        EXPECT_LE(normwiseError(parallel, ref.out), tol) << "parallel";
        EXPECT_LE(normwiseError(state.values(), ref.finalState), tol) << "parallel state";
        EXPECT_EQ(state.position(), time);

        state.clear();
        const Tensor3<Scalar> recurrent = retention.forwardRecurrent(t.q, t.k, t.v, state);
        EXPECT_LE(normwiseError(recurrent, ref.out), tol) << "recurrent";
        EXPECT_LE(normwiseError(state.values(), ref.finalState), tol) << "recurrent state";

        for (const Index chunk : {Index{1}, Index{3}, Index{16}, Index{64}, time + 5}) {
          SCOPED_TRACE(::testing::Message() << "chunk " << chunk);
          state.clear();
          const Tensor3<Scalar> chunkwise = retention.forwardChunkwise(t.q, t.k, t.v, chunk, state);
          EXPECT_LE(normwiseError(chunkwise, ref.out), tol) << "chunkwise";
          EXPECT_LE(normwiseError(state.values(), ref.finalState), tol) << "chunkwise state";
          // The forms against each other: each is within tol of the reference.
          EXPECT_LE(normwiseError(chunkwise, toDoubles(parallel)), 2 * tol);
          EXPECT_LE(normwiseError(chunkwise, toDoubles(recurrent)), 2 * tol);
        }
      }
    }
  }
}

// Gamma = 0 keeps only the current token: o_t = (q_t·k_t) v_t, exactly.
TYPED_TEST(RetentionTest, GammaZeroKeepsOnlyTheCurrentToken) {
  using Scalar = TypeParam;
  const Inputs in = makeInputs(2, 9, 7);
  const Tensors<Scalar> t(in);
  const Retention<Scalar> retention(Scalar(0));
  for (const Tensor3<Scalar>& out :
       {retention.forwardParallel(t.q, t.k, t.v), retention.forwardRecurrent(t.q, t.k, t.v),
        retention.forwardChunkwise(t.q, t.k, t.v, 4)}) {
    for (Index b = 0; b < 2; ++b) {
      for (Index i = 0; i < 9; ++i) {
        Scalar dot = 0;
        for (Index a = 0; a < kKeyDim; ++a) dot += t.q(b, i, a) * t.k(b, i, a);
        for (Index c = 0; c < kValueDim; ++c) {
          EXPECT_NEAR(out(b, i, c), dot * t.v(b, i, c),
                      16 * epsilonOf<Scalar>() * (1 + std::abs(dot * t.v(b, i, c))));
        }
      }
    }
  }
}

// Split a sequence at random points and hand the state from form to form: the concatenated
// outputs and the final state equal one pass.
TYPED_TEST(RetentionTest, StateHandsOverBetweenAnyFormsAtAnySplit) {
  using Scalar = TypeParam;
  constexpr Index kBatch = 3, kTime = 129;
  const Inputs in = makeInputs(kBatch, kTime, 42);
  std::mt19937 rng(2024);
  for (const double gamma : kGammas) {
    const auto ref =
        reference::naiveRetention(in.q, in.k, in.v, kBatch, kTime, kKeyDim, kValueDim, gamma);
    const Retention<Scalar> retention(static_cast<Scalar>(gamma));
    for (int trial = 0; trial < 12; ++trial) {
      // 1 to 5 pieces with random boundaries, each run by a random form.
      std::vector<Index> cuts{0, kTime};
      const int pieces = std::uniform_int_distribution<int>(1, 5)(rng);
      for (int p = 1; p < pieces; ++p)
        cuts.push_back(std::uniform_int_distribution<Index>(1, kTime - 1)(rng));
      std::sort(cuts.begin(), cuts.end());
      cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());

      RetentionState<Scalar> state;
      std::vector<double> joined(static_cast<std::size_t>(kBatch * kTime * kValueDim));
      ::testing::Message trace;
      trace << "gamma " << gamma << " pieces:";
      for (std::size_t p = 0; p + 1 < cuts.size(); ++p) {
        const Index begin = cuts[p], length = cuts[p + 1] - begin;
        // Slice [begin, begin + length) of every batch item.
        Tensor3<Scalar> q(kBatch, length, kKeyDim), k(kBatch, length, kKeyDim),
            v(kBatch, length, kValueDim);
        for (Index b = 0; b < kBatch; ++b) {
          for (Index i = 0; i < length; ++i) {
            for (Index a = 0; a < kKeyDim; ++a) {
              q(b, i, a) = static_cast<Scalar>(
                  in.q[static_cast<std::size_t>((b * kTime + begin + i) * kKeyDim + a)]);
              k(b, i, a) = static_cast<Scalar>(
                  in.k[static_cast<std::size_t>((b * kTime + begin + i) * kKeyDim + a)]);
            }
            for (Index c = 0; c < kValueDim; ++c)
              v(b, i, c) = static_cast<Scalar>(
                  in.v[static_cast<std::size_t>((b * kTime + begin + i) * kValueDim + c)]);
          }
        }
        const auto form = static_cast<Form>(std::uniform_int_distribution<int>(0, 2)(rng));
        const Index chunk = std::uniform_int_distribution<Index>(1, 40)(rng);
        trace << " [" << begin << "," << begin + length << ")"
              << (form == Form::kParallel    ? "P"
                  : form == Form::kRecurrent ? "R"
                                             : "C");
        const Tensor3<Scalar> out =
            form == Form::kParallel    ? retention.forwardParallel(q, k, v, state)
            : form == Form::kRecurrent ? retention.forwardRecurrent(q, k, v, state)
                                       : retention.forwardChunkwise(q, k, v, chunk, state);
        EXPECT_EQ(state.position(), begin + length);
        for (Index b = 0; b < kBatch; ++b)
          for (Index i = 0; i < length; ++i)
            for (Index c = 0; c < kValueDim; ++c)
              joined[static_cast<std::size_t>((b * kTime + begin + i) * kValueDim + c)] =
                  static_cast<double>(out(b, i, c));
      }
      SCOPED_TRACE(trace);
      EXPECT_LE(normwiseError(joined.data(), ref.out.data(), joined.size()),
                tolerance<Scalar>(kTime));
      EXPECT_LE(normwiseError(state.values(), ref.finalState), tolerance<Scalar>(kTime));
    }
  }
}

// A non-zero incoming state set by the caller enters every form as γ^(t+1) q_t S0.
TYPED_TEST(RetentionTest, CallerProvidedStateEntersEveryForm) {
  using Scalar = TypeParam;
  constexpr Index kBatch = 2, kTime = 37;
  const Inputs in = makeInputs(kBatch, kTime, 5);
  const Tensors<Scalar> t(in);
  const std::vector<double> s0 =
      randomValues(static_cast<std::size_t>(kBatch * kKeyDim * kValueDim), 77);
  const double gamma = 0.9;
  const auto ref =
      reference::naiveRetention(in.q, in.k, in.v, kBatch, kTime, kKeyDim, kValueDim, gamma, s0);
  const Retention<Scalar> retention(static_cast<Scalar>(gamma));
  for (const Form form : {Form::kParallel, Form::kChunkwise, Form::kRecurrent}) {
    RetentionState<Scalar> state(kBatch, kKeyDim, kValueDim);
    state.values() = toTensor<Scalar>(s0, kBatch, kKeyDim, kValueDim);
    const Tensor3<Scalar> out =
        form == Form::kParallel    ? retention.forwardParallel(t.q, t.k, t.v, state)
        : form == Form::kRecurrent ? retention.forwardRecurrent(t.q, t.k, t.v, state)
                                   : retention.forwardChunkwise(t.q, t.k, t.v, 8, state);
    EXPECT_LE(normwiseError(out, ref.out), tolerance<Scalar>(kTime)) << static_cast<int>(form);
    EXPECT_LE(normwiseError(state.values(), ref.finalState), tolerance<Scalar>(kTime))
        << static_cast<int>(form);
  }
}

// Inputs given as TensorMaps over the caller's memory (const or not) give the same result as
// owning tensors, bit for bit; so do repeated calls.
TYPED_TEST(RetentionTest, AcceptsTensorMapsAndIsDeterministic) {
  using Scalar = TypeParam;
  const Inputs in = makeInputs(2, 50, 9);
  Tensors<Scalar> t(in);
  const Retention<Scalar> retention(Scalar(0.75));
  const Tensor3<Scalar> expected = retention.forwardChunkwise(t.q, t.k, t.v, 16);
  const Eigen::TensorMap<Tensor3<Scalar>> qMap(t.q.data(), 2, 50, kKeyDim);
  const Eigen::TensorMap<const Tensor3<Scalar>> kMap(t.k.data(), 2, 50, kKeyDim);
  const Tensor3<Scalar> mapped = retention.forwardChunkwise(qMap, kMap, t.v, 16);
  const Tensor3<Scalar> again = retention.forwardChunkwise(t.q, t.k, t.v, 16);
  for (Index i = 0; i < expected.size(); ++i) {
    ASSERT_EQ(mapped.data()[i], expected.data()[i]);
    ASSERT_EQ(again.data()[i], expected.data()[i]);
  }
}

// The kept-buffer form: the same bits as the named forms by value, for every form, through calls
// of other lengths and forms with the same `out` and scratch (the plans kept or remade),
// continuing a state across calls as the forms by value do; forward(form, ...) by value likewise.
TYPED_TEST(RetentionTest, KeptBuffersGiveTheBitsOfTheFormsByValue) {
  using Scalar = TypeParam;
  const Retention<Scalar> retention(Scalar(0.875));
  typename Retention<Scalar>::Scratch scratch;
  Tensor3<Scalar> out;
  const Form forms[] = {Form::kChunkwise, Form::kParallel,  Form::kRecurrent,
                        Form::kChunkwise, Form::kChunkwise, Form::kParallel};
  const Index times[] = {37, 37, 5, 20, 64, 1};
  const Index chunks[] = {8, 0, 0, 8, 100, 0};
  RetentionState<Scalar> keptState, valueState, dispatchedState;
  for (std::size_t call = 0; call < 6; ++call) {
    SCOPED_TRACE(::testing::Message()
                 << "call " << call << ", " << formName(forms[call]) << " T " << times[call]);
    const Inputs in = makeInputs(3, times[call], 700 + call);
    const Tensors<Scalar> t(in);
    // a fresh state (by value and kept), then one continued from the previous call
    RetentionState<Scalar> freshKept, freshValue, freshDispatched;
    for (const bool continued : {false, true}) {
      RetentionState<Scalar>& kept = continued ? keptState : freshKept;
      RetentionState<Scalar>& byValue = continued ? valueState : freshValue;
      RetentionState<Scalar>& dispatched = continued ? dispatchedState : freshDispatched;
      retention.forward(forms[call], t.q, t.k, t.v, chunks[call], kept, out, scratch);
      const Tensor3<Scalar> expected =
          forms[call] == Form::kParallel ? retention.forwardParallel(t.q, t.k, t.v, byValue)
          : forms[call] == Form::kChunkwise
              ? retention.forwardChunkwise(t.q, t.k, t.v, chunks[call], byValue)
              : retention.forwardRecurrent(t.q, t.k, t.v, byValue);
      ASSERT_EQ(out.dimension(0), 3);
      ASSERT_EQ(out.dimension(1), times[call]);
      ASSERT_EQ(out.dimension(2), kValueDim);
      // and forward(form, ...) by value is the named form
      const Tensor3<Scalar> viaForm =
          retention.forward(forms[call], t.q, t.k, t.v, chunks[call], dispatched);
      for (Index i = 0; i < expected.size(); ++i) {
        ASSERT_EQ(out.data()[i], expected.data()[i]);
        ASSERT_EQ(viaForm.data()[i], expected.data()[i]);
      }
      ASSERT_EQ(kept.position(), byValue.position());
      for (Index i = 0; i < kept.values().size(); ++i)
        ASSERT_EQ(kept.values().data()[i], byValue.values().data()[i]);
    }
  }
  EXPECT_EQ(keptState.position(), 37 + 37 + 5 + 20 + 64 + 1);
}

// float32 over 65 536 positions: no overflow, no NaN, and an error against the double formula
// (checked on sampled rows, as the full O(T²) reference is too slow) within the random-walk
// bound of `tolerance`. Measured: about 1e-6 normwise for γ < 1, a few 1e-6 for γ = 1.
TEST(RetentionLongSequence, Float32StaysAccurateAt65536Positions) {
  constexpr Index kTime = 65536;
  const Inputs in = makeInputs(1, kTime, 3);
  const Tensors<float> t(in);
  for (const double gamma : {31.0 / 32.0, 1.0 - std::ldexp(1.0, -12), 1.0}) {
    SCOPED_TRACE(::testing::Message() << "gamma " << gamma);
    const Retention<float> retention(static_cast<float>(gamma));
    RetentionState<float> chunkState, recurrentState;
    const Tensor3<float> chunkwise = retention.forwardChunkwise(t.q, t.k, t.v, 128, chunkState);
    const Tensor3<float> recurrent = retention.forwardRecurrent(t.q, t.k, t.v, recurrentState);
    for (const Tensor3<float>* out : {&chunkwise, &recurrent}) {
      bool finite = true;
      for (Index i = 0; i < out->size(); ++i) finite = finite && std::isfinite(out->data()[i]);
      EXPECT_TRUE(finite);
    }
    std::vector<double> ref, gotChunk, gotRecurrent;
    for (Index row = 0; row < kTime; row += 4093) {
      for (const Index r : {row, kTime - 1 - row}) {
        const auto o =
            reference::naiveRetentionRow(in.q, in.k, in.v, kTime, kKeyDim, kValueDim, gamma, 0, r);
        for (Index c = 0; c < kValueDim; ++c) {
          ref.push_back(o[static_cast<std::size_t>(c)]);
          gotChunk.push_back(chunkwise(0, r, c));
          gotRecurrent.push_back(recurrent(0, r, c));
        }
      }
    }
    const double chunkError = normwiseError(gotChunk.data(), ref.data(), ref.size());
    const double recurrentError = normwiseError(gotRecurrent.data(), ref.data(), ref.size());
    std::printf("float32 T=65536 gamma=%.9f: chunkwise error %.2e, recurrent error %.2e\n", gamma,
                chunkError, recurrentError);
    EXPECT_LE(chunkError, tolerance<float>(kTime));
    EXPECT_LE(recurrentError, tolerance<float>(kTime));
  }
}

// ---- bad input ------------------------------------------------------------------------------

TEST(RetentionErrors, RejectsDecayOutsideZeroOne) {
  RETNET_EXPECT_THROW_WITH((void)Retention<double>(-0.1), InvalidArgument, "gamma", "[0, 1]",
                           "-0.1");
  RETNET_EXPECT_THROW_WITH((void)Retention<double>(1.5), InvalidArgument, "gamma", "1.5");
  RETNET_EXPECT_THROW_WITH((void)Retention<float>(std::numeric_limits<float>::quiet_NaN()),
                           InvalidArgument, "gamma", "nan");
  RETNET_EXPECT_THROW_WITH((void)Retention<float>(std::numeric_limits<float>::infinity()),
                           InvalidArgument, "gamma", "inf");
}

TEST(RetentionErrors, RejectsMismatchedShapes) {
  const Retention<double> retention(0.5);
  const Tensor3<double> q(2, 5, 8), k(2, 5, 8), v(2, 5, 12);
  const Tensor3<double> kOtherBatch(3, 5, 8), kOtherTime(2, 6, 8), kOtherWidth(2, 5, 7);
  const Tensor3<double> vOtherBatch(1, 5, 12), vOtherTime(2, 4, 12);
  RETNET_EXPECT_THROW_WITH(retention.forwardParallel(q, kOtherBatch, v), InvalidArgument,
                           "forwardParallel", "k's shape", "(2, 5, 8)", "(3, 5, 8)");
  RETNET_EXPECT_THROW_WITH(retention.forwardRecurrent(q, kOtherTime, v), InvalidArgument,
                           "forwardRecurrent", "k's shape", "(2, 6, 8)");
  RETNET_EXPECT_THROW_WITH(retention.forwardChunkwise(q, kOtherWidth, v, 2), InvalidArgument,
                           "forwardChunkwise", "k's shape", "(2, 5, 7)");
  RETNET_EXPECT_THROW_WITH(retention.forwardParallel(q, k, vOtherBatch), InvalidArgument,
                           "v's batch size", "must be 2, got 1");
  RETNET_EXPECT_THROW_WITH(retention.forwardParallel(q, k, vOtherTime), InvalidArgument,
                           "v's time length", "must be 5, got 4");
}

TEST(RetentionErrors, RejectsEmptyInputs) {
  const Retention<double> retention(0.5);
  const Tensor3<double> q(2, 5, 8), k(2, 5, 8), v(2, 5, 12), empty(2, 0, 8), noBatch(0, 5, 12);
  RETNET_EXPECT_THROW_WITH(retention.forwardParallel(empty, empty, v), InvalidArgument,
                           "q must be non-empty", "(2, 0, 8)");
  RETNET_EXPECT_THROW_WITH(retention.forwardRecurrent(q, k, noBatch), InvalidArgument,
                           "v must be non-empty", "(0, 5, 12)");
}

TEST(RetentionErrors, RejectsChunkSizeZero) {
  const Retention<double> retention(0.5);
  const Tensor3<double> q(1, 5, 8), v(1, 5, 12);
  RETNET_EXPECT_THROW_WITH(retention.forwardChunkwise(q, q, v, 0), InvalidArgument, "chunkSize",
                           ">= 1", "got 0");
  RETNET_EXPECT_THROW_WITH(retention.forwardChunkwise(q, q, v, -3), InvalidArgument, "chunkSize",
                           "got -3");
}

TEST(RetentionErrors, KeptBufferFormRejectsOverlapAndBadChunkBeforeTouchingTheState) {
  const Retention<double> retention(0.5);
  Tensor3<double> q(1, 5, 8), v(1, 5, 12), out(1, 5, 12);
  q.setConstant(0.1);
  v.setConstant(0.2);
  Retention<double>::Scratch scratch;
  RetentionState<double> state;
  Eigen::TensorMap<Tensor3<double>> vAlias(out.data(), 1, 5, 12);
  RETNET_EXPECT_THROW_WITH(retention.forward(Form::kParallel, q, q, vAlias, 0, state, out, scratch),
                           InvalidArgument, "Retention::forwardParallel",
                           "out must not overlap q, k or v");
  RETNET_EXPECT_THROW_WITH(retention.forward(Form::kChunkwise, q, q, v, 0, state, out, scratch),
                           InvalidArgument, "Retention::forwardChunkwise", "chunkSize", "got 0");
  RetentionState<double> otherKey(1, 4, 12);
  RETNET_EXPECT_THROW_WITH(retention.forward(Form::kRecurrent, q, q, v, 0, otherKey, out, scratch),
                           InvalidArgument, "Retention::forwardRecurrent", "state key dim",
                           "must be 8, got 4");
  EXPECT_TRUE(state.empty());
  EXPECT_EQ(out.dimension(1), 5);  // untouched
}

TEST(RetentionErrors, RejectsStateOfAnotherShapeAndLeavesItUntouched) {
  const Retention<double> retention(0.5);
  Tensor3<double> q(2, 5, 8), v(2, 5, 12);
  q.setConstant(0.1);
  v.setConstant(0.2);
  RetentionState<double> otherBatch(3, 8, 12), otherKey(2, 4, 12), otherValue(2, 8, 10);
  RETNET_EXPECT_THROW_WITH(retention.forwardRecurrent(q, q, v, otherBatch), InvalidArgument,
                           "state batch size", "must be 2, got 3");
  RETNET_EXPECT_THROW_WITH(retention.forwardParallel(q, q, v, otherKey), InvalidArgument,
                           "state key dim", "must be 8, got 4");
  RETNET_EXPECT_THROW_WITH(retention.forwardChunkwise(q, q, v, 2, otherValue), InvalidArgument,
                           "state value dim", "must be 12, got 10");
  EXPECT_EQ(otherBatch.position(), 0);
  Eigen::Tensor<double, 0, Eigen::RowMajor> total = otherKey.values().abs().sum();
  EXPECT_EQ(total(), 0.0);
  RETNET_EXPECT_THROW_WITH(RetentionState<double>(0, 8, 12), InvalidArgument, "batch", "got 0");
  RETNET_EXPECT_THROW_WITH(otherBatch.matrix(3), InvalidArgument, "batch item", "[0, 3)", "got 3");
}

}  // namespace
}  // namespace retnet
