// A naive RWKV-4 (docs/semantics/rwkv4.md §3) to test retnet's against: one token at a time,
// plain loops over std::vector<double>, and WKV by the direct sums of its definition in long
// double — no running maximum, no stabilisation, no Eigen — so it shares no code and no
// algorithm with the library's three forms. Also gives, per layer, the keys, values and WKV
// outputs, and each layer's final state in the (aa, bb, pp) form the recurrence would reach.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace retnet::reference {

/// A row-major (rows x cols) matrix.
struct NaiveRwkv4Matrix {
  long rows = 0, cols = 0;
  std::vector<double> values;
  double at(long r, long c) const { return values[static_cast<std::size_t>(r * cols + c)]; }
};

struct NaiveRwkv4Layer {
  std::vector<double> ln1Weight, ln1Bias, ln2Weight, ln2Bias;
  std::vector<double> timeDecay, timeFirst;  // raw: w = −exp(time_decay); u as stored
  std::vector<double> attMixK, attMixV, attMixR, ffnMixK, ffnMixR;
  NaiveRwkv4Matrix attKey, attValue, attReceptance, attOutput;  // (A,C) x3, (C,A)
  NaiveRwkv4Matrix ffnKey, ffnReceptance, ffnValue;             // (F,C), (C,C), (C,F)
};

struct NaiveRwkv4Model {
  NaiveRwkv4Matrix embed;  // (V, C)
  std::vector<double> ln0Weight, ln0Bias, lnOutWeight, lnOutBias;
  std::vector<NaiveRwkv4Layer> layers;
  NaiveRwkv4Matrix head;  // (V, C)
  double eps = 1e-5;
};

/// One sequence's results.
struct NaiveRwkv4Output {
  std::vector<std::vector<double>> logits;  // (T, V)
  /// Per layer: the five state vectors (ffn_xx, att_xx, aa, bb, pp) after the last token.
  std::vector<std::vector<std::vector<double>>> state;
  /// Per layer: (T, A) keys, values and WKV outputs.
  std::vector<std::vector<std::vector<double>>> keys, values, wkv;
};

namespace naive_rwkv4_detail {

inline std::vector<double> layerNorm(const std::vector<double>& x, const std::vector<double>& w,
                                     const std::vector<double>& b, double eps) {
  const double n = static_cast<double>(x.size());
  double mean = 0;
  for (double v : x) mean += v;
  mean /= n;
  double var = 0;
  for (double v : x) var += (v - mean) * (v - mean);
  var /= n;
  std::vector<double> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i)
    y[i] = (x[i] - mean) / std::sqrt(var + eps) * w[i] + b[i];
  return y;
}

inline std::vector<double> times(const NaiveRwkv4Matrix& m, const std::vector<double>& x) {
  std::vector<double> y(static_cast<std::size_t>(m.rows), 0.0);
  for (long r = 0; r < m.rows; ++r) {
    double sum = 0;
    for (long c = 0; c < m.cols; ++c) sum += m.at(r, c) * x[static_cast<std::size_t>(c)];
    y[static_cast<std::size_t>(r)] = sum;
  }
  return y;
}

inline std::vector<double> mix(const std::vector<double>& mu, const std::vector<double>& a,
                               const std::vector<double>& b) {
  std::vector<double> y(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) y[i] = mu[i] * a[i] + (1 - mu[i]) * b[i];
  return y;
}

inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

}  // namespace naive_rwkv4_detail

/// WKV of channel c at step t from the empty state, by its definition:
///   y_t = (Σ_{i<t} e^(k_i + (t−1−i)w) v_i + e^(u + k_t) v_t) / (Σ_{i<t} e^(k_i + (t−1−i)w) + e^(u
///   + k_t))
inline double naiveWkv(const std::vector<std::vector<double>>& k,
                       const std::vector<std::vector<double>>& v, double w, double u, std::size_t c,
                       std::size_t t) {
  long double num = 0, den = 0;
  for (std::size_t i = 0; i < t; ++i) {
    const long double e =
        std::exp(static_cast<long double>(k[i][c]) +
                 static_cast<long double>(t - 1 - i) * static_cast<long double>(w));
    num += e * static_cast<long double>(v[i][c]);
    den += e;
  }
  const long double e = std::exp(static_cast<long double>(u) + static_cast<long double>(k[t][c]));
  num += e * static_cast<long double>(v[t][c]);
  den += e;
  return static_cast<double>(num / den);
}

