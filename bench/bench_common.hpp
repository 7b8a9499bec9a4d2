// Shared pieces of the retnet benchmarks: configurations, random weights and inputs, thread
// control, FLOP and byte models, and the same-binary machine limits (SGEMM and streaming
// bandwidth) that every figure is reported against.
#pragma once

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "retnet/block.hpp"
#include "retnet/multiscale_retention.hpp"
#include "retnet/retnet.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace retnet_bench {

using retnet::Index;
using Matrix = retnet::RowMatrix<float>;
using VectorF = retnet::Vector<float>;

// ---------------------------------------------------------------------------------------------
// Configurations

/// The two model shapes of the benchmark grid (args index them: 0 = A, 1 = B).
struct ModelConfig {
  const char* name;
  Index embed;  // D
  Index value;  // V
  Index heads;  // H
  Index ffn;    // F
  retnet::Activation activation;

  Index keyDim() const { return embed / heads; }        // dk
  Index headValueDim() const { return value / heads; }  // dv

  retnet::MultiScaleRetentionConfig msr() const {
    retnet::MultiScaleRetentionConfig c;
    c.embedDim = embed;
    c.valueDim = value;
    c.heads = heads;
    return c;
  }
  retnet::RetNetBlockConfig block() const {
    retnet::RetNetBlockConfig c;
    c.embedDim = embed;
    c.valueDim = value;
    c.heads = heads;
    c.ffnDim = ffn;
    c.activation = activation;
    return c;
  }
};

inline const ModelConfig& modelConfig(std::int64_t index) {
  static const ModelConfig configs[] = {
      {"A", 1024, 2048, 4, 2048, retnet::Activation::kGelu},
      {"B", 512, 1024, 8, 1024, retnet::Activation::kGelu},
  };
  return configs[index == 0 ? 0 : 1];
}

/// True when the environment variable is set to something other than "" or "0".
inline bool envFlag(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' && std::string(value) != "0";
}

/// True when only listing benchmarks (no need to measure the machine's limits).
inline bool listingOnly(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--benchmark_list_tests" || arg == "--benchmark_list_tests=true") return true;
  }
  return false;
}

/// QUICK=1: reduced grids for smoke tests.
inline bool quickMode() { return envFlag("QUICK"); }

/// WEIGHTS=f32|bf16|f16|int8: how the shared layers store their dense weights (default f32).
inline retnet::WeightType benchWeights() {
  static const retnet::WeightType type = [] {
    const char* value = std::getenv("WEIGHTS");
    if (value == nullptr || value[0] == '\0') return retnet::WeightType::kFull;
    const auto parsed = retnet::weightTypeFromName(value);
    if (!parsed) {
      std::fprintf(stderr, "WEIGHTS=%s: expected f32, bf16, f16 or int8\n", value);
      std::exit(2);
    }
    return *parsed;
  }();
  return type;
}

/// BF16_GEMM=never|fast|wherever: retnet::setBf16Gemm for BF16 weights' prefill products (a
/// build with RETNET_ONEDNN; default: the library's, fast). Applied by measureLimits.
inline void applyBf16GemmChoice() {
  const char* value = std::getenv("BF16_GEMM");
  if (value == nullptr || value[0] == '\0') return;
  const std::string name = value;
  if (name == "never") {
    retnet::setBf16Gemm(retnet::Bf16Gemm::kNever);
  } else if (name == "fast") {
    retnet::setBf16Gemm(retnet::Bf16Gemm::kWhereFast);
  } else if (name == "wherever") {
    retnet::setBf16Gemm(retnet::Bf16Gemm::kWherever);
  } else {
    std::fprintf(stderr, "BF16_GEMM=%s: expected never, fast or wherever\n", value);
    std::exit(2);
  }
}

/// The layer with its dense weights stored as benchWeights() says.
template <typename Layer>
void storeBenchWeights(Layer& layer) {
  if (benchWeights() == retnet::WeightType::kFull) return;
  layer.forEachWeight([](retnet::LinearWeight<float>& w) { w = w.converted(benchWeights()); });
}

