// What both sides of bench/ggml.sh share (retnet's bench_ggml_ops.cpp and ggml's
// ggml_driver.cpp): the cases at the fla-hub retnet-1.3B shape, the deterministic inputs, the
// command line, the timing rule and the JSON a run writes. Standard library only, so that the
// ggml driver compiles without retnet and retnet's side without ggml.
//
//   BIN --kind linear|gla|check [--type f32|bf16|int8] [--threads N] [--min-seconds S]
//       [--min-bytes B] [--layers L] [--json OUT] [--check-dir DIR]
//
// --kind linear: y = W x for one row x (a decode step) and each weight of one layer
// (`kLinearCases`)
//   stored as --type (int8: retnet's kInt8 against ggml's Q8_0). Enough copies of W to hold
//   --min-bytes of stored weights (default 768 MB, three times the 260 MB L3 of the benchmark VM)
//   are used in turn, so W streams from memory as in a model's decode.
// --kind gla: the retention op of all 8 heads (state 8 x 256 x 512 float32) for T = 1 (decode) and
//   T = 64 (a prompt) over --layers distinct states (default 24, the model's layers), in turn.
// --kind check: no timing; every case's outputs on fixed inputs are written to --check-dir as
//   float64 files, for bench/ggml.sh to compare.
//
// Timing: one untimed pass over the copies (or layers), then passes until --min-seconds have
// passed (at least three); a pass's time over its op count is the time of one op; the best and
// the median pass are reported.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace ggml_compare {

/// One dense weight of a layer, (out x in), as retnet stores it (q, k, v, g stacked; MLP gate
/// and up stacked): fla-hub retnet-1.3B, hidden 2048, value 4096, MLP intermediate 2816.
struct LinearCase {
  const char* name;
  std::int64_t out, in;
};
inline const std::vector<LinearCase> kLinearCases = {
    {"qkvg", 2048 + 2048 + 4096 + 4096, 2048},  // MSR input projection
    {"o", 2048, 4096},                          // MSR output projection
    {"ffn_in", 2 * 2816, 2048},                 // MLP gate | up
    {"ffn_out", 2048, 2816},                    // MLP down
};

/// The retention shape: heads, dk, dv (fla-hub 1.3B: expand_k 1, expand_v 2), the prompt length
/// of the multi-token case and the per-head decay γ_h = 1 − 2^(−5−h) (RetNet's).
inline constexpr std::int64_t kHeads = 8, kKeyDim = 256, kValueDim = 512, kPromptTokens = 64;
inline double headDecay(std::int64_t h) { return 1.0 - std::ldexp(1.0, -5 - static_cast<int>(h)); }
inline const std::vector<std::int64_t> kGlaTokens = {1, kPromptTokens};

/// A value in [−1, 1) that depends only on (seed, index): splitmix64, top 24 bits.
inline float benchValue(std::uint64_t seed, std::uint64_t index) {
  std::uint64_t z = seed * 0x9E3779B97F4A7C15ull + index + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(static_cast<double>(z >> 40) * 0x1p-23 - 1.0);
}

/// W of a case (out x in, row-major), uniform with standard deviation 1/sqrt(in).
inline std::vector<float> caseWeight(std::size_t caseIndex, std::int64_t out, std::int64_t in) {
  std::vector<float> w(static_cast<std::size_t>(out * in));
  const float a = static_cast<float>(std::sqrt(3.0 / static_cast<double>(in)));
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = a * benchValue(100 + caseIndex, i);
  return w;
}
/// The input row x (in), uniform in [−1, 1).
inline std::vector<float> caseInput(std::size_t caseIndex, std::int64_t in) {
  std::vector<float> x(static_cast<std::size_t>(in));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = benchValue(200 + caseIndex, i);
  return x;
}

/// The retention inputs of T tokens in retnet's layout: q (T x H·dk), k (T x H·dk),
/// v (T x H·dv), uniform in [−1, 1); the scale dk^(−1/2) multiplies q·k.
struct GlaInputs {
  std::vector<float> q, k, v;
};
inline GlaInputs glaInputs(std::int64_t T) {
  GlaInputs in;
  const auto qk = static_cast<std::size_t>(T * kHeads * kKeyDim);
  in.q.resize(qk);
  in.k.resize(qk);
  in.v.resize(static_cast<std::size_t>(T * kHeads * kValueDim));
  for (std::size_t i = 0; i < qk; ++i) in.q[i] = benchValue(301, i);
  for (std::size_t i = 0; i < qk; ++i) in.k[i] = benchValue(302, i);
  for (std::size_t i = 0; i < in.v.size(); ++i) in.v[i] = benchValue(303, i);
  return in;
}
inline float glaScale() { return 1.0f / std::sqrt(static_cast<float>(kKeyDim)); }
/// The state before the first token, S_h[i][j] (H x dk x dv), as a decode meets it.
inline float glaInitialState(std::int64_t h, std::int64_t i, std::int64_t j) {
  return 4.0f * benchValue(304, static_cast<std::uint64_t>((h * kKeyDim + i) * kValueDim + j));
}

