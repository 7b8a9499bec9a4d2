// The RetNet block (paper §2.3, eq. 10): torchscale's DecoderLayer with pre-norm, and by
// configuration FLA's RetNetBlock (the same data path with FLA's retention and SwiGLU MLP).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "retnet/multiscale_retention.hpp"
#include "retnet/stages/elementwise.hpp"
#include "retnet/stages/ffn.hpp"
#include "retnet/stages/norms.hpp"

namespace retnet {

/// Shape of a RetNet block (torchscale's names in comments). The defaults are torchscale's; the
/// retention fields after `gate` select other semantics (MultiScaleRetentionConfig).
struct RetNetBlockConfig {
  Index embedDim = 0;  ///< D (decoder_embed_dim)
  Index valueDim = 0;  ///< V (decoder_value_embed_dim)
  Index heads = 0;     ///< H (decoder_retention_heads)
  Index ffnDim = 0;    ///< F (decoder_ffn_embed_dim)
  double eps = 1e-6;   ///< layernorm_eps: both RMSNorms and the retention group norm
  Activation activation = Activation::kGelu;  ///< activation_fn of the FFN
  Activation gate = Activation::kSwish;       ///< gate_fn of the retention
  std::vector<double> decays = {};            ///< γ_h; empty: 1 − 2^(−5−h)
  Index headKeyDim = 0;                       ///< dk; 0: D / H
  Index kvHeads = 0;                          ///< key/value heads; 0: H
  RotaryLayout rotary = RotaryLayout::kInterleaved;
  RetentionNormalization normalization = RetentionNormalization::kTorchscale;
  ScaleSide scaleSide = ScaleSide::kKey;

  /// The state file's family number (io/state_file.hpp) and name.
  static constexpr std::uint32_t kStateFamily = 0;
  static constexpr const char* kFamilyName = "RetNet";

  MultiScaleRetentionConfig retention() const {
    MultiScaleRetentionConfig c;
    c.embedDim = embedDim;
    c.valueDim = valueDim;
    c.heads = heads;
    c.eps = eps;
    c.gate = gate;
    c.decays = decays;
    c.headKeyDim = headKeyDim;
    c.kvHeads = kvHeads;
    c.rotary = rotary;
    c.normalization = normalization;
    c.scaleSide = scaleSide;
    return c;
  }

  /// The shape a state file records (io/state_file.hpp), by name. Entries beyond torchscale's
  /// four appear only where they differ from torchscale, so its state files stay as they were.
  std::vector<std::pair<const char*, Index>> signature() const {
    std::vector<std::pair<const char*, Index>> entries = {
        {"embedDim", embedDim}, {"valueDim", valueDim}, {"heads", heads}, {"ffnDim", ffnDim}};
    const MultiScaleRetentionConfig r = retention();
    if (r.keyDim() * heads != embedDim) entries.push_back({"headKeyDim", r.keyDim()});
    if (r.keyValueHeads() != heads) entries.push_back({"kvHeads", r.keyValueHeads()});
    if (rotary != RotaryLayout::kInterleaved)
      entries.push_back({"rotaryLayout", static_cast<Index>(rotary)});
    if (normalization != RetentionNormalization::kTorchscale)
      entries.push_back({"normalization", static_cast<Index>(normalization)});
    if (scaleSide != ScaleSide::kKey)
      entries.push_back({"scaleSide", static_cast<Index>(scaleSide)});
    return entries;
  }