// ---------------------------------------------------------------------------------------------
// Random numbers (a small fast generator: setup cost matters for GB-sized KV caches)

class Random {
 public:
  explicit Random(std::uint64_t seed) : state_(seed ^ 0x9E3779B97F4A7C15ULL) {}

  /// Uniform in [-1, 1).
  float uniform() {
    state_ += 0x9E3779B97F4A7C15ULL;  // splitmix64
    std::uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
  }

  /// Fills with values of standard deviation `scale` (uniform, so bounded by sqrt(3)·scale).
  void fill(float* data, Index count, float scale) {
    const float a = scale * std::sqrt(3.0f);
    for (Index i = 0; i < count; ++i) data[i] = a * uniform();
  }

 private:
  std::uint64_t state_;
};

/// An (out, in) Linear weight with entries of std 1/sqrt(in), so activations stay O(1).
inline Matrix randomWeight(Random& rng, Index out, Index in) {
  Matrix w(out, in);
  rng.fill(w.data(), w.size(), 1.0f / std::sqrt(static_cast<float>(in)));
  return w;
}

/// Norm weights around 1.
inline VectorF randomNormWeight(Random& rng, Index size) {
  VectorF w(size);
  for (Index i = 0; i < size; ++i) w(i) = 1.0f + 0.1f * rng.uniform();
  return w;
}

inline retnet::MultiScaleRetentionWeights<float> msrWeights(const ModelConfig& c,
                                                            std::uint64_t seed) {
  Random rng(seed);
  retnet::MultiScaleRetentionWeights<float> w;
  w.q = randomWeight(rng, c.embed, c.embed);
  w.k = randomWeight(rng, c.embed, c.embed);
  w.v = randomWeight(rng, c.value, c.embed);
  w.g = randomWeight(rng, c.value, c.embed);
  w.out = randomWeight(rng, c.embed, c.value);
  return w;
}

inline retnet::RetNetBlockWeights<float> blockWeights(const ModelConfig& c, std::uint64_t seed) {
  Random rng(seed + 1);
  retnet::RetNetBlockWeights<float> w;
  w.retention = msrWeights(c, seed);
  w.retentionNorm = randomNormWeight(rng, c.embed);
  w.fc1 = randomWeight(rng, c.ffn, c.embed);
  w.gate = randomWeight(rng, c.ffn, c.embed);
  w.fc2 = randomWeight(rng, c.embed, c.ffn);
  w.finalNorm = randomNormWeight(rng, c.embed);
  return w;
}

/// Layers are built once per configuration and shared by every benchmark that uses them.
inline const retnet::MultiScaleRetention<float>& sharedMsr(std::int64_t config) {
  static std::map<std::int64_t, std::unique_ptr<retnet::MultiScaleRetention<float>>> layers;
  auto& layer = layers[config];
  if (!layer) {
    const ModelConfig& c = modelConfig(config);
    layer = std::make_unique<retnet::MultiScaleRetention<float>>(c.msr(), msrWeights(c, 42));
    storeBenchWeights(*layer);
  }
  return *layer;
}

inline const retnet::RetNetBlock<float>& sharedBlock(std::int64_t config) {
  static std::map<std::int64_t, std::unique_ptr<retnet::RetNetBlock<float>>> layers;
  auto& layer = layers[config];
  if (!layer) {
    const ModelConfig& c = modelConfig(config);
    layer = std::make_unique<retnet::RetNetBlock<float>>(c.block(), blockWeights(c, 42));
    storeBenchWeights(*layer);
  }
  return *layer;
}

/// At least `count` random values of std 1, generated once and grown on demand: benchmark
/// inputs are views into this pool, so no benchmark pays for generating its input.
inline const float* randomPool(Index count) {
  static std::vector<float> pool;
  if (static_cast<Index>(pool.size()) < count) {
    pool.resize(static_cast<std::size_t>(count));
    Random rng(7);
    rng.fill(pool.data(), count, 1.0f);
  }
  return pool.data();
}

