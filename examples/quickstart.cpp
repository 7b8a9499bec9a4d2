// Quickstart: single-head retention in its three forms on random input. Prints how far the
// forms are from each other, how long each took, and a parallel -> recurrent state handoff.
#include <chrono>
#include <cstdio>
#include <retnet/retnet.hpp>

namespace {

using retnet::Index;
using retnet::Tensor3;

template <typename Body>
double millisecondsOf(Body&& body) {
  const auto start = std::chrono::steady_clock::now();
  body();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

double maxAbsDifference(const Tensor3<float>& a, const Tensor3<float>& b) {
  const Eigen::Tensor<float, 0, Eigen::RowMajor> m = (a - b).abs().maximum();
  return static_cast<double>(m());
}

/// Positions [begin, end) of every batch item.
Tensor3<float> positions(const Tensor3<float>& x, Index begin, Index end) {
  const Eigen::array<Index, 3> offsets{0, begin, 0};
  const Eigen::array<Index, 3> extents{x.dimension(0), end - begin, x.dimension(2)};
  return x.slice(offsets, extents);
}

}  // namespace

int main() {
  constexpr Index batch = 2, time = 2048, keyDim = 64, valueDim = 128, chunk = 128;
  Tensor3<float> q(batch, time, keyDim), k(batch, time, keyDim), v(batch, time, valueDim);
  q.setRandom();  // uniform in [0, 1)
  k.setRandom();
  v.setRandom();
  q = q * (1.0f / keyDim);  // keep q·k of order one

  const retnet::Retention<float> retention(31.0f / 32.0f);  // γ of RetNet's first head
  Tensor3<float> parallel, chunkwise, recurrent;
  const double msParallel = millisecondsOf([&] { parallel = retention.forwardParallel(q, k, v); });
  const double msChunkwise =
      millisecondsOf([&] { chunkwise = retention.forwardChunkwise(q, k, v, chunk); });
  const double msRecurrent =
      millisecondsOf([&] { recurrent = retention.forwardRecurrent(q, k, v); });

  // Prefill the first 2000 positions in parallel, then continue token by token recurrently.
  constexpr Index split = 2000;
  retnet::RetentionState<float> state;
  const Tensor3<float> prefix = retention.forwardParallel(
      positions(q, 0, split), positions(k, 0, split), positions(v, 0, split), state);
  const Tensor3<float> rest = retention.forwardRecurrent(
      positions(q, split, time), positions(k, split, time), positions(v, split, time), state);

  std::printf("retention: batch %ld, T %ld, dk %ld, dv %ld, gamma 31/32, float32, %d thread(s)\n",
              static_cast<long>(batch), static_cast<long>(time), static_cast<long>(keyDim),
              static_cast<long>(valueDim), retnet::numThreads());
  std::printf("  parallel              %8.2f ms\n", msParallel);
  std::printf("  chunkwise (C = %ld)   %8.2f ms\n", static_cast<long>(chunk), msChunkwise);
  std::printf("  recurrent             %8.2f ms\n", msRecurrent);
  std::printf("max |parallel - chunkwise|  = %.3g\n", maxAbsDifference(parallel, chunkwise));
  std::printf("max |parallel - recurrent|  = %.3g\n", maxAbsDifference(parallel, recurrent));
  std::printf("max |chunkwise - recurrent| = %.3g\n", maxAbsDifference(chunkwise, recurrent));
  std::printf("handoff (parallel on [0, %ld), recurrent on [%ld, %ld)), state at position %ld:\n",
              static_cast<long>(split), static_cast<long>(split), static_cast<long>(time),
              static_cast<long>(state.position()));
  std::printf("  max |handoff - one parallel pass| = %.3g (prefix), %.3g (rest)\n",
              maxAbsDifference(prefix, positions(parallel, 0, split)),
              maxAbsDifference(rest, positions(parallel, split, time)));
  return 0;
}