/// The state (aa, bb, pp) of channel c after steps 0 … n−1: pp = max_i (k_i + (n−1−i)w), aa and
/// bb the sums rescaled by e^(−pp).
inline void naiveWkvState(const std::vector<std::vector<double>>& k,
                          const std::vector<std::vector<double>>& v, double w, std::size_t c,
                          std::size_t n, double& aa, double& bb, double& pp) {
  long double top = -1e30L;
  for (std::size_t i = 0; i < n; ++i)
    top = std::max(top, static_cast<long double>(k[i][c]) +
                            static_cast<long double>(n - 1 - i) * static_cast<long double>(w));
  long double a = 0, b = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const long double e =
        std::exp(static_cast<long double>(k[i][c]) +
                 static_cast<long double>(n - 1 - i) * static_cast<long double>(w) - top);
    a += e * static_cast<long double>(v[i][c]);
    b += e;
  }
  aa = static_cast<double>(a);
  bb = static_cast<double>(b);
  pp = n == 0 ? -1e30 : static_cast<double>(top);
}

/// The model on one sequence from the empty state, token by token.
inline NaiveRwkv4Output naiveRwkv4(const NaiveRwkv4Model& m,
                                   const std::vector<std::int64_t>& tokens) {
  using namespace naive_rwkv4_detail;
  const std::size_t T = tokens.size(), L = m.layers.size();
  const auto C = static_cast<std::size_t>(m.embed.cols);
  NaiveRwkv4Output out;
  out.keys.assign(L, {});
  out.values.assign(L, {});
  out.wkv.assign(L, {});
  out.state.assign(L, {});
  std::vector<std::vector<double>> attPrev(L, std::vector<double>(C, 0.0)), ffnPrev = attPrev;
  for (std::size_t t = 0; t < T; ++t) {
    std::vector<double> x(C);
    for (std::size_t i = 0; i < C; ++i) x[i] = m.embed.at(tokens[t], static_cast<long>(i));
    x = layerNorm(x, m.ln0Weight, m.ln0Bias, m.eps);
    for (std::size_t l = 0; l < L; ++l) {
      const NaiveRwkv4Layer& p = m.layers[l];
      // Time mixing.
      const std::vector<double> h = layerNorm(x, p.ln1Weight, p.ln1Bias, m.eps);
      const std::vector<double> k = times(p.attKey, mix(p.attMixK, h, attPrev[l]));
      const std::vector<double> v = times(p.attValue, mix(p.attMixV, h, attPrev[l]));
      std::vector<double> r = times(p.attReceptance, mix(p.attMixR, h, attPrev[l]));
      attPrev[l] = h;
      out.keys[l].push_back(k);
      out.values[l].push_back(v);
      std::vector<double> y(k.size());
      for (std::size_t c = 0; c < k.size(); ++c) {
        const double w = -std::exp(p.timeDecay[c]);
        y[c] = naiveWkv(out.keys[l], out.values[l], w, p.timeFirst[c], c, t);
      }
      out.wkv[l].push_back(y);
      for (std::size_t c = 0; c < y.size(); ++c) y[c] *= sigmoid(r[c]);
      const std::vector<double> att = times(p.attOutput, y);
      for (std::size_t i = 0; i < C; ++i) x[i] += att[i];
      // Channel mixing.
      const std::vector<double> g = layerNorm(x, p.ln2Weight, p.ln2Bias, m.eps);
      std::vector<double> hidden = times(p.ffnKey, mix(p.ffnMixK, g, ffnPrev[l]));
      for (double& z : hidden) z = z > 0 ? z * z : 0.0;
      const std::vector<double> value = times(p.ffnValue, hidden);
      const std::vector<double> gate = times(p.ffnReceptance, mix(p.ffnMixR, g, ffnPrev[l]));
      ffnPrev[l] = g;
      for (std::size_t i = 0; i < C; ++i) x[i] += sigmoid(gate[i]) * value[i];
    }
    out.logits.push_back(times(m.head, layerNorm(x, m.lnOutWeight, m.lnOutBias, m.eps)));
  }
  for (std::size_t l = 0; l < L; ++l) {
    const std::size_t A = m.layers[l].timeDecay.size();
    std::vector<double> aa(A), bb(A), pp(A);
    for (std::size_t c = 0; c < A; ++c) {
      naiveWkvState(out.keys[l], out.values[l], -std::exp(m.layers[l].timeDecay[c]), c, T, aa[c],
                    bb[c], pp[c]);
    }
    out.state[l] = {ffnPrev[l], attPrev[l], aa, bb, pp};
  }
  return out;
}

}  // namespace retnet::reference