// ---------------------------------------------------------------------------------------------
// Threads

inline bool haveOpenMP() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

/// Thread counts worth measuring: {1, 2} with OpenMP, else {1} (retnet is then serial and
/// Eigen does not parallelise its GEMMs either).
inline std::vector<std::int64_t> threadGrid() {
  if (haveOpenMP()) return {1, 2};
  return {1};
}

/// retnet's loops over batch x heads and Eigen's GEMMs both use `threads`.
inline void setThreads(int threads) {
  retnet::setNumThreads(threads);
  Eigen::setNbThreads(threads);
}

// ---------------------------------------------------------------------------------------------
// FLOP models (multiply-add = 2 FLOPs), per batch item

/// Retention of one head over T positions as retnet's kernel forms it
/// (detail/retention_kernel.hpp), counting the useful FLOPs of the products it runs: a score
/// q_i·k_j and its value product for each j <= i that the kernel takes from the scores (the causal
/// half: masked entries are not counted), and 2·dk·dv for each q_i·S read and each k_jᵀv_j folded
/// into S. The parallel form is one chunk of T rows, the chunkwise form chunks of `chunk`, the rows
/// of a chunk in blocks of detail::kRowBlock; a block that starts more than 2·dk rows into its
/// chunk (detail::blockViaState), and every chunk after the first, takes its earlier keys from S,
/// so the parallel form is far below the textbook T²·(dk + dv) at large T. `normalised`
/// (torchscale's normalisers, which sum |scores| over every earlier key of the chunk): such a
/// block still forms those scores. `stateIsZero`: the sequence starts from S = 0 (a prefill).
inline double retentionFlops(retnet::Form form, double T, double chunk, double dk, double dv,
                             bool normalised, bool stateIsZero = true) {
  if (form == retnet::Form::kRecurrent) return 4.0 * T * dk * dv;  // S <- γS + kᵀv, o = qS
  const auto time = static_cast<retnet::Index>(T), keyDim = static_cast<retnet::Index>(dk);
  const retnet::Index rows =
      form == retnet::Form::kParallel ? time : std::min(time, static_cast<retnet::Index>(chunk));
  // Σ_{i in [r0, r1)} (i + 1 − from): the pairs j in [from, i] of the block's rows
  const auto pairs = [](retnet::Index r0, retnet::Index r1, retnet::Index from) {
    const auto upTo = [](double n) { return n * (n + 1) / 2; };
    return upTo(static_cast<double>(r1 - from)) - upTo(static_cast<double>(r0 - from));
  };
  double flops = 0;
  for (retnet::Index start = 0; start < time; start += rows) {
    const retnet::Index c = std::min(rows, time - start);
    const bool entersWithState = start > 0 || !stateIsZero;
    retnet::Index stateRow = 0;  // the chunk's keys before it are in S
    for (retnet::Index r0 = 0; r0 < c; r0 += retnet::detail::kRowBlock) {
      const retnet::Index r1 = std::min(c, r0 + retnet::detail::kRowBlock);
      const bool viaState = retnet::detail::blockViaState(r0, keyDim);
      if (viaState) stateRow = r0;
      const retnet::Index keyBegin = viaState && !normalised ? r0 : 0;
      flops += 2.0 * dk * pairs(r0, r1, keyBegin) + 2.0 * dv * pairs(r0, r1, stateRow);
      if (stateRow > 0 || entersWithState)
        flops += 2.0 * dk * dv * static_cast<double>(r1 - r0);  // q_i·S
    }
    flops += 2.0 * dk * dv * static_cast<double>(c);  // every key folded into S once
  }
  return flops;
}

/// q, k, v, g projections and the output projection of multi-scale retention.
inline double projectionFlops(double T, double D, double V) {
  return 2.0 * T * D * (2.0 * D + 2.0 * V) + 2.0 * T * V * D;
}

