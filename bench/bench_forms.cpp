// Throughput of the three forms (parallel, chunkwise, recurrent) over a whole sequence, for
// single-head retention (the core, heads folded into the batch), multi-scale retention and a
// full RetNet block, against the same-binary SGEMM.
//
// Arguments: T (sequence length), B (batch), cfg (0 = A: D 1024, V 2048, H 4, F 2048;
// 1 = B: D 512, V 1024, H 8, F 1024), thr (threads; 2 only with RETNET_OPENMP=ON), and for the
// chunkwise form the chunk size. Counters per wall-clock second: tokens/s (B·T per call),
// GFLOP/s (the form's FLOP model, see bench_common.hpp) and sgemm_fraction.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace retnet_bench {
namespace {

enum class Layer { kRetention, kMsr, kBlock };

const char* layerName(Layer layer) {
  return layer == Layer::kRetention ? "Retention" : layer == Layer::kMsr ? "MSR" : "Block";
}

/// FLOPs of one call over (B, T): the form's retention for every head, plus the projections
/// (and the FFN) for the layers that have them.
double callFlops(Layer layer, retnet::Form form, const ModelConfig& c, double B, double T,
                 double chunk) {
  const double dk = static_cast<double>(c.keyDim()), dv = static_cast<double>(c.headValueDim());
  const double D = static_cast<double>(c.embed), V = static_cast<double>(c.value);
  const double H = static_cast<double>(c.heads), F = static_cast<double>(c.ffn);
  // single-head Retention is plain retention; the layers have torchscale's normalisers
  double flops = B * H * retentionFlops(form, T, chunk, dk, dv, layer != Layer::kRetention);
  if (layer != Layer::kRetention) flops += B * projectionFlops(T, D, V);
  if (layer == Layer::kBlock) flops += B * ffnFlops(T, D, F);
  return flops;
}

/// Calls as a loop of prefills makes them: a fresh zero state each time (a new sequence), the
/// output and scratch kept from call to call (`kept(state, out, scratch)`: forward(form, ...,
/// state, out, scratch), as RetNetModel keeps one scratch for all its blocks), after one untimed
/// call that sizes them. PER_CALL_BUFFERS=1 runs `byValue(state)`, the value-returning form,
/// instead, which allocates and first-touches them on every call.
template <typename LayerState, typename Scratch, typename Kept, typename ByValue>
void timeCalls(benchmark::State& state, const Kept& kept, const ByValue& byValue) {
  static const bool perCall = std::getenv("PER_CALL_BUFFERS") != nullptr;
  Scratch scratch;
  retnet::Tensor3<float> out;
  LayerState warmUp;
  kept(warmUp, out, scratch);
  for (auto _ : state) {
    LayerState fresh;
    if (perCall) {
      const retnet::Tensor3<float> result = byValue(fresh);
      benchmark::DoNotOptimize(result.data());
    } else {
      kept(fresh, out, scratch);
      benchmark::DoNotOptimize(out.data());
    }
    benchmark::ClobberMemory();
  }
}

/// Calls of `form` on a layer (timeCalls).
template <typename LayerType>
void runLayer(benchmark::State& state, const LayerType& layer, retnet::Form form,
              const retnet::ConstTensor3Ref<float>& x, Index chunk) {
  using LayerState = typename LayerType::State;
  timeCalls<LayerState, typename LayerType::Scratch>(
      state,
      [&](LayerState& s, retnet::Tensor3<float>& out, typename LayerType::Scratch& scratch) {
        layer.forward(form, x, chunk, s, out, scratch);
      },
      [&](LayerState& s) { return layer.forward(form, x, chunk, s); });
}

void benchForm(benchmark::State& state, Layer layer, retnet::Form form) {
  const Index T = state.range(0), B = state.range(1);
  const std::int64_t config = state.range(2), threads = state.range(3);
  const Index chunk = form == retnet::Form::kChunkwise ? state.range(4) : T;
  const ModelConfig& c = modelConfig(config);
  setThreads(static_cast<int>(threads));

  if (layer == Layer::kRetention) {
    // Heads folded into the batch: B·H items of (T, dk) q and k and (T, dv) v, with head 0's
    // decay γ = 1 − 2⁻⁵; no projections, rotation or normalisation.
    const Index items = B * c.heads, dk = c.keyDim(), dv = c.headValueDim();
    const float* pool = randomPool(items * T * (2 * dk + dv));
    const retnet::ConstTensor3Ref<float> q(pool, items, T, dk);
    const retnet::ConstTensor3Ref<float> k(pool + items * T * dk, items, T, dk);
    const retnet::ConstTensor3Ref<float> v(pool + 2 * items * T * dk, items, T, dv);
    const retnet::Retention<float> retention(
        static_cast<float>(retnet::MultiScaleRetention<float>::headGamma(0)));
    using Scratch = retnet::Retention<float>::Scratch;
    timeCalls<retnet::RetentionState<float>, Scratch>(
        state,
        [&](retnet::RetentionState<float>& s, retnet::Tensor3<float>& out, Scratch& scratch) {
          retention.forward(form, q, k, v, chunk, s, out, scratch);
        },
        [&](retnet::RetentionState<float>& s) {
          return retention.forward(form, q, k, v, chunk, s);
        });
  } else {
    const retnet::ConstTensor3Ref<float> x(randomPool(B * T * c.embed), B, T, c.embed);
    if (layer == Layer::kMsr) {
      runLayer(state, sharedMsr(config), form, x, chunk);
    } else {
      runLayer(state, sharedBlock(config), form, x, chunk);
    }
  }
  setComputeCounters(state, static_cast<double>(B * T),
                     callFlops(layer, form, c, static_cast<double>(B), static_cast<double>(T),
                               static_cast<double>(chunk)),
                     threads);
  state.SetLabel(c.name);
  setThreads(1);
}

using Values = std::vector<std::int64_t>;

/// The grid: a few ArgsProduct blocks per (layer, form), sized so that the full run stays within
/// minutes on a 2-core machine. Cost is linear in B·T (quadratic in T for the parallel form),
/// so batch 4 stops at T = 2048, the parallel form at T = 4096, and two threads are measured at
/// three lengths only. Chunk sizes: all five for the retention core, four for MSR, the two
/// recommendedChunkSize() picks from for the block (its chunk-dependent part is MSR's).
void registerForms() {
  const bool quick = quickMode();
  const Values configs = {0, 1};
  const Values one = {1};
  const Values two = haveOpenMP() ? Values{2} : Values{};
  const Values t1 = quick ? Values{256, 2048} : Values{128, 512, 2048, 8192, 16384};
  const Values t4 = quick ? Values{256} : Values{128, 512, 2048};
  const Values t2 = quick ? Values{2048} : Values{512, 2048, 8192};
  const Index parallelMax = 4096;

  for (Layer layer : {Layer::kRetention, Layer::kMsr, Layer::kBlock}) {
    for (retnet::Form form :
         {retnet::Form::kParallel, retnet::Form::kChunkwise, retnet::Form::kRecurrent}) {
      const std::string name = std::string(layerName(layer)) + "/" + retnet::formName(form);
      auto* b = benchmark::RegisterBenchmark(
          name.c_str(), [layer, form](benchmark::State& state) { benchForm(state, layer, form); });
      b->UseRealTime()->Unit(benchmark::kMillisecond);
      const auto lengths = [&](const Values& ts) {
        if (form != retnet::Form::kParallel) return ts;
        Values capped;
        for (std::int64_t t : ts) {
          if (t <= parallelMax) capped.push_back(t);
        }
        if (!quick && ts == t1) capped.push_back(parallelMax);  // the longest sane parallel T
        return capped;
      };
      std::vector<Values> extra;  // the chunk axis, chunkwise only
      if (form == retnet::Form::kChunkwise) {
        b->ArgNames({"T", "B", "cfg", "thr", "chunk"});
        if (quick) {
          extra.push_back({64, 256});
        } else if (layer == Layer::kRetention) {
          extra.push_back({32, 64, 128, 256, 512});
        } else if (layer == Layer::kMsr) {
          extra.push_back({32, 64, 128, 512});
        } else {
          extra.push_back({64, 128});
        }
      } else {
        b->ArgNames({"T", "B", "cfg", "thr"});
      }
      const auto product = [&](const Values& ts, const Values& batch, const Values& threads) {
        std::vector<Values> axes = {lengths(ts), batch, configs, threads};
        axes.insert(axes.end(), extra.begin(), extra.end());
        if (!axes[0].empty() && !threads.empty()) b->ArgsProduct(axes);
      };
      product(t1, {1}, one);
      product(t4, {4}, one);
      product(t2, {1, 4}, two);
    }
  }
}

}  // namespace
}  // namespace retnet_bench

int main(int argc, char** argv) {
  return retnet_bench::runSuite(argc, argv, retnet_bench::registerForms, /*sgemm=*/true,
                                /*bandwidth=*/false);
}