struct Options {
  std::string kind = "linear", type = "int8", json, checkDir;
  int threads = 1;
  double minSeconds = 1.0, minBytes = 768e6;
  int layers = 24;
};

[[noreturn]] inline void usage(const char* program, const std::string& message) {
  std::fprintf(stderr,
               "error: %s\nusage: %s --kind linear|gla|check [--type f32|bf16|int8] "
               "[--threads N] [--min-seconds S] [--min-bytes B] [--layers L] [--json OUT] "
               "[--check-dir DIR]\n",
               message.c_str(), program);
  std::exit(2);
}

inline Options parseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) usage(argv[0], "missing value after " + arg);
    const std::string value = argv[++i];
    if (arg == "--kind") {
      o.kind = value;
    } else if (arg == "--type") {
      o.type = value;
    } else if (arg == "--threads") {
      o.threads = std::max(1, std::atoi(value.c_str()));
    } else if (arg == "--min-seconds") {
      o.minSeconds = std::atof(value.c_str());
    } else if (arg == "--min-bytes") {
      o.minBytes = std::atof(value.c_str());
    } else if (arg == "--layers") {
      o.layers = std::max(1, std::atoi(value.c_str()));
    } else if (arg == "--json") {
      o.json = value;
    } else if (arg == "--check-dir") {
      o.checkDir = value;
    } else {
      usage(argv[0], "unknown option " + arg);
    }
  }
  if (o.kind != "linear" && o.kind != "gla" && o.kind != "check") usage(argv[0], "unknown kind");
  if (o.type != "f32" && o.type != "bf16" && o.type != "int8") usage(argv[0], "unknown type");
  if (o.kind == "check" && o.checkDir.empty()) usage(argv[0], "--kind check needs --check-dir");
  return o;
}

/// Seconds of one op: `pass` runs `ops` ops; best and median over the timed passes.
struct OpTime {
  double best = 0, median = 0;
  int passes = 0;
};
inline OpTime timePasses(const std::function<void()>& pass, int ops, double minSeconds) {
  using Clock = std::chrono::steady_clock;
  pass();  // untimed: first touches, thread start-up
  std::vector<double> times;
  double total = 0;
  while (times.size() < 3 || total < minSeconds) {
    const auto start = Clock::now();
    pass();
    const double t = std::chrono::duration<double>(Clock::now() - start).count();
    times.push_back(t / ops);
    total += t;
  }
  std::sort(times.begin(), times.end());
  return {times.front(), times[times.size() / 2], static_cast<int>(times.size())};
}

/// Copies of a weight of `storedBytes` bytes that hold at least `minBytes` (at least 2).
inline int copiesFor(double storedBytes, double minBytes) {
  return std::max(2, static_cast<int>(std::ceil(minBytes / storedBytes)));
}

/// One measured case, a row of the JSON.
struct Row {
  std::string op, type, name, way;  // op "linear" | "gla"; way: how the side computes it
  std::int64_t out = 0, in = 0, tokens = 0, count = 0;  // count: copies or layers cycled
  double storedBytes = 0;                               // linear: W as stored, one copy
  OpTime time;
};

/// The run as JSON: the side, its settings, `members` (more "key": value pairs, each followed by
/// a comma, or nothing) and every row.
inline void writeJson(const std::string& path, const std::string& side, const Options& o,
                      const std::string& members, const std::vector<Row>& rows) {
  if (path.empty()) return;
  std::ofstream f(path);
  f << "{\n  \"side\": \"" << side << "\",\n  \"threads\": " << o.threads << ",\n  " << members
    << "\"rows\": [\n";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    char line[512];
    std::snprintf(line, sizeof line,
                  "    {\"op\": \"%s\", \"type\": \"%s\", \"name\": \"%s\", \"way\": \"%s\", "
                  "\"out\": %lld, \"in\": %lld, \"tokens\": %lld, \"count\": %lld, "
                  "\"stored_bytes\": %.0f, \"seconds_best\": %.9g, \"seconds_median\": %.9g, "
                  "\"passes\": %d}%s\n",
                  r.op.c_str(), r.type.c_str(), r.name.c_str(), r.way.c_str(),
                  static_cast<long long>(r.out), static_cast<long long>(r.in),
                  static_cast<long long>(r.tokens), static_cast<long long>(r.count), r.storedBytes,
                  r.time.best, r.time.median, r.time.passes, i + 1 < rows.size() ? "," : "");
    f << line;
  }
  f << "  ]\n}\n";
  if (!f) throw std::runtime_error("cannot write " + path);
}

/// `count` values as float64, to DIR/NAME.f64 (what bench/ggml.sh compares).
template <typename T>
void writeValues(const Options& o, const std::string& name, const T* values, std::size_t count) {
  std::vector<double> d(values, values + count);
  std::ofstream f(o.checkDir + "/" + name + ".f64", std::ios::binary);
  f.write(reinterpret_cast<const char*>(d.data()),
          static_cast<std::streamsize>(d.size() * sizeof(double)));
  if (!f) throw std::runtime_error("cannot write " + o.checkDir + "/" + name + ".f64");
}

}  // namespace ggml_compare
