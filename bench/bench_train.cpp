// One training step of a RetNet language model: forwardTraining, backwardCrossEntropy, clipping
// by global norm, an AdamW step. Config B blocks (D 512, V 1024, 8 heads, FFN 1024, gelu), 2
// layers, vocabulary 256 (the byte-level model of examples/retnet_train), batch 4, float32: the
// shape bench/train_torchscale.py times torchscale at with PyTorch autograd.
//
//   train/{parallel|chunkwise}/T:{512|2048}/B:4/thr:{1|2}   (chunkwise: chunk 64)
//
// Counters: tokens/s; peak_rss_mb, the process's peak resident memory; training_mb, that peak
// over the resident memory measured once the model exists (what training holds: the gradients,
// the cache of activations, the backward's workspace, AdamW's moments; PyTorch's figure counts
// the same, its gradients and moments being created in the first step). Memory figures are per
// process: run one case per process
// (--benchmark_filter) to read them, as train_torchscale.py --compare does.
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <cstdio>
#include <retnet/init.hpp>
#include <retnet/optimizer.hpp>
#include <retnet/retnet.hpp>

#include "bench_common.hpp"

namespace retnet_bench {
namespace {

/// Resident memory now (MB), from /proc/self/statm; 0 where that does not exist.
double residentMb() {
  std::FILE* file = std::fopen("/proc/self/statm", "r");
  if (file == nullptr) return 0;
  long pages = 0, resident = 0;
  const int read = std::fscanf(file, "%ld %ld", &pages, &resident);
  std::fclose(file);
  return read == 2 ? static_cast<double>(resident) * 4096.0 / 1e6 : 0;
}

/// The process's peak resident memory (MB).
double peakResidentMb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1e3;  // Linux: KB
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
  for (auto _ : state) {
    grads.setZero();
    model.forwardTraining(form, tokens, chunk, cache);
    loss = model.backwardCrossEntropy(cache, targets, grads);
    retnet::clipGradientNorm(grads, 1.0);
    optimizer.step(model, grads, 1e-4);
  }
  benchmark::DoNotOptimize(loss);
  using benchmark::Counter;
  state.counters["tokens/s"] =
      Counter(static_cast<double>(batch * T), Counter::kIsIterationInvariantRate);
  state.counters["peak_rss_mb"] = peakResidentMb();
  state.counters["training_mb"] = peakResidentMb() - baseline;
}

void registerTraining() {
  const std::vector<std::int64_t> lengths =
      quickMode() ? std::vector<std::int64_t>{128} : std::vector<std::int64_t>{512, 2048};
  for (retnet::Form form : {retnet::Form::kParallel, retnet::Form::kChunkwise}) {
    const std::string name = std::string("train/") + retnet::formName(form);
    auto* b = benchmark::RegisterBenchmark(
        name.c_str(), [form](benchmark::State& state) { benchTrain(state, form); });
    b->UseRealTime()->Unit(benchmark::kMillisecond)->ArgNames({"T", "B", "thr"});
    b->ArgsProduct({lengths, {4}, threadGrid()});
  }
}

}  // namespace
}  // namespace retnet_bench

int main(int argc, char** argv) {
  return retnet_bench::runSuite(argc, argv, retnet_bench::registerTraining, /*sgemm=*/true,
                                /*bandwidth=*/false);
}
