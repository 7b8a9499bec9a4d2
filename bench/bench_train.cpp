// One training step of a RetNet language model: forwardTraining, backwardCrossEntropy, clipping
// by global norm, an AdamW step. Config B blocks (D 512, V 1024, 8 heads, FFN 1024, gelu), 2
// layers, vocabulary 256 (the byte-level model of examples/retnet_train), batch 4, float32: the
// shape bench/train_torchscale.py times torchscale at with PyTorch autograd.
//
//   train/{parallel|chunkwise}/T:{512|1024|2048|4096}/B:4/thr:{1|2}   (chunkwise: chunk 64)
//
// Counters: tokens/s; forward_ms, backward_ms, optimizer_ms (clipping and AdamW) per step;
// linear_gflop, the linear layers' 6·parameters·tokens FLOPs of a step, and step_vs_sgemm, that
// over the step's time as a fraction of the same-run SGEMM; peak_rss_mb, the process's peak
// resident memory; training_mb, that peak over the resident memory measured once the model exists
// (what training holds: the gradients, the cache of activations, the shared workspace, AdamW's
// moments; PyTorch's figure counts the same, its gradients and moments being created in the first
// step). Memory figures are per process: run one case per process (--benchmark_filter) to read
// them, as train_torchscale.py --compare does (a second run in the process starts from memory the
// first freed). Each run takes one untimed warm-up step first, as the peer's loop does.
//
//   train_linear/{forward|input|weight}/out:{..}/in:{..}/rows:2048/thr:{1|2}
//
// each linear product of a config-B block alone (benchLinear below).
#include <benchmark/benchmark.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <retnet/init.hpp>
#include <retnet/optimizer.hpp>
#include <retnet/retnet.hpp>
#include <utility>

#include "bench_common.hpp"