/// The gated FFN: fc1 and gate (2·D·F each) and fc2 (2·F·D).
inline double ffnFlops(double T, double D, double F) { return 2.0 * T * D * 3.0 * F; }

/// Bytes of the (float) weight matrices of multi-scale retention and of a block.
inline double msrWeightBytes(const ModelConfig& c) {
  const double D = static_cast<double>(c.embed), V = static_cast<double>(c.value);
  return 4.0 * (D * (2.0 * D + 2.0 * V) + V * D);
}
inline double blockWeightBytes(const ModelConfig& c) {
  const double D = static_cast<double>(c.embed), F = static_cast<double>(c.ffn);
  return msrWeightBytes(c) + 4.0 * (3.0 * D * F + 2.0 * D);
}

// ---------------------------------------------------------------------------------------------
// Machine limits, measured in this binary

/// Seconds of CPU time consumed by the calling thread.
inline double threadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// Shortest wall time and shortest calling-thread CPU time of `run` over at least 3 runs and
/// `seconds`. The CPU time excludes the time the thread was descheduled, so on a shared machine
/// it is the better single-thread figure (it says nothing about other threads).
struct BestTimes {
  double wall = 1e300;
  double cpu = 1e300;
};
template <typename Run>
BestTimes bestTimes(Run&& run, double seconds) {
  BestTimes best;
  const auto start = std::chrono::steady_clock::now();
  for (int runs = 0;
       runs < 3 ||
       std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds;
       ++runs) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = threadCpuSeconds();
    run();
    const double c1 = threadCpuSeconds();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best.wall = std::min(best.wall, dt);
    best.cpu = std::min(best.cpu, c1 - c0);
  }
  return best;
}

/// What the build runs on: OpenMP, and whose kernels Eigen's matrix products use (retnet's own
/// with Eigen's; a BLAS library's with -DRETNET_BLAS=ON, i.e. EIGEN_USE_BLAS).
inline void addBuildContext() {
  benchmark::AddCustomContext("retnet_openmp", haveOpenMP() ? "on" : "off");
#ifdef EIGEN_USE_BLAS
  benchmark::AddCustomContext("retnet_products", "BLAS (EIGEN_USE_BLAS)");
#else
  benchmark::AddCustomContext("retnet_products", "Eigen");
#endif
  const retnet::WeightType weights = benchWeights();
  benchmark::AddCustomContext("retnet_weights", weights == retnet::WeightType::kFull
                                                    ? "f32"
                                                    : retnet::weightTypeName(weights));
  benchmark::AddCustomContext("retnet_bf16_gemm", retnet::detail::bf16GemmInUse() ? "on" : "off");
}

/// Best GFLOP/s of `product`, an n x n x n matrix product, over `seconds` at `threads` threads
/// (after one warm-up call), by wall time and by CPU time.
template <typename Product>
BestTimes cubeProductGflops(Index n, int threads, double seconds, Product&& product) {
  setThreads(threads);
  product();  // warm-up
  const BestTimes t = bestTimes(
      [&] {
        product();
        benchmark::ClobberMemory();
      },
      seconds);
  setThreads(1);
  const double gflop =
      2e-9 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  return {gflop / t.wall, gflop / t.cpu};
}

