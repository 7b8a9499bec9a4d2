// The RetNet block (paper §2.3, eq. 10): torchscale's DecoderLayer with pre-norm, and by
// configuration FLA's RetNetBlock (the same data path with FLA's retention and SwiGLU MLP).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "retnet/detail/named_set.hpp"
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

/// Gradients of a loss with respect to the weights of RetNetBlockWeights, in the same layout, as
/// plain matrices: what RetNetBlock::backward accumulates into. forEach names each field by its
/// checkpoint name (torchscale's state_dict names).
template <typename Scalar>
struct RetNetBlockGradients : detail::GradientSet<RetNetBlockGradients<Scalar>> {
  MultiScaleRetentionGradients<Scalar> retention;  ///< d retention.*
  Vector<Scalar> retentionNorm;                    ///< d retention_layer_norm.weight (D)
  RowMatrix<Scalar> fc1;                           ///< d ffn.fc1.weight  (F, D)
  RowMatrix<Scalar> gate;                          ///< d ffn.gate.weight (F, D)
  RowMatrix<Scalar> fc2;                           ///< d ffn.fc2.weight  (D, F)
  Vector<Scalar> finalNorm;                        ///< d final_layer_norm.weight (D)

  /// Zero gradients of a block of `config`, with a retention head-norm weight's when
  /// `headNormWeight`.
  static RetNetBlockGradients zeros(const RetNetBlockConfig& config, bool headNormWeight) {
    RetNetBlockGradients grads;
    grads.resize(config, headNormWeight);
    return grads;
  }

  /// Sizes every field for `config` and zeros it.
  void resize(const RetNetBlockConfig& config, bool headNormWeight) {
    const Index D = config.embedDim, F = config.ffnDim;
    retention.resize(config.retention(), headNormWeight);
    retentionNorm.setZero(D);
    fc1.setZero(F, D);
    gate.setZero(F, D);
    fc2.setZero(D, F);
    finalNorm.setZero(D);
  }

 private:
  friend struct detail::GradientSet<RetNetBlockGradients<Scalar>>;

  /// visit(name, gradient) for each field (const or not): the retention's as "retention." + its
  /// names (MultiScaleRetentionGradients::forEach), then "retention_layer_norm.weight",
  /// "ffn.fc1.weight", "ffn.gate.weight", "ffn.fc2.weight", "final_layer_norm.weight".
  template <typename Self, typename Visit>
  static void forEachOf(Self& self, Visit& visit) {
    self.retention.forEach([&](const char* name, auto& gradient) {
      const std::string prefixed = std::string("retention.") + name;
      visit(prefixed.c_str(), gradient);
    });
    visit("retention_layer_norm.weight", self.retentionNorm);
    visit("ffn.fc1.weight", self.fc1);
    visit("ffn.gate.weight", self.gate);
    visit("ffn.fc2.weight", self.fc2);
    visit("final_layer_norm.weight", self.finalNorm);
  }
};

