// Naive double-precision twins of the stage functions (include/retnet/stages/*.hpp and the
// rotary stage in include/retnet/rotary.hpp): the oracles of tests/test_stages.cpp.
//
// Each twin is written straight from the formula in its comment, one element at a time, in
// double: plain loops, no products or reductions of Eigen (an Eigen::MatrixXd is used only as a
// container), nothing from include/retnet/. Clarity over speed. The activations, the interleaved
// rotary frequencies and the form enum are naive_msr.hpp's, the oracle of torchscale's layers.
//
// Shapes are written (rows x cols); "x (T x n)" is a matrix of T rows (positions) and n features.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "reference/naive_msr.hpp"

namespace retnet::reference {

/// A dense double matrix, only a container: every value below is computed by explicit loops.
using NaiveMatrix = Eigen::MatrixXd;

enum class NaiveActivation { kSwish, kGelu, kSigmoid, kReluSquared };
enum class NaiveRotaryLayout { kInterleaved, kHalfSplit };

/// act(z): swish(z) = z / (1 + e^(−z)); gelu(z) = z/2 · (1 + erf(z/√2)) (exact, erf form);
/// σ(z) = 1 / (1 + e^(−z)); relu²(z) = max(z, 0)².
inline double naiveActivation(double z, NaiveActivation activation) {
  switch (activation) {
    case NaiveActivation::kSwish:
      return naive_msr_detail::swish(z);
    case NaiveActivation::kGelu:
      return naive_msr_detail::gelu(z);
    case NaiveActivation::kSigmoid:
      return 1.0 / (1.0 + std::exp(-z));
    default:
      return z > 0 ? z * z : 0.0;
  }
}

/// Linear layer without bias (PyTorch's layout): y_rj = Σ_i x_ri W_ji.
///   x (rows x in), W (out x in) -> y (rows x out)
inline NaiveMatrix naiveLinear(const NaiveMatrix& x, const NaiveMatrix& W) {
  NaiveMatrix y(x.rows(), W.rows());
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    for (Eigen::Index j = 0; j < W.rows(); ++j) {
      double sum = 0.0;
      for (Eigen::Index i = 0; i < x.cols(); ++i) sum += x(r, i) * W(j, i);
      y(r, j) = sum;
    }
  }
  return y;
}

/// RMSNorm: y_ri = x_ri / sqrt((1/n) Σ_k x_rk² + eps) · w_i (w_i = 1 without a weight).
///   x (rows x n), w (n) or empty -> y (rows x n)
inline NaiveMatrix naiveRmsNorm(const NaiveMatrix& x, const std::vector<double>& w, double eps) {
  NaiveMatrix y(x.rows(), x.cols());
  const Eigen::Index n = x.cols();
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    double meanSquare = 0.0;
    for (Eigen::Index k = 0; k < n; ++k) meanSquare += x(r, k) * x(r, k);
    meanSquare /= static_cast<double>(n);
    for (Eigen::Index i = 0; i < n; ++i) {
      const double weight = w.empty() ? 1.0 : w[static_cast<std::size_t>(i)];
      y(r, i) = x(r, i) / std::sqrt(meanSquare + eps) * weight;
    }
  }
  return y;
}

/// LayerNorm (PyTorch's): y_ri = (x_ri − μ_r) / sqrt(σ²_r + eps) · w_i + b_i, with
/// μ_r = (1/n) Σ_k x_rk and the biased variance σ²_r = (1/n) Σ_k (x_rk − μ_r)².
///   x (rows x n), w, b (n) -> y (rows x n)
inline NaiveMatrix naiveLayerNorm(const NaiveMatrix& x, const std::vector<double>& w,
                                  const std::vector<double>& b, double eps) {
  NaiveMatrix y(x.rows(), x.cols());
  const Eigen::Index n = x.cols();
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    double mean = 0.0;
    for (Eigen::Index k = 0; k < n; ++k) mean += x(r, k);
    mean /= static_cast<double>(n);
    double variance = 0.0;
    for (Eigen::Index k = 0; k < n; ++k) variance += (x(r, k) - mean) * (x(r, k) - mean);
    variance /= static_cast<double>(n);
    for (Eigen::Index i = 0; i < n; ++i) {
      const auto at = static_cast<std::size_t>(i);
      y(r, i) = (x(r, i) - mean) / std::sqrt(variance + eps) * w[at] + b[at];
    }
  }
  return y;
}

