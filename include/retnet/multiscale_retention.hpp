// Multi-scale retention (paper §2.2, eqs. 8–9): torchscale's MultiScaleRetention by default, and
// by configuration FLA's (flash-linear-attention) MultiScaleRetention, one data path for both.
#pragma once

#include <array>
#include <cmath>
#include <type_traits>
#include <vector>

#include "retnet/activation.hpp"
#include "retnet/detail/checks.hpp"
#include "retnet/detail/named_set.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/detail/workspace.hpp"
#include "retnet/form.hpp"
#include "retnet/rotary.hpp"
#include "retnet/sequence_layer.hpp"
#include "retnet/stages/decay.hpp"
#include "retnet/stages/group_norm.hpp"
#include "retnet/stages/linear.hpp"
#include "retnet/stages/retention.hpp"
#include "retnet/state.hpp"

namespace retnet {

/// Shape and semantics of a multi-scale retention layer (torchscale's names in comments). The
/// defaults are torchscale's; MultiScaleRetentionConfig::fla() gives FLA's semantics.
struct MultiScaleRetentionConfig {
  Index embedDim = 0;  ///< D (embed_dim): input and output width
  Index valueDim = 0;  ///< V (value_dim): width of g and of the concatenated heads, H·dv
  Index heads = 0;  ///< H (retention_heads): query heads; must divide V (and D if headKeyDim is 0)
  double eps = 1e-6;                     ///< group-norm eps (layernorm_eps)
  Activation gate = Activation::kSwish;  ///< gate_fn
  std::vector<double> decays = {};       ///< γ_h per head; empty: the paper's 1 − 2^(−5−h)
  Index headKeyDim = 0;  ///< dk per head; 0: D / H (torchscale). FLA: expand_k·D / H
  Index kvHeads = 0;     ///< key/value heads (FLA num_kv_heads); 0: H. Must divide H; query head
                         ///< h reads key/value head h / (H / kvHeads)
  RotaryLayout rotary = RotaryLayout::kInterleaved;  ///< torchscale's; FLA: kHalfSplit
  RetentionNormalization normalization = RetentionNormalization::kTorchscale;  ///< FLA: kNone
  ScaleSide scaleSide = ScaleSide::kKey;  ///< which of q, k carries dk^(−1/2); FLA: kQuery

  /// FLA's semantics (half-split rotary, raw retention, q scaled) on a shape.
  static MultiScaleRetentionConfig fla(Index embedDim, Index heads, Index kvHeads, Index headKeyDim,
                                       Index headValueDim, double eps) {
    MultiScaleRetentionConfig c;
    c.embedDim = embedDim;
    c.valueDim = heads * headValueDim;
    c.heads = heads;
    c.eps = eps;
    c.headKeyDim = headKeyDim;
    c.kvHeads = kvHeads;
    c.rotary = RotaryLayout::kHalfSplit;
    c.normalization = RetentionNormalization::kNone;
    c.scaleSide = ScaleSide::kQuery;
    return c;
  }

  Index keyDim() const { return headKeyDim > 0 ? headKeyDim : embedDim / heads; }  ///< dk
  Index headValueDim() const { return valueDim / heads; }                          ///< dv
  Index keyValueHeads() const { return kvHeads > 0 ? kvHeads : heads; }            ///< H_kv

  /// γ_h of every head: `decays`, or the paper's schedule when it is empty.
  std::vector<double> headDecays() const {
    return decays.empty() ? stages::retnetDecays(heads) : decays;
  }