namespace retnet_bench {
namespace {

// Memory in MB of 2^20 bytes (MiB), as bench/train_torchscale.py counts PyTorch's, so that the
// two sides' figures compare directly.

/// Resident memory now (MB), from /proc/self/statm; 0 where that does not exist.
double residentMb() {
  std::FILE* file = std::fopen("/proc/self/statm", "r");
  if (file == nullptr) return 0;
  long pages = 0, resident = 0;
  const int read = std::fscanf(file, "%ld %ld", &pages, &resident);
  std::fclose(file);
  const long pageBytes = sysconf(_SC_PAGESIZE);
  return read == 2 && pageBytes > 0
             ? static_cast<double>(resident) * static_cast<double>(pageBytes) / 1048576.0
             : 0;
}

/// The process's peak resident memory (MB).
double peakResidentMb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // Linux: KiB
}

void benchTrain(benchmark::State& state, retnet::Form form) {
  const Index T = state.range(0), batch = state.range(1);
  const auto threads = static_cast<int>(state.range(2));
  const Index chunk = 64;
  setThreads(threads);
  retnet::RetNetModelConfig config;
  config.vocab = 256;
  config.layers = 2;
  config.block = modelConfig(1).block();
  retnet::RetNetModel<float> model(config, retnet::initialRetNetWeights<float>(config, 1));
  retnet::RetNetModel<float>::TrainingCache cache;
  const double baseline = residentMb();  // as PyTorch's: gradients and moments count
  auto grads = model.zeroGradients();
  retnet::AdamWOptions options;
  options.weightDecay = 0.1;
  retnet::AdamW<float> optimizer(options);
  retnet::TokenMatrix tokens(batch, T), targets(batch, T);
  retnet::SplitMix64 random(7);
  for (Index i = 0; i < tokens.size(); ++i) {
    tokens.data()[i] = static_cast<std::int64_t>(random.next() % 256);
    targets.data()[i] = static_cast<std::int64_t>(random.next() % 256);
  }
  double loss = 0;
  double seconds[3] = {0, 0, 0};  // forward, backward, the rest (clipping, AdamW)
  using Clock = std::chrono::steady_clock;
  const auto since = [](Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
  };
  // one step, adding its forward, backward and optimiser times to `into`
  const auto step = [&](double* into) {
    const auto start = Clock::now();
    grads.setZero();
    model.forwardTraining(form, tokens, chunk, cache);
    const auto forward = Clock::now();
    loss = model.backwardCrossEntropy(cache, targets, grads);
    const auto backward = Clock::now();
    retnet::clipGradientNorm(grads, 1.0);
    optimizer.step(model, grads, 1e-4);
    into[0] += std::chrono::duration<double>(forward - start).count();
    into[1] += std::chrono::duration<double>(backward - forward).count();
    into[2] += since(backward);
  };
  // One untimed warm-up step, as train_torchscale.py gives the peer: it sizes the cache and the
  // workspace and creates AdamW's moments, and it pays the first touch of all that memory (on some
  // VMs ~30x a reused page's cost, which made the first step at T = 2048 take twice a later one).
  double warmUp[3] = {0, 0, 0};
  step(warmUp);
  for (auto _ : state) step(seconds);
  benchmark::DoNotOptimize(loss);
  using benchmark::Counter;
  state.counters["tokens/s"] =
      Counter(static_cast<double>(batch * T), Counter::kIsIterationInvariantRate);
  // where a step goes, and the GEMM-shaped work's rate against the same-run SGEMM (the linear
  // layers' 6·params·tokens FLOPs, forward and backward, and the output head's)
  const auto steps = static_cast<double>(state.iterations());
  state.counters["forward_ms"] = 1e3 * seconds[0] / steps;
  state.counters["backward_ms"] = 1e3 * seconds[1] / steps;
  state.counters["optimizer_ms"] = 1e3 * seconds[2] / steps;
  const auto& b = config.block;
  const double linearParams =
      static_cast<double>(config.layers) *
          (projectionFlops(1, static_cast<double>(b.embedDim), static_cast<double>(b.valueDim)) +
           ffnFlops(1, static_cast<double>(b.embedDim), static_cast<double>(b.ffnDim))) /
          2 +
      static_cast<double>(config.vocab * b.embedDim);
  const double linearGflop = 6 * linearParams * static_cast<double>(batch * T) / 1e9;
  state.counters["linear_gflop"] = linearGflop;
  if (limits().sgemm(threads) > 0)
    state.counters["step_vs_sgemm"] =
        linearGflop / (seconds[0] + seconds[1] + seconds[2]) * steps / limits().sgemm(threads);
  state.counters["peak_rss_mb"] = peakResidentMb();
  state.counters["training_mb"] = peakResidentMb() - baseline;
}

/// The training step's GEMM-shaped work one product at a time, at config B and rows = batch·T
/// (4 x 512): y = x·Wᵀ (stages::linear), dx = dy·W (linearBackwardInput), dW += dyᵀ·x
/// (linearBackwardWeight), for each weight shape of a block: q|k|v|g (3072 x 512), out (512 x
/// 1024), fc1|gate (2048 x 512), fc2 (512 x 1024). Counter: the fraction of the same-run SGEMM.
///   train_linear/{forward|input|weight}/out:{..}/in:{..}/rows:2048/thr:{1|2}
void benchLinear(benchmark::State& state, int product) {
  const Index out = state.range(0), in = state.range(1), rows = state.range(2);
  const auto threads = static_cast<int>(state.range(3));
  setThreads(threads);
  Random rng(11);
  const retnet::LinearWeight<float> weight(randomWeight(rng, out, in));
  const Matrix x = randomWeight(rng, rows, in), dy = randomWeight(rng, rows, out);
  Matrix y(rows, out), dx(rows, in), dW = Matrix::Zero(out, in);
  for (auto _ : state) {
    if (product == 0) retnet::stages::linear<float>(x, weight, y);
    if (product == 1) retnet::stages::linearBackwardInput<float>(dy, weight, dx);
    if (product == 2) retnet::stages::linearBackwardWeight<float>(x, dy, dW);
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * static_cast<double>(rows * out * in);
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["vs_sgemm"] = benchmark::Counter(flops / 1e9 / limits().sgemm(threads),
                                                  benchmark::Counter::kIsIterationInvariantRate);
}

void registerTraining() {
  const std::vector<std::int64_t> lengths =
      quickMode() ? std::vector<std::int64_t>{128}
                  : std::vector<std::int64_t>{512, 1024, 2048, 4096};  // memory: linear in T?
  for (retnet::Form form : {retnet::Form::kParallel, retnet::Form::kChunkwise}) {
    const std::string name = std::string("train/") + retnet::formName(form);
    auto* b = benchmark::RegisterBenchmark(
        name.c_str(), [form](benchmark::State& state) { benchTrain(state, form); });
    b->UseRealTime()->Unit(benchmark::kMillisecond)->ArgNames({"T", "B", "thr"});
    b->ArgsProduct({lengths, {4}, threadGrid()});
  }
  const char* products[] = {"forward", "input", "weight"};
  const Index D = 512, V = 1024, F = 1024;  // config B
  for (int product = 0; product < 3; ++product) {
    const std::string name = std::string("train_linear/") + products[product];
    auto* b = benchmark::RegisterBenchmark(
        name.c_str(), [product](benchmark::State& state) { benchLinear(state, product); });
    b->UseRealTime()->Unit(benchmark::kMillisecond)->ArgNames({"out", "in", "rows", "thr"});
    for (const auto& [out, in] :
         {std::pair<Index, Index>{2 * D + 2 * V, D}, {D, V}, {2 * F, D}, {D, F}})
      for (std::int64_t threads : threadGrid())
        b->Args({out, in, quickMode() ? 256 : 2048, threads});
  }
}

}  // namespace
}  // namespace retnet_bench

int main(int argc, char** argv) {
  return retnet_bench::runSuite(argc, argv, retnet_bench::registerTraining, /*sgemm=*/true,
                                /*bandwidth=*/false);
}