/// Element-wise activation: y_ri = act(x_ri).   x (rows x n) -> y (rows x n)
inline NaiveMatrix naiveActivate(const NaiveMatrix& x, NaiveActivation activation) {
  NaiveMatrix y(x.rows(), x.cols());
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    for (Eigen::Index i = 0; i < x.cols(); ++i) y(r, i) = naiveActivation(x(r, i), activation);
  }
  return y;
}

/// RWKV's token shift: y_r = μ ⊙ x_r + (1 − μ) ⊙ x_{r−1} within each sequence of `time` rows,
/// x_{−1} the sequence's row of `previous`.   x (batch·time x n), previous (batch x n), μ (n)
inline NaiveMatrix naiveTokenShiftMix(const NaiveMatrix& x, Eigen::Index time,
                                      const NaiveMatrix& previous, const std::vector<double>& mu) {
  NaiveMatrix y(x.rows(), x.cols());
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    for (Eigen::Index i = 0; i < x.cols(); ++i) {
      const double before = r % time == 0 ? previous(r / time, i) : x(r - 1, i);
      const double m = mu[static_cast<std::size_t>(i)];
      y(r, i) = m * x(r, i) + (1 - m) * before;
    }
  }
  return y;
}

/// Residual sum: z_ri = y_ri + x_ri.   x, y (rows x n) -> z (rows x n)
inline NaiveMatrix naiveAdd(const NaiveMatrix& x, const NaiveMatrix& y) {
  NaiveMatrix z(x.rows(), x.cols());
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    for (Eigen::Index i = 0; i < x.cols(); ++i) z(r, i) = y(r, i) + x(r, i);
  }
  return z;
}

/// Group norm and output gate of multi-scale retention (paper eq. 8), per row r and head h
/// (columns c = h·dv + i, i < dv):
///   y_rc = o_rc / sqrt((1/dv) Σ_{i'<dv} o_{r,h·dv+i'}² + eps) · w_i · act(g_rc)
/// (w_i = 1 without a weight; one weight vector shared by every head).
///   o, g (rows x heads·dv), w (dv) or empty -> y (rows x heads·dv)
inline NaiveMatrix naiveGroupNormGate(const NaiveMatrix& o, long heads,
                                      const std::vector<double>& w, double eps,
                                      const NaiveMatrix& g, NaiveActivation activation) {
  const Eigen::Index dv = o.cols() / heads;
  NaiveMatrix y(o.rows(), o.cols());
  for (Eigen::Index r = 0; r < o.rows(); ++r) {
    for (Eigen::Index h = 0; h < heads; ++h) {
      double meanSquare = 0.0;
      for (Eigen::Index i = 0; i < dv; ++i) meanSquare += o(r, h * dv + i) * o(r, h * dv + i);
      meanSquare /= static_cast<double>(dv);
      for (Eigen::Index i = 0; i < dv; ++i) {
        const Eigen::Index c = h * dv + i;
        const double weight = w.empty() ? 1.0 : w[static_cast<std::size_t>(i)];
        y(r, c) =
            o(r, c) / std::sqrt(meanSquare + eps) * weight * naiveActivation(g(r, c), activation);
      }
    }
  }
  return y;
}

