// An RWKV-4 checkpoint file (BlinkDL's .pth or a .safetensors) loaded with
// retnet::io::loadModel<Rwkv4Model<float>>, then prefill and decode timed: retnet's side of the
// comparison with rwkv.cpp (bench/rwkv_cpp.sh, whose C driver bench/rwkv_cpp_driver.c prints the
// same JSON for rwkv.cpp).
//
//   bench_rwkv4_file FILE [--threads N] [--kind prefill|loop|decode|check] [--lengths 64,256,1024]
//                         [--decode-steps 64] [--min-seconds 0.5] [--json OUT] [--logits OUT]
//
// --kind prefill: tokens/s of prefill() from the empty state, last logits only, for each T in
//   the chunkwise form (chunk 16 and 64) and the recurrent form (projections as GEMMs over the
//   prompt, WKV token by token);
// --kind loop: tokens/s of T separate decode() calls (what a token-serial runtime does; every
//   call computes its logits, as decode() always does);
// --kind decode: ms/token of decode() at batch 1 after a 16-token prefill, each of
//   --decode-steps steps timed alone (median, min, mean, max), and the read bandwidth of a
//   256 MiB sum with the same threads;
// --kind check: no timing; the logits of prefill(64 tokens, chunk 16) and of one decode step
//   after it are written to --logits (2 x vocab float32) for comparison with rwkv.cpp's.
//
// Each (way, T) is run once untimed, then timed until --min-seconds have passed (at most 5
// runs); the best run counts. Prompts: token t is (7919 t + 13) mod vocab, the same in the C
// driver. Threads: retnet::setNumThreads and Eigen::setNbThreads.
#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "file_bench.hpp"
#include "retnet/io/load_model.hpp"
#include "retnet/rwkv4.hpp"

namespace {

using retnet::Index;
using retnet_file_bench::Json;
using retnet_file_bench::secondsSince;
using Model = retnet::Rwkv4Model<float>;
using retnet_file_bench::Clock;

struct Options {
  std::string file;
  int threads = 1;
  std::string kind = "prefill";
  std::vector<Index> lengths = {64, 256, 1024};
  int decodeSteps = 64;
  double minSeconds = 0.5;
  std::string json;
  std::string logits;
};

[[noreturn]] void usage(const std::string& message) {
  std::cerr << "error: " << message << "\n"
            << "usage: bench_rwkv4_file FILE [--threads N] [--kind prefill|loop|decode|check]\n"
               "         [--lengths 64,256,1024] [--decode-steps 64] [--min-seconds 0.5]\n"
               "         [--json OUT] [--logits OUT]\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage("missing value after " + arg);
      return argv[++i];
    };
    if (arg == "--threads") {
      o.threads = std::max(1, std::stoi(next()));
    } else if (arg == "--kind") {
      o.kind = next();
      if (o.kind != "prefill" && o.kind != "loop" && o.kind != "decode" && o.kind != "check")
        usage("unknown kind " + o.kind);
    } else if (arg == "--lengths") {
      o.lengths = retnet_file_bench::parseList(next());
    } else if (arg == "--decode-steps") {
      o.decodeSteps = std::max(1, std::stoi(next()));
    } else if (arg == "--min-seconds") {
      o.minSeconds = std::stod(next());
    } else if (arg == "--json") {
      o.json = next();
    } else if (arg == "--logits") {
      o.logits = next();
    } else if (!arg.empty() && arg[0] == '-') {
      usage("unknown option " + arg);
    } else if (o.file.empty()) {
      o.file = arg;
    } else {
      usage("more than one file given");
    }
  }
  if (o.file.empty()) usage("no checkpoint file given");
  return o;
}

/// Token t of every prompt (the C driver uses the same formula).
retnet::TokenMatrix promptOf(Index T, Index vocab) {
  retnet::TokenMatrix tokens(1, T);
  for (Index t = 0; t < T; ++t) tokens(0, t) = (t * 7919 + 13) % vocab;
  return tokens;
}

/// Shortest time of `run` after one untimed run: timed until `minSeconds` have passed, at least
/// once and at most 5 times.
template <typename Run>
double bestSeconds(Run&& run, double minSeconds) {
  run();
  double best = 1e300, total = 0;
  for (int runs = 0; runs < 5 && (runs == 0 || total < minSeconds); ++runs) {
    const auto start = Clock::now();
    run();
    const double seconds = secondsSince(start);
    best = std::min(best, seconds);
    total += seconds;
  }
  return best;
}

Json prefillRow(const char* way, Index T, double seconds) {
  return Json{
      {"way", way}, {"T", T}, {"seconds", seconds}, {"tokens_per_second", double(T) / seconds}};
}

