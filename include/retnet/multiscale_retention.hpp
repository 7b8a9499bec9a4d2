// Multi-scale retention (paper §2.2, eqs. 8–9), matching torchscale's MultiScaleRetention.
#pragma once

#include <cmath>
#include <type_traits>
#include <vector>

#include "retnet/activation.hpp"
#include "retnet/detail/checks.hpp"
#include "retnet/detail/layer_forms.hpp"
#include "retnet/detail/linear.hpp"
#include "retnet/detail/ops.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/detail/retention_kernel.hpp"
#include "retnet/detail/workspace.hpp"
#include "retnet/form.hpp"
#include "retnet/rotary.hpp"
#include "retnet/state.hpp"

namespace retnet {

template <typename Scalar>
class RetNetBlock;

/// Shape of a multi-scale retention layer (torchscale's names in comments).
struct MultiScaleRetentionConfig {
  Index embedDim = 0;  ///< D (embed_dim): input and output width
  Index valueDim = 0;  ///< V (value_dim): width of v, g and the concatenated heads
  Index heads = 0;     ///< H (retention_heads): must divide D and V; D/H must be even
  double eps = 1e-6;   ///< group-norm eps (layernorm_eps)
  Activation gate = Activation::kSwish;  ///< gate_fn

  Index keyDim() const { return embedDim / heads; }        ///< dk = D / H
  Index headValueDim() const { return valueDim / heads; }  ///< dv = V / H

  void validate(const char* where) const {
    detail::require(embedDim >= 1 && valueDim >= 1 && heads >= 1, where,
                    "embedDim, valueDim and heads must be >= 1, got ", embedDim, ", ", valueDim,
                    ", ", heads);
    detail::require(embedDim % heads == 0, where, "heads (", heads, ") must divide embedDim (",
                    embedDim, ")");
    detail::require(valueDim % heads == 0, where, "heads (", heads, ") must divide valueDim (",
                    valueDim, ")");
    detail::require(keyDim() % 2 == 0, where,
                    "embedDim / heads must be even for the rotary pairs, got ", keyDim());
    detail::require(std::isfinite(eps) && eps >= 0, where, "eps must be finite and >= 0, got ",
                    eps);
  }
};

/// Weights in PyTorch's Linear layout (out, in), applied as y = x · Wᵀ; no biases.
template <typename Scalar>
struct MultiScaleRetentionWeights {
  RowMatrix<Scalar> q;    ///< q_proj.weight   (D, D)
  RowMatrix<Scalar> k;    ///< k_proj.weight   (D, D)
  RowMatrix<Scalar> v;    ///< v_proj.weight   (V, D)
  RowMatrix<Scalar> g;    ///< g_proj.weight   (V, D)
  RowMatrix<Scalar> out;  ///< out_proj.weight (D, V)
};

/// Multi-scale retention, torchscale's MultiScaleRetention in all three forms:
///
///   q, k, v, g = x Wqᵀ, x Wkᵀ / sqrt(dk), x Wvᵀ, x Wgᵀ      (x is (B, T, D))
///   q, k      <- rotated by position (RotaryEmbedding)
///   o_h       = retention of head h with γ_h = 1 − 2^(−5−h), divided by the form's factor
///   y         = (swish(g) ⊙ concat_h GroupRMSNorm(o_h)) Woutᵀ              (eq. 8–9)
///
/// Each form reproduces the matching torchscale form: the per-form factors differ (and so do
/// the outputs, through the group-norm eps, by ~1e-6); with eps = 0 all forms agree to
/// rounding. Each takes an optional state and leaves it after its input, so a sequence can be
/// split anywhere between forms. With a non-empty incoming state the parallel form computes the
/// chunkwise formula with one chunk spanning its input (torchscale has no parallel form with a
/// state). Inputs and outputs are row-major (B, T, D).
template <typename Scalar>
class MultiScaleRetention : public detail::LayerForms<MultiScaleRetention<Scalar>, Scalar> {
  static_assert(std::is_floating_point_v<Scalar>,
                "retnet::MultiScaleRetention needs a floating-point Scalar");

 public:
  using Config = MultiScaleRetentionConfig;
  using Weights = MultiScaleRetentionWeights<Scalar>;
  using State = MultiScaleRetentionState<Scalar>;

