// Naive double-precision oracle for torchscale's MultiScaleRetention, DecoderLayer and
// RetNetDecoder (microsoft/torchscale 4d1e0e8), in the parallel, chunkwise and recurrent forms.
//
// Written straight from the semantics of torchscale's RetNet (docs/semantics/torchscale.md §3) and
// deliberately independent of the library: plain loops over row-major std::vector<double>, one
// (batch, head, position) at a time, no Eigen, nothing from include/retnet/. Clarity over speed;
// the parallel form is O(T²·(dk+dv)) per (batch, head), which is fine for T = 1024.
//
// Conventions (docs/semantics/torchscale.md §1): activations are (batch, time, features),
// row-major; a Linear weight is (out, in) and applied as y = x·Wᵀ; there are no biases and no
// dropout anywhere.
//
// The three forms compute the same unnormalised retention U_t = Σ_{s≤t} γ^(t−s)(q_t·k_s) v_s but
// divide it by a different positive factor before the group norm; because of the group norm's eps
// that factor is visible at the 1e-6 level, so each form reproduces torchscale's factor exactly
// (docs/semantics/torchscale.md §3.3) and each must be compared with the golden output of the same
// form.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

namespace retnet::reference {

enum class NaiveForm { kParallel, kChunkwise, kRecurrent };

/// MultiScaleRetention weights: q, k (D,D); v, g (V,D); out (D,V). eps is the group-norm eps.
struct NaiveMsrWeights {
  long embedDim = 0, valueDim = 0, heads = 0;
  double eps = 1e-6;
  std::vector<double> q, k, v, g, out;
};

/// DecoderLayer weights (pre-norm, GLU feed-forward). RMSNorm eps = msr.eps.
struct NaiveLayerWeights {
  NaiveMsrWeights msr;
  long ffnDim = 0;
  bool swish = false;  ///< FFN activation: true = swish (silu), false = exact erf gelu.
  std::vector<double> retentionNorm /*(D)*/, fc1 /*(F,D)*/, gate /*(F,D)*/, fc2 /*(D,F)*/,
      finalNorm /*(D)*/;
};

/// RetNetDecoder weights: embedding (Voc,D), final RMSNorm (D), output projection (Voc,D).
struct NaiveDecoderWeights {
  long vocab = 0;
  std::vector<double> embed, finalNorm, outputProjection;
  double embedScale = 1.0;
  std::vector<NaiveLayerWeights> layers;
};

/// Recurrent state of one MultiScaleRetention (docs/semantics/torchscale.md §3.3, recurrent form).
/// Default-constructed = empty (before step 0). `position` is the number of tokens seen so far,
/// which is also the rotary position of the next token.
struct NaiveMsrState {
  long position = 0;
  long batch = 0;
  std::vector<double> S;  ///< (B, H, dk, dv): S[a][b] multiplies q[a] and yields output b.
  std::vector<double> n;  ///< (H): the running row-normalisation scale, shared by the batch.
};

/// Recurrent state of a decoder: one MSR state per layer.
struct NaiveDecoderState {
  std::vector<NaiveMsrState> layers;
};

namespace naive_msr_detail {

using Vec = std::vector<double>;

inline std::size_t at(long i) { return static_cast<std::size_t>(i); }

inline void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("retnet::reference (naive_msr): " + what);
}

inline void requireSize(const Vec& v, long expected, const std::string& name) {
  require(v.size() == at(expected), name + " has " + std::to_string(v.size()) +
                                        " elements, expected " + std::to_string(expected));
}

/// y (rows, out) = x (rows, in) · Wᵀ with W (out, in).
inline Vec linear(const Vec& x, long rows, long in, const Vec& W, long out) {
  Vec y(at(rows * out), 0.0);
  for (long r = 0; r < rows; ++r) {
    for (long o = 0; o < out; ++o) {
      double sum = 0.0;
      for (long i = 0; i < in; ++i) sum += W[at(o * in + i)] * x[at(r * in + i)];
      y[at(r * out + o)] = sum;
    }
  }
  return y;
}

/// RMSNorm over the last dimension: x / sqrt(mean(x²) + eps) ⊙ weight (no weight if null).
inline Vec rmsNorm(const Vec& x, long rows, long dim, const Vec* weight, double eps) {
  Vec y(x.size());
  for (long r = 0; r < rows; ++r) {
    double meanSquare = 0.0;
    for (long i = 0; i < dim; ++i) meanSquare += x[at(r * dim + i)] * x[at(r * dim + i)];
    meanSquare /= static_cast<double>(dim);
    const double inverse = 1.0 / std::sqrt(meanSquare + eps);
    for (long i = 0; i < dim; ++i) {
      const double w = weight ? (*weight)[at(i)] : 1.0;
      y[at(r * dim + i)] = x[at(r * dim + i)] * inverse * w;
    }
  }
  return y;
}

/// swish(z) = silu(z) = z·sigmoid(z).
inline double swish(double z) { return z / (1.0 + std::exp(-z)); }

/// Exact (erf) gelu: 0.5·z·(1 + erf(z/√2)).
inline double gelu(double z) { return 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0))); }