int run(const Options& o) {
  retnet::setNumThreads(o.threads);
  Eigen::setNbThreads(o.threads);
  Json result;
  result["side"] = "retnet";
  result["file"] = o.file;
  result["kind"] = o.kind;
  result["threads"] = retnet::numThreads();

  const auto loadStart = Clock::now();
  const Model model = retnet::io::loadModel<Model>(o.file);
  result["load_seconds"] = secondsSince(loadStart);
  const retnet::Rwkv4ModelConfig& c = model.config();
  result["model"] = Json{{"layers", c.layers},
                         {"embed", c.block.embedDim},
                         {"ffn", c.block.ffnDim},
                         {"vocab", c.vocab}};
  std::fprintf(stderr, "retnet: %s, L %lld C %lld F %lld V %lld, %d thread(s), %s\n",
               o.file.c_str(), static_cast<long long>(c.layers),
               static_cast<long long>(c.block.embedDim), static_cast<long long>(c.block.ffnDim),
               static_cast<long long>(c.vocab), retnet::numThreads(), o.kind.c_str());

  retnet::RowMatrix<float> logits;
  Model::Scratch scratch;
  if (o.kind == "prefill" || o.kind == "loop") {
    Json rows = Json::array();
    // Every T of --lengths through `feed(tokens, state)` from the empty state.
    const auto time = [&](const char* way, const auto& feed) {
      for (const Index T : o.lengths) {
        const retnet::TokenMatrix tokens = promptOf(T, c.vocab);
        const double seconds = bestSeconds(
            [&] {
              retnet::Rwkv4ModelState<float> state;
              feed(tokens, state);
            },
            o.minSeconds);
        rows.push_back(prefillRow(way, T, seconds));
        std::fprintf(stderr, "  %-12s T %5lld  %9.1f tokens/s\n", way, static_cast<long long>(T),
                     double(T) / seconds);
      }
    };
    const auto prefill = [&](Index chunk, retnet::Form form) {
      return [&, chunk, form](const retnet::TokenMatrix& tokens,
                              retnet::Rwkv4ModelState<float>& state) {
        logits = model.prefill(tokens, state, chunk, form);
      };
    };
    if (o.kind == "prefill") {
      time("chunkwise16", prefill(16, retnet::Form::kChunkwise));
      time("chunkwise64", prefill(64, retnet::Form::kChunkwise));
      time("recurrent", prefill(16, retnet::Form::kRecurrent));
    } else {
      time("decode_loop",
           [&](const retnet::TokenMatrix& tokens, retnet::Rwkv4ModelState<float>& state) {
             for (Index t = 0; t < tokens.cols(); ++t)
               model.decode({tokens(0, t)}, state, logits, scratch);
           });
    }
    result["prefill"] = rows;
  } else if (o.kind == "decode") {
    result["read_bandwidth_gbs"] = retnet_file_bench::readBandwidth(std::size_t{256} << 20);
    retnet::Rwkv4ModelState<float> state;
    logits = model.prefill(promptOf(16, c.vocab), state, 16);
    std::int64_t token = 1;
    std::vector<double> ms;
    for (int step = -4; step < o.decodeSteps; ++step) {  // 4 untimed steps first
      const auto start = Clock::now();
      model.decode({token}, state, logits, scratch);
      if (step >= 0) ms.push_back(1e3 * secondsSince(start));
      token = (token * 31 + 7) % c.vocab;
    }
    const retnet_file_bench::Stats s = retnet_file_bench::stats(ms);
    result["decode"] =
        Json{{"steps", ms.size()}, {"ms_per_token", retnet_file_bench::statsJson(s, 1.0)}};
    const double median = s.median;
    const std::size_t n = ms.size();
    std::fprintf(stderr, "  decode %.2f ms/token (median of %zu; read bandwidth %.1f GB/s)\n",
                 median, n, result["read_bandwidth_gbs"].get<double>());
  } else {  // check
    retnet::Rwkv4ModelState<float> state;
    retnet::RowMatrix<float> both(2, c.vocab);
    both.row(0) = model.prefill(promptOf(64, c.vocab), state, 16).row(0);
    model.decode({1}, state, logits, scratch);
    both.row(1) = logits.row(0);
    if (o.logits.empty()) usage("--kind check needs --logits OUT");
    std::ofstream out(o.logits, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(both.data()),
              static_cast<std::streamsize>(both.size() * sizeof(float)));
    if (!out) {
      std::cerr << o.logits << ": write failed\n";
      return 1;
    }
  }

  return retnet_file_bench::writeResult(result, o.json);
}

}  // namespace

int main(int argc, char** argv) {
  return retnet_file_bench::guardedMain("bench_rwkv4_file", [&] { return run(parse(argc, argv)); });
}
