// Multi-scale retention (paper §2.2, eqs. 8–9): torchscale's MultiScaleRetention by default, and
// by configuration FLA's (flash-linear-attention) MultiScaleRetention, one data path for both.
#pragma once

#include <cmath>
#include <type_traits>
#include <vector>

#include "retnet/activation.hpp"
#include "retnet/detail/checks.hpp"
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

/// Buffers of one multi-scale retention call (not part of any state's value).
template <typename Scalar>
struct MultiScaleRetentionScratch {
  Vector<Scalar> projections;                       // (rows x width): q | k | v | g
  Vector<Scalar> retained;                          // (rows x V): heads side by side
  RotaryTable<Scalar> rotary;                       // (time x dk/2)
  std::vector<RetentionPlan<Scalar>> plans;         // one per head
  std::vector<RetentionScratch<Scalar>> perThread;  // the retention stage's
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
template <typename Scalar>
class MultiScaleRetention
    : public SequenceLayer<MultiScaleRetention<Scalar>, Scalar, MultiScaleRetentionState<Scalar>,
                           MultiScaleRetentionScratch<Scalar>> {
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

  /// The data path of one slab: x (batch·time x D) -> y (batch·time x D), every batch item
  /// `time` positions long and at its own position in `state` (sized by prepare()).
  void forwardSlab(Form form, ConstMatrixRef<Scalar> x, Index batch, Index time, Index chunkSize,
                   State& state, MatrixRef<Scalar> y, Scratch& scratch) const {
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
    auto qkvg = detail::bufferView(scratch.projections, rows, width);
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
    auto o = detail::bufferView(scratch.retained, rows, V);
    retainHeads(form, qkvg, batch, time, chunkSize, state, o, scratch);

    // 4. o = GroupNorm(o) [⊙ w] ⊙ act(g)   (eq. 8)
    stages::groupNormGate<Scalar>(o, config_.heads, headNorm_.size() ? headNorm_.data() : nullptr,
                                  config_.eps, qkvg.rightCols(V), config_.gate);

    // 5. y = o Woutᵀ
    stages::linear(o, outputWeights_, y);
    for (Index b = 0; b < batch; ++b) state.setPosition(b, state.position(b) + time);
  }

 private:
  static Config checkedConfig(const Config& config) {
    config.validate("MultiScaleRetention");
    return config;
  }

  /// Width of q and k together, the rotated columns: (H + H_kv)·dk.
  Index qkWidth() const { return (config_.heads + config_.keyValueHeads()) * config_.keyDim(); }

  /// Step 3: the retention stage of every (batch item, head), in parallel over both.
  void retainHeads(Form form, const Eigen::Map<RowMatrix<Scalar>>& qkvg, Index batch, Index time,
                   Index chunkSize, State& state, Eigen::Map<RowMatrix<Scalar>>& o,
                   Scratch& scratch) const {
    const Index H = config_.heads, group = H / config_.keyValueHeads();
    const Index dk = config_.keyDim(), dv = config_.headValueDim();
    const Index kBegin = H * dk, vBegin = qkWidth();
    scratch.plans.clear();  // keeps its capacity: the recurrent plans allocate nothing
    for (const RetentionHead& head : heads_)
      scratch.plans.emplace_back(head, form, chunkSize, time);
    const auto slots = static_cast<std::size_t>(detail::maxThreadSlots());
    if (scratch.perThread.size() < slots) scratch.perThread.resize(slots);

    detail::parallelFor(batch * H, [&](Index task, int thread) {
      const Index b = task / H, h = task % H, j = h / group, first = b * time;
      // this item's rows; query head h's q and o, key/value head j's k and v; S (dk x dv)
      const Index start = state.position(b);
      stages::retention(
          scratch.plans[static_cast<std::size_t>(h)], qkvg.block(first, h * dk, time, dk),
          qkvg.block(first, kBegin + j * dk, time, dk),
          qkvg.block(first, vBegin + j * dv, time, dv), state.matrix(b, h), start, start == 0,
          o.block(first, h * dv, time, dv), scratch.perThread[static_cast<std::size_t>(thread)]);
    });
  }

  Config config_;
  RotaryEmbedding<Scalar> rotary_;
  LinearWeight<Scalar> inputWeights_;   // (width, D): q, k, v, g stacked
  LinearWeight<Scalar> outputWeights_;  // (D, V)
  Vector<Scalar> headNorm_;             // (dv) or empty
  std::vector<RetentionHead> heads_;    // γ_h, the normalisation, scale 1 (step 1b scales)
};

}  // namespace retnet