/// Checks the MSR dimensions and weight sizes; returns nothing, throws std::invalid_argument.
inline void checkMsr(const NaiveMsrWeights& w) {
  const long D = w.embedDim, V = w.valueDim, H = w.heads;
  require(D > 0 && V > 0 && H > 0, "embedDim, valueDim and heads must be positive");
  require(D % H == 0, "embedDim must be a multiple of heads");
  require(V % H == 0, "valueDim must be a multiple of heads");
  require((D / H) % 2 == 0, "the key dimension per head must be even (rotary pairs)");
  require(w.eps >= 0.0, "eps must be non-negative");
  requireSize(w.q, D * D, "q");
  requireSize(w.k, D * D, "k");
  requireSize(w.v, V * D, "v");
  requireSize(w.g, V * D, "g");
  requireSize(w.out, D * V, "out");
}

inline void checkLayer(const NaiveLayerWeights& w) {
  checkMsr(w.msr);
  const long D = w.msr.embedDim, F = w.ffnDim;
  require(F > 0, "ffnDim must be positive");
  requireSize(w.retentionNorm, D, "retentionNorm");
  requireSize(w.fc1, F * D, "fc1");
  requireSize(w.gate, F * D, "gate");
  requireSize(w.fc2, D * F, "fc2");
  requireSize(w.finalNorm, D, "finalNorm");
}

inline void checkDecoder(const NaiveDecoderWeights& w) {
  require(!w.layers.empty(), "a decoder needs at least one layer");
  for (const NaiveLayerWeights& layer : w.layers) checkLayer(layer);
  const long D = w.layers.front().msr.embedDim;
  for (const NaiveLayerWeights& layer : w.layers) {
    require(layer.msr.embedDim == D, "all layers must have the same embedDim");
  }
  require(w.vocab > 0, "vocab must be positive");
  requireSize(w.embed, w.vocab * D, "embed");
  requireSize(w.finalNorm, D, "finalNorm");
  requireSize(w.outputProjection, w.vocab * D, "outputProjection");
}

/// Rotates every head's dk-slice of a D-vector by position p, GPT-J style (adjacent pairs):
///   out[2i] = x[2i]·cos(pθ_i) − x[2i+1]·sin(pθ_i),  out[2i+1] = x[2i+1]·cos(pθ_i) +
///   x[2i]·sin(pθ_i)
inline void rotate(double* x, long D, long dk, long p, const Vec& theta) {
  for (long head = 0; head * dk < D; ++head) {
    double* slice = x + head * dk;
    for (long i = 0; i < dk / 2; ++i) {
      const double angle = static_cast<double>(p) * theta[at(i)];
      const double c = std::cos(angle), s = std::sin(angle);
      const double a = slice[2 * i], b = slice[2 * i + 1];
      slice[2 * i] = a * c - b * s;
      slice[2 * i + 1] = b * c + a * s;
    }
  }
}

}  // namespace naive_msr_detail

