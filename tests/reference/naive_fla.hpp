// Naive double-precision oracle for the RetNet language model of flash-linear-attention (FLA,
// commit bc3b101), the model of the fla-hub checkpoints (fla-hub/retnet-1.3B-100B and relatives).
//
// Written straight from the function stated in docs/semantics/fla.md §2 (= the golden data's
// README, tests/data/fla/README.md §2) and deliberately independent of the library and of the
// torchscale oracle (naive_msr.hpp): plain Eigen matrices in double, one (batch item, query head)
// at a time, nothing from include/retnet/. Clarity over speed.
//
// Conventions: a Linear weight is (out, in) and applied as y = x·Wᵀ; no biases, no dropout, no
// residual scaling. Activations are matrices with one row per (batch item b, position t), row
// b·T + t, i.e. (B, T, features) row-major flattened to (B·T, features). Positions are 0-based
// absolute indices.
//
// The recurrent form (token by token, state update then read) is the primary definition; the
// parallel form (an explicit decay mask) and the chunkwise form (fla.md §2.6) are second and third
// definitions of the same function, which in FLA has no per-form normalisation: all forms agree
// to rounding. Every form produces the final state and can start from given states at a given
// position (a prefill in one form followed by decoding in another).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

namespace retnet::reference {

enum class NaiveFlaForm { kRecurrent, kParallel, kChunkwise };

/// The dimensions of an FLA RetNet (fla.md §1): d, L, H query heads, H_kv key/value heads, the
/// per-head key and value widths dk and dv (both per *query* head), the MLP width I, the
/// vocabulary V, the eps of every RMS norm, and whether the head is tied to the embedding.
struct NaiveFlaConfig {
  long hidden = 0;        ///< d
  long layers = 0;        ///< L
  long heads = 0;         ///< H
  long kvHeads = 0;       ///< H_kv; H is a multiple of it
  long keyDim = 0;        ///< dk, per head
  long valueDim = 0;      ///< dv, per head
  long intermediate = 0;  ///< I
  long vocab = 0;         ///< V
  double eps = 1e-6;      ///< norm_eps, for every RMS norm including the head norm
  bool tied = false;      ///< tie_word_embeddings: the output projection is the embedding table
};

using NaiveFlaMatrix = Eigen::MatrixXd;
using NaiveFlaVector = Eigen::VectorXd;

/// One block's weights under FLA's names (fla.md §1): Linear weights are (out, in).
struct NaiveFlaLayerWeights {
  NaiveFlaVector attnNorm;  ///< (d)          attn_norm.weight
  NaiveFlaMatrix q;         ///< (H·dk, d)    attn.q_proj.weight
  NaiveFlaMatrix k;         ///< (Hkv·dk, d)  attn.k_proj.weight
  NaiveFlaMatrix v;         ///< (Hkv·dv, d)  attn.v_proj.weight
  NaiveFlaMatrix g;         ///< (H·dv, d)    attn.g_proj.weight (output gate)
  NaiveFlaMatrix o;         ///< (d, H·dv)    attn.o_proj.weight
  NaiveFlaVector headNorm;  ///< (dv)         attn.g_norm_swish_gate.weight / attn.g_norm.weight
  NaiveFlaVector mlpNorm;   ///< (d)          mlp_norm.weight
  NaiveFlaMatrix gate;      ///< (I, d)       mlp.gate_proj.weight (the silu branch)
  NaiveFlaMatrix up;        ///< (I, d)       mlp.up_proj.weight
  NaiveFlaMatrix down;      ///< (d, I)       mlp.down_proj.weight
};

/// The whole model's weights.
struct NaiveFlaWeights {
  NaiveFlaMatrix embedding;  ///< (V, d) model.embeddings.weight
  std::vector<NaiveFlaLayerWeights> layers;
  NaiveFlaVector finalNorm;  ///< (d) model.norm.weight
  NaiveFlaMatrix lmHead;     ///< (V, d) lm_head.weight; empty when the config is tied