  void validate(const char* where) const {
    detail::require(embedDim >= 1 && valueDim >= 1 && heads >= 1, where,
                    "embedDim, valueDim and heads must be >= 1, got ", embedDim, ", ", valueDim,
                    ", ", heads);
    detail::require(headKeyDim >= 0 && kvHeads >= 0, where,
                    "headKeyDim and kvHeads must be >= 0 (0: the default), got ", headKeyDim, ", ",
                    kvHeads);
    detail::require(headKeyDim > 0 || embedDim % heads == 0, where, "heads (", heads,
                    ") must divide embedDim (", embedDim, ") unless headKeyDim is given");
    detail::require(valueDim % heads == 0, where, "heads (", heads, ") must divide valueDim (",
                    valueDim, ")");
    detail::require(heads % keyValueHeads() == 0, where, "kvHeads (", keyValueHeads(),
                    ") must divide heads (", heads, ")");
    detail::require(keyDim() >= 2 && keyDim() % 2 == 0, where,
                    "the per-head key dim must be even and >= 2 for the rotary pairs, got ",
                    keyDim());
    detail::require(std::isfinite(eps) && eps >= 0, where, "eps must be finite and >= 0, got ",
                    eps);
    if (!decays.empty()) stages::checkDecays(where, decays, heads);
  }
};

/// Weights in PyTorch's Linear layout (out, in), applied as y = x · Wᵀ; no biases. Each dense
/// weight is a LinearWeight: assign a matrix, or a reduced-precision weight (a mapped file's).
/// With H_kv = H and dk = D/H (torchscale) q and k are (D, D) and v is (V, D).
template <typename Scalar>
struct MultiScaleRetentionWeights {
  LinearWeight<Scalar> q;     ///< q_proj.weight   (H·dk, D)
  LinearWeight<Scalar> k;     ///< k_proj.weight   (H_kv·dk, D)
  LinearWeight<Scalar> v;     ///< v_proj.weight   (H_kv·dv, D)
  LinearWeight<Scalar> g;     ///< g_proj.weight   (V, D), V = H·dv
  LinearWeight<Scalar> out;   ///< out_proj.weight (D, V) (FLA: o_proj)
  Vector<Scalar> headNorm{};  ///< the group norm's weight (dv), shared by all heads (FLA's
                              ///< g_norm_swish_gate); empty: no weight (torchscale)
};

/// Gradients of a loss with respect to the weights of MultiScaleRetentionWeights, in the same
/// layout (PyTorch's (out, in)), as plain matrices: what MultiScaleRetention::backward
/// accumulates into. forEach names each field by its checkpoint name (torchscale's state_dict
/// names; FLA's for the head-norm weight, which torchscale does not have).
template <typename Scalar>
struct MultiScaleRetentionGradients : detail::GradientSet<MultiScaleRetentionGradients<Scalar>> {
  RowMatrix<Scalar> q;        ///< d q_proj.weight   (H·dk, D)
  RowMatrix<Scalar> k;        ///< d k_proj.weight   (H_kv·dk, D)
  RowMatrix<Scalar> v;        ///< d v_proj.weight   (H_kv·dv, D)
  RowMatrix<Scalar> g;        ///< d g_proj.weight   (V, D)
  RowMatrix<Scalar> out;      ///< d out_proj.weight (D, V)
  Vector<Scalar> headNorm{};  ///< d of the group norm's weight (dv); empty when the layer has none

  /// Zero gradients of a layer of `config`, with a head-norm weight's when `headNormWeight`.
  static MultiScaleRetentionGradients zeros(const MultiScaleRetentionConfig& config,
                                            bool headNormWeight) {
    MultiScaleRetentionGradients grads;
    grads.resize(config, headNormWeight);
    return grads;
  }

  /// Sizes every field for `config` and zeros it.
  void resize(const MultiScaleRetentionConfig& config, bool headNormWeight) {
    const Index D = config.embedDim, dk = config.keyDim();
    const Index kvWidth = config.keyValueHeads() * config.headValueDim();
    q.setZero(config.heads * dk, D);
    k.setZero(config.keyValueHeads() * dk, D);
    v.setZero(kvWidth, D);
    g.setZero(config.valueDim, D);
    out.setZero(D, config.valueDim);
    headNorm.setZero(headNormWeight ? config.headValueDim() : 0);
  }

 private:
  friend struct detail::GradientSet<MultiScaleRetentionGradients<Scalar>>;

