// Where the time of a multi-scale retention / RetNet block forward goes: each stage of
// MultiScaleRetention::forwardRows and RetNetBlock::forwardRows timed on its own, calling the
// same retnet kernels (Eigen products, RotaryEmbedding, detail::retentionChunks /
// recurrentStep, detail::rmsNormRows, detail::activateInPlace) on buffers of the same shapes and
// strides, next to the whole layer call. One thread, batch 1.
//
// Arguments: T (1 = a decode step, else a prefill of T positions), cfg (0 = A, 1 = B) and, for
// the chunkwise retention stage, the chunk size. Counter s/token (wall seconds per position) and,
// where the stage is arithmetic-heavy, GFLOP/s and sgemm_fraction. Stages:
//   proj_in        x · [Wq; Wk/sqrt(dk); Wv; Wg]ᵀ            (one GEMM, rows x (2D+2V))
//   rotary_table   cos/sin of every position (double)
//   rotary         the table plus rotating q and k
//   retention_*    every head's retention with torchscale's scaling (chunkwise C, recurrent)
//   groupnorm      RMS over each head's dv values
//   gate           swish(g) ⊙ ·
//   proj_out       · Woutᵀ
//   rmsnorm        one block RMSNorm (a block has two)
//   ffn_in / ffn_act / ffn_out   [fc1; gate] GEMM, gelu ⊙ gate, fc2 GEMM plus the residual
//   workspace      allocating and first-touching the per-call buffers (a layer call with T > 1
//                  allocates a fresh LayerWorkspace)
//   msr_total / block_total      the real MultiScaleRetention / RetNetBlock chunkwise call (C 128)
#include <cstdint>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "retnet/detail/ops.hpp"
#include "retnet/detail/retention_kernel.hpp"
#include "retnet/detail/workspace.hpp"

namespace retnet_bench {
namespace {

using Values = std::vector<std::int64_t>;
namespace detail = retnet::detail;

/// Weights and activations of one layer call over `rows` positions, laid out as the layer does.
struct Stage {
  explicit Stage(const ModelConfig& config, Index rows)
      : c(config), rows(rows), width(2 * c.embed + 2 * c.value), rotary(c.keyDim()) {
    Random rng(11);
    inputWeights = randomWeight(rng, width, c.embed);
    outputWeights = randomWeight(rng, c.embed, c.value);
    ffnInput = randomWeight(rng, 2 * c.ffn, c.embed);
    ffnOutput = randomWeight(rng, c.embed, c.ffn);
    normWeight = randomNormWeight(rng, c.embed);
    x = Eigen::Map<const Matrix>(randomPool(rows * c.embed), rows, c.embed);
    projections.resize(rows, width);
    projections.noalias() = x * inputWeights.transpose();
    retained.resize(rows, c.value);
    rng.fill(retained.data(), retained.size(), 1.0f);
    normed = x;
    hidden.resize(rows, 2 * c.ffn);
    hidden.noalias() = normed * ffnInput.transpose();
    y.resize(rows, c.embed);
    cosines.resize(rows * rotary.pairs());
    sines.resize(rows * rotary.pairs());
    state.resize(c.heads * c.keyDim() * c.headValueDim());
    state.setZero();
    for (Index h = 0; h < c.heads; ++h) {
      decays.emplace_back(retnet::MultiScaleRetention<float>::headGamma(h));
    }
    chunk.resize(1);
  }

  void rotaryTables() {
    for (Index t = 0; t < rows; ++t) {
      rotary.fillTable(t, cosines.data() + t * rotary.pairs(), sines.data() + t * rotary.pairs());
    }
  }

  void rotate() {
    for (Index t = 0; t < rows; ++t) {
      float* row = projections.data() + t * width;
      const float* cs = cosines.data() + t * rotary.pairs();
      const float* sn = sines.data() + t * rotary.pairs();
      rotary.rotate(row, c.heads, cs, sn);
      rotary.rotate(row + c.embed, c.heads, cs, sn);
    }
  }

  /// MultiScaleRetention::retain for batch 1 from a zero state (chunk 0: recurrent).
  void retain(Index chunkSize) {
    const Index D = c.embed, V = c.value, dk = c.keyDim(), dv = c.headValueDim();
    for (Index h = 0; h < c.heads; ++h) {
      const float* base = projections.data();
      const auto q = detail::rowsView(base + h * dk, rows, dk, width);
      const auto k = detail::rowsView(base + D + h * dk, rows, dk, width);
      const auto v = detail::rowsView(base + 2 * D + h * dv, rows, dv, width);
      auto out = detail::rowsView(retained.data() + h * dv, rows, dv, V);
      detail::StateMap<float> s(state.data() + h * dk * dv, dk, dv);
      const detail::DecayPowers& decay = decays[static_cast<std::size_t>(h)];
      if (chunkSize == 0) {
        s.setZero();
        const auto gamma = static_cast<float>(decay.gamma());
        for (Index t = 0; t < rows; ++t) {
          const auto scale = static_cast<float>(1.0 / std::sqrt(decay.windowSum(t + 1)));
          detail::recurrentStep(q.data() + t * width, k.data() + t * width, v.data() + t * width,
                                dk, dv, gamma, s.data(), &out(t, 0), scale);
        }
      } else {
        const detail::ChunkPlan<float> plan(decay, chunkSize, rows);
        detail::retentionChunks(q, k, v, plan, detail::RowScaling::kChunkwise, s, true, out,
                                chunk[0]);
      }
    }
  }