  /// The output projection: lm_head, or the embedding table when tied.
  const NaiveFlaMatrix& output(const NaiveFlaConfig& config) const {
    return config.tied ? embedding : lmHead;
  }
};

/// The old fused MLP layout (fla.md §1): one gate_proj of 2I rows, rows [0, I) the gate (silu)
/// branch and rows [I, 2I) the up branch.
inline void naiveFlaSplitFusedGate(const NaiveFlaMatrix& fused, NaiveFlaMatrix& gate,
                                   NaiveFlaMatrix& up) {
  if (fused.rows() % 2 != 0) {
    throw std::invalid_argument("retnet::reference (naive_fla): a fused gate_proj has 2I rows");
  }
  const Eigen::Index I = fused.rows() / 2;
  gate = fused.topRows(I);
  up = fused.bottomRows(I);
}

/// The recurrent state of the whole model: per layer, per (batch item b, query head h), the
/// unnormalised retention state S (dk×dv, K-major: S(i, j) pairs key element i with value
/// element j), and the number of tokens seen, which is the RoPE position of the next token.
struct NaiveFlaState {
  long position = 0;
  long batch = 0;
  std::vector<std::vector<NaiveFlaMatrix>> S;  ///< S[layer][b·H + h]
};

/// Everything one pass computes, for tokens (B, T).
struct NaiveFlaOutput {
  NaiveFlaMatrix logits;               ///< (B·T, V)
  std::vector<NaiveFlaMatrix> hidden;  ///< per layer: the residual stream after the block (B·T, d)
  NaiveFlaState state;                 ///< after the last token
};

/// The state before the first token: every S zero, position 0.
inline NaiveFlaState naiveFlaZeroState(const NaiveFlaConfig& c, long batch) {
  NaiveFlaState state;
  state.batch = batch;
  state.S.assign(static_cast<std::size_t>(c.layers),
                 std::vector<NaiveFlaMatrix>(static_cast<std::size_t>(batch * c.heads),
                                             NaiveFlaMatrix::Zero(c.keyDim, c.valueDim)));
  return state;
}

/// Layer `layer`'s states as FLA's cache tensor (B, H, dk, dv), K-major, row-major flattened:
/// element [b][h][i][j] = S(i, j).
inline std::vector<double> naiveFlaStateTensor(const NaiveFlaConfig& c, const NaiveFlaState& state,
                                               long layer) {
  std::vector<double> out;
  out.reserve(static_cast<std::size_t>(state.batch * c.heads * c.keyDim * c.valueDim));
  for (const NaiveFlaMatrix& S : state.S.at(static_cast<std::size_t>(layer))) {
    for (long i = 0; i < c.keyDim; ++i) {
      for (long j = 0; j < c.valueDim; ++j) out.push_back(S(i, j));
    }
  }
  return out;
}

/// γ_h = 1 − 2^(−5−h) for query head h (fla.md §2.4.5; exact in double).
inline double naiveFlaGamma(long head) {
  return 1.0 - std::ldexp(1.0, static_cast<int>(-5 - head));
}

/// θ_i = 10000^(−2i/dk), i = 0 … dk/2 − 1 (fla.md §2.4.3: the usual RoPE frequencies).
inline std::vector<double> naiveFlaFrequencies(long keyDim) {
  std::vector<double> theta;
  for (long i = 0; i < keyDim / 2; ++i) {
    theta.push_back(std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(keyDim)));
  }
  return theta;
}

namespace naive_fla_detail {

using Matrix = NaiveFlaMatrix;
using Vector = NaiveFlaVector;

inline void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("retnet::reference (naive_fla): " + what);
}

inline void requireShape(const Matrix& m, long rows, long cols, const std::string& name) {
  require(m.rows() == rows && m.cols() == cols,
          name + " is " + std::to_string(m.rows()) + "x" + std::to_string(m.cols()) +
              ", expected " + std::to_string(rows) + "x" + std::to_string(cols));
}

inline void requireSize(const Vector& v, long size, const std::string& name) {
  require(v.size() == size, name + " has " + std::to_string(v.size()) + " elements, expected " +
                                std::to_string(size));
}

inline void check(const NaiveFlaConfig& c, const NaiveFlaWeights& w) {
  require(c.hidden > 0 && c.layers > 0 && c.heads > 0 && c.kvHeads > 0 && c.keyDim > 0 &&
              c.valueDim > 0 && c.intermediate > 0 && c.vocab > 0,
          "every dimension must be positive");
  require(c.heads % c.kvHeads == 0, "heads must be a multiple of kvHeads");
  require(c.keyDim % 2 == 0, "the key dimension per head must be even (rotary halves)");
  require(w.layers.size() == static_cast<std::size_t>(c.layers), "wrong number of layers");
  const long d = c.hidden, H = c.heads, Hkv = c.kvHeads, dk = c.keyDim, dv = c.valueDim;
  const long I = c.intermediate;
  requireShape(w.embedding, c.vocab, d, "embedding");
  requireSize(w.finalNorm, d, "finalNorm");
  if (!c.tied) requireShape(w.lmHead, c.vocab, d, "lmHead");
  for (const NaiveFlaLayerWeights& l : w.layers) {
    requireSize(l.attnNorm, d, "attnNorm");
    requireShape(l.q, H * dk, d, "q");
    requireShape(l.k, Hkv * dk, d, "k");
    requireShape(l.v, Hkv * dv, d, "v");
    requireShape(l.g, H * dv, d, "g");
    requireShape(l.o, d, H * dv, "o");
    requireSize(l.headNorm, dv, "headNorm");
    requireSize(l.mlpNorm, d, "mlpNorm");
    requireShape(l.gate, I, d, "gate");
    requireShape(l.up, I, d, "up");
    requireShape(l.down, d, I, "down");
  }
}

