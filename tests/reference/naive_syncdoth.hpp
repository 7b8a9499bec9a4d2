// Naive double-precision oracle for syncdoth/RetNet's RetNetForCausalLM (commit 2634bbf), the
// model of the syncdoth-format checkpoints (isek-ai/SDPrompt-RetNet-300M,
// Spiral-AI/Spiral-RetNet-3b-base), in the parallel, recurrent and chunkwise forms and on the
// `generate` path (a parallel prompt of k tokens, then recurrent steps).
//
// syncdoth's model is torchscale's RetNetDecoder (docs/semantics/torchscale.md §3, which the
// syncdoth README cites as shared/golden/README.md §3) with the differences of
// tests/data/syncdoth/README.md §4:
//   - the embedding is scaled by s = √D unless no_scale_embedding, then (layernorm_embedding)
//     RMS-normed with a weight (§4.1);
//   - the decay schedule may be use_lm_decay's (§4.2): naive_msr.hpp's retention functions are
//     given its ln γ_h (their default is torchscale's schedule);
//   - the output matrix may be the embedding table (tied, §4.4);
//   - the prompt pass of `generate` hands its keys and values to recurrent decoding as the state
//     S = Σ_{j<k} γ^(k−1−j)/√n_k · k_j⊗v_j, n = n_k = Σ_{t<k} γ^t (§4.5).
// Everything else (projections, rotary, the three retention forms, group norm and gate, the
// pre-norm layer with its GLU FFN, the zero padding of the chunkwise form) is naive_msr.hpp's
// torchscale oracle, used as is.
//
// Conventions as in naive_msr.hpp: row-major std::vector<double>, activations (B, T, features),
// Linear weights (out, in) applied as y = x·Wᵀ, no biases, no dropout.
#pragma once

#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "naive_msr.hpp"