/// Gated feed-forward network: y = (act(x W_aᵀ) ⊙ x W_bᵀ) W_outᵀ, i.e.
///   h_rf = act(Σ_i x_ri A_fi) · Σ_i x_ri B_fi,   y_rj = Σ_f h_rf O_jf.
/// torchscale's GLU: A = fc1, B = gate, O = fc2; FLA's SwiGLU: A = gate_proj, B = up_proj,
/// O = down_proj, act = swish.
///   x (rows x D), A, B (F x D), O (D x F) -> y (rows x D)
inline NaiveMatrix naiveGatedFeedForward(const NaiveMatrix& x, const NaiveMatrix& A,
                                         const NaiveMatrix& B, const NaiveMatrix& O,
                                         NaiveActivation activation) {
  const NaiveMatrix a = naiveLinear(x, A), b = naiveLinear(x, B);
  NaiveMatrix hidden(x.rows(), A.rows());
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    for (Eigen::Index f = 0; f < A.rows(); ++f) {
      hidden(r, f) = naiveActivation(a(r, f), activation) * b(r, f);
    }
  }
  return naiveLinear(hidden, O);
}

/// Embedding lookup: y_ri = scale · E_{token_r, i}.
///   tokens (rows), E (vocab x D) -> y (rows x D)
inline NaiveMatrix naiveEmbed(const std::vector<std::int64_t>& tokens, const NaiveMatrix& E,
                              double scale) {
  NaiveMatrix y(static_cast<Eigen::Index>(tokens.size()), E.cols());
  for (Eigen::Index r = 0; r < y.rows(); ++r) {
    const auto token = static_cast<Eigen::Index>(tokens[static_cast<std::size_t>(r)]);
    for (Eigen::Index i = 0; i < E.cols(); ++i) y(r, i) = scale * E(token, i);
  }
  return y;
}

/// The paper's decay of head h (§2.2): γ_h = 1 − 2^(−5−h).
inline double naiveRetnetDecay(long head) {
  return 1.0 - std::pow(2.0, -5.0 - static_cast<double>(head));
}

/// Rotary frequencies θ_i, i < n = dk/2: interleaved (torchscale) 10000^(−i/(n−1)) (θ_0 = 1
/// when n = 1, naive_msr.hpp's naiveFrequencies); half-split (NeoX, FLA) 10000^(−2i/dk).
inline std::vector<double> naiveRotaryFrequencies(long keyDim, NaiveRotaryLayout layout) {
  if (layout == NaiveRotaryLayout::kInterleaved) return naiveFrequencies(keyDim);
  std::vector<double> theta;
  for (long i = 0; i < keyDim / 2; ++i) {
    theta.push_back(std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(keyDim)));
  }
  return theta;
}

/// The rotary table: cos pθ_i and sin pθ_i for positions p = start + t.
///   -> cosines, sines (rows x dk/2)
struct NaiveRotaryTable {
  NaiveMatrix cosines, sines;
};
inline NaiveRotaryTable naiveRotaryTable(long keyDim, NaiveRotaryLayout layout, std::int64_t start,
                                         long rows) {
  const std::vector<double> theta = naiveRotaryFrequencies(keyDim, layout);
  NaiveRotaryTable table{NaiveMatrix(rows, keyDim / 2), NaiveMatrix(rows, keyDim / 2)};
  for (long t = 0; t < rows; ++t) {
    for (long i = 0; i < keyDim / 2; ++i) {
      const double angle = static_cast<double>(start + t) * theta[static_cast<std::size_t>(i)];
      table.cosines(t, i) = std::cos(angle);
      table.sines(t, i) = std::sin(angle);
    }
  }
  return table;
}