/// Buffers of one block call (not part of any state's value).
template <typename Scalar>
struct RetNetBlockScratch : detail::SlabBuffers<Scalar> {
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
///
/// Training (parallel and chunkwise forms, full-precision weights), as for MultiScaleRetention:
/// forwardTraining is forwardSlab keeping a TrainingCache, backward runs the stages' backwards in
/// reverse order and accumulates RetNetBlockGradients (torchscale's autograd gradients to
/// rounding: tests/test_layer_backward.cpp).
template <typename Scalar>
class RetNetBlock
    : public SequenceLayer<RetNetBlock<Scalar>, Scalar, MultiScaleRetentionState<Scalar>,
                           RetNetBlockScratch<Scalar>>,
      public detail::ParameterSet<RetNetBlock<Scalar>> {
  using Forms = SequenceLayer<RetNetBlock<Scalar>, Scalar, MultiScaleRetentionState<Scalar>,
                              RetNetBlockScratch<Scalar>>;

 public:
  using Config = RetNetBlockConfig;
  using Weights = RetNetBlockWeights<Scalar>;
  using State = MultiScaleRetentionState<Scalar>;
  using Scratch = RetNetBlockScratch<Scalar>;

  RetNetBlock(const Config& config, const Weights& weights)
      : config_(checkedConfig(config)),
        retention_(config.retention(), weights.retention),
        headNormWeight_(weights.retention.headNorm.size() != 0) {
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
  // forEachParameter(visit(name, parameter)), const or not: detail::ParameterSet, over
  // forEachParameterOf (below).

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

  /// The buffers forwardTraining() and backward() use while they run and that nothing reads
  /// afterwards (the retention's, the FFN's hidden layer, the gradients flowing through). One
  /// workspace may serve many blocks' caches, one call at a time, as a model's blocks share
  /// one. Buffers only grow.
  struct TrainingWorkspace {
    typename MultiScaleRetention<Scalar>::TrainingWorkspace retention;
    Vector<Scalar> dResidual;  // (rows x D) dL/dh
    Vector<Scalar> dNormed;    // (rows x D) dL/dz, then dL/d RMSNorm(x)
    Vector<Scalar> hidden;     // (rows x F) the FFN's act(a) ⊙ b
    Vector<Scalar> dHidden;    // (rows x 2F)
    RowMatrix<Scalar> dInput;  // (2F x D) d[fc1; gate] of one backward
  };

  /// What backward() needs from forwardTraining(), kept by the caller between the two (x is
  /// copied in, so the caller may reuse its input buffer): the retention's TrainingCache (its
  /// input is RMSNorm(x; w_ret)), x, h, z = RMSNorm(h; w_final) (the FFN's input) and the
  /// FFN's pre-activations [a | b]: rows·(3D + 2F) values and the retention's, and the FFN width
  /// F of the block that filled it (backward refuses a cache of another shape). `workspace` serves
  /// the calls given none. Buffers only grow; one cache serves one backward at a time.
  struct TrainingCache {
    Index batch = 0, time = 0;  // time 0: nothing cached yet
    Index ffnDim = 0;           // F of the block that filled it
    typename MultiScaleRetention<Scalar>::TrainingCache retention;
    Vector<Scalar> input;          // (rows x D) x
    Vector<Scalar> residual;       // (rows x D) h
    Vector<Scalar> normed;         // (rows x D) RMSNorm(x; w_ret) in the forward, then z
    Vector<Scalar> preActivation;  // (rows x 2F) [a | b] = z · [fc1; gate]ᵀ
    mutable TrainingWorkspace workspace;
  };
  using Gradients = RetNetBlockGradients<Scalar>;

  /// Zero gradients shaped for this block's weights.
  Gradients zeroGradients() const { return Gradients::zeros(config_, headNormWeight_); }

  /// Sizes (zeroed) empty gradients, or checks that their shapes are this block's: what
  /// backward() does first, before any write, and what a model checks of every block's gradients
  /// before its own first write.
  void sizeOrCheckGradients(const char* where, Gradients& grads) const {
    const Index D = config_.embedDim, F = config_.ffnDim;
    bool empty = true;
    grads.forEach(
        [&](const char*, const auto& gradient) { empty = empty && gradient.size() == 0; });
    if (empty) grads.resize(config_, headNormWeight_);
    const MultiScaleRetentionConfig r = config_.retention();
    const Index dk = r.keyDim(), dv = r.headValueDim(), kv = r.keyValueHeads();
    const auto& m = grads.retention;
    detail::requireShape(where, m.q, r.heads * dk, D, "grads.retention.q (q_proj's shape)");
    detail::requireShape(where, m.k, kv * dk, D, "grads.retention.k (k_proj's shape)");
    detail::requireShape(where, m.v, kv * dv, D, "grads.retention.v (v_proj's shape)");
    detail::requireShape(where, m.g, r.valueDim, D, "grads.retention.g (g_proj's shape)");
    detail::requireShape(where, m.out, D, r.valueDim, "grads.retention.out (out_proj's shape)");
    detail::requireLength(where, m.headNorm, headNormWeight_ ? dv : 0,
                          "grads.retention.headNorm (the head-norm weight's length)");
    detail::requireLength(where, grads.retentionNorm, D, "grads.retentionNorm (D)");
    detail::requireShape(where, grads.fc1, F, D, "grads.fc1 (fc1's shape)");
    detail::requireShape(where, grads.gate, F, D, "grads.gate (gate's shape)");
    detail::requireShape(where, grads.fc2, D, F, "grads.fc2 (fc2's shape)");
    detail::requireLength(where, grads.finalNorm, D, "grads.finalNorm (D)");
  }

  /// Throws unless `cache` holds a forwardTraining() call of a block of this one's shape (its
  /// retention's too): what backward() checks first, and what a model checks of every block's
  /// cache before its own first write.
  void checkCache(const char* where, const TrainingCache& cache) const {
    const Index D = config_.embedDim, rows = cache.batch * cache.time;
    detail::require(cache.time >= 1 && cache.batch >= 1, where,
                    "the cache holds no forwardTraining call");
    detail::require(cache.ffnDim == config_.ffnDim, where,
                    "the cache was filled by a block of another FFN width: ", cache.ffnDim,
                    ", this block's ", config_.ffnDim);
    retention_.checkCache(where, cache.retention);
    detail::require(cache.retention.batch == cache.batch && cache.retention.time == cache.time &&
                        cache.input.size() >= rows * D && cache.residual.size() >= rows * D &&
                        cache.normed.size() >= rows * D &&
                        cache.preActivation.size() >= rows * 2 * config_.ffnDim,
                    where, "the cache was not filled by this block's forwardTraining");
  }

  /// The data path of one slab: x (batch·time x D) -> y (batch·time x D).
  void forwardSlab(Form form, ConstMatrixRef<Scalar> x, Index batch, Index time, Index chunkSize,
                   State& state, MatrixRef<Scalar> y, Scratch& scratch) const {
    forwardPath(form, x, batch, time, chunkSize, state, y, &scratch, nullptr, nullptr);
  }

  /// forwardSlab for training: the same data path (the same bits of y and of the state), which
  /// also fills `cache` for backward(). Parallel and chunkwise forms only and full-precision
  /// weights only (WeightType::kFull); an empty state is sized (zeros, position 0). The whole
  /// input is one slab: x (batch·time x D), y (batch·time x D).
  void forwardTraining(Form form, ConstMatrixRef<Scalar> x, Index batch, Index time,
                       Index chunkSize, State& state, MatrixRef<Scalar> y,
                       TrainingCache& cache) const {
    forwardTraining(form, x, batch, time, chunkSize, state, y, cache, cache.workspace);
  }
  /// The same with the caller's workspace (TrainingWorkspace) in place of the cache's.
  void forwardTraining(Form form, ConstMatrixRef<Scalar> x, Index batch, Index time,
                       Index chunkSize, State& state, MatrixRef<Scalar> y, TrainingCache& cache,
                       TrainingWorkspace& work) const {
    const char* where = "RetNetBlock::forwardTraining";
    requireTrainable(where, form);
    detail::require(batch >= 1 && time >= 1, where, "batch and time must be >= 1, got (", batch,
                    ", ", time, ")");
    if (form == Form::kChunkwise) detail::requireChunkSize(where, chunkSize);
    const Index D = config_.embedDim, rows = batch * time;
    detail::requireShape(where, x, rows, D, "x (batch·time x embedDim)");
    detail::requireShape(where, y, rows, D, "y (batch·time x embedDim)");
    sizeOrCheckState(where, "batch size (the state's)", batch, state);
    cache.time = 0;  // invalid until the forward has run
    forwardPath(form, x, batch, time, chunkSize, state, y, nullptr, &cache, &work);
    cache.batch = batch;
    cache.time = time;
    cache.ffnDim = config_.ffnDim;
  }

  /// backward() below, run in the cache's own workspace.
  void backward(const TrainingCache& cache, ConstMatrixRef<Scalar> dY, MatrixRef<Scalar> dX,
                Gradients& grads) const {
    backward(cache, dY, dX, grads, cache.workspace);
  }
  /// The backward of forwardTraining() for the loss L whose gradient with respect to y is dY
  /// (batch·time x D): writes dX = dL/dx (batch·time x D; it may be dY's buffer) and adds dL/dW
  /// to `grads` (an empty one is sized and zeroed first; else its shapes must be this block's).
  /// The states are not differentiated (MultiScaleRetention::backward). `work` is the
  /// TrainingWorkspace to run in (any one: nothing of the forward's is read from it). The stages of
  /// forwardPath in reverse order:
  void backward(const TrainingCache& cache, ConstMatrixRef<Scalar> dY, MatrixRef<Scalar> dX,
                Gradients& grads, TrainingWorkspace& work) const {
    const char* where = "RetNetBlock::backward";
    checkBackward(where, cache, dY, dX, grads);
    const Index D = config_.embedDim, F = config_.ffnDim, rows = cache.batch * cache.time;
    const ConstMap x(cache.input.data(), rows, D);
    const ConstMap h(cache.residual.data(), rows, D);
    const ConstMap z(cache.normed.data(), rows, D);

    // y = h + FFN(z):  dh = dY (the residual), dz = FFN'(dY)
    auto dH = detail::bufferView(work.dResidual, rows, D);
    dH = dY;
    auto dZ = detail::bufferView(work.dNormed, rows, D);
    const ConstMap preActivation(cache.preActivation.data(), rows, 2 * F);
    auto activated = detail::bufferView(work.hidden, rows, F);
    auto dHidden = detail::bufferView(work.dHidden, rows, 2 * F);
    work.dInput.setZero(2 * F, D);
    stages::gatedFeedForwardBackward<Scalar>(z, ffn_, preActivation, dY, activated, dHidden, dZ,
                                             work.dInput, grads.fc2);
    grads.fc1 += work.dInput.topRows(F);
    grads.gate += work.dInput.bottomRows(F);

    // z = RMSNorm(h; w_final):  dh += RMSNorm'(dz)
    stages::rmsNormBackward<Scalar>(h, finalNorm_.data(), config_.eps, dZ, dZ,
                                    grads.finalNorm.data());
    dH += dZ;

    // h = x + MSR(a):  dx = dh (the residual), da = MSR'(dh)
    auto dA = detail::bufferView(work.dNormed, rows, D);
    retention_.backward(cache.retention, dH, dA, grads.retention, work.retention);

    // a = RMSNorm(x; w_ret):  dx = dh + RMSNorm'(da)
    stages::rmsNormBackward<Scalar>(x, retentionNorm_.data(), config_.eps, dA, dA,
                                    grads.retentionNorm.data());
    dX = dH + dA;
  }

 private:
  using ConstMap = Eigen::Map<const RowMatrix<Scalar>>;

  /// The data path: forwardSlab's with its `scratch`, or forwardTraining's, keeping what
  /// backward() needs in `cache` and running in `work`.
  void forwardPath(Form form, ConstMatrixRef<Scalar> x, Index batch, Index time, Index chunkSize,
                   State& state, MatrixRef<Scalar> y, Scratch* scratch, TrainingCache* cache,
                   TrainingWorkspace* work) const {
    const Index D = config_.embedDim, rows = batch * time;
    const char* where = "RetNetBlock::forwardSlab";
    detail::requireShape(where, x, rows, D, "x (batch·time x embedDim)");
    detail::requireShape(where, y, rows, D, "y (batch·time x embedDim)");
    auto normed = detail::bufferView(cache != nullptr ? cache->normed : scratch->normed, rows, D);
    auto h = detail::bufferView(cache != nullptr ? cache->residual : scratch->residual, rows, D);
    if (cache != nullptr) detail::bufferView(cache->input, rows, D) = x;

    // h = x + MSR(RMSNorm(x; w_ret))
    stages::rmsNorm(x, retentionNorm_.data(), config_.eps, normed);
    if (cache != nullptr) {
      retention_.forwardTraining(form, normed, batch, time, chunkSize, state, h, cache->retention,
                                 work->retention);
    } else {
      retention_.forwardSlab(form, normed, batch, time, chunkSize, state, h, scratch->retention);
    }
    stages::addTo<Scalar>(x, h);

    // y = h + FFN(RMSNorm(h; w_final)),  FFN(z) = fc2(act(fc1 z) ⊙ gate z)
    stages::rmsNorm(h, finalNorm_.data(), config_.eps, normed);
    const Index F = config_.ffnDim;
    if (cache != nullptr) {
      auto preActivation = detail::bufferView(cache->preActivation, rows, 2 * F);
      auto activated = detail::bufferView(work->hidden, rows, F);
      stages::gatedFeedForwardTraining<Scalar>(normed, ffn_, preActivation, activated, y);
    } else {
      auto hidden = detail::bufferView(scratch->hidden, rows, 2 * F);
      stages::gatedFeedForward(normed, ffn_, hidden, y);
    }
    stages::addTo<Scalar>(h, y);
  }

  /// Training: the parallel or chunkwise form, and full-precision weights.
  void requireTrainable(const char* where, Form form) const {
    detail::require(form != Form::kRecurrent, where,
                    "the recurrent form has no backward; train with the parallel or chunkwise "
                    "form");
    forEachWeight([&](const LinearWeight<Scalar>& weight) {
      detail::require(weight.type() == WeightType::kFull, where,
                      "the weights must be full precision to be trained, got ",
                      weightTypeName(weight.type()));
    });
  }

  /// backward()'s checks, before its first write; sizes empty gradients.
  void checkBackward(const char* where, const TrainingCache& cache,
                     const ConstMatrixRef<Scalar>& dY, const MatrixRef<Scalar>& dX,
                     Gradients& grads) const {
    checkCache(where, cache);
    const Index D = config_.embedDim, rows = cache.batch * cache.time;
    detail::requireShape(where, dY, rows, D, "dY (batch·time x embedDim)");
    detail::requireShape(where, dX, rows, D, "dX (batch·time x embedDim)");
    sizeOrCheckGradients(where, grads);
  }

  static Config checkedConfig(const Config& config) {
    config.validate("RetNetBlock");
    return config;
  }

  friend struct detail::ParameterSet<RetNetBlock<Scalar>>;

  /// Calls visit(name, parameter) for each trainable parameter, in the order and with the names
  /// and shapes of RetNetBlockGradients::forEach; `parameter` is an Eigen::Map of the weight in
  /// place (MultiScaleRetention::forEachParameter). Full-precision weights only.
  template <typename Self, typename Visit>
  static void forEachParameterOf(Self& self, Visit& visit) {
    using Map = detail::ParameterMap<Self, Scalar>;
    self.retention_.forEachParameter([&](const char* name, Map parameter) {
      const std::string prefixed = std::string("retention.") + name;
      visit(prefixed.c_str(), parameter);
    });
    const Index D = self.config_.embedDim, F = self.config_.ffnDim;
    visit("retention_layer_norm.weight", Map(self.retentionNorm_.data(), D, 1));
    auto& input = detail::fullMatrix(self.ffn_.input);  // [fc1; gate]
    visit("ffn.fc1.weight", Map(input.data(), F, D));
    visit("ffn.gate.weight", Map(input.data() + F * D, F, D));
    auto& output = detail::fullMatrix(self.ffn_.output);
    visit("ffn.fc2.weight", Map(output.data(), D, F));
    visit("final_layer_norm.weight", Map(self.finalNorm_.data(), D, 1));
  }

  Config config_;
  MultiScaleRetention<Scalar> retention_;
  Vector<Scalar> retentionNorm_, finalNorm_;  // (D)
  FeedForwardWeights<Scalar> ffn_;            // fc1 | gate stacked (2F, D), fc2 (D, F)
  bool headNormWeight_ = false;               // the retention has a head-norm weight
};

}  // namespace retnet