namespace retnet::reference {

/// RetNetForCausalLM weights under syncdoth's configuration. Every norm uses `eps`
/// (layernorm_eps), which must also be every layer's msr.eps.
struct NaiveSyncdothWeights {
  long embedDim = 0, vocab = 0;
  double eps = 1e-6;
  double embedScale = 1.0;        ///< s: √D, or 1 when no_scale_embedding
  bool useLmDecay = false;        ///< the decay schedule (README §4.2)
  bool tied = false;              ///< the output matrix is `embed` (no lm_head)
  std::vector<double> embed;      ///< (Voc, D) model.embed_tokens.weight
  std::vector<double> embedNorm;  ///< (D) model.layernorm_embedding.weight; empty: no norm
  std::vector<NaiveLayerWeights> layers;
  std::vector<double> finalNorm;  ///< (D) model.layer_norm.weight
  std::vector<double> lmHead;     ///< (Voc, D) lm_head.weight; empty when tied
};

/// s = √D (float64 sqrt) unless no_scale_embedding, then 1 (README §4.1).
inline double naiveSyncdothEmbedScale(long embedDim, bool noScaleEmbedding) {
  return noScaleEmbedding ? 1.0 : std::sqrt(static_cast<double>(embedDim));
}

/// γ_h of the two schedules (README §4.2): torchscale's 1 − 2^(−5−h), or with use_lm_decay
/// 1 − 2^(−5 − 4h/(H−1)) (decay rates log-spaced from 1/32 to 1/512; γ_0 = 31/32 when H = 1).
inline std::vector<double> naiveSyncdothGammas(long heads, bool useLmDecay) {
  std::vector<double> gammas;
  for (long h = 0; h < heads; ++h) {
    const double exponent =
        !useLmDecay  ? -5.0 - static_cast<double>(h)
        : heads == 1 ? -5.0
                     : -5.0 - 4.0 * static_cast<double>(h) / static_cast<double>(heads - 1);
    gammas.push_back(1.0 - std::pow(2.0, exponent));
  }
  return gammas;
}

/// decay[h] = ln γ_h, the form torchscale computes its powers γ^m = exp(m·decay[h]) from.
inline std::vector<double> naiveSyncdothLogDecay(long heads, bool useLmDecay) {
  std::vector<double> decay = naiveSyncdothGammas(heads, useLmDecay);
  for (double& value : decay) value = std::log(value);
  return decay;
}

namespace naive_syncdoth_detail {

using naive_msr_detail::at;
using naive_msr_detail::require;
using naive_msr_detail::requireSize;
using Vec = std::vector<double>;

inline void check(const NaiveSyncdothWeights& w) {
  require(w.embedDim > 0 && w.vocab > 0, "embedDim and vocab must be positive");
  require(!w.layers.empty(), "a model needs at least one layer");
  for (const NaiveLayerWeights& layer : w.layers) {
    naive_msr_detail::checkLayer(layer);
    require(layer.msr.embedDim == w.embedDim, "every layer must have embedDim D");
    require(layer.msr.heads == w.layers.front().msr.heads, "every layer must have the same heads");
    require(layer.msr.eps == w.eps, "every layer's eps must be the model's (layernorm_eps)");
  }
  requireSize(w.embed, w.vocab * w.embedDim, "embed");
  if (!w.embedNorm.empty()) requireSize(w.embedNorm, w.embedDim, "embedNorm");
  requireSize(w.finalNorm, w.embedDim, "finalNorm");
  if (w.tied) {
    require(w.lmHead.empty(), "a tied model has no lmHead");
  } else {
    requireSize(w.lmHead, w.vocab * w.embedDim, "lmHead");
  }
}

inline long heads(const NaiveSyncdothWeights& w) { return w.layers.front().msr.heads; }

/// The recurrent state the parallel pass over `time` tokens leaves (README §4.5), written into
/// `state`: S = Σ_{j<T} γ^(T−1−j)/√n_T · k_j⊗v_j, n = n_T = Σ_{t<T} γ^t, position T.
inline void stateAfterParallel(const NaiveMsrWeights& w, const naive_msr_detail::Projected& p,
                               long batch, long time, const Vec& decay, NaiveMsrState& state) {
  const long D = w.embedDim, V = w.valueDim, H = w.heads, dk = D / H, dv = V / H;
  state.position = time;
  state.batch = batch;
  state.S.assign(at(batch * H * dk * dv), 0.0);
  state.n.assign(at(H), 0.0);
  for (long h = 0; h < H; ++h) {
    double n = 0.0;
    for (long t = 0; t < time; ++t) n += std::exp(double(t) * decay[at(h)]);
    state.n[at(h)] = n;
    for (long b = 0; b < batch; ++b) {
      double* S = state.S.data() + (b * H + h) * dk * dv;
      for (long j = 0; j < time; ++j) {
        const double weight = std::exp(double(time - 1 - j) * decay[at(h)]) / std::sqrt(n);
        for (long a = 0; a < dk; ++a) {
          for (long e = 0; e < dv; ++e) {
            S[a * dv + e] += weight * p.k[at((b * time + j) * D + h * dk + a)] *
                             p.v[at((b * time + j) * V + h * dv + e)];
          }
        }
      }
    }
  }
}

/// Embedding (README §4.1): tokens (rows) -> x (rows, D) = E[token]·s, then RMSNorm with weight.
inline Vec embed(const NaiveSyncdothWeights& w, const std::vector<long>& tokens) {
  const long D = w.embedDim;
  Vec x(at(static_cast<long>(tokens.size()) * D));
  for (std::size_t r = 0; r < tokens.size(); ++r) {
    require(tokens[r] >= 0 && tokens[r] < w.vocab,
            "token id " + std::to_string(tokens[r]) + " outside the vocabulary");
    for (long i = 0; i < D; ++i)
      x[r * at(D) + at(i)] = w.embed[at(tokens[r] * D + i)] * w.embedScale;
  }
  if (w.embedNorm.empty()) return x;
  return naive_msr_detail::rmsNorm(x, static_cast<long>(tokens.size()), D, &w.embedNorm, w.eps);
}

/// Final RMSNorm and output matrix (lm_head, or the embedding when tied): (rows, Voc).
inline Vec logitsOf(const NaiveSyncdothWeights& w, const Vec& h, long rows) {
  const Vec& out = w.tied ? w.embed : w.lmHead;
  return naive_msr_detail::linear(
      naive_msr_detail::rmsNorm(h, rows, w.embedDim, &w.finalNorm, w.eps), rows, w.embedDim, out,
      w.vocab);
}

/// One layer over a whole sequence (B, T, D) in the parallel or chunkwise form; for the parallel
/// form, `captured` (if given) receives the recurrent state the pass leaves.
inline Vec layerSequence(const NaiveLayerWeights& layer, const Vec& x, long batch, long time,
                         NaiveForm form, long chunk, const Vec& decay, NaiveMsrState* captured) {
  return naive_msr_detail::layerAround(layer, x, batch * time, [&](const Vec& normed) {
    const naive_msr_detail::Projected p =
        naive_msr_detail::project(layer.msr, normed, batch, time, 0);
    const Vec o =
        form == NaiveForm::kParallel
            ? naive_msr_detail::parallelRetention(layer.msr, p, batch, time, decay)
            : naive_msr_detail::chunkwiseRetention(layer.msr, p, batch, time, chunk, decay);
    if (captured) stateAfterParallel(layer.msr, p, batch, time, decay, *captured);
    return naive_msr_detail::epilogue(layer.msr, o, p.g, batch * time);
  });
}

/// One recurrent model step: tokens (B) at position states[l].position -> logits (B, Voc).
inline Vec modelStep(const NaiveSyncdothWeights& w, std::vector<NaiveMsrState>& states,
                     const std::vector<long>& tokens, long batch, const Vec& decay) {
  Vec h = embed(w, tokens);
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    h = naiveLayerStep(w.layers[l], states[l], h, batch, decay);
  }
  return logitsOf(w, h, batch);
}

/// Recurrent steps for positions first … time−1 of tokens (B, T), writing logits rows into
/// `logits` (B, T, Voc).
inline void recurrentSteps(const NaiveSyncdothWeights& w, std::vector<NaiveMsrState>& states,
                           const std::vector<long>& tokens, long batch, long time, long first,
                           const Vec& decay, Vec& logits) {
  for (long t = first; t < time; ++t) {
    std::vector<long> column(at(batch));
    for (long b = 0; b < batch; ++b) column[at(b)] = tokens[at(b * time + t)];
    naive_msr_detail::setTimeSlice(logits, modelStep(w, states, column, batch, decay), batch, time,
                                   w.vocab, t);
  }
}

}  // namespace naive_syncdoth_detail