  /// visit(name, gradient) for each field (const or not): "q_proj.weight", "k_proj.weight",
  /// "v_proj.weight", "g_proj.weight", "out_proj.weight", then "g_norm_swish_gate.weight" (the
  /// head-norm weight's, a Vector) if it is not empty.
  template <typename Self, typename Visit>
  static void forEachOf(Self& self, Visit& visit) {
    visit("q_proj.weight", self.q);
    visit("k_proj.weight", self.k);
    visit("v_proj.weight", self.v);
    visit("g_proj.weight", self.g);
    visit("out_proj.weight", self.out);
    if (self.headNorm.size() != 0) visit("g_norm_swish_gate.weight", self.headNorm);
  }
};

/// Buffers of one multi-scale retention call (not part of any state's value).
template <typename Scalar>
struct MultiScaleRetentionScratch : detail::SlabBuffers<Scalar> {
  Vector<Scalar> projections;                               // (rows x width): q | k | v | g
  Vector<Scalar> retained;                                  // (rows x V): heads side by side
  RotaryTable<Scalar> rotary;                               // (time x dk/2)
  std::array<std::vector<RetentionPlan<Scalar>>, 3> plans;  // per form (Form's value), per head
  std::vector<RetentionScratch<Scalar>> perThread;          // the retention stage's
};

/// Multi-scale retention in all three forms:
///
///   q, k, v, g = x Wqᵀ, x Wkᵀ, x Wvᵀ, x Wgᵀ            (x is (B, T, D)); then dk^(−1/2) on k or q
///   q, k      <- rotated by position (RotaryEmbedding, the configured layout)
///   o_h       = retention of query head h (key/value head h / (H/H_kv)) with γ_h, divided by
///               the form's factor when normalization is kTorchscale
///   y         = (act(g) ⊙ concat_h GroupRMSNorm(o_h) [⊙ w]) Woutᵀ                 (eq. 8–9)
///
/// With the defaults each form reproduces the matching torchscale form: the per-form factors
/// differ (and so do the outputs, through the group-norm eps, by ~1e-6); with eps = 0 all forms
/// agree to rounding. With FLA's semantics (config fla()) there are no factors and every form
/// computes the same function to rounding; the state is FLA's raw S. Each form takes an optional
/// state and leaves it after its input, so a sequence can be split anywhere between forms. With a
/// non-empty incoming state the parallel form computes the chunkwise formula with one chunk
/// spanning its input. Inputs and outputs are row-major (B, T, D).
///
/// Training (parallel and chunkwise forms, full-precision weights): forwardTraining is
/// forwardSlab keeping a TrainingCache, backward runs the stages' backwards in reverse order and
/// accumulates MultiScaleRetentionGradients (torchscale's autograd gradients to rounding:
/// tests/test_layer_backward.cpp).
template <typename Scalar>
class MultiScaleRetention
    : public SequenceLayer<MultiScaleRetention<Scalar>, Scalar, MultiScaleRetentionState<Scalar>,
                           MultiScaleRetentionScratch<Scalar>>,
      public detail::ParameterSet<MultiScaleRetention<Scalar>> {
  static_assert(std::is_floating_point_v<Scalar>,
                "retnet::MultiScaleRetention needs a floating-point Scalar");
  using Forms = SequenceLayer<MultiScaleRetention<Scalar>, Scalar, MultiScaleRetentionState<Scalar>,
                              MultiScaleRetentionScratch<Scalar>>;

 public:
  using Config = MultiScaleRetentionConfig;
  using Weights = MultiScaleRetentionWeights<Scalar>;
  using State = MultiScaleRetentionState<Scalar>;
  using Scratch = MultiScaleRetentionScratch<Scalar>;

  MultiScaleRetention(const Config& config, const Weights& weights)
      : config_(checkedConfig(config)), rotary_(config.keyDim(), config.rotary) {
    const Index D = config.embedDim, V = config.valueDim, dk = config.keyDim();
    const Index qWidth = config.heads * dk, kWidth = config.keyValueHeads() * dk;
    const Index vWidth = config.keyValueHeads() * config.headValueDim();
    const char* where = "MultiScaleRetention";
    detail::requireShape(where, weights.q, qWidth, D, "weight q");
    detail::requireShape(where, weights.k, kWidth, D, "weight k");
    detail::requireShape(where, weights.v, vWidth, D, "weight v");
    detail::requireShape(where, weights.g, V, D, "weight g");
    detail::requireShape(where, weights.out, D, V, "weight out");
    if (weights.headNorm.size() != 0)
      detail::requireLength(where, weights.headNorm, config.headValueDim(), "weight headNorm");
    // One product for all four input projections (the weights as given: a reduced-precision
    // file's tensors stay in place).
    inputWeights_ = LinearWeight<Scalar>::stacked({&weights.q, &weights.k, &weights.v, &weights.g});
    outputWeights_ = weights.out;
    headNorm_ = weights.headNorm;
    for (double gamma : config.headDecays())
      heads_.push_back({gamma, config.normalization, 1.0, config.scaleSide});
  }

  const Config& config() const { return config_; }

  /// Calls visit(weight) for each of the layer's dense weights (const or not): how a model
  /// converts its storage (convertWeights) or counts its bytes.
  template <typename Visit>
  void forEachWeight(Visit&& visit) {
    visit(inputWeights_);
    visit(outputWeights_);
  }
  template <typename Visit>
  void forEachWeight(Visit&& visit) const {
    visit(inputWeights_);
    visit(outputWeights_);
  }
  const RotaryEmbedding<Scalar>& rotary() const { return rotary_; }
  // forEachParameter(visit(name, parameter)), const or not: detail::ParameterSet, over
  // forEachParameterOf (below).

  // The forms (sequence_layer.hpp): forwardParallel(x[, state]), forwardChunkwise(x, chunk[,
  // state]), forwardRecurrent(x[, state[, out[, scratch]]]), forward(x[, state]),
  // forward(form, x, chunk, state), forwardRows(form, x, batch, time, chunk, state, y, scratch).
  using Forms::forward;
  using Forms::forwardChunkwise;
  using Forms::forwardParallel;
  using Forms::forwardRecurrent;
  using Forms::forwardRows;

  /// γ_h = 1 − 2^(−5−h), the paper's (torchscale's, FLA's) decay of head h.
  static double headGamma(Index head) { return stages::retnetDecay(head); }

  /// Chunk size of forward(): measured fastest on the benchmark machine (bench/README.md) for
  /// per-head widths from 64 to 256; smaller chunks waste less of the causal mask, larger ones
  /// keep the per-chunk products GEMM-shaped.
  Index recommendedChunkSize() const { return detail::recommendedChunkSize(config_.keyDim()); }

  static constexpr FormNames kFormNames{"MultiScaleRetention::forwardParallel",
                                        "MultiScaleRetention::forwardChunkwise",
                                        "MultiScaleRetention::forwardRecurrent"};
  Index inputWidth() const { return config_.embedDim; }
  Index outputWidth() const { return config_.embedDim; }

  /// Sizes an empty state for `batch` items, or checks a non-empty one against this layer.
  void sizeOrCheckState(const char* where, const char* batchName, Index batch, State& state) const {
    if (state.empty()) {
      state.reset(batch, config_.heads, config_.keyDim(), config_.headValueDim());
      return;
    }
    detail::requireEqual(where, batchName, state.batch(), batch);
    detail::requireEqual(where, "state heads", config_.heads, state.heads());
    detail::requireEqual(where, "state key dim", config_.keyDim(), state.keyDim());
    detail::requireEqual(where, "state value dim", config_.headValueDim(), state.valueDim());
  }

  /// The buffers forwardTraining() and backward() use while they run and that nothing reads
  /// afterwards. One workspace may serve the caches of many layers, one call at a time: a model
  /// keeps one for all its blocks, so that its training memory holds one layer's backward
  /// buffers, not one per layer. Buffers only grow.
  struct TrainingWorkspace {
    Scratch forward;        // the rotary table and plans (forward and backward) and the forward's
                            // per-thread scratch (its projections and output stay empty: the cache
                            // holds those)
    Vector<Scalar> dGated;  // (rows x V)
    Vector<Scalar> dRetained;                                  // (rows x V)
    Vector<Scalar> dProjections;                               // (rows x width) d[q|k|v|g]
    std::vector<RetentionBackwardScratch<Scalar>> perThread;   // the retention backward's
    std::vector<Vector<Scalar>> keyGradients, valueGradients;  // per thread: grouped heads
  };

  /// What backward() needs from forwardTraining(), kept by the caller between the two (x is
  /// copied in, so the caller may reuse its input buffer): the projections (q, k after the scale
  /// and the rotation, v, and act(g)), the gate's pre-activation g, the retention output o before
  /// the group norm, the group norm's gated output, the states and positions entering the call,
  /// the form and the chunk: rows·(D + width + 3V) values, and the shape of the layer that
  /// filled it (backward refuses a cache of another shape). `workspace` serves the calls given
  /// none. Buffers only grow: a training loop that reuses one cache allocates little after its
  /// first step. One cache serves one backward at a time.
  struct TrainingCache {
    Form form = Form::kParallel;
    Index batch = 0, time = 0, chunkSize = 0;  // time 0: nothing cached yet
    std::array<Index, 6> layerShape{};         // the filling layer's D, width, V, H, dk, dv
    Vector<Scalar> input;                      // (rows x D) x
    Vector<Scalar> projections;                // (rows x width) q | k | v | act(g), as above
    Vector<Scalar> gate;                       // (rows x V) g before the activation
    Vector<Scalar> retained;                   // (rows x V) o before the group norm
    Vector<Scalar> gated;                      // (rows x V) the group norm's output (step 5's x)
    Vector<Scalar> states;                     // (batch·H·dk·dv) S entering the call
    std::vector<Index> positions;              // (batch) positions entering the call
    mutable TrainingWorkspace workspace;
  };
  using Gradients = MultiScaleRetentionGradients<Scalar>;

  /// Zero gradients shaped for this layer's weights.
  Gradients zeroGradients() const { return Gradients::zeros(config_, headNorm_.size() != 0); }

  /// Throws unless `cache` holds a forwardTraining() call of a layer of this one's shape: what
  /// backward() checks first, and what a block or model checks of every cache before its own
  /// first write.
  void checkCache(const char* where, const TrainingCache& cache) const {
    const Index D = config_.embedDim, V = config_.valueDim, rows = cache.batch * cache.time;
    const Index stateSize = cache.batch * config_.heads * config_.keyDim() * config_.headValueDim();
    detail::require(cache.time >= 1 && cache.batch >= 1, where,
                    "the cache holds no forwardTraining call");
    const std::array<Index, 6> shape = layerShape();
    detail::require(
        cache.layerShape == shape, where,
        "the cache was filled by a layer of another shape: (D, width, V, H, dk, dv) = (",
        cache.layerShape[0], ", ", cache.layerShape[1], ", ", cache.layerShape[2], ", ",
        cache.layerShape[3], ", ", cache.layerShape[4], ", ", cache.layerShape[5],
        "), this layer's (", shape[0], ", ", shape[1], ", ", shape[2], ", ", shape[3], ", ",
        shape[4], ", ", shape[5], ")");
    detail::require(static_cast<Index>(cache.positions.size()) == cache.batch &&
                        cache.input.size() >= rows * D && cache.states.size() >= stateSize &&
                        cache.projections.size() >= rows * inputWeights_.outputs() &&
                        cache.gate.size() >= rows * V && cache.retained.size() >= rows * V &&
                        cache.gated.size() >= rows * V,
                    where, "the cache was not filled by this layer's forwardTraining");
  }

  /// The data path of one slab: x (batch·time x D) -> y (batch·time x D), every batch item
  /// `time` positions long and at its own position in `state` (sized by prepare()).
  void forwardSlab(Form form, ConstMatrixRef<Scalar> x, Index batch, Index time, Index chunkSize,
                   State& state, MatrixRef<Scalar> y, Scratch& scratch) const {
    forwardPath(form, x, batch, time, chunkSize, state, y, scratch, nullptr);
  }

  /// forwardSlab for training: the same data path (the same bits of y and of the state), which
  /// also fills `cache` for backward(). Parallel and chunkwise forms only (the recurrent form has
  /// no backward) and full-precision weights only (WeightType::kFull); an empty state is sized
  /// (zeros, position 0). The whole input is one slab: x (batch·time x D), y (batch·time x D).
  void forwardTraining(Form form, ConstMatrixRef<Scalar> x, Index batch, Index time,
                       Index chunkSize, State& state, MatrixRef<Scalar> y,
                       TrainingCache& cache) const {
    forwardTraining(form, x, batch, time, chunkSize, state, y, cache, cache.workspace);
  }
  /// The same with the caller's workspace (TrainingWorkspace) in place of the cache's.
  void forwardTraining(Form form, ConstMatrixRef<Scalar> x, Index batch, Index time,
                       Index chunkSize, State& state, MatrixRef<Scalar> y, TrainingCache& cache,
                       TrainingWorkspace& work) const {
    const char* where = "MultiScaleRetention::forwardTraining";
    requireTrainable(where, form);
    detail::require(batch >= 1 && time >= 1, where, "batch and time must be >= 1, got (", batch,
                    ", ", time, ")");
    if (form == Form::kChunkwise) detail::requireChunkSize(where, chunkSize);
    if (state.empty()) sizeOrCheckState(where, "batch size (the state's)", batch, state);
    cache.time = 0;  // invalid until the forward has run
    forwardPath(form, x, batch, time, chunkSize, state, y, work.forward, &cache);
    cache.form = form;
    cache.batch = batch;
    cache.time = time;
    cache.chunkSize = chunkSize;
    cache.layerShape = layerShape();
  }

  /// backward() below, run in the cache's own workspace.
  void backward(const TrainingCache& cache, ConstMatrixRef<Scalar> dY, MatrixRef<Scalar> dX,
                Gradients& grads) const {
    backward(cache, dY, dX, grads, cache.workspace);
  }
  /// The backward of forwardTraining() for the loss L whose gradient with respect to y is dY
  /// (batch·time x D): writes dX = dL/dx (batch·time x D; it may be dY's buffer) and adds dL/dW
  /// to `grads` (an empty one is sized and zeroed first; else its shapes must be this layer's).
  /// The state leaving the forward is not differentiated (L does not read it), nor is the state
  /// entering it (a constant). torchscale's normalisers are constants, as its detach() makes
  /// them (stages::retentionBackward). `work` is the
  /// TrainingWorkspace to run in (any one: nothing of the forward's is read from it). The stages of
  /// forwardPath in reverse order:
  void backward(const TrainingCache& cache, ConstMatrixRef<Scalar> dY, MatrixRef<Scalar> dX,
                Gradients& grads, TrainingWorkspace& work) const {
    const char* where = "MultiScaleRetention::backward";
    requireTrainable(where, cache.form);
    checkBackward(where, cache, dY, dX, grads);
    const Index D = config_.embedDim, V = config_.valueDim, H = config_.heads;
    const Index rows = cache.batch * cache.time, time = cache.time, width = inputWeights_.outputs();
    const Index dk = config_.keyDim(), qWidth = H * dk, rotated = qkWidth();
    const Index kvWidth = rotated - qWidth, vWidth = width - rotated - V;
    const ConstMap x(cache.input.data(), rows, D);
    const ConstMap qkvg(cache.projections.data(), rows, width);
    const ConstMap gate(cache.gate.data(), rows, V), o(cache.retained.data(), rows, V);
    const ConstMap gated(cache.gated.data(), rows, V);
    const Scalar* w = headNorm_.size() ? headNorm_.data() : nullptr;

    // 5ᵀ. y = o' Woutᵀ:  do' = dY Wout,  dWout += dYᵀ o'
    auto dGated = detail::bufferView(work.dGated, rows, V);
    stages::linearBackward<Scalar>(gated, outputWeights_, dY, dGated, grads.out);

    // 4ᵀ. o' = GroupNorm(o) [⊙ w] ⊙ act(g):  do, dg (into g's columns of d[q|k|v|g]) [, dw]
    auto dQkvg = detail::bufferView(work.dProjections, rows, width);
    auto dO = detail::bufferView(work.dRetained, rows, V);
    stages::groupNormGateBackward<Scalar>(o, H, w, config_.eps, gate, config_.gate, dGated, dO,
                                          dQkvg.rightCols(V),
                                          w != nullptr ? grads.headNorm.data() : nullptr);

    // 3ᵀ. dq, dk, dv of every (batch item, head)
    retainHeadsBackward(cache, qkvg, dO, dQkvg, work);

    // 2ᵀ. rotated back, each batch item's rows by its own positions
    for (Index b = 0; b < cache.batch; ++b) {
      const Index position = cache.positions[static_cast<std::size_t>(b)];
      if (b == 0 || position != cache.positions[static_cast<std::size_t>(b - 1)])
        rotary_.fillTable(position, time, work.forward.rotary);
      stages::rotateBackward(rotary_, work.forward.rotary, dQkvg.block(b * time, 0, time, rotated));
    }

    // 1bᵀ. the dk^(−1/2) on k or q
    const bool scaleKeys = config_.scaleSide == ScaleSide::kKey;
    dQkvg.middleCols(scaleKeys ? qWidth : 0, scaleKeys ? kvWidth : qWidth) *=
        static_cast<Scalar>(1.0 / std::sqrt(double(dk)));

    // 1ᵀ. [q|k|v|g] = x [Wq; Wk; Wv; Wg]ᵀ:  dWpart += dpartᵀ x,  dx = d[q|k|v|g] [Wq; Wk; Wv; Wg]
    stages::linearBackwardWeight<Scalar>(x, dQkvg.leftCols(qWidth), grads.q);
    stages::linearBackwardWeight<Scalar>(x, dQkvg.middleCols(qWidth, kvWidth), grads.k);
    stages::linearBackwardWeight<Scalar>(x, dQkvg.middleCols(rotated, vWidth), grads.v);
    stages::linearBackwardWeight<Scalar>(x, dQkvg.rightCols(V), grads.g);
    stages::linearBackwardInput<Scalar>(dQkvg, inputWeights_, dX);
  }

 private:
  using ConstMap = Eigen::Map<const RowMatrix<Scalar>>;

  /// The data path (forwardSlab); with a cache, also what backward() needs.
  void forwardPath(Form form, ConstMatrixRef<Scalar> x, Index batch, Index time, Index chunkSize,
                   State& state, MatrixRef<Scalar> y, Scratch& scratch,
                   TrainingCache* cache) const {
    const Index D = config_.embedDim, V = config_.valueDim, rows = batch * time;
    const Index rotated = qkWidth(), width = inputWeights_.outputs();
    const char* where = "MultiScaleRetention::forwardSlab";
    detail::requireShape(where, x, rows, D, "x (batch·time x embedDim)");
    detail::requireShape(where, y, rows, D, "y (batch·time x embedDim)");
    detail::require(!state.empty(), where, "the state must be sized (prepare) first");
    sizeOrCheckState(where, "batch size (the state's)", batch, state);
    for (Index b = 0; b < batch; ++b) {
      detail::require(state.position(b) <= kMaxPosition - time, where, "position ",
                      state.position(b), " + time ", time, " is beyond 2^53");
    }

    // 1. [q | k | v | g] = x [Wq; Wk; Wv; Wg]ᵀ                          (rows x width), one GEMM
    //    (training: into the cache, which keeps them)
    auto qkvg = detail::bufferView(cache != nullptr ? cache->projections : scratch.projections,
                                   rows, width);
    stages::linear(x, inputWeights_, qkvg);

    // 1b. dk^(−1/2) on k (torchscale: S holds the scaled keys, which its normalisers read) or on
    //     q (FLA: S is the raw Σ kᵀv), after the product as both do; retention runs with scale 1
    const Index dk = config_.keyDim(), qWidth = config_.heads * dk;
    const bool scaleKeys = config_.scaleSide == ScaleSide::kKey;
    qkvg.middleCols(scaleKeys ? qWidth : 0, scaleKeys ? rotated - qWidth : qWidth) *=
        static_cast<Scalar>(1.0 / std::sqrt(double(dk)));

    // 2. q and k rotated, each batch item's rows by its own positions
    for (Index b = 0; b < batch; ++b) {
      if (b == 0 || state.position(b) != state.position(b - 1))  // items usually share them
        rotary_.fillTable(state.position(b), time, scratch.rotary);
      stages::rotate(rotary_, scratch.rotary, qkvg.block(b * time, 0, time, rotated));
    }

    // 3. o = retention of every (batch item, query head), with the form's factor if any (rows x V)
    if (cache != nullptr) keepInputs(x, state, *cache);
    auto o = detail::bufferView(cache != nullptr ? cache->gated : scratch.retained, rows, V);
    retainHeads(form, qkvg, batch, time, chunkSize, state, o, scratch);

    // 4. o = GroupNorm(o) [⊙ w] ⊙ act(g)   (eq. 8)
    if (cache != nullptr) {
      detail::bufferView(cache->retained, rows, V) = o;
      detail::bufferView(cache->gate, rows, V) = qkvg.rightCols(V);
    }
    stages::groupNormGate<Scalar>(o, config_.heads, headNorm_.size() ? headNorm_.data() : nullptr,
                                  config_.eps, qkvg.rightCols(V), config_.gate);

    // 5. y = o Woutᵀ
    stages::linear(o, outputWeights_, y);
    for (Index b = 0; b < batch; ++b) state.setPosition(b, state.position(b) + time);
  }

  static Config checkedConfig(const Config& config) {
    config.validate("MultiScaleRetention");
    return config;
  }

  /// Width of q and k together, the rotated columns: (H + H_kv)·dk.
  Index qkWidth() const { return (config_.heads + config_.keyValueHeads()) * config_.keyDim(); }

  /// The heads' plans for a call of `form`, from the scratch's set for that form: kept while they
  /// serve (every slab of a long input, a repeated call with a kept scratch, whatever other forms
  /// ran between), else made anew (the recurrent form's allocate nothing).
  const std::vector<RetentionPlan<Scalar>>& keepPlans(Scratch& scratch, Form form, Index chunkSize,
                                                      Index time) const {
    auto& plans = scratch.plans[static_cast<std::size_t>(form)];
    bool serve = plans.size() == heads_.size();
    for (std::size_t h = 0; serve && h < heads_.size(); ++h)
      serve = plans[h].serves(heads_[h], form, chunkSize, time);
    if (!serve) {
      plans.clear();  // keeps its capacity
      for (const RetentionHead& head : heads_) plans.emplace_back(head, form, chunkSize, time);
    }
    return plans;
  }

  /// Step 3: the retention stage of every (batch item, head), in parallel over both.
  void retainHeads(Form form, const Eigen::Map<RowMatrix<Scalar>>& qkvg, Index batch, Index time,
                   Index chunkSize, State& state, Eigen::Map<RowMatrix<Scalar>>& o,
                   Scratch& scratch) const {
    const Index H = config_.heads, group = H / config_.keyValueHeads();
    const Index dk = config_.keyDim(), dv = config_.headValueDim();
    const Index kBegin = H * dk, vBegin = qkWidth();
    const auto& plans = keepPlans(scratch, form, chunkSize, time);
    const auto slots = static_cast<std::size_t>(detail::maxThreadSlots());
    if (scratch.perThread.size() < slots) scratch.perThread.resize(slots);

    detail::parallelFor(batch * H, [&](Index task, int thread) {
      const Index b = task / H, h = task % H, j = h / group, first = b * time;
      // this item's rows; query head h's q and o, key/value head j's k and v; S (dk x dv)
      const Index start = state.position(b);
      stages::retention(plans[static_cast<std::size_t>(h)], qkvg.block(first, h * dk, time, dk),
                        qkvg.block(first, kBegin + j * dk, time, dk),
                        qkvg.block(first, vBegin + j * dv, time, dv), state.matrix(b, h), start,
                        start == 0, o.block(first, h * dv, time, dv),
                        scratch.perThread[static_cast<std::size_t>(thread)]);
    });
  }

  /// Training: the parallel or chunkwise form, and full-precision weights.
  void requireTrainable(const char* where, Form form) const {
    detail::require(form != Form::kRecurrent, where,
                    "the recurrent form has no backward; train with the parallel or chunkwise "
                    "form");
    detail::require(
        inputWeights_.type() == WeightType::kFull && outputWeights_.type() == WeightType::kFull,
        where, "the weights must be full precision to be trained, got ",
        weightTypeName(inputWeights_.type()), " and ", weightTypeName(outputWeights_.type()));
  }

  /// forwardTraining's copies before step 3: x, and the states and positions entering the call.
  void keepInputs(ConstMatrixRef<Scalar> x, const State& state, TrainingCache& cache) const {
    detail::bufferView(cache.input, x.rows(), x.cols()) = x;
    detail::bufferView(cache.states, state.size(), 1) =
        Eigen::Map<const Vector<Scalar>>(state.data(), state.size());
    cache.positions.assign(state.positions().begin(), state.positions().end());
  }

  /// D, the projections' width, V, H, dk and dv: what a TrainingCache records of the layer that
  /// filled it.
  std::array<Index, 6> layerShape() const {
    return {config_.embedDim, inputWeights_.outputs(), config_.valueDim,
            config_.heads,    config_.keyDim(),        config_.headValueDim()};
  }

  /// backward()'s checks, before its first write; sizes empty gradients.
  void checkBackward(const char* where, const TrainingCache& cache,
                     const ConstMatrixRef<Scalar>& dY, const MatrixRef<Scalar>& dX,
                     Gradients& grads) const {
    checkCache(where, cache);
    const Index D = config_.embedDim, V = config_.valueDim, rows = cache.batch * cache.time;
    detail::requireShape(where, dY, rows, D, "dY (batch·time x embedDim)");
    detail::requireShape(where, dX, rows, D, "dX (batch·time x embedDim)");
    bool empty = true;
    grads.forEach(
        [&](const char*, const auto& gradient) { empty = empty && gradient.size() == 0; });
    if (empty) grads.resize(config_, headNorm_.size() != 0);
    const Index dk = config_.keyDim(), dv = config_.headValueDim(), kv = config_.keyValueHeads();
    detail::requireShape(where, grads.q, config_.heads * dk, D, "grads.q (q_proj's shape)");
    detail::requireShape(where, grads.k, kv * dk, D, "grads.k (k_proj's shape)");
    detail::requireShape(where, grads.v, kv * dv, D, "grads.v (v_proj's shape)");
    detail::requireShape(where, grads.g, V, D, "grads.g (g_proj's shape)");
    detail::requireShape(where, grads.out, D, V, "grads.out (out_proj's shape)");
    detail::requireLength(where, grads.headNorm, headNorm_.size(),
                          "grads.headNorm (the head-norm weight's length)");
  }

  /// Step 3ᵀ: the retention backward of every (batch item, head), in parallel over batch items
  /// and key/value heads; the query heads sharing a key/value head add their dk, dv in order.
  void retainHeadsBackward(const TrainingCache& cache, const ConstMap& qkvg,
                           const Eigen::Map<RowMatrix<Scalar>>& dO,
                           Eigen::Map<RowMatrix<Scalar>>& dQkvg, TrainingWorkspace& work) const {
    const Index H = config_.heads, kvHeads = config_.keyValueHeads(), group = H / kvHeads;
    const Index dk = config_.keyDim(), dv = config_.headValueDim(), time = cache.time;
    const Index kBegin = H * dk, vBegin = qkWidth();
    const auto& plans = keepPlans(work.forward, cache.form, cache.chunkSize, time);
    const auto slots = static_cast<std::size_t>(detail::maxThreadSlots());
    if (work.perThread.size() < slots) work.perThread.resize(slots);
    if (group > 1 && work.keyGradients.size() < slots) {
      work.keyGradients.resize(slots);
      work.valueGradients.resize(slots);
    }

    detail::parallelFor(cache.batch * kvHeads, [&](Index task, int thread) {
      const auto slot = static_cast<std::size_t>(thread);
      const Index b = task / kvHeads, j = task % kvHeads, first = b * time;
      const Index start = cache.positions[static_cast<std::size_t>(b)];
      auto dKeys = dQkvg.block(first, kBegin + j * dk, time, dk);
      auto dValues = dQkvg.block(first, vBegin + j * dv, time, dv);
      for (Index h = j * group; h < (j + 1) * group; ++h) {
        const ConstMap S0(cache.states.data() + (b * H + h) * dk * dv, dk, dv);
        const auto run = [&](auto&& keyGradient, auto&& valueGradient) {
          stages::retentionBackward<Scalar>(
              plans[static_cast<std::size_t>(h)], qkvg.block(first, h * dk, time, dk),
              qkvg.block(first, kBegin + j * dk, time, dk),
              qkvg.block(first, vBegin + j * dv, time, dv), S0, start, start == 0,
              dO.block(first, h * dv, time, dv), nullptr, dQkvg.block(first, h * dk, time, dk),
              keyGradient, valueGradient, nullptr, work.perThread[slot]);
        };
        if (h == j * group) {  // the first query head writes, the others add
          run(dKeys, dValues);
        } else {
          auto keyGradient = detail::bufferView(work.keyGradients[slot], time, dk);
          auto valueGradient = detail::bufferView(work.valueGradients[slot], time, dv);
          run(keyGradient, valueGradient);
          dKeys += keyGradient;
          dValues += valueGradient;
        }
      }
    });
  }

  friend struct detail::ParameterSet<MultiScaleRetention<Scalar>>;

  /// Calls visit(name, parameter) for each trainable parameter, in the order and with the names
  /// and shapes of MultiScaleRetentionGradients::forEach; `parameter` is an Eigen::Map of the
  /// weight in place (RowMatrix<Scalar>; a vector weight as one column), to read, or to change
  /// through a non-const layer (an optimiser's step). Full-precision weights only
  /// (WeightType::kFull).
  template <typename Self, typename Visit>
  static void forEachParameterOf(Self& self, Visit& visit) {
    using Map = detail::ParameterMap<Self, Scalar>;
    auto& input = detail::fullMatrix(self.inputWeights_);  // q | k | v | g: blocks of rows
    const Config& c = self.config_;
    const Index D = c.embedDim, dk = c.keyDim();
    const Index widths[4] = {c.heads * dk, c.keyValueHeads() * dk,
                             c.keyValueHeads() * c.headValueDim(), c.valueDim};
    const char* names[4] = {"q_proj.weight", "k_proj.weight", "v_proj.weight", "g_proj.weight"};
    Index row = 0;
    for (int part = 0; part < 4; ++part) {
      visit(names[part], Map(input.data() + row * D, widths[part], D));
      row += widths[part];
    }
    auto& out = detail::fullMatrix(self.outputWeights_);
    visit("out_proj.weight", Map(out.data(), out.rows(), out.cols()));
    if (self.headNorm_.size() != 0)
      visit("g_norm_swish_gate.weight", Map(self.headNorm_.data(), self.headNorm_.size(), 1));
  }

  Config config_;
  RotaryEmbedding<Scalar> rotary_;
  LinearWeight<Scalar> inputWeights_;   // (width, D): q, k, v, g stacked
  LinearWeight<Scalar> outputWeights_;  // (D, V)
  Vector<Scalar> headNorm_;             // (dv) or empty
  std::vector<RetentionHead> heads_;    // γ_h, the normalisation, scale 1 (step 1b scales)
};

}  // namespace retnet