/// θ_i = 1 / 10000^(i/(n−1)) for i = 0 … n−1, n = keyDim/2 (exponent linspace(0, 1, n);
/// θ_0 = 1 when n = 1). docs/semantics/torchscale.md §3.1.
inline std::vector<double> naiveFrequencies(long keyDim) {
  naive_msr_detail::require(keyDim > 0 && keyDim % 2 == 0, "keyDim must be positive and even");
  const long n = keyDim / 2;
  std::vector<double> theta(naive_msr_detail::at(n));
  for (long i = 0; i < n; ++i) {
    const double exponent = n == 1 ? 0.0 : static_cast<double>(i) / static_cast<double>(n - 1);
    theta[naive_msr_detail::at(i)] = 1.0 / std::pow(10000.0, exponent);
  }
  return theta;
}

/// torchscale's `angle` buffer: each frequency twice, angle[2i] = angle[2i+1] = θ_i (length dk).
inline std::vector<double> naiveAngle(long keyDim) {
  const std::vector<double> theta = naiveFrequencies(keyDim);
  std::vector<double> angle;
  for (double t : theta) {
    angle.push_back(t);
    angle.push_back(t);
  }
  return angle;
}

/// torchscale's `decay` buffer: ln(γ_h) = ln(1 − 2^(−5−h)) for h = 0 … heads−1.
inline std::vector<double> naiveLogDecay(long heads) {
  std::vector<double> decay;
  for (long h = 0; h < heads; ++h) {
    decay.push_back(std::log(1.0 - std::ldexp(1.0, static_cast<int>(-5 - h))));
  }
  return decay;
}

