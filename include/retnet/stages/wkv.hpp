// Stage: RWKV-4's WKV operator in its three forms (docs/semantics/rwkv4.md §3.5). Per channel c,
// with decay w_c = −exp(time_decay_c) < 0 and bonus u_c (time_first, used as stored):
//
//          Σ_{i<t} e^(k_i + (t−1−i)·w) · v_i  +  e^(u + k_t) · v_t
//   y_t =  -----------------------------------------------------
//          Σ_{i<t} e^(k_i + (t−1−i)·w)        +  e^(u + k_t)
//
// (plus the carried state's term), a causal softmax over the past with a decayed logit. The
// state of a sequence is, per channel, (aa, bb, pp): numerator aa·e^pp, denominator bb·e^pp;
// empty it is (0, 0, −1e30).
//
//   recurrent   the overflow-free recurrence of BlinkDL's reference: per token, the output from
//               the state before it, then the state update; every exponent is <= 0
//   parallel    per output row, every logit formed whole — k_i + (t−1−i)·w, u + k_t and the
//               carried state's pp + t·w — and the row maximum subtracted before exp (never
//               e^k_i · e^(n·w): with |w| up to 20 and |k| up to 60 those factors overflow);
//               the state after the input in closed form, pp = max(p0 + T·w, k_i + (T−1−i)·w)
//   chunkwise   the parallel form over consecutive chunks, each chunk's closing state carried
//               into the next; chunk 1 is the recurrence's arithmetic, a chunk >= T the parallel
//
// In every form the denominator is >= 1 (the maximal term has weight 1 or bb >= 1), so no
// division by ~0 and no inf/NaN for any finite inputs. A parallel or chunkwise state reaches pp
// as p0 + n·w rather than by n additions, so it equals the recurrent one up to the equivalence
// (aa, bb, pp) ~ (aa·e^δ, bb·e^δ, pp − δ) and to rounding (compare aa/bb and pp + ln bb).
//
// Channels are independent: blocks of kWkvChannels channels go to threads, each block computed
// whole by one thread (results do not depend on the thread count). No allocation.
#pragma once

#include <algorithm>

#include "retnet/detail/checks.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/form.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

/// pp of the empty WKV state (stands for −∞; BlinkDL's value).
inline constexpr double kWkvEmptyExponent = -1e30;

/// The WKV state of one sequence: A channels each of aa, bb, pp (not owned).
template <typename Scalar>
struct WkvStateView {
  Scalar* aa = nullptr;  ///< numerator mantissa (A)
  Scalar* bb = nullptr;  ///< denominator mantissa (A)
  Scalar* pp = nullptr;  ///< shared exponent (A)
};

