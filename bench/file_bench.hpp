// Shared pieces of the benchmarks that time a checkpoint file end to end (bench_real_size,
// bench_rwkv4_file): a clock, list options, the streaming read bandwidth a decode step is judged
// against, summary statistics, and writing the JSON result. No Google Benchmark here: these
// programs time whole loads, prompts and decode steps themselves.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "retnet/tensor.hpp"

namespace retnet_file_bench {

using retnet::Index;
using Json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

inline double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

/// "64,256,1024" as a list of positive integers; throws std::invalid_argument otherwise.
inline std::vector<Index> parseList(const std::string& text) {
  std::vector<Index> list;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    const Index value = std::stoll(item);
    if (value < 1) throw std::invalid_argument("list entries must be >= 1: " + text);
    list.push_back(value);
  }
  if (list.empty()) throw std::invalid_argument("empty list");
  return list;
}

/// Best read bandwidth (GB/s) of a sum over `bytes` of floats, split over the OpenMP threads
/// (the same count retnet uses); pass 0 is a warm-up.
inline double readBandwidth(std::size_t bytes) {
  const auto n = static_cast<Index>(bytes / sizeof(float));
  std::vector<float> data(static_cast<std::size_t>(n), 1.0f);
  double best = 0, sink = 0;
  for (int pass = 0; pass < 5; ++pass) {
    const auto start = Clock::now();
    double total = 0;
#ifdef _OPENMP
#pragma omp parallel for reduction(+ : total) schedule(static)
#endif
    for (Index part = 0; part < 64; ++part) {
      const Index begin = part * n / 64, end = (part + 1) * n / 64;
      total += double(Eigen::Map<const Eigen::VectorXf>(data.data() + begin, end - begin).sum());
    }
    const double seconds = secondsSince(start);
    sink += total;
    if (pass > 0) best = std::max(best, double(bytes) / seconds / 1e9);
  }
  if (sink < 0) std::printf("%g\n", sink);  // keeps the sums
  return best;
}

struct Stats {
  double mean = 0, median = 0, min = 0, max = 0;
};

inline Stats stats(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
  s.median = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  s.min = v.front();
  s.max = v.back();
  return s;
}

inline Json statsJson(const Stats& s, double scale) {
  return Json{{"mean", s.mean * scale},
              {"median", s.median * scale},
              {"min", s.min * scale},
              {"max", s.max * scale}};
}

/// The result: printed when `path` is empty, else written there. Returns the exit status.
inline int writeResult(const Json& result, const std::string& path) {
  const std::string text = result.dump(2);
  if (path.empty()) {
    std::printf("\n%s\n", text.c_str());
    return 0;
  }
  std::ofstream out(path, std::ios::trunc);
  out << text << "\n";
  if (!out) {
    std::cerr << path << ": write failed\n";
    return 1;
  }
  return 0;
}

/// main's body: `run()`'s status, or 1 with the message of anything it throws.
template <typename Run>
int guardedMain(const char* program, Run&& run) {
  try {
    return run();
  } catch (const std::exception& e) {
    std::cerr << program << ": " << e.what() << "\n";
    return 1;
  }
}

}  // namespace retnet_file_bench
