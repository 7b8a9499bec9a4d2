// The machine's limits as this build sees them: Eigen SGEMM (the kernel behind every retnet
// projection, C = A·Bᵀ with row-major operands), Eigen SGEMV (the kernel behind every decode
// projection), and streaming bandwidth over 256 MiB arrays (a sum, which only reads, and the
// STREAM triad a = b + s·c), and the products of the forms at their real shapes
// (baseline/product/*, one thread). Arguments: n (matrix size), thr (threads; 2 only with OpenMP,
// and Eigen parallelises GEMM but not GEMV). With RETNET_BLAS the products are the BLAS's.
#include <cstdint>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace retnet_bench {
namespace {

using Values = std::vector<std::int64_t>;

void setGemmCounters(benchmark::State& state, double flopsPerIteration) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(flopsPerIteration * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void benchSgemm(benchmark::State& state) {
  const Index n = state.range(0);
  const std::int64_t threads = state.range(1);
  setThreads(static_cast<int>(threads));
  Random rng(1);
  Matrix a(n, n), b(n, n), c(n, n);
  rng.fill(a.data(), a.size(), 1.0f);
  rng.fill(b.data(), b.size(), 1.0f);
  for (auto _ : state) {
    c.noalias() = a * b.transpose();
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  const double flops =
      2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  setGemmCounters(state, flops);
  setThreads(1);
}

/// The products the forms run, one thread each (retnet calls every product inside one task of its
/// own split): config A's and B's projections over a 1024-row slab and the chunkwise form's
/// per-chunk products at C = 128. Row-major operands as retnet holds them; op = "abt" is A·Bᵀ
/// (x·Wᵀ, q·kᵀ), "ab" is A·B, "atb" is Aᵀ·B (the state update kᵀ·v). With RETNET_BLAS these run
/// in the BLAS, so two builds compare Eigen and the BLAS on the same shapes.
struct ProductShape {
  const char* name;
  Index m, n, k;
  const char* op;
};
constexpr ProductShape kProductShapes[] = {
    {"A_qkvg_proj", 1024, 6144, 1024, "abt"}, {"A_out_proj", 1024, 1024, 2048, "abt"},
    {"A_chunk_qk", 128, 128, 256, "abt"},     {"A_chunk_sv", 128, 512, 128, "ab"},
    {"A_chunk_qS", 128, 512, 256, "ab"},      {"A_chunk_kv", 256, 512, 128, "atb"},
    {"B_qkvg_proj", 1024, 3072, 512, "abt"},  {"B_out_proj", 1024, 512, 1024, "abt"},
    {"B_chunk_qk", 128, 128, 64, "abt"},      {"B_chunk_sv", 128, 128, 128, "ab"},
    {"B_chunk_qS", 128, 128, 64, "ab"},       {"B_chunk_kv", 64, 128, 128, "atb"},
};

void benchProductShape(benchmark::State& state, ProductShape shape) {
  setThreads(1);
  const std::string op = shape.op;
  Random rng(4);
  Matrix a = op == "atb" ? Matrix(shape.k, shape.m) : Matrix(shape.m, shape.k);
  Matrix b = op == "abt" ? Matrix(shape.n, shape.k) : Matrix(shape.k, shape.n);
  Matrix c(shape.m, shape.n);
  rng.fill(a.data(), a.size(), 1.0f);
  rng.fill(b.data(), b.size(), 1.0f);
  for (auto _ : state) {
    if (op == "abt") {
      c.noalias() = a * b.transpose();
    } else if (op == "ab") {
      c.noalias() = a * b;
    } else {
      c.noalias() = a.transpose() * b;
    }
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * static_cast<double>(shape.m) * static_cast<double>(shape.n) *
                       static_cast<double>(shape.k);
  setGemmCounters(state, flops);
}

/// y = W x with a row-major (n, n) W: a decode projection; n = 4096 is 64 MiB of weights.
void benchSgemv(benchmark::State& state) {
  const Index n = state.range(0);
  Random rng(2);
  Matrix w(n, n);
  VectorF x(n), y(n);
  rng.fill(w.data(), w.size(), 1.0f);
  rng.fill(x.data(), x.size(), 1.0f);
  for (auto _ : state) {
    y.noalias() = w * x;
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double bytes = 4.0 * static_cast<double>(n) * static_cast<double>(n);
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes) *
                          static_cast<std::int64_t>(state.iterations()));
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * bytes / 4.0 * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void benchReadBandwidth(benchmark::State& state) {
  const auto threads = static_cast<int>(state.range(0));
  std::vector<float> data(static_cast<std::size_t>(kStreamElements), 1.0f);
  for (auto _ : state) {
    float sum = streamSum(data.data(), kStreamElements, threads);
    benchmark::DoNotOptimize(sum);
  }
  state.SetBytesProcessed(4 * kStreamElements * static_cast<std::int64_t>(state.iterations()));
}

void benchTriad(benchmark::State& state) {
  const auto threads = static_cast<int>(state.range(0));
  std::vector<float> a(static_cast<std::size_t>(kStreamElements), 0.0f);
  std::vector<float> b(static_cast<std::size_t>(kStreamElements), 1.0f);
  std::vector<float> c(static_cast<std::size_t>(kStreamElements), 2.0f);
  for (auto _ : state) {
    streamTriad(a.data(), b.data(), c.data(), 3.0f, kStreamElements, threads);
    benchmark::DoNotOptimize(a.data());
    benchmark::ClobberMemory();
  }
  // STREAM convention: 3 arrays moved (write-allocate traffic not counted).
  state.SetBytesProcessed(3 * 4 * kStreamElements * static_cast<std::int64_t>(state.iterations()));
}

void registerBaselines() {
  const Values threads = threadGrid();
  const Values sizes = quickMode() ? Values{512, 1024} : Values{512, 1024, 2048};
  benchmark::RegisterBenchmark("baseline/sgemm", benchSgemm)
      ->ArgNames({"n", "thr"})
      ->ArgsProduct({sizes, threads})
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  for (const ProductShape& shape : kProductShapes) {
    benchmark::RegisterBenchmark((std::string("baseline/product/") + shape.name).c_str(),
                                 benchProductShape, shape)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  }
  benchmark::RegisterBenchmark("baseline/sgemv", benchSgemv)
      ->ArgNames({"n"})
      ->ArgsProduct({{1024, 4096}})
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("baseline/read_sum", benchReadBandwidth)
      ->ArgNames({"thr"})
      ->ArgsProduct({threads})
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("baseline/triad", benchTriad)
      ->ArgNames({"thr"})
      ->ArgsProduct({threads})
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

}  // namespace
}  // namespace retnet_bench

int main(int argc, char** argv) {
  using namespace retnet_bench;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  registerBaselines();
  addBuildContext();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