  MultiScaleRetention(const Config& config, const Weights& weights)
      : config_(checkedConfig(config)), rotary_(config.keyDim()) {
    const Index D = config.embedDim, V = config.valueDim;
    checkWeight("q", weights.q, D, D);
    checkWeight("k", weights.k, D, D);
    checkWeight("v", weights.v, V, D);
    checkWeight("g", weights.g, V, D);
    checkWeight("out", weights.out, D, V);
    // One GEMM for all four input projections; k's 1/sqrt(dk) folded into its rows.
    inputWeights_.resize(2 * D + 2 * V, D);
    inputWeights_ << weights.q,
        weights.k * static_cast<Scalar>(1.0 / std::sqrt(static_cast<double>(config.keyDim()))),
        weights.v, weights.g;
    outputWeights_ = weights.out;
    for (Index h = 0; h < config.heads; ++h) decays_.emplace_back(headGamma(h));
  }

  const Config& config() const { return config_; }
  const RotaryEmbedding<Scalar>& rotary() const { return rotary_; }

  /// γ_h = 1 − 2^(−5−h), torchscale's decay of head h.
  static double headGamma(Index head) { return 1.0 - std::ldexp(1.0, -5 - static_cast<int>(head)); }

  /// Chunk size of forward(): measured fastest on the benchmark machine (bench/README.md) for
  /// per-head widths from 64 to 256; smaller chunks waste less of the causal mask, larger ones
  /// keep the per-chunk products GEMM-shaped.
  Index recommendedChunkSize() const { return detail::recommendedChunkSize(config_.keyDim()); }

 private:
  friend class RetNetBlock<Scalar>;
  friend class detail::LayerForms<MultiScaleRetention, Scalar>;

  static constexpr detail::FormNames kFormNames{"MultiScaleRetention::forwardParallel",
                                                "MultiScaleRetention::forwardChunkwise",
                                                "MultiScaleRetention::forwardRecurrent"};
  Index inputWidth() const { return config_.embedDim; }
  Index outputWidth() const { return config_.embedDim; }

  static Config checkedConfig(const Config& config) {
    config.validate("MultiScaleRetention");
    return config;
  }

  static void checkWeight(const char* name, const RowMatrix<Scalar>& w, Index rows, Index cols) {
    detail::require(w.rows() == rows && w.cols() == cols, "MultiScaleRetention", "weight ", name,
                    " must be (", rows, ", ", cols, "), got (", w.rows(), ", ", w.cols(), ")");
  }

  /// Checks x against the configuration and the state, sizing an empty state.
  void prepare(const char* where, const ConstTensor3Ref<Scalar>& x, State& state) const {
    detail::requireNonEmpty(where, "x", x);
    detail::requireEqual(where, "x's last dimension (embedDim)", config_.embedDim, x.features());
    if (state.empty()) {
      state.reset(x.batch(), config_.heads, config_.keyDim(), config_.headValueDim());
      return;
    }
    detail::requireEqual(where, "x's batch size (the state's)", state.batch(), x.batch());
    detail::requireEqual(where, "state heads", config_.heads, state.heads());
    detail::requireEqual(where, "state key dim", config_.keyDim(), state.keyDim());
    detail::requireEqual(where, "state value dim", config_.headValueDim(), state.valueDim());
  }

  /// One slab: x (batch·time x D) -> y (batch·time x D), arguments already checked.
  void forwardSlab(Form form, const Scalar* x, Index batch, Index time, Index chunkSize,
                   State& state, Scalar* y, detail::LayerWorkspace<Scalar>& ws) const {
    const Index D = config_.embedDim, V = config_.valueDim, rows = batch * time;
    const Index width = 2 * D + 2 * V;
    // projections (rows x 2D+2V): [q | k | v | g] for every position, one GEMM.
    auto projections = detail::bufferView(ws.projections, rows, width);
    const Eigen::Map<const RowMatrix<Scalar>> input(x, rows, D);
    detail::linear(input, inputWeights_, projections);
    rotate(projections, batch, time, state, ws);

    // retained (rows x V): heads side by side, each (time x dv) per batch item.
    auto retained = detail::bufferView(ws.retained, rows, V);
    retain(form, projections, batch, time, chunkSize, state, retained, ws);

    // Group norm (RMS over each head's dv values, no weight), then the swish gate.
    const Index dv = config_.headValueDim();
    detail::forRowBlocks(rows, [&](Index begin, Index count) {
      for (Index r = begin; r < begin + count; ++r) {
        for (Index h = 0; h < config_.heads; ++h) {
          auto head = retained.row(r).segment(h * dv, dv);
          head *= Scalar(1) / std::sqrt(head.squaredNorm() / static_cast<Scalar>(dv) +
                                        static_cast<Scalar>(config_.eps));
        }
      }
      auto gate = projections.block(begin, 2 * D + V, count, V);
      detail::activateInPlace(gate.array(), config_.gate);
      retained.middleRows(begin, count).array() *= gate.array();
    });

    Eigen::Map<RowMatrix<Scalar>> output(y, rows, D);
    detail::linear(retained, outputWeights_, output);
    for (Index b = 0; b < batch; ++b) state.setPosition(b, state.position(b) + time);
  }

