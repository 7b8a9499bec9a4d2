// The RetNet block (paper §2.3, eq. 10), matching torchscale's DecoderLayer with pre-norm.
#pragma once

#include "retnet/multiscale_retention.hpp"

namespace retnet {

template <typename Scalar>
class RetNetModel;

/// Shape of a RetNet block (torchscale's names in comments).
struct RetNetBlockConfig {
  Index embedDim = 0;  ///< D (decoder_embed_dim)
  Index valueDim = 0;  ///< V (decoder_value_embed_dim)
  Index heads = 0;     ///< H (decoder_retention_heads)
  Index ffnDim = 0;    ///< F (decoder_ffn_embed_dim)
  double eps = 1e-6;   ///< layernorm_eps: both RMSNorms and the retention group norm
  Activation activation = Activation::kGelu;  ///< activation_fn of the FFN
  Activation gate = Activation::kSwish;       ///< gate_fn of the retention

  MultiScaleRetentionConfig retention() const { return {embedDim, valueDim, heads, eps, gate}; }

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
  RowMatrix<Scalar> fc1;                         ///< ffn.fc1.weight  (F, D)
  RowMatrix<Scalar> gate;                        ///< ffn.gate.weight (F, D)
  RowMatrix<Scalar> fc2;                         ///< ffn.fc2.weight  (D, F)
  Vector<Scalar> finalNorm;                      ///< final_layer_norm.weight (D)
};

/// One RetNet block, pre-norm with residuals and a gated (GLU) FFN:
///
///   h = x + MSR(RMSNorm(x; w_ret))
///   y = h + fc2( act(fc1 z) ⊙ gate z ),  z = RMSNorm(h; w_final)
///
/// with the same three forms, state and handoff rules as MultiScaleRetention (its state is the
/// retention's). Inputs and outputs are row-major (B, T, D).
template <typename Scalar>
class RetNetBlock : public detail::LayerForms<RetNetBlock<Scalar>, Scalar> {
 public:
  using Config = RetNetBlockConfig;
  using Weights = RetNetBlockWeights<Scalar>;
  using State = MultiScaleRetentionState<Scalar>;

  RetNetBlock(const Config& config, const Weights& weights)
      : config_(checkedConfig(config)), retention_(config.retention(), weights.retention) {
    const Index D = config.embedDim, F = config.ffnDim;
    checkVector("retentionNorm", weights.retentionNorm, D);
    checkVector("finalNorm", weights.finalNorm, D);
    checkMatrix("fc1", weights.fc1, F, D);
    checkMatrix("gate", weights.gate, F, D);
    checkMatrix("fc2", weights.fc2, D, F);
    retentionNorm_ = weights.retentionNorm;
    finalNorm_ = weights.finalNorm;
    ffnInput_.resize(2 * F, D);  // fc1 and gate in one GEMM
    ffnInput_ << weights.fc1, weights.gate;
    ffnOutput_ = weights.fc2;
  }

  const Config& config() const { return config_; }
  const MultiScaleRetention<Scalar>& retention() const { return retention_; }

  /// Chunk size of forward(): measured fastest on the benchmark machine (bench/README.md) for
  /// per-head widths from 64 to 256; smaller chunks waste less of the causal mask, larger ones
  /// keep the per-chunk products GEMM-shaped.
  Index recommendedChunkSize() const {
    return detail::recommendedChunkSize(config_.embedDim / config_.heads);
  }

 private:
  template <typename>
  friend class RetNetModel;

  friend class detail::LayerForms<RetNetBlock, Scalar>;

  static constexpr detail::FormNames kFormNames{"RetNetBlock::forwardParallel",
                                                "RetNetBlock::forwardChunkwise",
                                                "RetNetBlock::forwardRecurrent"};
  Index inputWidth() const { return config_.embedDim; }
  Index outputWidth() const { return config_.embedDim; }
  void prepare(const char* where, const ConstTensor3Ref<Scalar>& x, State& state) const {
    retention_.prepare(where, x, state);
  }

  static Config checkedConfig(const Config& config) {
    config.validate("RetNetBlock");
    return config;
  }
  static void checkMatrix(const char* name, const RowMatrix<Scalar>& w, Index rows, Index cols) {
    detail::require(w.rows() == rows && w.cols() == cols, "RetNetBlock", "weight ", name,
                    " must be (", rows, ", ", cols, "), got (", w.rows(), ", ", w.cols(), ")");
  }
  static void checkVector(const char* name, const Vector<Scalar>& w, Index size) {
    detail::require(w.size() == size, "RetNetBlock", "weight ", name, " must have ", size,
                    " entries, got ", w.size());
  }

  /// One slab: x (batch·time x D) -> y (batch·time x D), arguments already checked.
  void forwardSlab(Form form, const Scalar* x, Index batch, Index time, Index chunkSize,
                   State& state, Scalar* y, detail::LayerWorkspace<Scalar>& ws) const {
    const Index D = config_.embedDim, rows = batch * time;
    const Eigen::Map<const RowMatrix<Scalar>> input(x, rows, D);  // (rows x D)

    // h = x + MSR(RMSNorm(x))
    auto normed = detail::bufferView(ws.normed, rows, D);
    auto residual = detail::bufferView(ws.residual, rows, D);
    detail::forRowBlocks(rows, [&](Index begin, Index count) {
      auto block = normed.middleRows(begin, count);
      block = input.middleRows(begin, count);
      detail::rmsNormRows(block, config_.eps, &retentionNorm_);
    });
    retention_.forwardSlab(form, normed.data(), batch, time, chunkSize, state, residual.data(), ws);

    // y = h + fc2(act(fc1 z) ⊙ gate z), z = RMSNorm(h)
    const Index F = config_.ffnDim;
    detail::forRowBlocks(rows, [&](Index begin, Index count) {
      residual.middleRows(begin, count) += input.middleRows(begin, count);
      auto block = normed.middleRows(begin, count);
      block = residual.middleRows(begin, count);
      detail::rmsNormRows(block, config_.eps, &finalNorm_);
    });
    auto hidden = detail::bufferView(ws.hidden, rows, 2 * F);  // (rows x 2F): fc1 z | gate z
    detail::linear(normed, ffnInput_, hidden);
    auto activated = hidden.leftCols(F);
    detail::forRowBlocks(rows, [&](Index begin, Index count) {
      auto block = activated.middleRows(begin, count);
      detail::activateInPlace(block.array(), config_.activation);
      block.array() *= hidden.block(begin, F, count, F).array();
    });
    Eigen::Map<RowMatrix<Scalar>> output(y, rows, D);
    detail::linear(activated, ffnOutput_, output);
    detail::forRowBlocks(rows, [&](Index begin, Index count) {
      output.middleRows(begin, count) += residual.middleRows(begin, count);
    });
  }

  Config config_;
  MultiScaleRetention<Scalar> retention_;
  Vector<Scalar> retentionNorm_, finalNorm_;  // (D)
  RowMatrix<Scalar> ffnInput_;                // (2F, D): fc1 and gate stacked
  RowMatrix<Scalar> ffnOutput_;               // (D, F)
};

}  // namespace retnet