/// Rotary position encoding of every dk-wide head of every row, row t at position p = start + t.
/// Pair i of a head is (e_1, e_2) = (2i, 2i+1) interleaved or (i, i + dk/2) half-split, and
///   y_{e_1} = x_{e_1} cos pθ_i − x_{e_2} sin pθ_i,   y_{e_2} = x_{e_2} cos pθ_i + x_{e_1} sin
///   pθ_i. x (rows x heads·dk) -> y (rows x heads·dk)
inline NaiveMatrix naiveRotate(const NaiveMatrix& x, long keyDim, NaiveRotaryLayout layout,
                               std::int64_t start) {
  const std::vector<double> theta = naiveRotaryFrequencies(keyDim, layout);
  const long n = keyDim / 2;
  NaiveMatrix y = x;
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const double p = static_cast<double>(start + t);
    for (Eigen::Index head = 0; head * keyDim < x.cols(); ++head) {
      for (long i = 0; i < n; ++i) {
        const Eigen::Index e1 =
            head * keyDim + (layout == NaiveRotaryLayout::kInterleaved ? 2 * i : i);
        const Eigen::Index e2 = e1 + (layout == NaiveRotaryLayout::kInterleaved ? 1 : n);
        const double angle = p * theta[static_cast<std::size_t>(i)];
        y(t, e1) = x(t, e1) * std::cos(angle) - x(t, e2) * std::sin(angle);
        y(t, e2) = x(t, e2) * std::cos(angle) + x(t, e1) * std::sin(angle);
      }
    }
  }
  return y;
}

/// The retention core of one head (paper §2.1) as the stage defines it.
struct NaiveRetentionSpec {
  double gamma = 1.0;
  bool torchscale = false;  ///< divide by torchscale's per-form factor (else plain retention)
  double scale = 1.0;       ///< s multiplying q·k
  bool scaleOnKey = false;  ///< s carried by k (the state holds s·kᵀv) or by q (it holds kᵀv)
  NaiveForm form = NaiveForm::kParallel;
  long chunk = 0;  ///< chunkwise: the chunk size C (may exceed T; the last chunk may be short)
  long start = 0;  ///< positions before the first row (the recurrent factor's window)
};

struct NaiveRetentionOutput {
  NaiveMatrix out;    ///< (T x dv)
  NaiveMatrix state;  ///< (dk x dv): the state after the last row
};

