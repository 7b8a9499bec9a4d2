// Each stage of a retention layer timed alone: the "perf mode" of the stage op tests
// (tests/test_stages.cpp). The public stage functions (include/retnet/stages/, rotary.hpp) are
// called the way MultiScaleRetention and RetNetBlock call them, on configurations A and B, for a
// decode step (T = 1) and a prefill (T = 2048; QUICK=1: 512):
//
//   linear_in        x · W_inᵀ, W_in = [Wq; Wk; Wv; Wg] (2D+2V x D): MSR's input projection
//   linear_out       o · W_outᵀ, W_out (D x V): MSR's output projection
//   rotary_table     cos/sin of positions [0, T) (computed in double)
//   rotary           every head of q and k rotated in place in the (T x 2D+2V) projection
//                    buffer (strided rows), table given
//   retention_<form> every head's retention over the projection buffer, torchscale's
//                    normalisation, k scaled by dk^(−1/2), heads over threads as in the layer;
//                    chunkwise C = MultiScaleRetention::recommendedChunkSize() (128 for A, 64 for
//                    B). Prefill: parallel and chunkwise from a zero state, recurrent; decode:
//                    the recurrent step from a non-zero state
//   groupnorm_gate   group norm over each head's dv values and the swish gate, in place
//   rmsnorm          a block's RMSNorm with weight, (T x D)
//   ffn              the gated FFN (GLU, gelu): [fc1; gate] GEMM, gelu ⊙ gate, fc2 GEMM
//   embed            token lookup scaled by sqrt(D), from a (32000 x D) table
//   linear_weights   x · Wᵀ at fla-hub 1.3B's FFN input shape (W 11264 x 2048, 46 MB in BF16;
//                    twelve copies in turn, so that W comes from memory, not a 260 MB L3),
//                    per weight type (type: 0 f32, 1 bf16, 2 f16, 3 int8), kernel build (simd:
//                    0 portable, 1 AVX2, 2 AVX-512; the ones the CPU has) and rows (1, 4: the
//                    streaming kernels; 16, 512: panels + GEMM); bytes are the stored ones
//
// Arguments: T, cfg (0 = A, 1 = B), thr (1, and 2 with OpenMP). Counters: tokens/s; GFLOP/s and
// sgemm_fraction for the products (linear, ffn, retention; FLOP models of bench_common.hpp);
// bytes_per_second and bandwidth_fraction for every stage, from the bytes it must move at least
// once (weights, activations read and written, the retention state read and written) over the
// same binary's read bandwidth. Inputs are set up outside the timed loop; stages that work in
// place run again on their own output, with inputs chosen so that this stays a steady state.
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "retnet/rotary.hpp"
#include "retnet/stages/embedding.hpp"
#include "retnet/stages/ffn.hpp"
#include "retnet/stages/group_norm.hpp"
#include "retnet/stages/linear.hpp"
#include "retnet/stages/norms.hpp"
#include "retnet/stages/retention.hpp"