inline void checkState(const NaiveFlaConfig& c, const NaiveFlaState& s, long batch) {
  require(s.batch == batch, "the state's batch differs from the input's");
  require(s.position >= 0, "the state's position must be non-negative");
  require(s.S.size() == static_cast<std::size_t>(c.layers), "the state has the wrong layer count");
  for (const std::vector<Matrix>& layer : s.S) {
    require(layer.size() == static_cast<std::size_t>(batch * c.heads),
            "the state needs batch·heads matrices per layer");
    for (const Matrix& S : layer) requireShape(S, c.keyDim, c.valueDim, "state S");
  }
}

inline double silu(double z) { return z / (1.0 + std::exp(-z)); }

/// RMSNorm of every row: x / sqrt(mean(x²) + eps) ⊙ w (fla.md §2.2).
inline Matrix rmsNorm(const Matrix& x, const Vector& w, double eps) {
  Matrix y(x.rows(), x.cols());
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const double meanSquare = x.row(r).squaredNorm() / static_cast<double>(x.cols());
    const double inverse = 1.0 / std::sqrt(meanSquare + eps);
    for (Eigen::Index i = 0; i < x.cols(); ++i) y(r, i) = x(r, i) * inverse * w(i);
  }
  return y;
}

/// NeoX "rotate half" on every head slice of width dk of row `row` of x, at position p
/// (fla.md §2.4.3): element i pairs with element i + dk/2.
inline void rotateRow(Matrix& x, Eigen::Index row, long dk, long p,
                      const std::vector<double>& theta) {
  const long n = dk / 2;
  for (long head = 0; head * dk < x.cols(); ++head) {
    for (long i = 0; i < n; ++i) {
      const double angle = static_cast<double>(p) * theta[static_cast<std::size_t>(i)];
      const double c = std::cos(angle), s = std::sin(angle);
      const double a = x(row, head * dk + i), b = x(row, head * dk + i + n);
      x(row, head * dk + i) = a * c - b * s;
      x(row, head * dk + i + n) = a * s + b * c;
    }
  }
}

// Retention of one (batch item, query head) over a segment of T tokens (fla.md §2.6): q, k (T, dk)
// rotated, v (T, dv); S (dk, dv) is the state before the segment on entry and after it on return.
// Returns o (T, dv) = s · Σ_{τ≤t} γ^(t−τ)(q_t·k_τ) v_τ + s·γ^(t+1)·q_t·S_in.

/// Recurrent: per token S ← γS + k_tᵀv_t, then o_t = s·q_t·S.
inline Matrix retentionRecurrent(const Matrix& q, const Matrix& k, const Matrix& v, Matrix& S,
                                 double gamma, double scale) {
  Matrix o(q.rows(), v.cols());
  for (Eigen::Index t = 0; t < q.rows(); ++t) {
    S = gamma * S + k.row(t).transpose() * v.row(t);
    o.row(t) = scale * (q.row(t) * S);
  }
  return o;
}

/// Parallel: O = s·((Q·Kᵀ) ⊙ D)·V + s·diag(γ^(t+1))·Q·S_in with D[t][τ] = γ^(t−τ) for τ ≤ t;
/// then S = γ^T·S_in + Σ_τ γ^(T−1−τ) k_τᵀv_τ.
inline Matrix retentionParallel(const Matrix& q, const Matrix& k, const Matrix& v, Matrix& S,
                                double gamma, double scale) {
  const Eigen::Index T = q.rows();
  Matrix D = Matrix::Zero(T, T);
  for (Eigen::Index t = 0; t < T; ++t) {
    for (Eigen::Index tau = 0; tau <= t; ++tau) D(t, tau) = std::pow(gamma, double(t - tau));
  }
  Vector fromState(T), toState(T);
  for (Eigen::Index t = 0; t < T; ++t) {
    fromState(t) = std::pow(gamma, double(t + 1));
    toState(t) = std::pow(gamma, double(T - 1 - t));
  }
  const Matrix scores = (q * k.transpose()).cwiseProduct(D);
  const Matrix o = scale * (scores * v) + scale * (fromState.asDiagonal() * (q * S));
  S = std::pow(gamma, double(T)) * S + k.transpose() * toState.asDiagonal() * v;
  return o;
}