/// Retention of one head over T rows with an incoming state S_in (dk x dv, zeros for none).
/// With q' = s·q, k' = k (scale on the query) or q' = q, k' = s·k (scale on the key), every form
/// computes, t counted from the call's first row,
///
///   U_t   = Σ_{j<=t} γ^(t−j) (q'_t·k'_j) v_j  +  γ^(t+1) q'_t S_in
///   S_out = γ^T S_in + Σ_{j<T} γ^(T−1−j) k'_jᵀ v_j
///
/// and returns o_t = U_t (plain retention) or, for torchscale's normalisation
/// (docs/semantics/torchscale.md §3.3, naive_msr.hpp), o_t = U_t / f_t with the factor of the form:
///
///   recurrent:  f_t = sqrt(Σ_{m<=start+t} γ^m)
///   chunkwise:  rows in chunks of C from the call's first row; row t = c0 + i of the chunk at c0
///               f_t = r_i · a_t,  r_i = sqrt(Σ_{m<=i} γ^m),  a_t = max(iota_t, sigma_c),
///               iota_t  = max(Σ_{j<=i} |q'_t·k'_{c0+j}| γ^(i−j) / r_i, 1),
///               sigma_c = max(max_b Σ_a |S_c[a][b]| / L, 1),  L = Σ_{m<C} γ^m,
///               S_c = γ^c0 S_in + Σ_{j<c0} γ^(c0−1−j) k'_jᵀ v_j, the state before the chunk
///               (torchscale keeps R = S_c / L; sigma_c is its largest column abs-sum)
///   parallel:   one chunk of C = T rows, with a_t capped at 5e4 (torchscale's clamp). Without
///               an incoming state sigma = 1 and this is torchscale's parallel form exactly;
///               with one, it extends that form as the one-chunk chunkwise form.
///
///   q, k (T x dk), v (T x dv), S_in (dk x dv)
inline NaiveRetentionOutput naiveRetentionStage(const NaiveMatrix& q, const NaiveMatrix& k,
                                                const NaiveMatrix& v, const NaiveMatrix& stateIn,
                                                const NaiveRetentionSpec& spec) {
  using Index = Eigen::Index;
  const Index T = q.rows(), dk = q.cols(), dv = v.cols();
  const double gamma = spec.gamma;
  const auto power = [gamma](Index m) { return std::pow(gamma, static_cast<double>(m)); };
  const auto windowSum = [&](Index count) {  // Σ_{m<count} γ^m
    double sum = 0.0;
    for (Index m = 0; m < count; ++m) sum += power(m);
    return sum;
  };
  NaiveMatrix qs = q, ks = k;  // q', k'
  for (Index t = 0; t < T; ++t) {
    for (Index a = 0; a < dk; ++a) {
      if (spec.scaleOnKey) {
        ks(t, a) *= spec.scale;
      } else {
        qs(t, a) *= spec.scale;
      }
    }
  }
  const auto dot = [&](Index t, Index j) {  // q'_t · k'_j
    double sum = 0.0;
    for (Index a = 0; a < dk; ++a) sum += qs(t, a) * ks(j, a);
    return sum;
  };
  // The state after the first `rows` rows: γ^rows S_in + Σ_{j<rows} γ^(rows−1−j) k'_jᵀ v_j.
  const auto stateAfter = [&](Index rows) {
    NaiveMatrix S(dk, dv);
    for (Index a = 0; a < dk; ++a) {
      for (Index b = 0; b < dv; ++b) {
        double sum = power(rows) * stateIn(a, b);
        for (Index j = 0; j < rows; ++j) sum += power(rows - 1 - j) * ks(j, a) * v(j, b);
        S(a, b) = sum;
      }
    }
    return S;
  };

  NaiveRetentionOutput result{NaiveMatrix(T, dv), stateAfter(T)};
  NaiveMatrix& out = result.out;
  for (Index t = 0; t < T; ++t) {
    for (Index b = 0; b < dv; ++b) {
      double sum = 0.0;
      for (Index j = 0; j <= t; ++j) sum += power(t - j) * dot(t, j) * v(j, b);
      for (Index a = 0; a < dk; ++a) sum += power(t + 1) * qs(t, a) * stateIn(a, b);
      out(t, b) = sum;  // U_t
    }
  }
  if (!spec.torchscale) return result;

  if (spec.form == NaiveForm::kRecurrent) {
    for (Index t = 0; t < T; ++t) {
      const double f = std::sqrt(windowSum(spec.start + t + 1));
      for (Index b = 0; b < dv; ++b) out(t, b) /= f;
    }
    return result;
  }
  const bool parallel = spec.form == NaiveForm::kParallel;
  const Index C = parallel ? T : spec.chunk;
  const double L = windowSum(C);
  for (Index c0 = 0; c0 < T; c0 += C) {
    const NaiveMatrix before = stateAfter(c0);  // S_c
    double largestColumn = 0.0;
    for (Index b = 0; b < dv; ++b) {
      double column = 0.0;
      for (Index a = 0; a < dk; ++a) column += std::abs(before(a, b));
      largestColumn = std::max(largestColumn, column);
    }
    const double sigma = std::max(largestColumn / L, 1.0);
    for (Index i = 0; i < C && c0 + i < T; ++i) {
      const Index t = c0 + i;
      const double r = std::sqrt(windowSum(i + 1));
      double absSum = 0.0;
      for (Index j = 0; j <= i; ++j) absSum += std::abs(dot(t, c0 + j)) * power(i - j) / r;
      const double iota = std::max(absSum, 1.0);
      double a = std::max(iota, sigma);
      if (parallel) a = std::min(a, 5e4);
      for (Index b = 0; b < dv; ++b) out(t, b) /= r * a;
    }
  }
  return result;
}

}  // namespace retnet::reference