  void groupNorm() {
    const Index dv = c.headValueDim();
    for (Index r = 0; r < rows; ++r) {
      for (Index h = 0; h < c.heads; ++h) {
        auto head = retained.row(r).segment(h * dv, dv);
        head *= 1.0f / std::sqrt(head.squaredNorm() / static_cast<float>(dv) + 1e-6f);
      }
    }
  }

  void gate() {
    // In place as in the layer (repeated iterations apply swish again: same cost).
    auto g = projections.middleCols(2 * c.embed + c.value, c.value);
    detail::activateInPlace(g.array(), retnet::Activation::kSwish);
    retained.array() *= g.array();
  }

  const ModelConfig& c;
  Index rows, width;
  retnet::RotaryEmbedding<float> rotary;
  Matrix inputWeights, outputWeights, ffnInput, ffnOutput;
  VectorF normWeight;
  Matrix x, projections, retained, normed, hidden, y;
  VectorF cosines, sines, state;
  std::vector<detail::DecayPowers> decays;
  std::vector<detail::ChunkScratch<float>> chunk;
};

enum class Part {
  kProjIn,
  kRotaryTable,
  kRotary,
  kRetentionChunkwise,
  kRetentionRecurrent,
  kGroupNorm,
  kGate,
  kProjOut,
  kRmsNorm,
  kFfnIn,
  kFfnAct,
  kFfnOut,
  kWorkspace,
  kMsrTotal,
  kBlockTotal,
};

/// Allocates and first-touches (one write per 4 KiB page) what one layer call allocates.
float touchWorkspace(const ModelConfig& c, Index rows, bool block) {
  detail::LayerWorkspace<float> ws;
  float sum = 0;
  const auto touch = [&](retnet::Vector<float>& buffer, Index r, Index cols) {
    auto view = detail::bufferView(buffer, r, cols);
    float* p = view.data();
    for (Index i = 0; i < r * cols; i += 1024) p[i] = 1.0f;
    sum += p[0];
  };
  touch(ws.projections, rows, 2 * c.embed + 2 * c.value);
  touch(ws.retained, rows, c.value);
  touch(ws.cosines, rows, c.keyDim() / 2);
  touch(ws.sines, rows, c.keyDim() / 2);
  if (block) {
    touch(ws.normed, rows, c.embed);
    touch(ws.residual, rows, c.embed);
    touch(ws.hidden, rows, 2 * c.ffn);
  }
  return sum;
}

void benchPart(benchmark::State& state, Part part) {
  const Index T = state.range(0);
  const std::int64_t config = state.range(1);
  const Index chunk = part == Part::kRetentionChunkwise ? state.range(2) : 128;
  const ModelConfig& c = modelConfig(config);
  setThreads(1);
  Stage s(c, T);
  const double D = static_cast<double>(c.embed), V = static_cast<double>(c.value);
  const double F = static_cast<double>(c.ffn), rows = static_cast<double>(T);
  const double H = static_cast<double>(c.heads);
  const double dk = static_cast<double>(c.keyDim()), dv = static_cast<double>(c.headValueDim());
  double flops = 0;
  retnet::Tensor3<float> layerOut;
  const retnet::ConstTensor3Ref<float> x(s.x.data(), 1, T, c.embed);
  retnet::MultiScaleRetentionState<float> decodeState;
  if (part == Part::kMsrTotal || part == Part::kBlockTotal) {
    // T = 1: a decode step (no-allocation overload, at position 0); else a chunkwise call.
    if (part == Part::kMsrTotal) {
      sharedMsr(config).forwardRecurrent(x, decodeState, layerOut);
    } else {
      sharedBlock(config).forwardRecurrent(x, decodeState, layerOut);
    }
  }
  s.rotaryTables();

  for (auto _ : state) {
    switch (part) {
      case Part::kProjIn:
        s.projections.noalias() = s.x * s.inputWeights.transpose();
        flops = 2.0 * rows * D * (2.0 * D + 2.0 * V);
        break;
      case Part::kRotaryTable:
        s.rotaryTables();
        break;
      case Part::kRotary:
        s.rotaryTables();
        s.rotate();
        break;
      case Part::kRetentionChunkwise:
        s.retain(chunk);
        flops =
            H * retentionFlops(retnet::Form::kChunkwise, rows, static_cast<double>(chunk), dk, dv);
        break;
      case Part::kRetentionRecurrent:
        s.retain(0);
        flops = H * retentionFlops(retnet::Form::kRecurrent, rows, 0, dk, dv);
        break;
      case Part::kGroupNorm:
        s.groupNorm();
        break;
      case Part::kGate:
        s.gate();
        break;
      case Part::kProjOut:
        s.y.noalias() = s.retained * s.outputWeights.transpose();
        flops = 2.0 * rows * V * D;
        break;
      case Part::kRmsNorm:
        detail::rmsNormRows(s.normed, 1e-6, &s.normWeight);
        break;
      case Part::kFfnIn:
        s.hidden.noalias() = s.normed * s.ffnInput.transpose();
        flops = 2.0 * rows * D * 2.0 * F;
        break;
      case Part::kFfnAct: {
        auto activated = s.hidden.leftCols(c.ffn);
        detail::activateInPlace(activated.array(), c.activation);
        activated.array() *= s.hidden.rightCols(c.ffn).array();
        break;
      }
      case Part::kFfnOut:
        s.y = s.x;
        s.y.noalias() += s.hidden.leftCols(c.ffn) * s.ffnOutput.transpose();
        flops = 2.0 * rows * F * D;
        break;
      case Part::kWorkspace:
        benchmark::DoNotOptimize(touchWorkspace(c, T, true));
        break;
      case Part::kMsrTotal:
      case Part::kBlockTotal: {
        const bool msr = part == Part::kMsrTotal;
        if (T == 1) {
          decodeState.setPosition(0, 0);
          if (msr) {
            sharedMsr(config).forwardRecurrent(x, decodeState, layerOut);
          } else {
            sharedBlock(config).forwardRecurrent(x, decodeState, layerOut);
          }
        } else {
          layerOut = msr ? sharedMsr(config).forwardChunkwise(x, chunk)
                         : sharedBlock(config).forwardChunkwise(x, chunk);
        }
        flops = H * retentionFlops(T == 1 ? retnet::Form::kRecurrent : retnet::Form::kChunkwise,
                                   rows, static_cast<double>(chunk), dk, dv) +
                projectionFlops(rows, D, V) + (msr ? 0.0 : ffnFlops(rows, D, F));
        break;
      }
    }
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(s.y.data());
  benchmark::DoNotOptimize(s.retained.data());
  benchmark::DoNotOptimize(s.hidden.data());
  using benchmark::Counter;
  state.counters["s/token"] = Counter(rows, Counter::kIsIterationInvariantRate | Counter::kInvert);
  if (flops > 0) setComputeCounters(state, rows, flops, 1);
  state.SetLabel(c.name);
}

void registerParts() {
  const bool quick = quickMode();
  const Values lengths = quick ? Values{1, 512} : Values{1, 2048};
  const Values configs = {0, 1};
  const std::vector<std::pair<const char*, Part>> parts = {
      {"proj_in", Part::kProjIn},      {"rotary_table", Part::kRotaryTable},
      {"rotary", Part::kRotary},       {"retention_recurrent", Part::kRetentionRecurrent},
      {"groupnorm", Part::kGroupNorm}, {"gate", Part::kGate},
      {"proj_out", Part::kProjOut},    {"rmsnorm", Part::kRmsNorm},
      {"ffn_in", Part::kFfnIn},        {"ffn_act", Part::kFfnAct},
      {"ffn_out", Part::kFfnOut},      {"workspace", Part::kWorkspace},
      {"msr_total", Part::kMsrTotal},  {"block_total", Part::kBlockTotal},
  };
  for (const auto& [name, part] : parts) {
    const Part p = part;
    benchmark::RegisterBenchmark((std::string("parts/") + name).c_str(),
                                 [p](benchmark::State& state) { benchPart(state, p); })
        ->ArgNames({"T", "cfg"})
        ->ArgsProduct({lengths, configs})
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  }
  // Chunkwise retention only makes sense over a sequence.
  benchmark::RegisterBenchmark(
      "parts/retention_chunkwise",
      [](benchmark::State& state) { benchPart(state, Part::kRetentionChunkwise); })
      ->ArgNames({"T", "cfg", "chunk"})
      ->ArgsProduct({{quick ? 512 : 2048}, configs, quick ? Values{128} : Values{32, 128, 512}})
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
}

}  // namespace
}  // namespace retnet_bench

int main(int argc, char** argv) {
  return retnet_bench::runSuite(argc, argv, retnet_bench::registerParts, /*sgemm=*/true,
                                /*bandwidth=*/false);
}