/// Chunkwise with chunk size C; chunk c covers n = min(C, T − c·C) tokens and uses n in both
/// exponents (a short last chunk decays the state by γ^n):
///   o_i = s·(γ^(i+1)·q_i·S + Σ_{j≤i} γ^(i−j)(q_i·k_j) v_j),   S ← γ^n·S + Σ_j γ^(n−1−j) k_jᵀv_j.
inline Matrix retentionChunkwise(const Matrix& q, const Matrix& k, const Matrix& v, Matrix& S,
                                 double gamma, double scale, long chunk) {
  const Eigen::Index T = q.rows();
  Matrix o(T, v.cols());
  for (Eigen::Index c0 = 0; c0 < T; c0 += chunk) {
    const Eigen::Index n = std::min<Eigen::Index>(chunk, T - c0);
    for (Eigen::Index i = 0; i < n; ++i) {
      Eigen::RowVectorXd row = std::pow(gamma, double(i + 1)) * (q.row(c0 + i) * S);
      for (Eigen::Index j = 0; j <= i; ++j) {
        row += std::pow(gamma, double(i - j)) * q.row(c0 + i).dot(k.row(c0 + j)) * v.row(c0 + j);
      }
      o.row(c0 + i) = scale * row;
    }
    Matrix next = std::pow(gamma, double(n)) * S;
    for (Eigen::Index j = 0; j < n; ++j) {
      next += std::pow(gamma, double(n - 1 - j)) * (k.row(c0 + j).transpose() * v.row(c0 + j));
    }
    S = next;
  }
  return o;
}

/// One block over x (B·T, d), tokens at positions `position` … position+T−1, every retention in
/// `form`, starting from (and updating) the layer's states S[b·H + h] (fla.md §2.3–2.5).
inline Matrix block(const NaiveFlaConfig& c, const NaiveFlaLayerWeights& w, const Matrix& x,
                    long batch, long time, long position, NaiveFlaForm form, long chunk,
                    std::vector<Matrix>& states) {
  const long H = c.heads, dk = c.keyDim, dv = c.valueDim, G = c.heads / c.kvHeads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dk));

  // 1. Projections from the normed input; RoPE on q and k at absolute positions.
  const Matrix u = rmsNorm(x, w.attnNorm, c.eps);
  Matrix q = u * w.q.transpose();
  Matrix k = u * w.k.transpose();
  const Matrix v = u * w.v.transpose();
  const Matrix g = u * w.g.transpose();
  const std::vector<double> theta = naiveFlaFrequencies(dk);
  for (long b = 0; b < batch; ++b) {
    for (long t = 0; t < time; ++t) {
      rotateRow(q, b * time + t, dk, position + t, theta);
      rotateRow(k, b * time + t, dk, position + t, theta);
    }
  }

  // 2. Retention per (batch item, query head h), h reading key/value head h / G; then the head
  //    norm (one weight vector for all heads) and the swish gate.
  Matrix gated(batch * time, H * dv);
  for (long b = 0; b < batch; ++b) {
    for (long h = 0; h < H; ++h) {
      const long j = h / G;
      const Matrix qh = q.block(b * time, h * dk, time, dk);
      const Matrix kh = k.block(b * time, j * dk, time, dk);
      const Matrix vh = v.block(b * time, j * dv, time, dv);
      Matrix& S = states[static_cast<std::size_t>(b * H + h)];
      const double gamma = naiveFlaGamma(h);
      const Matrix o = form == NaiveFlaForm::kRecurrent
                           ? retentionRecurrent(qh, kh, vh, S, gamma, scale)
                       : form == NaiveFlaForm::kParallel
                           ? retentionParallel(qh, kh, vh, S, gamma, scale)
                           : retentionChunkwise(qh, kh, vh, S, gamma, scale, chunk);
      const Matrix normed = rmsNorm(o, w.headNorm, c.eps);
      for (long t = 0; t < time; ++t) {
        for (long e = 0; e < dv; ++e) {
          const double z = g(b * time + t, h * dv + e);
          gated(b * time + t, h * dv + e) = normed(t, e) * silu(z);
        }
      }
    }
  }

  // 3. Output projection, residual, SwiGLU MLP, residual.
  const Matrix h = x + gated * w.o.transpose();
  const Matrix m = rmsNorm(h, w.mlpNorm, c.eps);
  const Matrix a = m * w.gate.transpose();
  const Matrix up = m * w.up.transpose();
  Matrix act(a.rows(), a.cols());
  for (Eigen::Index r = 0; r < a.rows(); ++r) {
    for (Eigen::Index i = 0; i < a.cols(); ++i) act(r, i) = silu(a(r, i)) * up(r, i);
  }
  return h + act * w.down.transpose();
}