namespace stages {

/// Channels per task of the WKV stage (one SIMD-friendly block held on the stack).
inline constexpr Index kWkvChannels = 64;

namespace wkv_detail {

template <typename Scalar>
using Lane = Eigen::Array<Scalar, Eigen::Dynamic, 1, 0, kWkvChannels, 1>;  // no heap
template <typename Scalar>
using ConstLane = Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
template <typename Scalar>
using MutableLane = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;

/// The recurrence over rows [0, T) of channels [c, c + n).
template <typename Scalar>
void recurrentBlock(const ConstMatrixRef<Scalar>& k, const ConstMatrixRef<Scalar>& v,
                    const Scalar* w, const Scalar* u, Index c, Index n, WkvStateView<Scalar> s,
                    MatrixRef<Scalar>& y) {
  const ConstLane<Scalar> decay(w + c, n), bonus(u + c, n);
  MutableLane<Scalar> aa(s.aa + c, n), bb(s.bb + c, n), pp(s.pp + c, n);
  Lane<Scalar> q(n), e1(n), e2(n);
  for (Index t = 0; t < k.rows(); ++t) {
    const ConstLane<Scalar> kt(k.row(t).data() + c, n), vt(v.row(t).data() + c, n);
    MutableLane<Scalar> yt(y.row(t).data() + c, n);
    // Output from the state before the token: q = max(pp, u + k_t).
    q = pp.max(bonus + kt);
    e1 = (pp - q).exp();
    e2 = (bonus + kt - q).exp();
    yt = (e1 * aa + e2 * vt) / (e1 * bb + e2);
    // State update: q = max(pp + w, k_t).
    q = (pp + decay).max(kt);
    e1 = (pp + decay - q).exp();
    e2 = (kt - q).exp();
    aa = e1 * aa + e2 * vt;
    bb = e1 * bb + e2;
    pp = q;
  }
}

/// The parallel form with the carried state over rows [begin, begin + len) of channels
/// [c, c + n), leaving the state after them.
template <typename Scalar>
void chunkBlock(const ConstMatrixRef<Scalar>& k, const ConstMatrixRef<Scalar>& v, const Scalar* w,
                const Scalar* u, Index c, Index n, Index begin, Index len, WkvStateView<Scalar> s,
                MatrixRef<Scalar>& y) {
  const ConstLane<Scalar> decay(w + c, n), bonus(u + c, n);
  MutableLane<Scalar> aa(s.aa + c, n), bb(s.bb + c, n), pp(s.pp + c, n);
  Lane<Scalar> m(n), e(n), num(n), den(n);
  const auto key = [&](Index i) { return ConstLane<Scalar>(k.row(begin + i).data() + c, n); };
  const auto value = [&](Index i) { return ConstLane<Scalar>(v.row(begin + i).data() + c, n); };
  for (Index t = 0; t < len; ++t) {
    // Row t's logits: the state's pp + t·w, the past k_i + (t−1−i)·w, the current u + k_t.
    const Scalar steps = static_cast<Scalar>(t);
    m = (pp + steps * decay).max(bonus + key(t));
    for (Index i = 0; i < t; ++i) m = m.max(key(i) + static_cast<Scalar>(t - 1 - i) * decay);
    e = (pp + steps * decay - m).exp();
    num = e * aa;
    den = e * bb;
    for (Index i = 0; i < t; ++i) {
      e = (key(i) + static_cast<Scalar>(t - 1 - i) * decay - m).exp();
      num += e * value(i);
      den += e;
    }
    e = (bonus + key(t) - m).exp();
    num += e * value(t);
    den += e;
    MutableLane<Scalar>(y.row(begin + t).data() + c, n) = num / den;
  }
  // The state after the chunk: pp' = max(pp + len·w, k_i + (len−1−i)·w), terms rescaled to it.
  const Scalar steps = static_cast<Scalar>(len);
  m = pp + steps * decay;
  for (Index i = 0; i < len; ++i) m = m.max(key(i) + static_cast<Scalar>(len - 1 - i) * decay);
  e = (pp + steps * decay - m).exp();
  aa *= e;
  bb *= e;
  for (Index i = 0; i < len; ++i) {
    e = (key(i) + static_cast<Scalar>(len - 1 - i) * decay - m).exp();
    aa += e * value(i);
    bb += e;
  }
  pp = m;
}

}  // namespace wkv_detail

/// WKV of one sequence in `form`, continuing from and advancing `state`.
///   k, v, y (T x A): keys, values, outputs (y must not overlap k or v)
///   w, u (A): the decay w = −exp(time_decay) (< 0) and the bonus time_first
///   state: the sequence's (aa, bb, pp), A each; chunkSize: the chunkwise form's chunk
template <typename Scalar>
void wkv(Form form, detail::NoDeduce<ConstMatrixRef<Scalar>> k,
         detail::NoDeduce<ConstMatrixRef<Scalar>> v, const Scalar* w, const Scalar* u,
         Index chunkSize, WkvStateView<Scalar> state, detail::NoDeduce<MatrixRef<Scalar>> y) {
  const char* where = "stages::wkv";
  const Index time = k.rows(), channels = k.cols();
  detail::require(time >= 1 && channels >= 1, where, "k must be (T x A) with T, A >= 1, got (",
                  time, " x ", channels, ")");
  detail::requireShape(where, v, time, channels, "v (k's shape)");
  detail::requireShape(where, y, time, channels, "y (k's shape)");
  detail::require(w != nullptr && u != nullptr && state.aa != nullptr && state.bb != nullptr &&
                      state.pp != nullptr,
                  where, "w, u and the state's aa, bb, pp are needed");
  if (form == Form::kChunkwise) detail::requireChunkSize(where, chunkSize);
  const Index chunk = form == Form::kParallel ? time : chunkSize;
  const Index blocks = (channels + kWkvChannels - 1) / kWkvChannels;
  const auto run = [&](Index block, int) {
    const Index c = block * kWkvChannels, n = std::min(kWkvChannels, channels - c);
    if (form == Form::kRecurrent) {
      wkv_detail::recurrentBlock<Scalar>(k, v, w, u, c, n, state, y);
      return;
    }
    for (Index begin = 0; begin < time; begin += chunk)
      wkv_detail::chunkBlock<Scalar>(k, v, w, u, c, n, begin, std::min(chunk, time - begin), state,
                                     y);
  };
  // A decoding step (one row) is too little work to share.
  if (time == 1 || blocks == 1) {
    for (Index block = 0; block < blocks; ++block) run(block, 0);
  } else {
    detail::parallelFor(blocks, run);
  }
}

}  // namespace stages
}  // namespace retnet