  void validate(const char* where) const {
    retention().validate(where);
    detail::require(ffnDim >= 1, where, "ffnDim must be >= 1, got ", ffnDim);
  }
};

/// Weights in PyTorch's layout (torchscale's state_dict names in comments); no biases.
template <typename Scalar>
struct RetNetBlockWeights {
  MultiScaleRetentionWeights<Scalar> retention;  ///< retention.*
  Vector<Scalar> retentionNorm;                  ///< retention_layer_norm.weight (D)
  LinearWeight<Scalar> fc1;                      ///< ffn.fc1.weight  (F, D)
  LinearWeight<Scalar> gate;                     ///< ffn.gate.weight (F, D)
  LinearWeight<Scalar> fc2;                      ///< ffn.fc2.weight  (D, F)
  Vector<Scalar> finalNorm;                      ///< final_layer_norm.weight (D)
};

/// Buffers of one block call (not part of any state's value).
template <typename Scalar>
struct RetNetBlockScratch {
  Vector<Scalar> normed;    // (rows x D): RMSNorm of the block input, then of h
  Vector<Scalar> residual;  // (rows x D): h = x + MSR(...)
  Vector<Scalar> hidden;    // (rows x 2F): the FFN's two branches
  MultiScaleRetentionScratch<Scalar> retention;
};

/// One RetNet block, pre-norm with residuals and a gated (GLU) FFN:
///
///   h = x + MSR(RMSNorm(x; w_ret))
///   y = h + fc2( act(fc1 z) ⊙ gate z ),  z = RMSNorm(h; w_final)
///
/// FLA's block is the same with its names: attn_norm, attn, mlp_norm, and the SwiGLU MLP
/// down(silu(gate_proj z) ⊙ up_proj z), that is fc1 = gate_proj, gate = up_proj, fc2 = down_proj.
///
/// with the same three forms, state and handoff rules as MultiScaleRetention (its state is the
/// retention's). Inputs and outputs are row-major (B, T, D).
template <typename Scalar>
class RetNetBlock
    : public SequenceLayer<RetNetBlock<Scalar>, Scalar, MultiScaleRetentionState<Scalar>,
                           RetNetBlockScratch<Scalar>> {
  using Forms = SequenceLayer<RetNetBlock<Scalar>, Scalar, MultiScaleRetentionState<Scalar>,
                              RetNetBlockScratch<Scalar>>;

 public:
  using Config = RetNetBlockConfig;
  using Weights = RetNetBlockWeights<Scalar>;
  using State = MultiScaleRetentionState<Scalar>;
  using Scratch = RetNetBlockScratch<Scalar>;

  RetNetBlock(const Config& config, const Weights& weights)
      : config_(checkedConfig(config)), retention_(config.retention(), weights.retention) {
    const Index D = config.embedDim, F = config.ffnDim;
    const char* where = "RetNetBlock";
    detail::requireLength(where, weights.retentionNorm, D, "weight retentionNorm");
    detail::requireLength(where, weights.finalNorm, D, "weight finalNorm");
    detail::requireShape(where, weights.fc1, F, D, "weight fc1");
    detail::requireShape(where, weights.gate, F, D, "weight gate");
    detail::requireShape(where, weights.fc2, D, F, "weight fc2");
    retentionNorm_ = weights.retentionNorm;
    finalNorm_ = weights.finalNorm;
    ffn_ =
        FeedForwardWeights<Scalar>::glu(weights.fc1, weights.gate, weights.fc2, config.activation);
  }

  const Config& config() const { return config_; }
  const MultiScaleRetention<Scalar>& retention() const { return retention_; }

  /// Calls visit(weight) for each of the layer's dense weights (const or not): how a model
  /// converts its storage (convertWeights) or counts its bytes.
  template <typename Visit>
  void forEachWeight(Visit&& visit) {
    retention_.forEachWeight(visit);
    visit(ffn_.input);
    visit(ffn_.output);
  }
  template <typename Visit>
  void forEachWeight(Visit&& visit) const {
    retention_.forEachWeight(visit);
    visit(ffn_.input);
    visit(ffn_.output);
  }

  // The forms (sequence_layer.hpp), as for MultiScaleRetention.
  using Forms::forward;
  using Forms::forwardChunkwise;
  using Forms::forwardParallel;
  using Forms::forwardRecurrent;
  using Forms::forwardRows;

  /// Chunk size of forward(): that of the block's retention (bench/README.md).
  Index recommendedChunkSize() const { return retention_.recommendedChunkSize(); }

  static constexpr FormNames kFormNames{"RetNetBlock::forwardParallel",
                                        "RetNetBlock::forwardChunkwise",
                                        "RetNetBlock::forwardRecurrent"};
  Index inputWidth() const { return config_.embedDim; }
  Index outputWidth() const { return config_.embedDim; }
  /// The block's state is its retention's.
  void sizeOrCheckState(const char* where, const char* batchName, Index batch, State& state) const {
    retention_.sizeOrCheckState(where, batchName, batch, state);
  }

  /// A zero state for `batch` sequences of a block of shape `config`.
  static State makeState(const Config& config, Index batch) {
    const MultiScaleRetentionConfig retention = config.retention();
    return State(batch, retention.heads, retention.keyDim(), retention.headValueDim());
  }

  /// The data path of one slab: x (batch·time x D) -> y (batch·time x D).
  void forwardSlab(Form form, ConstMatrixRef<Scalar> x, Index batch, Index time, Index chunkSize,
                   State& state, MatrixRef<Scalar> y, Scratch& scratch) const {
    const Index D = config_.embedDim, rows = batch * time;
    const char* where = "RetNetBlock::forwardSlab";
    detail::requireShape(where, x, rows, D, "x (batch·time x embedDim)");
    detail::requireShape(where, y, rows, D, "y (batch·time x embedDim)");
    auto normed = detail::bufferView(scratch.normed, rows, D);
    auto h = detail::bufferView(scratch.residual, rows, D);

    // h = x + MSR(RMSNorm(x; w_ret))
    stages::rmsNorm(x, retentionNorm_.data(), config_.eps, normed);
    retention_.forwardSlab(form, normed, batch, time, chunkSize, state, h, scratch.retention);
    stages::addTo<Scalar>(x, h);

    // y = h + FFN(RMSNorm(h; w_final)),  FFN(z) = fc2(act(fc1 z) ⊙ gate z)
    stages::rmsNorm(h, finalNorm_.data(), config_.eps, normed);
    auto hidden = detail::bufferView(scratch.hidden, rows, 2 * config_.ffnDim);
    stages::gatedFeedForward(normed, ffn_, hidden, y);
    stages::addTo<Scalar>(h, y);
  }

 private:
  static Config checkedConfig(const Config& config) {
    config.validate("RetNetBlock");
    return config;
  }

  Config config_;
  MultiScaleRetention<Scalar> retention_;
  Vector<Scalar> retentionNorm_, finalNorm_;  // (D)
  FeedForwardWeights<Scalar> ffn_;            // fc1 | gate stacked (2F, D), fc2 (D, F)
};

}  // namespace retnet