/// The model over tokens (B, T) -> logits (B, T, Voc) in `form`. Parallel: one pass over all T
/// tokens. Recurrent: token by token from empty states, step t at position t. Chunkwise: the
/// embedded sequence zero-padded at the end to a multiple of `chunk`, every layer chunkwise over
/// the padded length, the padded rows dropped before the final norm (docs/semantics/torchscale.md
/// §3.7).
inline std::vector<double> naiveSyncdoth(const NaiveSyncdothWeights& w,
                                         const std::vector<long>& tokens, long batch, long time,
                                         NaiveForm form, long chunk = 0) {
  using namespace naive_syncdoth_detail;
  check(w);
  require(batch > 0 && time > 0, "batch and time must be positive");
  require(tokens.size() == at(batch * time), "tokens must hold B·T ids");
  const Vec decay = naiveSyncdothLogDecay(heads(w), w.useLmDecay);
  const long D = w.embedDim;
  if (form == NaiveForm::kRecurrent) {
    std::vector<NaiveMsrState> states(w.layers.size());
    Vec logits(at(batch * time * w.vocab));
    recurrentSteps(w, states, tokens, batch, time, 0, decay, logits);
    return logits;
  }
  const long Tp =
      form == NaiveForm::kChunkwise ? naive_msr_detail::paddedLength(time, chunk) : time;
  Vec h = naive_msr_detail::padTime(embed(w, tokens), batch, time, D, Tp);
  for (const NaiveLayerWeights& layer : w.layers) {
    h = layerSequence(layer, h, batch, Tp, form, chunk, decay, nullptr);
  }
  return logitsOf(w, naive_msr_detail::cropTime(h, batch, Tp, D, time), batch * time);
}

/// `generate`'s path (README §4.5) over tokens (B, T) with a prompt of k tokens (1 ≤ k ≤ T):
/// rows 0 … k−1 from one parallel pass over tokens[:, :k]; rows k … T−1 from recurrent steps at
/// positions k … T−1 that start from the states that pass leaves in every layer.
inline std::vector<double> naiveSyncdothPrefillThenDecode(const NaiveSyncdothWeights& w,
                                                          const std::vector<long>& tokens,
                                                          long batch, long time, long k) {
  using namespace naive_syncdoth_detail;
  check(w);
  require(batch > 0 && time > 0, "batch and time must be positive");
  require(tokens.size() == at(batch * time), "tokens must hold B·T ids");
  require(k >= 1 && k <= time, "the prompt length k must be in [1, T]");
  const Vec decay = naiveSyncdothLogDecay(heads(w), w.useLmDecay);
  std::vector<long> prompt(at(batch * k));
  for (long b = 0; b < batch; ++b) {
    for (long t = 0; t < k; ++t) prompt[at(b * k + t)] = tokens[at(b * time + t)];
  }
  std::vector<NaiveMsrState> states(w.layers.size());
  Vec h = embed(w, prompt);
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    h = layerSequence(w.layers[l], h, batch, k, NaiveForm::kParallel, 0, decay, &states[l]);
  }
  const Vec promptLogits = logitsOf(w, h, batch * k);
  Vec logits(at(batch * time * w.vocab));
  for (long t = 0; t < k; ++t) {
    naive_msr_detail::setTimeSlice(logits,
                                   naive_msr_detail::timeSlice(promptLogits, batch, k, w.vocab, t),
                                   batch, time, w.vocab, t);
  }
  recurrentSteps(w, states, tokens, batch, time, k, decay, logits);
  return logits;
}

}  // namespace retnet::reference
