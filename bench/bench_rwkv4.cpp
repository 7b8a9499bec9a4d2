// RWKV-4 at BlinkDL's Pile shapes (synthetic weights): 169M (L 12, C 768) and 430M (L 24,
// C 1024), F = 4C, vocabulary 50277, float32.
//
//   rwkv4/prefill/<shape>/<way>   T tokens of a prompt from the empty state, last logits only:
//                                 chunkwise (chunk 16 and 64), parallel (one chunk), recurrent
//                                 (projections as GEMMs over the prompt, the WKV recurrence token
//                                 by token) and decode_loop (T separate decode() calls: what a
//                                 token-serial runtime does)
//   rwkv4/decode/<shape>          one decoding step at batch 1: weights streamed once; the
//                                 roofline is the bytes read (block weights, the head, one
//                                 embedding row, the state) over the same binary's read bandwidth
//   rwkv4/wkv/<form>              the WKV stage alone, A = 768, one sequence
//
// Counters: tokens/s, GFLOP/s (2 per multiply-add of the projections), bandwidth_fraction for
// decode. Random weights: std 1/sqrt(in) matrices, norms around 1, time_decay in [−6, 1],
// time_first in [−1, 1], mixes in [0, 1].
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "retnet/rwkv4.hpp"

namespace retnet_bench {
namespace {

using Model = retnet::Rwkv4Model<float>;
using Values = std::vector<std::int64_t>;

struct Rwkv4Shape {
  const char* name;
  Index layers, embed, ffn, vocab;
};

const Rwkv4Shape kShapes[] = {{"169M", 12, 768, 3072, 50277}, {"430M", 24, 1024, 4096, 50277}};

VectorF uniformVector(Random& rng, Index n, float low, float high) {
  VectorF v(n);
  for (Index i = 0; i < n; ++i) v(i) = low + (high - low) * 0.5f * (rng.uniform() + 1.0f);
  return v;
}

std::unique_ptr<Model> makeModel(const Rwkv4Shape& s) {
  Random rng(0x5157);
  retnet::Rwkv4BlockConfig block;
  block.embedDim = s.embed;
  block.ffnDim = s.ffn;
  const retnet::Rwkv4ModelConfig config = retnet::rwkv4ModelConfig(s.vocab, s.layers, block);
  retnet::Rwkv4ModelWeights<float> w;
  const Index C = s.embed, F = s.ffn;
  w.embed = randomWeight(rng, s.vocab, C);
  w.embedNorm = randomNormWeight(rng, C);
  w.embedNormBias = uniformVector(rng, C, -0.1f, 0.1f);
  for (Index l = 0; l < s.layers; ++l) {
    retnet::Rwkv4BlockWeights<float> b;
    b.ln1Weight = randomNormWeight(rng, C);
    b.ln1Bias = uniformVector(rng, C, -0.1f, 0.1f);
    b.ln2Weight = randomNormWeight(rng, C);
    b.ln2Bias = uniformVector(rng, C, -0.1f, 0.1f);
    b.timeDecay = uniformVector(rng, C, -6.0f, 1.0f);
    b.timeFirst = uniformVector(rng, C, -1.0f, 1.0f);
    b.attMixK = uniformVector(rng, C, 0.0f, 1.0f);
    b.attMixV = uniformVector(rng, C, 0.0f, 1.0f);
    b.attMixR = uniformVector(rng, C, 0.0f, 1.0f);
    b.ffnMixK = uniformVector(rng, C, 0.0f, 1.0f);
    b.ffnMixR = uniformVector(rng, C, 0.0f, 1.0f);
    b.attKey = randomWeight(rng, C, C);
    b.attValue = randomWeight(rng, C, C);
    b.attReceptance = randomWeight(rng, C, C);
    b.attOutput = randomWeight(rng, C, C);
    b.ffnKey = randomWeight(rng, F, C);
    b.ffnReceptance = randomWeight(rng, C, C);
    b.ffnValue = randomWeight(rng, C, F);
    w.layers.push_back(std::move(b));
  }
  w.finalNorm = randomNormWeight(rng, C);
  w.finalNormBias = uniformVector(rng, C, -0.1f, 0.1f);
  w.outputProjection = randomWeight(rng, s.vocab, C);
  return std::make_unique<Model>(config, std::move(w));
}

/// One model per shape, built on first use (0.7 GB and 1.7 GB of float32 weights).
const Model& sharedModel(std::int64_t shape) {
  static std::unique_ptr<Model> models[2];
  auto& model = models[shape];
  if (!model) model = makeModel(kShapes[shape]);
  return *model;
}

/// Multiply-adds of the projections per token (time mixing 4C², channel mixing 2CF + C²).
double blockFlopsPerToken(const Rwkv4Shape& s) {
  const double C = static_cast<double>(s.embed), F = static_cast<double>(s.ffn);
  return 2.0 * (5.0 * C * C + 2.0 * C * F);
}
double weightBytesPerToken(const Rwkv4Shape& s) {
  const double C = static_cast<double>(s.embed), F = static_cast<double>(s.ffn);
  return 4.0 * (static_cast<double>(s.layers) * (5.0 * C * C + 2.0 * C * F + 4.0 * C * 10) +
                static_cast<double>(s.vocab) * C);  // blocks (with their vectors) + head
}

retnet::TokenMatrix promptOf(Index T, Index vocab) {
  retnet::TokenMatrix tokens(1, T);
  for (Index t = 0; t < T; ++t) tokens(0, t) = (t * 7919 + 13) % vocab;
  return tokens;
}

enum Way : std::int64_t { kChunk16, kChunk64, kParallel, kRecurrent, kDecodeLoop };
const char* const kWayNames[] = {"chunkwise16", "chunkwise64", "parallel", "recurrent",
                                 "decode_loop"};

void benchPrefill(benchmark::State& state, std::int64_t shape, Way way) {
  const Index T = state.range(0);
  const auto threads = state.range(1);
  const Rwkv4Shape& s = kShapes[shape];
  const Model& model = sharedModel(shape);
  const retnet::TokenMatrix tokens = promptOf(T, s.vocab);
  setThreads(static_cast<int>(threads));
  retnet::RowMatrix<float> logits;
  for (auto _ : state) {
    retnet::Rwkv4ModelState<float> st;
    switch (way) {
      case kChunk16:
        logits = model.prefill(tokens, st, 16);
        break;
      case kChunk64:
        logits = model.prefill(tokens, st, 64);
        break;
      case kParallel:
        logits = model.prefill(tokens, st, 16, retnet::Form::kParallel);
        break;
      case kRecurrent:
        logits = model.prefill(tokens, st, 16, retnet::Form::kRecurrent);
        break;
      case kDecodeLoop:
        for (Index t = 0; t < T; ++t) model.decode({tokens(0, t)}, st, logits);
        break;
    }
    benchmark::DoNotOptimize(logits.data());
  }
  using benchmark::Counter;
  state.counters["tokens/s"] = Counter(static_cast<double>(T), Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      Counter(static_cast<double>(T) * blockFlopsPerToken(s) * static_cast<double>(s.layers) * 1e-9,
              Counter::kIsIterationInvariantRate);
  setThreads(1);
}

void benchDecode(benchmark::State& state, std::int64_t shape) {
  const auto threads = state.range(0);
  const Rwkv4Shape& s = kShapes[shape];
  const Model& model = sharedModel(shape);
  setThreads(static_cast<int>(threads));
  retnet::Rwkv4ModelState<float> st;
  retnet::RowMatrix<float> logits;
  model.prefill(promptOf(8, s.vocab), st, 8);
  Model::Scratch scratch;
  std::int64_t token = 1;
  for (auto _ : state) {
    model.decode({token}, st, logits, scratch);
    token = (token * 31 + 7) % s.vocab;
    benchmark::DoNotOptimize(logits.data());
  }
  using benchmark::Counter;
  const double bytes = weightBytesPerToken(s);
  state.counters["bytes_read"] = Counter(bytes);
  state.counters["tokens/s"] = Counter(1, Counter::kIsIterationInvariantRate);
  const double bandwidth = limits().read(threads);
  if (bandwidth > 0) {
    state.counters["bandwidth_fraction"] =
        Counter(bytes * 1e-9 / bandwidth, Counter::kIsIterationInvariantRate);
    state.counters["roofline_ms"] = Counter(bytes * 1e-9 / bandwidth * 1e3);
  }
  setThreads(1);
}

void benchWkv(benchmark::State& state, retnet::Form form) {
  const Index T = state.range(0), chunk = state.range(1), A = 768;
  const auto threads = state.range(2);
  setThreads(static_cast<int>(threads));
  Random rng(3);
  Matrix k(T, A), v(T, A), y(T, A);
  rng.fill(k.data(), k.size(), 2.0f);
  rng.fill(v.data(), v.size(), 1.0f);
  const VectorF decay = -uniformVector(rng, A, -6.0f, 1.0f).array().exp();
  const VectorF u = uniformVector(rng, A, -1.0f, 1.0f);
  retnet::Rwkv4State<float> st(1, 1, A);
  for (auto _ : state) {
    retnet::stages::wkv<float>(form, k, v, decay.data(), u.data(), chunk, st.wkv(0), y);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(T), benchmark::Counter::kIsIterationInvariantRate);
  setThreads(1);
}

void registerRwkv4() {
  const Values threads = threadGrid();
  const Values lengths = quickMode() ? Values{64, 512} : Values{64, 256, 1024};
  for (std::int64_t shape = 0; shape < 2; ++shape) {
    for (std::int64_t way = kChunk16; way <= kDecodeLoop; ++way) {
      const std::string name =
          std::string("rwkv4/prefill/") + kShapes[shape].name + "/" + kWayNames[way];
      benchmark::RegisterBenchmark(name.c_str(),
                                   [shape, way](benchmark::State& state) {
                                     benchPrefill(state, shape, static_cast<Way>(way));
                                   })
          ->ArgNames({"T", "thr"})
          ->ArgsProduct({lengths, threads})
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
    benchmark::RegisterBenchmark((std::string("rwkv4/decode/") + kShapes[shape].name).c_str(),
                                 [shape](benchmark::State& state) { benchDecode(state, shape); })
        ->ArgNames({"thr"})
        ->ArgsProduct({threads})
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  const Values wkvLengths = quickMode() ? Values{256} : Values{64, 1024, 4096};
  for (const auto& [form, name, chunks] :
       {std::tuple{retnet::Form::kRecurrent, "recurrent", Values{0}},
        std::tuple{retnet::Form::kChunkwise, "chunkwise", Values{4, 16, 64}},
        std::tuple{retnet::Form::kParallel, "parallel", Values{0}}}) {
    const retnet::Form f = form;
    benchmark::RegisterBenchmark((std::string("rwkv4/wkv/") + name).c_str(),
                                 [f](benchmark::State& state) { benchWkv(state, f); })
        ->ArgNames({"T", "chunk", "thr"})
        ->ArgsProduct(
            {f == retnet::Form::kParallel ? Values{64, 1024} : wkvLengths, chunks, threads})
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  }
}

}  // namespace
}  // namespace retnet_bench

int main(int argc, char** argv) {
  return retnet_bench::runSuite(argc, argv, retnet_bench::registerRwkv4, /*sgemm=*/true,
                                /*bandwidth=*/true);
}