namespace naive_msr_detail {

/// The per-head ln γ_h a retention function uses: `logDecay` (one value per head) if given, else
/// torchscale's schedule, naiveLogDecay(heads). The retention functions below take it as their
/// last argument, empty by default, for the families with another schedule (naive_syncdoth.hpp).
inline Vec logDecayOrDefault(const Vec& logDecay, long heads) {
  if (logDecay.empty()) return naiveLogDecay(heads);
  requireSize(logDecay, heads, "logDecay");
  return logDecay;
}

/// The MSR prologue (docs/semantics/torchscale.md §3.3) for `rows` input vectors at rotary
/// positions firstPosition + (row % time): q, k (rows, D) rotated per head, k scaled by
/// dk^(-1/2); v, g (rows, V).
struct Projected {
  Vec q, k, v, g;
};

inline Projected project(const NaiveMsrWeights& w, const Vec& x, long batch, long time,
                         long firstPosition) {
  const long D = w.embedDim, V = w.valueDim, dk = D / w.heads;
  const long rows = batch * time;
  Projected p;
  p.q = linear(x, rows, D, w.q, D);
  p.k = linear(x, rows, D, w.k, D);
  p.v = linear(x, rows, D, w.v, V);
  p.g = linear(x, rows, D, w.g, V);
  const double scaling = 1.0 / std::sqrt(static_cast<double>(dk));
  for (double& value : p.k) value *= scaling;
  const Vec theta = naiveFrequencies(dk);
  for (long b = 0; b < batch; ++b) {
    for (long t = 0; t < time; ++t) {
      const long row = b * time + t;
      rotate(p.q.data() + row * D, D, dk, firstPosition + t, theta);
      rotate(p.k.data() + row * D, D, dk, firstPosition + t, theta);
    }
  }
  return p;
}

/// The MSR epilogue (docs/semantics/torchscale.md §3.4): o (rows, V) is the retention output of
/// all heads before the group norm; returns (swish(g) ⊙ groupnorm(o)) · Woᵀ, (rows, D).
inline Vec epilogue(const NaiveMsrWeights& w, const Vec& o, const Vec& g, long rows) {
  const long V = w.valueDim, dv = V / w.heads;
  // Group norm = RMS norm over each head's dv values, no weight; rows·H groups of dv.
  Vec gated = rmsNorm(o, rows * w.heads, dv, nullptr, w.eps);
  for (std::size_t i = 0; i < gated.size(); ++i) gated[i] *= swish(g[i]);
  return linear(gated, rows, V, w.out, w.embedDim);
}

inline double dot(const double* a, const double* b, long n) {
  double sum = 0.0;
  for (long i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

/// Parallel form (docs/semantics/torchscale.md §3.3): o (B·T, V) before the group norm; ln γ_h
/// from `logDecay` (empty: torchscale's).
inline Vec parallelRetention(const NaiveMsrWeights& w, const Projected& p, long batch, long time,
                             const Vec& logDecay = {}) {
  const long D = w.embedDim, V = w.valueDim, H = w.heads, dk = D / H, dv = V / H;
  const Vec decay = logDecayOrDefault(logDecay, H);
  Vec o(at(batch * time * V), 0.0);
  Vec A(at(time));
  for (long h = 0; h < H; ++h) {
    for (long t = 0; t < time; ++t) {
      // Row normalisation: sqrt of the sum of the row's nonzero mask entries γ^(t−s'), s' ≤ t.
      double rowSum = 0.0;
      for (long s = 0; s <= t; ++s) rowSum += std::exp(static_cast<double>(t - s) * decay[at(h)]);
      const double rowScale = std::sqrt(rowSum);
      for (long b = 0; b < batch; ++b) {
        const double* q = p.q.data() + (b * time + t) * D + h * dk;
        double absSum = 0.0;
        for (long s = 0; s <= t; ++s) {
          const double* k = p.k.data() + (b * time + s) * D + h * dk;
          const double mask = std::exp(static_cast<double>(t - s) * decay[at(h)]) / rowScale;
          A[at(s)] = dot(q, k, dk) * mask;
          absSum += std::abs(A[at(s)]);
        }
        const double c = std::min(std::max(absSum, 1.0), 5e4);
        double* out = o.data() + (b * time + t) * V + h * dv;
        for (long s = 0; s <= t; ++s) {
          const double* v = p.v.data() + (b * time + s) * V + h * dv;
          const double weight = A[at(s)] / c;
          for (long j = 0; j < dv; ++j) out[j] += weight * v[j];
        }
      }
    }
  }
  return o;
}

/// Chunkwise form (docs/semantics/torchscale.md §3.3) over `time` positions, a multiple of
/// `chunk`: o (B·T, V); ln γ_h from `logDecay` (empty: torchscale's).
inline Vec chunkwiseRetention(const NaiveMsrWeights& w, const Projected& p, long batch, long time,
                              long chunk, const Vec& logDecay = {}) {
  const long D = w.embedDim, V = w.valueDim, H = w.heads, dk = D / H, dv = V / H;
  const long C = chunk;
  require(C > 0 && time % C == 0, "chunkwise retention needs time to be a multiple of the chunk");
  const Vec decay = logDecayOrDefault(logDecay, H);
  Vec o(at(batch * time * V), 0.0);
  for (long h = 0; h < H; ++h) {
    // Per-head constants of one chunk.
    Vec M(at(C * C), 0.0), r(at(C)), vdec(at(C)), qdec(at(C));
    for (long i = 0; i < C; ++i) {
      double rowSum = 0.0;
      for (long j = 0; j <= i; ++j) {
        M[at(i * C + j)] = std::exp(static_cast<double>(i - j) * decay[at(h)]);
        rowSum += M[at(i * C + j)];
      }
      r[at(i)] = std::sqrt(rowSum);
    }
    double L = 0.0;  // Sum of the last row of M.
    for (long j = 0; j < C; ++j) L += M[at((C - 1) * C + j)];
    for (long j = 0; j < C; ++j) vdec[at(j)] = M[at((C - 1) * C + j)] / L;
    for (long i = 0; i < C; ++i) {
      qdec[at(i)] = std::exp(static_cast<double>(i + 1) * decay[at(h)]) * L / r[at(i)];
    }
    const double cdec = std::exp(static_cast<double>(C) * decay[at(h)]);

    for (long b = 0; b < batch; ++b) {
      Vec R(at(dk * dv), 0.0);  // R[a][j]
      double sigma = 1.0;
      for (long c0 = 0; c0 < time; c0 += C) {
        for (long i = 0; i < C; ++i) {
          const double* q = p.q.data() + (b * time + c0 + i) * D + h * dk;
          // Inner-chunk part, normalised by its own abs-sum (floored at 1, no upper clamp).
          Vec A(at(C), 0.0);
          double absSum = 0.0;
          for (long j = 0; j <= i; ++j) {
            const double* k = p.k.data() + (b * time + c0 + j) * D + h * dk;
            A[at(j)] = dot(q, k, dk) * (M[at(i * C + j)] / r[at(i)]);
            absSum += std::abs(A[at(j)]);
          }
          const double iota = std::max(absSum, 1.0);
          Vec inner(at(dv), 0.0);
          for (long j = 0; j <= i; ++j) {
            const double* v = p.v.data() + (b * time + c0 + j) * V + h * dv;
            for (long e = 0; e < dv; ++e) inner[at(e)] += (A[at(j)] / iota) * v[e];
          }
          // Cross-chunk part from the state of the previous chunks.
          Vec cross(at(dv), 0.0);
          for (long a = 0; a < dk; ++a) {
            const double qa = qdec[at(i)] * q[a];
            for (long e = 0; e < dv; ++e) cross[at(e)] += qa * (R[at(a * dv + e)] / sigma);
          }
          const double all = std::max(iota, sigma);
          double* out = o.data() + (b * time + c0 + i) * V + h * dv;
          for (long e = 0; e < dv; ++e) {
            out[e] = inner[at(e)] / (all / iota) + cross[at(e)] / (all / sigma);
          }
        }
        // State update with this chunk: R = R·γ^C + Σ_j k_j ⊗ (vdec[j]·v_j).
        for (double& value : R) value *= cdec;
        for (long j = 0; j < C; ++j) {
          const double* k = p.k.data() + (b * time + c0 + j) * D + h * dk;
          const double* v = p.v.data() + (b * time + c0 + j) * V + h * dv;
          for (long a = 0; a < dk; ++a) {
            for (long e = 0; e < dv; ++e) R[at(a * dv + e)] += k[a] * (vdec[at(j)] * v[e]);
          }
        }
        // sigma = max(largest column abs-sum of R, 1).
        double largest = 0.0;
        for (long e = 0; e < dv; ++e) {
          double column = 0.0;
          for (long a = 0; a < dk; ++a) column += std::abs(R[at(a * dv + e)]);
          largest = std::max(largest, column);
        }
        sigma = std::max(largest, 1.0);
      }
    }
  }
  return o;
}

/// x (B, T, D) -> x zero-padded at the end of time to `paddedTime` (B, Tp, D).
inline Vec padTime(const Vec& x, long batch, long time, long dim, long paddedTime) {
  Vec y(at(batch * paddedTime * dim), 0.0);
  for (long b = 0; b < batch; ++b) {
    for (long t = 0; t < time; ++t) {
      for (long i = 0; i < dim; ++i) {
        y[at((b * paddedTime + t) * dim + i)] = x[at((b * time + t) * dim + i)];
      }
    }
  }
  return y;
}

/// The first `time` rows of every batch item of x (B, Tp, D).
inline Vec cropTime(const Vec& x, long batch, long paddedTime, long dim, long time) {
  Vec y(at(batch * time * dim));
  for (long b = 0; b < batch; ++b) {
    for (long t = 0; t < time; ++t) {
      for (long i = 0; i < dim; ++i) {
        y[at((b * time + t) * dim + i)] = x[at((b * paddedTime + t) * dim + i)];
      }
    }
  }
  return y;
}

/// One time step (B, D) of a sequence (B, T, D), and back.
inline Vec timeSlice(const Vec& x, long batch, long time, long dim, long t) {
  Vec y(at(batch * dim));
  for (long b = 0; b < batch; ++b) {
    for (long i = 0; i < dim; ++i) y[at(b * dim + i)] = x[at((b * time + t) * dim + i)];
  }
  return y;
}

inline void setTimeSlice(Vec& x, const Vec& slice, long batch, long time, long dim, long t) {
  for (long b = 0; b < batch; ++b) {
    for (long i = 0; i < dim; ++i) x[at((b * time + t) * dim + i)] = slice[at(b * dim + i)];
  }
}

/// Padded length for the chunkwise form: ceil(T / C)·C.
inline long paddedLength(long time, long chunk) {
  require(chunk > 0,
          "the chunkwise form needs a positive chunk size, got " + std::to_string(chunk));
  return (time + chunk - 1) / chunk * chunk;
}

}  // namespace naive_msr_detail

/// One recurrent MSR step (docs/semantics/torchscale.md §3.3, recurrent form): x (B, D) is token
/// `state.position` of every sequence; returns y (B, D) and advances the state. ln γ_h from
/// `logDecay` (empty: torchscale's).
inline std::vector<double> naiveMsrStep(const NaiveMsrWeights& w, NaiveMsrState& state,
                                        const std::vector<double>& x, long batch,
                                        const std::vector<double>& logDecay = {}) {
  using namespace naive_msr_detail;
  checkMsr(w);
  require(batch > 0, "batch must be positive");
  requireSize(x, batch * w.embedDim, "x");
  const long D = w.embedDim, V = w.valueDim, H = w.heads, dk = D / H, dv = V / H;
  if (state.position == 0) {
    state.batch = batch;
    state.S.assign(at(batch * H * dk * dv), 0.0);
    state.n.assign(at(H), 0.0);
  }
  require(state.batch == batch, "the batch size changed between recurrent steps");
  const Projected p = project(w, x, batch, 1, state.position);
  const Vec decay = logDecayOrDefault(logDecay, H);
  Vec o(at(batch * V), 0.0);
  for (long h = 0; h < H; ++h) {
    const double gamma = std::exp(decay[at(h)]);
    // The scale n is per head (the same for every batch item). Step 0: n = 1 and S = k ⊗ v.
    const double nOld = state.n[at(h)];
    const double nNew = state.position == 0 ? 1.0 : nOld * gamma + 1.0;
    const double keep = state.position == 0 ? 0.0 : std::sqrt(nOld) * gamma / std::sqrt(nNew);
    const double add = state.position == 0 ? 1.0 : std::sqrt(nNew);
    for (long b = 0; b < batch; ++b) {
      double* S = state.S.data() + ((b * H + h) * dk) * dv;
      const double* q = p.q.data() + b * D + h * dk;
      const double* k = p.k.data() + b * D + h * dk;
      const double* v = p.v.data() + b * V + h * dv;
      for (long a = 0; a < dk; ++a) {
        for (long e = 0; e < dv; ++e) {
          const double previous = state.position == 0 ? 0.0 : S[a * dv + e] * keep;
          S[a * dv + e] = previous + (k[a] * v[e]) / add;
        }
      }
      double* out = o.data() + b * V + h * dv;
      for (long a = 0; a < dk; ++a) {
        for (long e = 0; e < dv; ++e) out[e] += q[a] * S[a * dv + e];
      }
    }
    state.n[at(h)] = nNew;
  }
  state.position += 1;
  return epilogue(w, o, p.g, batch);
}

namespace naive_msr_detail {

/// MSR over a whole sequence x (B, T, D) in `form`; for the chunkwise form T must already be a
/// multiple of the chunk (callers pad).
inline Vec msrSequence(const NaiveMsrWeights& w, const Vec& x, long batch, long time,
                       NaiveForm form, long chunk) {
  if (form == NaiveForm::kRecurrent) {
    NaiveMsrState state;
    Vec y(at(batch * time * w.embedDim));
    for (long t = 0; t < time; ++t) {
      const Vec step = naiveMsrStep(w, state, timeSlice(x, batch, time, w.embedDim, t), batch);
      setTimeSlice(y, step, batch, time, w.embedDim, t);
    }
    return y;
  }
  const Projected p = project(w, x, batch, time, 0);
  const Vec o = form == NaiveForm::kParallel ? parallelRetention(w, p, batch, time)
                                             : chunkwiseRetention(w, p, batch, time, chunk);
  return epilogue(w, o, p.g, batch * time);
}

/// A decoder layer (docs/semantics/torchscale.md §3.5) around a retention function mapping the
/// normalised input (rows, D) to the MSR output (rows, D).
template <typename Retention>
Vec layerAround(const NaiveLayerWeights& w, const Vec& x, long rows, Retention&& retention) {
  const long D = w.msr.embedDim, F = w.ffnDim;
  const double eps = w.msr.eps;
  const Vec attended = retention(rmsNorm(x, rows, D, &w.retentionNorm, eps));
  Vec h(x.size());
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = x[i] + attended[i];
  const Vec z = rmsNorm(h, rows, D, &w.finalNorm, eps);
  Vec hidden = linear(z, rows, D, w.fc1, F);
  const Vec gate = linear(z, rows, D, w.gate, F);
  for (std::size_t i = 0; i < hidden.size(); ++i) {
    hidden[i] = (w.swish ? swish(hidden[i]) : gelu(hidden[i])) * gate[i];
  }
  const Vec ffn = linear(hidden, rows, F, w.fc2, D);
  Vec y(x.size());
  for (std::size_t i = 0; i < y.size(); ++i) y[i] = h[i] + ffn[i];
  return y;
}

inline Vec layerSequence(const NaiveLayerWeights& w, const Vec& x, long batch, long time,
                         NaiveForm form, long chunk) {
  return layerAround(w, x, batch * time, [&](const Vec& normed) {
    return msrSequence(w.msr, normed, batch, time, form, chunk);
  });
}

}  // namespace naive_msr_detail

/// MultiScaleRetention, x (B, T, D) -> y (B, T, D). Chunkwise: if T % chunk != 0 the input is
/// zero-padded at the end to a multiple of the chunk and the padded rows are dropped
/// (docs/semantics/torchscale.md §3.7). Recurrent: one token at a time, positions 0 … T−1.
inline std::vector<double> naiveMsr(const NaiveMsrWeights& w, const std::vector<double>& x,
                                    long batch, long time, NaiveForm form, long chunk = 0) {
  using namespace naive_msr_detail;
  checkMsr(w);
  require(batch > 0 && time > 0, "batch and time must be positive");
  requireSize(x, batch * time * w.embedDim, "x");
  if (form != NaiveForm::kChunkwise) return msrSequence(w, x, batch, time, form, chunk);
  const long Tp = paddedLength(time, chunk);
  const Vec y = msrSequence(w, padTime(x, batch, time, w.embedDim, Tp), batch, Tp, form, chunk);
  return cropTime(y, batch, Tp, w.embedDim, time);
}

/// One recurrent decoder-layer step: x (B, D) -> y (B, D); `state` is the layer's MSR state.
/// ln γ_h from `logDecay` (empty: torchscale's).
inline std::vector<double> naiveLayerStep(const NaiveLayerWeights& w, NaiveMsrState& state,
                                          const std::vector<double>& x, long batch,
                                          const std::vector<double>& logDecay = {}) {
  using namespace naive_msr_detail;
  checkLayer(w);
  requireSize(x, batch * w.msr.embedDim, "x");
  return layerAround(w, x, batch, [&](const Vec& normed) {
    return naiveMsrStep(w.msr, state, normed, batch, logDecay);
  });
}

/// DecoderLayer (pre-norm), x (B, T, D) -> y (B, T, D); docs/semantics/torchscale.md §3.5.
/// Chunkwise padding as in naiveMsr, applied once to the layer input.
inline std::vector<double> naiveLayer(const NaiveLayerWeights& w, const std::vector<double>& x,
                                      long batch, long time, NaiveForm form, long chunk = 0) {
  using namespace naive_msr_detail;
  checkLayer(w);
  require(batch > 0 && time > 0, "batch and time must be positive");
  const long D = w.msr.embedDim;
  requireSize(x, batch * time * D, "x");
  if (form != NaiveForm::kChunkwise) return layerSequence(w, x, batch, time, form, chunk);
  const long Tp = paddedLength(time, chunk);
  const Vec y = layerSequence(w, padTime(x, batch, time, D, Tp), batch, Tp, form, chunk);
  return cropTime(y, batch, Tp, D, time);
}

namespace naive_msr_detail {

/// Embedding lookup (docs/semantics/torchscale.md §3.6): tokens (B, T) -> x (B, T, D), scaled by
/// embedScale.
inline Vec embed(const NaiveDecoderWeights& w, const std::vector<long>& tokens, long D) {
  Vec x(at(static_cast<long>(tokens.size()) * D));
  for (std::size_t r = 0; r < tokens.size(); ++r) {
    const long token = tokens[r];
    require(token >= 0 && token < w.vocab, "token id " + std::to_string(token) +
                                               " is outside [0, " + std::to_string(w.vocab) + ")");
    for (long i = 0; i < D; ++i) {
      x[r * at(D) + at(i)] = w.embed[at(token * D + i)] * w.embedScale;
    }
  }
  return x;
}

/// Final RMSNorm and output projection: h (rows, D) -> logits (rows, Voc).
inline Vec logitsOf(const NaiveDecoderWeights& w, const Vec& h, long rows, long D) {
  const double eps = w.layers.front().msr.eps;
  return linear(rmsNorm(h, rows, D, &w.finalNorm, eps), rows, D, w.outputProjection, w.vocab);
}

}  // namespace naive_msr_detail

/// One incremental decoding step (docs/semantics/torchscale.md §3.8): tokens (B) are token
/// `position` of every sequence; returns logits (B, Voc). Every layer keeps its own state in
/// `state`.
inline std::vector<double> naiveDecoderStep(const NaiveDecoderWeights& w, NaiveDecoderState& state,
                                            const std::vector<long>& tokens, long batch) {
  using namespace naive_msr_detail;
  checkDecoder(w);
  require(batch > 0 && tokens.size() == at(batch), "tokens must hold one id per batch item");
  if (state.layers.empty()) state.layers.resize(w.layers.size());
  require(state.layers.size() == w.layers.size(), "the state has the wrong number of layers");
  const long D = w.layers.front().msr.embedDim;
  Vec h = embed(w, tokens, D);
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    h = naiveLayerStep(w.layers[l], state.layers[l], h, batch);
  }
  return logitsOf(w, h, batch, D);
}

/// RetNetDecoder, tokens (B, T) -> logits (B, T, Voc); docs/semantics/torchscale.md §3.6–3.8.
/// Chunkwise: the embedded sequence is zero-padded once to a multiple of the chunk, every layer
/// runs over the padded length, and the padded rows are dropped before the final norm. Recurrent:
/// token by token, each layer with its own state.
inline std::vector<double> naiveDecoder(const NaiveDecoderWeights& w,
                                        const std::vector<long>& tokens, long batch, long time,
                                        NaiveForm form, long chunk = 0) {
  using namespace naive_msr_detail;
  checkDecoder(w);
  require(batch > 0 && time > 0, "batch and time must be positive");
  require(tokens.size() == at(batch * time), "tokens must have batch·time elements");
  const long D = w.layers.front().msr.embedDim, Voc = w.vocab;
  if (form == NaiveForm::kRecurrent) {
    NaiveDecoderState state;
    Vec logits(at(batch * time * Voc));
    for (long t = 0; t < time; ++t) {
      std::vector<long> step(at(batch));
      for (long b = 0; b < batch; ++b) step[at(b)] = tokens[at(b * time + t)];
      setTimeSlice(logits, naiveDecoderStep(w, state, step, batch), batch, time, Voc, t);
    }
    return logits;
  }
  const long Tp = form == NaiveForm::kChunkwise ? paddedLength(time, chunk) : time;
  Vec h = padTime(embed(w, tokens, D), batch, time, D, Tp);
  for (const NaiveLayerWeights& layer : w.layers) {
    h = layerSequence(layer, h, batch, Tp, form, chunk);
  }
  return logitsOf(w, cropTime(h, batch, Tp, D, time), batch * time, D);
}

}  // namespace retnet::reference