/// Embedding rows: tokens (rows) -> x (rows, d); no scale, no norm.
inline Matrix embed(const NaiveFlaConfig& c, const NaiveFlaWeights& w,
                    const std::vector<long>& tokens) {
  Matrix x(static_cast<Eigen::Index>(tokens.size()), c.hidden);
  for (std::size_t r = 0; r < tokens.size(); ++r) {
    require(tokens[r] >= 0 && tokens[r] < c.vocab,
            "token id " + std::to_string(tokens[r]) + " outside the vocabulary");
    x.row(static_cast<Eigen::Index>(r)) = w.embedding.row(tokens[r]);
  }
  return x;
}

inline Matrix logitsOf(const NaiveFlaConfig& c, const NaiveFlaWeights& w, const Matrix& x) {
  return rmsNorm(x, w.finalNorm, c.eps) * w.output(c).transpose();
}

}  // namespace naive_fla_detail

/// The model over tokens (B, T) (row-major, B·T ids), in `form` (chunk size `chunk` for the
/// chunkwise form), from the zero state at position 0, or from `*start` (the states and position
/// after an earlier segment of the same sequences). Recurrent: token t passes through all layers
/// before token t+1 starts. Parallel and chunkwise: each layer over the whole segment in turn.
inline NaiveFlaOutput naiveFla(const NaiveFlaConfig& c, const NaiveFlaWeights& w,
                               const std::vector<long>& tokens, long batch, long time,
                               NaiveFlaForm form, long chunk = 0,
                               const NaiveFlaState* start = nullptr) {
  using namespace naive_fla_detail;
  check(c, w);
  require(batch > 0 && time > 0, "batch and time must be positive");
  require(tokens.size() == static_cast<std::size_t>(batch * time), "tokens must hold B·T ids");
  require(form != NaiveFlaForm::kChunkwise || chunk > 0, "the chunkwise form needs a chunk size");
  NaiveFlaOutput out;
  out.state = start ? *start : naiveFlaZeroState(c, batch);
  checkState(c, out.state, batch);
  const long P = out.state.position;
  out.hidden.assign(static_cast<std::size_t>(c.layers), Matrix(batch * time, c.hidden));

  if (form == NaiveFlaForm::kRecurrent) {
    out.logits.resize(batch * time, c.vocab);
    for (long t = 0; t < time; ++t) {
      std::vector<long> step(static_cast<std::size_t>(batch));
      for (long b = 0; b < batch; ++b) step[std::size_t(b)] = tokens[std::size_t(b * time + t)];
      Matrix x = embed(c, w, step);  // (B, d): one token of every sequence
      for (long l = 0; l < c.layers; ++l) {
        x = block(c, w.layers[std::size_t(l)], x, batch, 1, P + t, form, chunk,
                  out.state.S[std::size_t(l)]);
        for (long b = 0; b < batch; ++b) out.hidden[std::size_t(l)].row(b * time + t) = x.row(b);
      }
      const Matrix logits = logitsOf(c, w, x);
      for (long b = 0; b < batch; ++b) out.logits.row(b * time + t) = logits.row(b);
    }
  } else {
    Matrix x = embed(c, w, tokens);
    for (long l = 0; l < c.layers; ++l) {
      x = block(c, w.layers[std::size_t(l)], x, batch, time, P, form, chunk,
                out.state.S[std::size_t(l)]);
      out.hidden[std::size_t(l)] = x;
    }
    out.logits = logitsOf(c, w, x);
  }
  out.state.position = P + time;
  return out;
}

/// Row-major flattening of a (rows, cols) matrix, the layout of the golden tensors.
inline std::vector<double> naiveFlaFlatten(const NaiveFlaMatrix& m) {
  std::vector<double> out;
  out.reserve(static_cast<std::size_t>(m.size()));
  for (Eigen::Index r = 0; r < m.rows(); ++r) {
    for (Eigen::Index i = 0; i < m.cols(); ++i) out.push_back(m(r, i));
  }
  return out;
}

}  // namespace retnet::reference