/// C = A Bᵀ with row-major n x n float matrices, the shape of every retnet projection
/// (x · Wᵀ): best GFLOP/s over `seconds`, by wall time and by CPU time.
inline BestTimes measureSgemmGflops(Index n, int threads, double seconds) {
  Random rng(3);
  Matrix a(n, n), b(n, n), c(n, n);
  rng.fill(a.data(), a.size(), 1.0f);
  rng.fill(b.data(), b.size(), 1.0f);
  // Eigen threads its own GEMM. A BLAS behind EIGEN_USE_BLAS runs one thread per call (as retnet
  // asks, docs/performance.md), so there the product is split into column blocks over retnet's
  // threads, as stages::linear runs its products.
  const auto product = [&] {
#ifdef EIGEN_USE_BLAS
    const Index blocks = 8;
    retnet::detail::parallelFor(blocks, [&](Index block, int) {
      const Index begin = n * block / blocks, width = n * (block + 1) / blocks - begin;
      c.middleCols(begin, width).noalias() = a * b.middleRows(begin, width).transpose();
    });
#else
    c.noalias() = a * b.transpose();
#endif
  };
  const BestTimes rates = cubeProductGflops(n, threads, seconds, product);
  benchmark::DoNotOptimize(c.data());
  return rates;
}

/// Σ data[i], read as 4 interleaved streams per thread (one stream reaches ~20% less
/// bandwidth here: more concurrent streams keep more misses in flight) with 16 lanes each, so
/// it stays memory-bound. With `threads` > 1 (OpenMP) each thread sums a contiguous slice.
inline float streamSum(const float* data, Index count, int threads) {
  constexpr Index kStreams = 4, kLanes = 16;
  float total = 0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
#endif
  for (int part = 0; part < threads; ++part) {
    const Index begin = count * part / threads, end = count * (part + 1) / threads;
    const Index span = (end - begin) / (kStreams * kLanes) * kLanes;  // per stream
    const float* s0 = data + begin;
    const float* s1 = s0 + span;
    const float* s2 = s1 + span;
    const float* s3 = s2 + span;
    float l0[kLanes] = {}, l1[kLanes] = {}, l2[kLanes] = {}, l3[kLanes] = {};
    for (Index i = 0; i < span; i += kLanes) {
      for (Index j = 0; j < kLanes; ++j) {
        l0[j] += s0[i + j];
        l1[j] += s1[i + j];
        l2[j] += s2[i + j];
        l3[j] += s3[i + j];
      }
    }
    float partial = 0;
    for (Index i = begin + kStreams * span; i < end; ++i) partial += data[i];
    for (Index j = 0; j < kLanes; ++j) partial += (l0[j] + l1[j]) + (l2[j] + l3[j]);
    total += partial;
  }
  return total;
}

/// a[i] = b[i] + s·c[i] (STREAM triad).
inline void streamTriad(float* a, const float* b, const float* c, float s, Index count,
                        int threads) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
  for (Index i = 0; i < count; ++i) a[i] = b[i] + s * c[i];
  (void)threads;
}

/// Elements in the 256 MiB arrays of the bandwidth baselines (far beyond the 32 MiB L3).
inline constexpr Index kStreamElements = Index(256) * 1024 * 1024 / 4;

/// y = x · Wᵀ through stages::linear with a BF16 W (n x n) and n rows of x: the BF16 GEMM's rate
/// where it runs (RETNET_ONEDNN), best GFLOP/s over `seconds`.
inline BestTimes measureBf16GemmGflops(Index n, int threads, double seconds) {
  Random rng(4);
  Matrix x(n, n), w(n, n), y(n, n);
  rng.fill(x.data(), x.size(), 1.0f);
  rng.fill(w.data(), w.size(), 1.0f);
  const retnet::LinearWeight<float> weight =
      retnet::LinearWeight<float>(w).converted(retnet::WeightType::kBf16);
  const BestTimes rates =
      cubeProductGflops(n, threads, seconds, [&] { retnet::stages::linear<float>(x, weight, y); });
  benchmark::DoNotOptimize(y.data());
  return rates;
}

/// Read bandwidth of a sum over a 256 MiB float array: best GB/s (1e9 bytes) over `seconds`,
/// by wall time and by CPU time.
inline BestTimes measureReadBandwidthGBs(int threads, double seconds) {
  std::vector<float> data(static_cast<std::size_t>(kStreamElements), 1.0f);
  const BestTimes t = bestTimes(
      [&] {
        float sum = streamSum(data.data(), kStreamElements, threads);
        benchmark::DoNotOptimize(sum);
      },
      seconds);
  const double gb = 4e-9 * static_cast<double>(kStreamElements);
  return {gb / t.wall, gb / t.cpu};
}