namespace retnet_bench {
namespace {

using Values = std::vector<std::int64_t>;
namespace stages = retnet::stages;

constexpr Index kVocab = 32000;

/// The arguments every stage benchmark takes: T, cfg, thr.
struct Shape {
  explicit Shape(benchmark::State& state)
      : c(modelConfig(state.range(1))), T(state.range(0)), threads(state.range(2)) {
    setThreads(static_cast<int>(threads));
    state.SetLabel(c.name);
  }
  const ModelConfig& c;
  Index T;
  std::int64_t threads;
};

/// (rows x cols) values of std 1 (a view of the shared pool, copied).
Matrix input(Index rows, Index cols) {
  return Eigen::Map<const Matrix>(randomPool(rows * cols), rows, cols);
}

/// tokens/s; GFLOP/s and sgemm_fraction if `flops` > 0; bytes_per_second and bandwidth_fraction.
void setCounters(benchmark::State& state, const Shape& s, double flops, double bytes) {
  using benchmark::Counter;
  const double rows = static_cast<double>(s.T);
  if (flops > 0) {
    setComputeCounters(state, rows, flops, s.threads);
  } else {
    state.counters["tokens/s"] = Counter(rows, Counter::kIsIterationInvariantRate);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes) *
                          static_cast<std::int64_t>(state.iterations()));
  const double bandwidth = limits().read(s.threads);
  if (bandwidth > 0) {
    state.counters["bandwidth_fraction"] =
        Counter(bytes * 1e-9 / bandwidth, Counter::kIsIterationInvariantRate);
  }
}

void benchLinear(benchmark::State& state, bool inputProjection) {
  const Shape s(state);
  const Index D = s.c.embed, V = s.c.value;
  const Index in = inputProjection ? D : V, out = inputProjection ? 2 * D + 2 * V : D;
  Random rng(11);
  const retnet::LinearWeight<float> weight(randomWeight(rng, out, in));
  const Matrix x = input(s.T, in);  // (T x in)
  Matrix y(s.T, out);               // (T x out)
  for (auto _ : state) {
    stages::linear<float>(x, weight, y);
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(y.data());
  const double T = static_cast<double>(s.T), n = static_cast<double>(in);
  const double m = static_cast<double>(out);
  setCounters(state, s, 2.0 * T * n * m, 4.0 * (n * m + T * n + T * m));
}

void benchLinearWeights(benchmark::State& state) {
  const Index rows = state.range(0), out = 11264, in = 2048;
  const auto type = static_cast<retnet::WeightType>(state.range(1));
  const auto simd = static_cast<retnet::SimdLevel>(state.range(2));
  const auto threads = state.range(3);
  if (static_cast<int>(simd) > static_cast<int>(retnet::simdSupported()) ||
      (type == retnet::WeightType::kFull && simd != retnet::SimdLevel::kAvx512)) {
    state.SkipWithError("not on this CPU / not a kernel of this type");
    return;
  }
  setThreads(static_cast<int>(threads));
  retnet::setSimdLimit(simd);
  state.SetLabel(std::string(retnet::weightTypeName(type)) + "/" + retnet::simdLevelName(simd));
  // Twelve copies used in turn, 277 MB (int8) to 1.1 GB (f32): more than the last-level cache of
  // the machines we meet (260 MB on the 2-vCPU Xeon VM), so W comes from memory as in a model.
  Random rng(5);
  const retnet::LinearWeight<float> original(randomWeight(rng, out, in));
  std::vector<retnet::LinearWeight<float>> weights;
  for (int copy = 0; copy < 12; ++copy) weights.push_back(original.converted(type));
  const retnet::LinearWeight<float>& weight = weights.front();
  const Matrix x = input(rows, in);
  Matrix y(rows, out);
  std::size_t next = 0;
  for (auto _ : state) {
    stages::linear<float>(x, weights[next], y);
    next = (next + 1) % weights.size();
    benchmark::ClobberMemory();
  }
  retnet::setSimdLimit(retnet::SimdLevel::kAvx512);
  benchmark::DoNotOptimize(y.data());
  const double bytes = double(weight.storedBytes()) + 4.0 * double(rows * (in + out));
  using benchmark::Counter;
  state.counters["rows/s"] = Counter(double(rows), Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      Counter(2e-9 * double(rows * in * out), Counter::kIsIterationInvariantRate);
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes) *
                          static_cast<std::int64_t>(state.iterations()));
  const double bandwidth = limits().read(threads);
  if (bandwidth > 0) {
    state.counters["bandwidth_fraction"] =
        Counter(bytes * 1e-9 / bandwidth, Counter::kIsIterationInvariantRate);
  }
}

void benchRotaryTable(benchmark::State& state) {
  const Shape s(state);
  const retnet::RotaryEmbedding<float> rope(s.c.keyDim());
  retnet::RotaryTable<float> table;
  for (auto _ : state) {
    rope.fillTable(0, s.T, table);
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(table.cosines.data());
  setCounters(state, s, 0, 4.0 * static_cast<double>(s.T * s.c.keyDim()));  // cos + sin written
}

void benchRotary(benchmark::State& state) {
  const Shape s(state);
  const Index D = s.c.embed, width = 2 * D + 2 * s.c.value;
  const retnet::RotaryEmbedding<float> rope(s.c.keyDim());
  retnet::RotaryTable<float> table;
  rope.fillTable(0, s.T, table);
  Matrix projections = input(s.T, width);  // (T x 2D+2V): q | k | v | g
  for (auto _ : state) {
    // Rotations keep norms: rotating the output again is the same work on values of one scale.
    stages::rotate<float>(rope, table, projections.leftCols(D));
    stages::rotate<float>(rope, table, projections.middleCols(D, D));
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(projections.data());
  const double T = static_cast<double>(s.T), d = static_cast<double>(D);
  setCounters(state, s, 0, 4.0 * (4.0 * T * d + T * static_cast<double>(s.c.keyDim())));
}

void benchRetention(benchmark::State& state, retnet::Form form) {
  const Shape s(state);
  const ModelConfig& c = s.c;
  const Index D = c.embed, V = c.value, H = c.heads, dk = c.keyDim(), dv = c.headValueDim();
  const Index width = 2 * D + 2 * V, T = s.T;
  const Index chunk = sharedMsr(state.range(1)).recommendedChunkSize();
  const Matrix projections = input(T, width);  // q | k | v | g, (T x 2D+2V)
  Matrix retained(T, V);                       // (T x V): head h in columns [h·dv, (h+1)·dv)
  std::vector<retnet::RetentionPlan<float>> plans;
  for (Index h = 0; h < H; ++h) {
    const retnet::RetentionHead head{
        stages::retnetDecay(h), retnet::RetentionNormalization::kTorchscale,
        1.0 / std::sqrt(static_cast<double>(dk)), retnet::ScaleSide::kKey};
    plans.emplace_back(head, form, chunk, T);
  }
  std::vector<retnet::RetentionScratch<float>> scratch(
      static_cast<std::size_t>(retnet::detail::maxThreadSlots()));
  // The states of every head, (H x dk x dv). A decode step continues a sequence (position 4096,
  // small non-zero state); a prefill starts one (parallel and chunkwise overwrite S; the
  // recurrent form carries it on, which costs the same).
  VectorF states = VectorF::Zero(H * dk * dv);
  const bool decode = T == 1;
  const Index start = decode ? 4096 : 0;
  if (decode) Random(5).fill(states.data(), states.size(), 0.05f);
  const bool stateIsZero = !decode && form != retnet::Form::kRecurrent;
  for (auto _ : state) {
    // Heads over threads, one whole head per task, as MultiScaleRetention does.
    retnet::detail::parallelFor(H, [&](Index h, int thread) {
      Eigen::Map<Matrix> S(states.data() + h * dk * dv, dk, dv);
      stages::retention<float>(
          plans[static_cast<std::size_t>(h)], projections.block(0, h * dk, T, dk),
          projections.block(0, D + h * dk, T, dk), projections.block(0, 2 * D + h * dv, T, dv), S,
          start, stateIsZero, retained.block(0, h * dv, T, dv),
          scratch[static_cast<std::size_t>(thread)]);
    });
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(retained.data());
  const double t = static_cast<double>(T), stateBytes = 4.0 * static_cast<double>(H * dk * dv);
  const double flops =
      static_cast<double>(H) * retentionFlops(form, t, static_cast<double>(chunk),
                                              static_cast<double>(dk), static_cast<double>(dv),
                                              /*normalised=*/true, stateIsZero);
  // q, k, v read, out written, the state read (unless zero) and written.
  const double bytes =
      4.0 * t * static_cast<double>(2 * D + 2 * V) + (stateIsZero ? 1.0 : 2.0) * stateBytes;
  setCounters(state, s, flops, bytes);
}

void benchGroupNormGate(benchmark::State& state) {
  const Shape s(state);
  const Index V = s.c.value;
  Matrix o = input(s.T, V);  // (T x V), retention's output
  // (T x V) gate pre-activations, all 25: swish(25) = 25 in float, so applying the stage to its
  // own output is a fixed point (o_h / rms(o_h) · 25 has rms 25; g stays 25) and every iteration
  // does the same work on normal floats. (Varied gate values would spread o geometrically over
  // the iterations, into denormals.) The cost of exp and of the products does not depend on the
  // values.
  Matrix g = Matrix::Constant(s.T, V, 25.0f);
  for (auto _ : state) {
    stages::groupNormGate<float>(o, s.c.heads, nullptr, 1e-6, g, retnet::Activation::kSwish);
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(o.data());
  // o and g read and written.
  setCounters(state, s, 0, 16.0 * static_cast<double>(s.T * V));
}

void benchRmsNorm(benchmark::State& state) {
  const Shape s(state);
  const Index D = s.c.embed;
  Random rng(17);
  const VectorF weight = randomNormWeight(rng, D);
  const Matrix x = input(s.T, D);  // (T x D)
  Matrix y(s.T, D);
  for (auto _ : state) {
    stages::rmsNorm<float>(x, weight.data(), 1e-6, y);
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(y.data());
  setCounters(state, s, 0, 4.0 * static_cast<double>(2 * s.T * D + D));
}

void benchFeedForward(benchmark::State& state) {
  const Shape s(state);
  const Index D = s.c.embed, F = s.c.ffn;
  Random rng(19);
  const Matrix fc1 = randomWeight(rng, F, D), gate = randomWeight(rng, F, D);
  const Matrix fc2 = randomWeight(rng, D, F);
  const auto weights = retnet::FeedForwardWeights<float>::glu(fc1, gate, fc2, s.c.activation);
  const Matrix x = input(s.T, D);  // (T x D)
  Matrix hidden(s.T, 2 * F), y(s.T, D);
  for (auto _ : state) {
    stages::gatedFeedForward<float>(x, weights, hidden, y);
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(y.data());
  const double T = static_cast<double>(s.T), d = static_cast<double>(D);
  const double f = static_cast<double>(F);
  setCounters(state, s, ffnFlops(T, d, f), 4.0 * (3.0 * d * f + 2.0 * T * d));
}

/// A (vocab x D) embedding table of std-1 values, generated once per width.
const Matrix& embeddingTable(Index D) {
  static std::map<Index, Matrix> tables;
  auto [entry, inserted] = tables.try_emplace(D);
  if (inserted) {
    entry->second.resize(kVocab, D);
    Random(23).fill(entry->second.data(), entry->second.size(), 1.0f);
  }
  return entry->second;
}

void benchEmbed(benchmark::State& state) {
  const Shape s(state);
  const Index D = s.c.embed;
  const Matrix& table = embeddingTable(D);
  std::vector<std::int64_t> tokens(static_cast<std::size_t>(s.T));
  Random rng(29);
  for (std::int64_t& token : tokens) {
    token = static_cast<std::int64_t>((rng.uniform() + 1.0f) * 0.5f * (kVocab - 1));
  }
  Matrix y(s.T, D);
  const double scale = std::sqrt(static_cast<double>(D));
  for (auto _ : state) {
    stages::embed<float>(tokens.data(), table, scale, y);
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(y.data());
  setCounters(state, s, 0, 8.0 * static_cast<double>(s.T * D));  // rows read, y written
}

void registerStages() {
  const Values decodeAndPrefill = {1, quickMode() ? 512 : 2048};
  const Values prefill = {decodeAndPrefill[1]};
  const Values configs = {0, 1};
  const Values threads = threadGrid();
  using Bench = void (*)(benchmark::State&);
  const auto add = [&](const std::string& name, Bench bench, const Values& lengths) {
    benchmark::RegisterBenchmark(("stages/" + name).c_str(), bench)
        ->ArgNames({"T", "cfg", "thr"})
        ->ArgsProduct({lengths, configs, threads})
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  };
  add(
      "linear_in", [](benchmark::State& st) { benchLinear(st, true); }, decodeAndPrefill);
  add(
      "linear_out", [](benchmark::State& st) { benchLinear(st, false); }, decodeAndPrefill);
  add("rotary_table", benchRotaryTable, decodeAndPrefill);
  add("rotary", benchRotary, decodeAndPrefill);
  add(
      "retention_parallel",
      [](benchmark::State& st) { benchRetention(st, retnet::Form::kParallel); }, prefill);
  add(
      "retention_chunkwise",
      [](benchmark::State& st) { benchRetention(st, retnet::Form::kChunkwise); }, prefill);
  add(
      "retention_recurrent",
      [](benchmark::State& st) { benchRetention(st, retnet::Form::kRecurrent); }, decodeAndPrefill);
  add("groupnorm_gate", benchGroupNormGate, decodeAndPrefill);
  add("rmsnorm", benchRmsNorm, decodeAndPrefill);
  add("ffn", benchFeedForward, decodeAndPrefill);
  add("embed", benchEmbed, decodeAndPrefill);
  benchmark::RegisterBenchmark("stages/linear_weights", benchLinearWeights)
      ->ArgNames({"rows", "type", "simd", "thr"})
      ->ArgsProduct({{1, 4, 16, 512}, {0, 1, 2, 3}, {0, 1, 2}, threads})
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
}

}  // namespace
}  // namespace retnet_bench

int main(int argc, char** argv) {
  return retnet_bench::runSuite(argc, argv, retnet_bench::registerStages, /*sgemm=*/true,
                                /*bandwidth=*/true);
}