  /// Rotates every head of q and k by its absolute position (each batch item's own).
  void rotate(Eigen::Map<RowMatrix<Scalar>>& projections, Index batch, Index time,
              const State& state, detail::LayerWorkspace<Scalar>& ws) const {
    const Index pairs = rotary_.pairs(), D = config_.embedDim;
    auto cosines = detail::bufferView(ws.cosines, time, pairs);
    auto sines = detail::bufferView(ws.sines, time, pairs);
    for (Index b = 0; b < batch; ++b) {
      const Index start = state.position(b);
      if (b == 0 || start != state.position(b - 1)) {  // items usually share their positions
        detail::forRowBlocks(time, [&](Index begin, Index count) {
          for (Index t = begin; t < begin + count; ++t) {
            rotary_.fillTable(start + t, &cosines(t, 0), &sines(t, 0));
          }
        });
      }
      detail::forRowBlocks(time, [&](Index begin, Index count) {
        for (Index t = begin; t < begin + count; ++t) {
          Scalar* row = &projections(b * time + t, 0);
          rotary_.rotate(row, config_.heads, &cosines(t, 0), &sines(t, 0));      // q
          rotary_.rotate(row + D, config_.heads, &cosines(t, 0), &sines(t, 0));  // k
        }
      });
    }
  }

  /// Retention of every (batch item, head), in parallel over both when OpenMP is on.
  void retain(Form form, const Eigen::Map<RowMatrix<Scalar>>& projections, Index batch, Index time,
              Index chunkSize, State& state, Eigen::Map<RowMatrix<Scalar>>& retained,
              detail::LayerWorkspace<Scalar>& ws) const {
    const Index H = config_.heads, D = config_.embedDim, V = config_.valueDim;
    const Index dk = config_.keyDim(), dv = config_.headValueDim(), width = projections.cols();
    std::vector<detail::ChunkPlan<Scalar>> plans;
    if (form != Form::kRecurrent) {
      const Index chunk = form == Form::kParallel ? time : chunkSize;
      for (Index h = 0; h < H; ++h)
        plans.emplace_back(decays_[static_cast<std::size_t>(h)], chunk, time);
    }
    const auto slots = static_cast<std::size_t>(detail::maxThreadSlots());
    if (ws.chunk.size() < slots) ws.chunk.resize(slots);
    const detail::RowScaling scaling =
        form == Form::kParallel ? detail::RowScaling::kParallel : detail::RowScaling::kChunkwise;

    detail::parallelFor(batch * H, [&](Index task, int thread) {
      const Index b = task / H, h = task % H;
      const Scalar* base = projections.data() + b * time * width;
      // per (b, h): q, k (time x dk), v (time x dv) inside the projections; out (time x dv)
      const auto q = detail::rowsView(base + h * dk, time, dk, width);
      const auto k = detail::rowsView(base + D + h * dk, time, dk, width);
      const auto v = detail::rowsView(base + 2 * D + h * dv, time, dv, width);
      auto out = detail::rowsView(retained.data() + b * time * V + h * dv, time, dv, V);
      detail::StateMap<Scalar> s(state.data(b, h), dk, dv);
      const Index start = state.position(b);
      if (form == Form::kRecurrent) {
        // torchscale's recurrent state is S / sqrt(n_t), n_t = Σ_{m<=t} γ^m: o_t = q_t S_t /
        // sqrt(n_t).
        const detail::DecayPowers& decay = decays_[static_cast<std::size_t>(h)];
        const auto gamma = static_cast<Scalar>(decay.gamma());
        for (Index t = 0; t < time; ++t) {
          const auto scale = static_cast<Scalar>(1.0 / std::sqrt(decay.windowSum(start + t + 1)));
          detail::recurrentStep(q.data() + t * width, k.data() + t * width, v.data() + t * width,
                                dk, dv, gamma, s.data(), &out(t, 0), scale);
        }
      } else {
        detail::retentionChunks(q, k, v, plans[static_cast<std::size_t>(h)], scaling, s, start == 0,
                                out, ws.chunk[static_cast<std::size_t>(thread)]);
      }
    });
  }

  Config config_;
  RotaryEmbedding<Scalar> rotary_;
  RowMatrix<Scalar> inputWeights_;           // (2D+2V, D): q, k/sqrt(dk), v, g stacked
  RowMatrix<Scalar> outputWeights_;          // (D, V)
  std::vector<detail::DecayPowers> decays_;  // per head
};

}  // namespace retnet