/// The limits every figure is divided by, indexed by thread count (1 or 2).
struct MachineLimits {
  double sgemmGflops[3] = {0, 0, 0};  // 1024³ SGEMM
  double readGBs[3] = {0, 0, 0};      // 256 MiB sum
  double sgemm(std::int64_t threads) const { return sgemmGflops[threads >= 2 ? 2 : 1]; }
  double read(std::int64_t threads) const { return readGBs[threads >= 2 ? 2 : 1]; }
};

inline MachineLimits& limits() {
  static MachineLimits l;
  return l;
}

/// Measures the limits once at startup and records them in the JSON context: by wall time
/// (what the counters are divided by) and, for one thread, by CPU time (`_cpu`, for
/// bench/plot.py --cpu-time on a shared machine).
inline void measureLimits(bool sgemm, bool bandwidth) {
  applyBf16GemmChoice();
  const double seconds = quickMode() ? 0.2 : 0.6;
  const auto record = [](const char* what, const std::string& key, const BestTimes& value,
                         int threads, const char* unit) {
    benchmark::AddCustomContext(key, std::to_string(value.wall));
    std::fprintf(stderr, "same-binary %s, %d thread(s): %.1f %s", what, threads, value.wall, unit);
    if (threads == 1) {  // the calling thread's CPU time says nothing about other threads
      benchmark::AddCustomContext(key + "_cpu", std::to_string(value.cpu));
      std::fprintf(stderr, " (by CPU time %.1f)", value.cpu);
    }
    std::fprintf(stderr, "\n");
  };
  for (std::int64_t threads : threadGrid()) {
    const auto t = static_cast<int>(threads);
    const std::string suffix = "_" + std::to_string(threads) + "t";
    if (sgemm) {
      const BestTimes g = measureSgemmGflops(1024, t, seconds);
      limits().sgemmGflops[t] = g.wall;
      record("SGEMM 1024^3", "sgemm1024_gflops" + suffix, g, t, "GFLOP/s");
      if (retnet::detail::bf16GemmInUse()) {
        const BestTimes h = measureBf16GemmGflops(1024, t, seconds);
        record("BF16 GEMM 1024^3 (oneDNN)", "bf16gemm1024_gflops" + suffix, h, t, "GFLOP/s");
      }
    }
    if (bandwidth) {
      const BestTimes r = measureReadBandwidthGBs(t, seconds);
      limits().readGBs[t] = r.wall;
      record("read bandwidth (256 MiB sum)", "read_bandwidth_gbs" + suffix, r, t, "GB/s");
    }
  }
  addBuildContext();
}

/// The main() of a suite: registers its benchmarks, measures the limits its counters divide by
/// (unless the run only lists the benchmarks) and runs them.
template <typename Register>
int runSuite(int argc, char** argv, Register&& registerBenchmarks, bool sgemm, bool bandwidth) {
  const bool listing = listingOnly(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  registerBenchmarks();
  if (!listing) measureLimits(sgemm, bandwidth);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Counters

/// tokens/s, GFLOP/s and GFLOP/s as a fraction of the same-binary SGEMM, all per wall second.
inline void setComputeCounters(benchmark::State& state, double tokensPerIteration,
                               double flopsPerIteration, std::int64_t threads) {
  using benchmark::Counter;
  state.counters["tokens/s"] = Counter(tokensPerIteration, Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = Counter(flopsPerIteration * 1e-9, Counter::kIsIterationInvariantRate);
  const double sgemm = limits().sgemm(threads);
  if (sgemm > 0) {
    state.counters["sgemm_fraction"] =
        Counter(flopsPerIteration * 1e-9 / sgemm, Counter::kIsIterationInvariantRate);
  }
}

}  // namespace retnet_bench
