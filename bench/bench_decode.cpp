// Per-token decode latency at context length L: RetNet's recurrent step (multi-scale retention
// and a whole block, batch 1, one position, the no-allocation forwardRecurrent(x, state, out))
// against a Transformer layer of the same shapes with a KV cache (transformer_baseline.hpp).
//
// Configuration A only (D 1024, V 2048, H 4, F 2048, gelu). Prefill is not timed: retention's
// state has the same size at every L, so it is sized by one short chunkwise call, filled with
// small random values and moved to position L; the Transformer's cache is filled with random keys
// and values up to L. Every iteration decodes position L again (state position / cache length
// reset, O(1)), so L is the same for all iterations.
//
// Counters: memory_bytes (retention state H·dk·dv·4, or KV cache L·(D+V)·4), bytes_read
// (weights + state or cache: what one step must stream), bytes_per_second and
// bandwidth_fraction (bytes_read / time / same-binary read bandwidth), GFLOP/s.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "transformer_baseline.hpp"

namespace retnet_bench {
namespace {

constexpr std::int64_t kConfig = 0;  // A

using Values = std::vector<std::int64_t>;

Values contextLengths() {
  if (quickMode()) return {512, 8192};
  return {512, 2048, 8192, 32768, 65536};
}

void setDecodeCounters(benchmark::State& state, double memoryBytes, double bytesRead, double flops,
                       std::int64_t threads) {
  using benchmark::Counter;
  state.counters["memory_bytes"] = Counter(memoryBytes);
  state.counters["bytes_read"] = Counter(bytesRead);
  state.SetBytesProcessed(static_cast<std::int64_t>(bytesRead) *
                          static_cast<std::int64_t>(state.iterations()));
  const double bandwidth = limits().read(threads);
  if (bandwidth > 0) {
    state.counters["bandwidth_fraction"] =
        Counter(bytesRead * 1e-9 / bandwidth, Counter::kIsIterationInvariantRate);
  }
  state.counters["GFLOP/s"] = Counter(flops * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["tokens/s"] = Counter(1, Counter::kIsIterationInvariantRate);
}

/// A state at position L: sized by one short chunkwise call, then S set to small random values.
template <typename LayerType>
retnet::MultiScaleRetentionState<float> stateAt(const LayerType& layer, const ModelConfig& c,
                                                Index L) {
  retnet::MultiScaleRetentionState<float> state;
  const Index prompt = 32;
  const retnet::ConstTensor3Ref<float> x(randomPool(prompt * c.embed), 1, prompt, c.embed);
  layer.forwardChunkwise(x, prompt, state);
  Random rng(static_cast<std::uint64_t>(L));
  rng.fill(state.values().data(), state.values().size(), 0.05f);
  state.setPosition(0, L);
  return state;
}

/// One recurrent step of MultiScaleRetention or RetNetBlock at position L.
template <typename LayerType>
void benchRetNetStep(benchmark::State& state, const LayerType& layer, double weightBytes,
                     double extraFlops) {
  const Index L = state.range(0);
  const std::int64_t threads = state.range(1);
  const ModelConfig& c = modelConfig(kConfig);
  setThreads(static_cast<int>(threads));
  retnet::MultiScaleRetentionState<float> decodeState = stateAt(layer, c, L);
  const retnet::ConstTensor3Ref<float> x(randomPool(c.embed), 1, 1, c.embed);
  retnet::Tensor3<float> out(1, 1, c.embed);
  layer.forwardRecurrent(x, decodeState, out);  // sizes the step workspace
  for (auto _ : state) {
    decodeState.setPosition(0, L);
    layer.forwardRecurrent(x, decodeState, out);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double stateBytes = static_cast<double>(decodeState.bytes());
  const double flops =
      static_cast<double>(c.heads) * retentionFlops(retnet::Form::kRecurrent, 1, 1,
                                                    static_cast<double>(c.keyDim()),
                                                    static_cast<double>(c.headValueDim()),
                                                    /*normalised=*/true) +
      projectionFlops(1, static_cast<double>(c.embed), static_cast<double>(c.value)) + extraFlops;
  setDecodeCounters(state, stateBytes, weightBytes + stateBytes, flops, threads);
  setThreads(1);
}

void benchMsrStep(benchmark::State& state) {
  const ModelConfig& c = modelConfig(kConfig);
  benchRetNetStep(state, sharedMsr(kConfig), msrWeightBytes(c), 0);
}

void benchBlockStep(benchmark::State& state) {
  const ModelConfig& c = modelConfig(kConfig);
  benchRetNetStep(state, sharedBlock(kConfig), blockWeightBytes(c),
                  ffnFlops(1, static_cast<double>(c.embed), static_cast<double>(c.ffn)));
}

/// The Transformer layer of configuration A, its cache filled with random keys and values up to
/// the largest L of the grid; built once.
TransformerLayer& sharedTransformer() {
  static std::unique_ptr<TransformerLayer> layer;
  if (!layer) {
    const ModelConfig& c = modelConfig(kConfig);
    TransformerConfig config;
    config.embedDim = c.embed;
    config.valueDim = c.value;
    config.heads = c.heads;
    config.ffnDim = c.ffn;
    config.activation = c.activation;
    Random rng(42);
    TransformerWeights w;
    w.q = randomWeight(rng, c.embed, c.embed);
    w.k = randomWeight(rng, c.embed, c.embed);
    w.v = randomWeight(rng, c.value, c.embed);
    w.out = randomWeight(rng, c.embed, c.value);
    w.attnNorm = randomNormWeight(rng, c.embed);
    w.fc1 = randomWeight(rng, c.ffn, c.embed);
    w.gate = randomWeight(rng, c.ffn, c.embed);
    w.fc2 = randomWeight(rng, c.embed, c.ffn);
    w.finalNorm = randomNormWeight(rng, c.embed);
    const Values lengths = contextLengths();
    const Index maxL = *std::max_element(lengths.begin(), lengths.end());
    layer = std::make_unique<TransformerLayer>(config, w, maxL + 1);
    for (Index h = 0; h < c.heads; ++h) {  // the "prefill": unit-variance keys and values
      rng.fill(layer->keyRow(h, 0), maxL * c.keyDim(), 1.0f);
      rng.fill(layer->valueRow(h, 0), maxL * c.headValueDim(), 1.0f);
    }
  }
  return *layer;
}

/// One Transformer step at cache length L: attention only, or the whole layer.
void benchTransformerStep(benchmark::State& state, bool wholeLayer) {
  const Index L = state.range(0);
  const std::int64_t threads = state.range(1);
  const ModelConfig& c = modelConfig(kConfig);
  setThreads(static_cast<int>(threads));
  TransformerLayer& layer = sharedTransformer();
  const float* x = randomPool(c.embed);
  VectorF out(c.embed);
  for (auto _ : state) {
    layer.setLength(L);
    if (wholeLayer) {
      layer.layerStep(x, out.data());
    } else {
      layer.attentionStep(x, out.data());
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  layer.setLength(L);
  const double cacheBytes = layer.cacheBytes();
  const double weightBytes = wholeLayer ? layer.layerWeightBytes() : layer.attentionWeightBytes();
  const double D = static_cast<double>(c.embed), V = static_cast<double>(c.value);
  const double n = static_cast<double>(L + 1);
  double flops = 2.0 * D * (2.0 * D + V) + 2.0 * V * D  // projections
                 + 2.0 * n * (D + V);                   // scores and weighted values
  if (wholeLayer) flops += ffnFlops(1, D, static_cast<double>(c.ffn));
  setDecodeCounters(state, cacheBytes, weightBytes + cacheBytes, flops, threads);
  setThreads(1);
}

void registerDecode() {
  const Values lengths = contextLengths();
  const Values threads = threadGrid();
  const auto setup = [&](benchmark::internal::Benchmark* b) {
    b->ArgNames({"L", "thr"})->ArgsProduct({lengths, threads});
    b->UseRealTime()->Unit(benchmark::kMicrosecond);
  };
  setup(benchmark::RegisterBenchmark("decode/MSR", benchMsrStep));
  setup(benchmark::RegisterBenchmark("decode/Block", benchBlockStep));
  setup(benchmark::RegisterBenchmark("decode/TransformerAttention", [](benchmark::State& state) {
    benchTransformerStep(state, false);
  }));
  setup(benchmark::RegisterBenchmark("decode/TransformerLayer", [](benchmark::State& state) {
    benchTransformerStep(state, true);
  }));
}

}  // namespace
}  // namespace retnet_bench

int main(int argc, char** argv) {
  return retnet_bench::runSuite(argc, argv, retnet_bench::registerDecode, /*sgemm=*/false,
                                /*bandwidth=*/true);
}
