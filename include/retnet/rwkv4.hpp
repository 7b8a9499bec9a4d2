// The RWKV-4 block and model (Peng et al., 2023; BlinkDL's RWKV-LM, docs/semantics/rwkv4.md):
// time mixing (token shift, WKV, receptance) and channel mixing (token shift, squared-ReLU FFN
// gated by a receptance), each pre-LayerNorm with a residual. The same three forms, state
// handover, model skeleton, generation and state files as RetNet's block.
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "retnet/detail/workspace.hpp"
#include "retnet/model.hpp"
#include "retnet/rwkv4_state.hpp"
#include "retnet/sequence_layer.hpp"
#include "retnet/stages/elementwise.hpp"
#include "retnet/stages/linear.hpp"
#include "retnet/stages/norms.hpp"
#include "retnet/stages/token_shift.hpp"
#include "retnet/stages/wkv.hpp"

namespace retnet {

/// Shape of an RWKV-4 block (BlinkDL's names in comments).
struct Rwkv4BlockConfig {
  Index embedDim = 0;  ///< C (n_embd)
  Index attDim = 0;    ///< A (dim_att; time mixing's width); 0: C
  Index ffnDim = 0;    ///< F (dim_ffn)
  double eps = 1e-5;   ///< every LayerNorm's eps

  /// The state file's family number (io/state_file.hpp) and name.
  static constexpr std::uint32_t kStateFamily = 1;
  static constexpr const char* kFamilyName = "RWKV-4";

  Index attentionDim() const { return attDim == 0 ? embedDim : attDim; }

  /// The shape a state file records (io/state_file.hpp), by name.
  std::vector<std::pair<const char*, Index>> signature() const {
    return {{"embedDim", embedDim}, {"attDim", attentionDim()}, {"ffnDim", ffnDim}};
  }

  void validate(const char* where) const {
    detail::require(embedDim >= 1 && attentionDim() >= 1 && ffnDim >= 1, where,
                    "embedDim, attDim and ffnDim must be >= 1, got ", embedDim, ", ",
                    attentionDim(), ", ", ffnDim);
    detail::require(std::isfinite(eps) && eps > 0, where, "eps must be finite and > 0, got ", eps);
  }
};

/// Weights in BlinkDL's layout and names (blocks.{i}.*); Linear weights (out, in), no biases.
template <typename Scalar>
struct Rwkv4BlockWeights {
  Vector<Scalar> ln1Weight, ln1Bias;         ///< ln1.weight, ln1.bias (C)
  Vector<Scalar> timeDecay;                  ///< att.time_decay (A), raw: w = −exp(time_decay)
  Vector<Scalar> timeFirst;                  ///< att.time_first (A), u as stored
  Vector<Scalar> attMixK, attMixV, attMixR;  ///< att.time_mix_k/v/r (C)
  LinearWeight<Scalar> attKey;               ///< att.key.weight (A, C)
  LinearWeight<Scalar> attValue;             ///< att.value.weight (A, C)
  LinearWeight<Scalar> attReceptance;        ///< att.receptance.weight (A, C)
  LinearWeight<Scalar> attOutput;            ///< att.output.weight (C, A)
  Vector<Scalar> ln2Weight, ln2Bias;         ///< ln2.weight, ln2.bias (C)
  Vector<Scalar> ffnMixK, ffnMixR;           ///< ffn.time_mix_k/r (C)
  LinearWeight<Scalar> ffnKey;               ///< ffn.key.weight (F, C)
  LinearWeight<Scalar> ffnReceptance;        ///< ffn.receptance.weight (C, C)
  LinearWeight<Scalar> ffnValue;             ///< ffn.value.weight (C, F)
};

/// Buffers of one block call (not part of any state's value).
template <typename Scalar>
struct Rwkv4BlockScratch : detail::SlabBuffers<Scalar> {
  Vector<Scalar> normed;    // (rows x C): ln1 of x, then ln2 of h
  Vector<Scalar> mixed;     // (rows x 3C): the token-shift mixes
  Vector<Scalar> kvr;       // (rows x 3A): k | v | r, or channel mixing's (rows x C) receptance
  Vector<Scalar> wkv;       // (rows x A): WKV's output
  Vector<Scalar> residual;  // (rows x C): h = x + TimeMix(...)
  Vector<Scalar> hidden;    // (rows x F): channel mixing's key
};

/// One RWKV-4 block:
///
///   h = x + TimeMix(LN1(x)),   TimeMix(a) = W_o (σ(W_r a_r) ⊙ WKV(W_k a_k, W_v a_v))
///   y = h + ChannelMix(LN2(h)), ChannelMix(g) = σ(W_r' g_r) ⊙ W_v' max(W_k' g_k, 0)²
///
/// where a_* = mix(μ_*, a, shift(a)) mixes each position with the previous one (token shift).
/// Inputs and outputs are row-major (B, T, C).
template <typename Scalar>
class Rwkv4Block : public SequenceLayer<Rwkv4Block<Scalar>, Scalar, Rwkv4State<Scalar>,
                                        Rwkv4BlockScratch<Scalar>> {
  using Forms =
      SequenceLayer<Rwkv4Block<Scalar>, Scalar, Rwkv4State<Scalar>, Rwkv4BlockScratch<Scalar>>;

 public:
  using Config = Rwkv4BlockConfig;
  using Weights = Rwkv4BlockWeights<Scalar>;
  using State = Rwkv4State<Scalar>;
  using Scratch = Rwkv4BlockScratch<Scalar>;

  Rwkv4Block(const Config& config, const Weights& weights) : config_(checkedConfig(config)) {
    const Index C = config.embedDim, A = config.attentionDim(), F = config.ffnDim;
    const char* where = "Rwkv4Block";
    for (const auto& [vector, name] : {std::pair{&weights.ln1Weight, "ln1Weight"},
                                       {&weights.ln1Bias, "ln1Bias"},
                                       {&weights.ln2Weight, "ln2Weight"},
                                       {&weights.ln2Bias, "ln2Bias"},
                                       {&weights.attMixK, "attMixK"},
                                       {&weights.attMixV, "attMixV"},
                                       {&weights.attMixR, "attMixR"},
                                       {&weights.ffnMixK, "ffnMixK"},
                                       {&weights.ffnMixR, "ffnMixR"}})
      detail::requireLength(where, *vector, C, "weight ", name);
    detail::requireLength(where, weights.timeDecay, A, "weight timeDecay");
    detail::requireLength(where, weights.timeFirst, A, "weight timeFirst");
    detail::requireShape(where, weights.attKey, A, C, "weight attKey");
    detail::requireShape(where, weights.attValue, A, C, "weight attValue");
    detail::requireShape(where, weights.attReceptance, A, C, "weight attReceptance");
    detail::requireShape(where, weights.attOutput, C, A, "weight attOutput");
    detail::requireShape(where, weights.ffnKey, F, C, "weight ffnKey");
    detail::requireShape(where, weights.ffnReceptance, C, C, "weight ffnReceptance");
    detail::requireShape(where, weights.ffnValue, C, F, "weight ffnValue");
    detail::require(weights.timeDecay.allFinite() && weights.timeFirst.allFinite() &&
                        (-weights.timeDecay.array().exp()).isFinite().all(),
                    where, "timeDecay and timeFirst must be finite (and exp(timeDecay) too)");
    ln1Weight_ = weights.ln1Weight;
    ln1Bias_ = weights.ln1Bias;
    ln2Weight_ = weights.ln2Weight;
    ln2Bias_ = weights.ln2Bias;
    decay_ = -weights.timeDecay.array().exp();  // w = −exp(time_decay) < 0
    bonus_ = weights.timeFirst;
    attMixK_ = weights.attMixK;
    attMixV_ = weights.attMixV;
    attMixR_ = weights.attMixR;
    ffnMixK_ = weights.ffnMixK;
    ffnMixR_ = weights.ffnMixR;
    attKey_ = weights.attKey;
    attValue_ = weights.attValue;
    attReceptance_ = weights.attReceptance;
    attOutput_ = weights.attOutput;
    ffnKey_ = weights.ffnKey;
    ffnReceptance_ = weights.ffnReceptance;
    ffnValue_ = weights.ffnValue;
  }

  const Config& config() const { return config_; }

  /// Calls visit(weight) for each of the layer's dense weights (const or not): how a model
  /// converts its storage (convertWeights) or counts its bytes.
  template <typename Visit>
  void forEachWeight(Visit&& visit) {
    for (LinearWeight<Scalar>* w : {&attKey_, &attValue_, &attReceptance_, &attOutput_, &ffnKey_,
                                    &ffnReceptance_, &ffnValue_})
      visit(*w);
  }
  template <typename Visit>
  void forEachWeight(Visit&& visit) const {
    for (const LinearWeight<Scalar>* w : {&attKey_, &attValue_, &attReceptance_, &attOutput_,
                                          &ffnKey_, &ffnReceptance_, &ffnValue_})
      visit(*w);
  }
  /// w = −exp(time_decay) per channel (A), as WKV uses it.
  const Vector<Scalar>& decay() const { return decay_; }

  // The forms (sequence_layer.hpp): parallel, chunkwise and recurrent WKV; every other stage is
  // position-wise (token shift reads the previous row or the state), so it runs as GEMMs in
  // every form.
  using Forms::forward;
  using Forms::forwardChunkwise;
  using Forms::forwardParallel;
  using Forms::forwardRecurrent;
  using Forms::forwardRows;

  /// Chunk size of forward() (bench/README.md: WKV's chunkwise cost grows with the chunk).
  Index recommendedChunkSize() const { return 16; }

  static constexpr FormNames kFormNames{"Rwkv4Block::forwardParallel",
                                        "Rwkv4Block::forwardChunkwise",
                                        "Rwkv4Block::forwardRecurrent"};
  Index inputWidth() const { return config_.embedDim; }
  Index outputWidth() const { return config_.embedDim; }
  /// Sizes an empty state for `batch` sequences, or checks a non-empty one against this block.
  void sizeOrCheckState(const char* where, const char* batchName, Index batch, State& state) const {
    if (state.empty()) {
      state.reset(batch, config_.embedDim, config_.attentionDim());
      return;
    }
    detail::requireEqual(where, batchName, state.batch(), batch);
    detail::requireEqual(where, "state embedDim", config_.embedDim, state.embedDim());
    detail::requireEqual(where, "state attDim", config_.attentionDim(), state.attDim());
  }

  /// An empty state for `batch` sequences of a block of shape `config`.
  static State makeState(const Config& config, Index batch) {
    return State(batch, config.embedDim, config.attentionDim());
  }

  /// The data path of one slab: x (batch·time x C) -> y (batch·time x C).
  void forwardSlab(Form form, ConstMatrixRef<Scalar> x, Index batch, Index time, Index chunkSize,
                   State& state, MatrixRef<Scalar> y, Scratch& scratch) const {
    const Index C = config_.embedDim, A = config_.attentionDim(), rows = batch * time;
    const char* where = "Rwkv4Block::forwardSlab";
    detail::requireShape(where, x, rows, C, "x (batch·time x embedDim)");
    detail::requireShape(where, y, rows, C, "y (batch·time x embedDim)");
    detail::require(!state.empty(), where, "the state must be sized (prepare) first");
    sizeOrCheckState(where, "batch size (the state's)", batch, state);
    for (Index b = 0; b < batch; ++b) {
      detail::require(state.position(b) <= kMaxPosition - time, where, "position ",
                      state.position(b), " + time ", time, " is beyond 2^53");
    }
    auto normed = detail::bufferView(scratch.normed, rows, C);
    auto mixed = detail::bufferView(scratch.mixed, rows, 3 * C);
    auto h = detail::bufferView(scratch.residual, rows, C);

    // Time mixing: h = x + W_o (σ(W_r a_r) ⊙ WKV(W_k a_k, W_v a_v)),  a = LN1(x)
    stages::layerNorm(x, ln1Weight_.data(), ln1Bias_.data(), config_.eps, normed);
    auto ak = mixed.leftCols(C), av = mixed.middleCols(C, C), ar = mixed.rightCols(C);
    stages::tokenShiftMix(normed, batch, time, state.attShift(), attMixK_.data(), ak);
    stages::tokenShiftMix(normed, batch, time, state.attShift(), attMixV_.data(), av);
    stages::tokenShiftMix(normed, batch, time, state.attShift(), attMixR_.data(), ar);
    keepLastRows(normed, batch, time, state.attShift());
    auto kvr = detail::bufferView(scratch.kvr, rows, 3 * A);
    auto k = kvr.leftCols(A), v = kvr.middleCols(A, A), r = kvr.rightCols(A);
    stages::linear(ak, attKey_, k);
    stages::linear(av, attValue_, v);
    stages::linear(ar, attReceptance_, r);
    stages::activate<Scalar>(r, Activation::kSigmoid);
    auto wkv = detail::bufferView(scratch.wkv, rows, A);
    for (Index b = 0; b < batch; ++b) {
      stages::wkv<Scalar>(form, k.middleRows(b * time, time), v.middleRows(b * time, time),
                          decay_.data(), bonus_.data(), chunkSize, state.wkv(b),
                          wkv.middleRows(b * time, time));
    }
    stages::multiplyBy<Scalar>(r, wkv);
    stages::linear(wkv, attOutput_, h);
    stages::addTo<Scalar>(x, h);

    // Channel mixing: y = h + σ(W_r' g_r) ⊙ W_v' max(W_k' g_k, 0)²,  g = LN2(h)
    stages::layerNorm(h, ln2Weight_.data(), ln2Bias_.data(), config_.eps, normed);
    auto gk = mixed.leftCols(C), gr = mixed.middleCols(C, C);
    stages::tokenShiftMix(normed, batch, time, state.ffnShift(), ffnMixK_.data(), gk);
    stages::tokenShiftMix(normed, batch, time, state.ffnShift(), ffnMixR_.data(), gr);
    keepLastRows(normed, batch, time, state.ffnShift());
    auto hidden = detail::bufferView(scratch.hidden, rows, config_.ffnDim);
    stages::linear(gk, ffnKey_, hidden);
    stages::activate<Scalar>(hidden, Activation::kReluSquared);
    stages::linear(hidden, ffnValue_, y);
    auto receptance = detail::bufferView(scratch.kvr, rows, C);
    stages::linear(gr, ffnReceptance_, receptance);
    stages::activate<Scalar>(receptance, Activation::kSigmoid);
    stages::multiplyBy<Scalar>(receptance, y);
    stages::addTo<Scalar>(h, y);

    for (Index b = 0; b < batch; ++b) state.setPosition(b, state.position(b) + time);
  }

 private:
  static Config checkedConfig(const Config& config) {
    config.validate("Rwkv4Block");
    return config;
  }

  /// The token shift's carried rows: each sequence's last row of `normed`.
  static void keepLastRows(const Eigen::Map<RowMatrix<Scalar>>& normed, Index batch, Index time,
                           typename State::SlotRows carried) {
    for (Index b = 0; b < batch; ++b) carried.row(b) = normed.row(b * time + time - 1);
  }

  Config config_;
  Vector<Scalar> ln1Weight_, ln1Bias_, ln2Weight_, ln2Bias_;        // (C)
  Vector<Scalar> decay_, bonus_;                                    // w, u (A)
  Vector<Scalar> attMixK_, attMixV_, attMixR_, ffnMixK_, ffnMixR_;  // μ (C)
  LinearWeight<Scalar> attKey_, attValue_, attReceptance_, attOutput_;
  LinearWeight<Scalar> ffnKey_, ffnReceptance_, ffnValue_;
};

/// BlinkDL's RWKV model: embedding -> ln0 -> blocks -> ln_out -> head (LayerNorms with bias,
/// the head not tied to the embedding).
using Rwkv4ModelConfig = LanguageModelConfig<Rwkv4BlockConfig>;
template <typename Scalar>
using Rwkv4ModelWeights = LanguageModelWeights<Rwkv4BlockWeights<Scalar>, Scalar>;
template <typename Scalar>
using Rwkv4Model = LanguageModel<Rwkv4Block<Scalar>>;
template <typename Scalar>
using Rwkv4ModelState = LanguageModelState<Rwkv4State<Scalar>>;

/// The model configuration of an RWKV-4 checkpoint: ln0 on the embedding (embedNorm), LayerNorms
/// with bias (ModelNorm::kLayer), an untied head.
inline Rwkv4ModelConfig rwkv4ModelConfig(Index vocab, Index layers, const Rwkv4BlockConfig& block) {
  Rwkv4ModelConfig config;
  config.vocab = vocab;
  config.layers = layers;
  config.block = block;
  config.embedNorm = true;
  config.norm = ModelNorm::kLayer;
  config.tiedEmbedding = false;
  return config;
}

}  // namespace retnet
