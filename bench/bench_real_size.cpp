// A real-size model in one process: retnet::io::loadModel<float> on a checkpoint directory (e.g.
// the fla-hub retnet-1.3B layout written by make_fla_checkpoint), then prefill and decode speed.
//
//   bench_real_size DIR [--mode load|speed|all] [--cold] [--no-map] [--threads N]
//                       [--lengths 512,2048] [--chunks 64,128,256] [--reps N] [--decode-prompt 128]
//                       [--decode-steps 32] [--breakdown-steps 4] [--batches 1,4,16,64]
//                       [--weights f32|bf16|f16|int8] [--bf16-gemm never|fast|wherever]
//                       [--json FILE]
//
// --no-map: weights kept in the file's type are read into owned memory (LoadOptions::map = false)
// instead of used in place in the mapped file.
// --weights: how the dense weights are stored (io::LoadOptions); memory and streamed-bytes
// figures are then those of the stored bytes. --bf16-gemm: when BF16 weights' prefill products
// run as BF16 GEMMs (retnet::setBf16Gemm; a build with RETNET_ONEDNN, else never). --batches:
// batched decoding, B sequences per step (tokens/s over all of them).
//
// --mode load: the load only (time, peak resident memory against the converted weights), so
// that the peak is the load's and nothing else's, then (after those figures are taken) where its
// time goes: the file read alone, BF16 -> float per element; --mode speed: load, then prefill
// throughput for every (T, chunk) and decode latency; all (default): both. --cold evicts the weight
// files from the page cache (fdatasync + POSIX_FADV_DONTNEED) before loading. Threads:
// OMP_NUM_THREADS or --threads (retnet::setNumThreads and Eigen's). Prints a table and JSON (to
// FILE or stdout).
//
// Memory figures: ru_maxrss (getrusage, KiB) and VmHWM / VmRSS (/proc/self/status), in bytes in
// the JSON and GB = 1e9 bytes in the table. Converted weights = parameters (from the
// safetensors headers, checked against the configuration) x sizeof(float).
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "file_bench.hpp"
#include "retnet/io/load_model.hpp"
#include "retnet/retnet.hpp"

namespace {

using retnet::Index;
using retnet_file_bench::Json;
using retnet_file_bench::parseList;
using retnet_file_bench::readBandwidth;
using retnet_file_bench::secondsSince;
using retnet_file_bench::stats;
using retnet_file_bench::Stats;
using retnet_file_bench::statsJson;
using Model = retnet::RetNetModel<float>;
using retnet_file_bench::Clock;

/// CPU time of the whole process (every thread), seconds: on a shared machine, a one-thread
/// figure by CPU time excludes the time the process was descheduled.
double processCpuSeconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

struct Options {
  std::string dir;
  std::string mode = "all";
  bool cold = false;
  bool map = true;
  int threads = 0;  // 0: OMP_NUM_THREADS / the OpenMP default
  std::vector<Index> lengths = {512, 2048};
  std::vector<Index> chunks = {64, 128, 256};
  int reps = 1;
  Index decodePrompt = 128;
  int decodeSteps = 32;
  int breakdownSteps = 4;
  std::vector<Index> batches = {1, 4, 16, 64};
  retnet::WeightType weights = retnet::WeightType::kFull;
  retnet::Bf16Gemm bf16Gemm = retnet::bf16GemmChoice();
  std::string json;
};

[[noreturn]] void usage(const std::string& message) {
  std::cerr
      << "error: " << message << "\n"
      << "usage: bench_real_size DIR [--mode load|speed|all] [--cold] [--no-map] [--threads N]\n"
         "         [--lengths 512,2048] [--chunks 64,128,256] [--reps N]\n"
         "         [--decode-prompt 128] [--decode-steps 32] [--breakdown-steps 4]\n"
         "         [--batches 1,4,16,64] [--weights f32|bf16|f16|int8]\n"
         "         [--bf16-gemm never|fast|wherever] [--json FILE]\n";
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
    if (arg == "--mode") {
      o.mode = next();
      if (o.mode != "load" && o.mode != "speed" && o.mode != "all") usage("unknown mode " + o.mode);
    } else if (arg == "--cold") {
      o.cold = true;
    } else if (arg == "--no-map") {
      o.map = false;
    } else if (arg == "--threads") {
      o.threads = std::stoi(next());
    } else if (arg == "--lengths") {
      o.lengths = parseList(next());
    } else if (arg == "--chunks") {
      o.chunks = parseList(next());
    } else if (arg == "--reps") {
      o.reps = std::max(1, std::stoi(next()));
    } else if (arg == "--decode-prompt") {
      o.decodePrompt = std::max<Index>(1, std::stoll(next()));
    } else if (arg == "--decode-steps") {
      o.decodeSteps = std::max(1, std::stoi(next()));
    } else if (arg == "--breakdown-steps") {
      o.breakdownSteps = std::max(0, std::stoi(next()));
    } else if (arg == "--batches") {
      o.batches = parseList(next());
    } else if (arg == "--weights") {
      const std::string name = next();
      const auto type = retnet::weightTypeFromName(name);
      if (!type) usage("unknown weight type " + name);
      o.weights = *type;
    } else if (arg == "--bf16-gemm") {
      const std::string name = next();
      if (name == "never") {
        o.bf16Gemm = retnet::Bf16Gemm::kNever;
      } else if (name == "fast") {
        o.bf16Gemm = retnet::Bf16Gemm::kWhereFast;
      } else if (name == "wherever") {
        o.bf16Gemm = retnet::Bf16Gemm::kWherever;
      } else {
        usage("unknown --bf16-gemm " + name);
      }
    } else if (arg == "--json") {
      o.json = next();
    } else if (!arg.empty() && arg[0] == '-') {
      usage("unknown option " + arg);
    } else if (o.dir.empty()) {
      o.dir = arg;
    } else {
      usage("more than one directory given");
    }
  }
  if (o.dir.empty()) usage("no checkpoint directory given");
  return o;
}

// ---------------------------------------------------------------------------------------------
// Memory

/// A "Vm…:  N kB" line of /proc/self/status, in bytes (-1 if absent).
std::int64_t procStatusBytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size() + 1, key + ":") == 0) {
      return std::stoll(line.substr(key.size() + 1)) * 1024;
    }
  }
  return -1;
}

Json memoryJson() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  Json m;
  m["ru_maxrss_bytes"] = static_cast<std::int64_t>(usage.ru_maxrss) * 1024;  // KiB on Linux
  m["vm_hwm_bytes"] = procStatusBytes("VmHWM");
  m["vm_rss_bytes"] = procStatusBytes("VmRSS");
  return m;
}

/// Drops the file's pages from the page cache (written back first, so they are clean).
bool evictFromPageCache(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return false;
  const bool ok = fdatasync(fd) == 0 && posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0;
  close(fd);
  return ok;
}

// ---------------------------------------------------------------------------------------------
// Sizes

/// Parameters of the model `c` describes (what loadModel converts).
Index parameterCount(const retnet::RetNetModelConfig& c) {
  const retnet::MultiScaleRetentionConfig r = c.block.retention();
  const Index d = c.block.embedDim, I = c.block.ffnDim, dk = r.keyDim(), dv = r.headValueDim();
  const Index H = r.heads, Hkv = r.keyValueHeads();
  const Index perLayer =
      2 * d + H * dk * d + Hkv * dk * d + Hkv * dv * d + 2 * H * dv * d + dv + 3 * I * d;
  return c.vocab * d * (c.tiedEmbedding ? 1 : 2) + (c.embedNorm ? d : 0) + d + c.layers * perLayer;
}

struct FileSizes {
  Index parameters = 0;
  std::int64_t bytes = 0;
  std::vector<std::string> paths;
};

FileSizes fileSizes(const std::string& dir) {
  FileSizes sizes;
  const retnet::io::WeightFiles files = retnet::io::WeightFiles::open(dir);
  for (const std::string& name : files.names()) sizes.parameters += files.info(name).numel();
  for (const auto& file : files.files()) {
    sizes.paths.push_back(file->displayName());  // the path, for a file opened from disk
    sizes.bytes += static_cast<std::int64_t>(std::filesystem::file_size(file->displayName()));
  }
  return sizes;
}

// ---------------------------------------------------------------------------------------------
// Where a load's time goes

/// Seconds to read the files sequentially in 1 MiB pieces, as the reader does (no conversion).
double rawReadSeconds(const std::vector<std::string>& paths) {
  std::vector<char> piece(std::size_t{1} << 20);
  const auto start = Clock::now();
  std::size_t checksum = 0;
  for (const std::string& path : paths) {
    std::ifstream in(path, std::ios::binary);
    while (in.read(piece.data(), static_cast<std::streamsize>(piece.size())) || in.gcount() > 0) {
      checksum += static_cast<unsigned char>(piece[0]);
      if (in.eof()) break;
    }
  }
  const double seconds = secondsSince(start);
  if (checksum == 1) std::printf(" ");  // keeps the reads
  return seconds;
}

/// Nanoseconds per element of BF16 -> float with the reader's codec (retnet::io::detail::
/// bfloat16ToFloat, the upper half of a float's bits) and with the generic decoder
/// (bfloat16ToDouble: ldexp per element, what the reader used before 45400af).
std::pair<double, double> bf16NanosecondsPerElement() {
  const std::size_t n = std::size_t{1} << 24;
  std::vector<unsigned char> bytes(2 * n);
  std::mt19937_64 rng(3);
  for (auto& b : bytes) b = static_cast<unsigned char>(rng() & 0x7F);  // finite values
  std::vector<float> fast(n), generic(n);
  auto start = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    fast[i] = retnet::io::detail::bfloat16ToFloat(
        retnet::io::detail::loadLittleEndian<std::uint16_t>(bytes.data() + 2 * i));
  }
  const double reader = secondsSince(start) / double(n) * 1e9;
  start = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    generic[i] = static_cast<float>(retnet::io::detail::bfloat16ToDouble(
        retnet::io::detail::loadLittleEndian<std::uint16_t>(bytes.data() + 2 * i)));
  }
  const double decoder = secondsSince(start) / double(n) * 1e9;
  if (std::memcmp(fast.data(), generic.data(), n * sizeof(float)) != 0)
    std::printf("warning: bfloat16ToFloat and bfloat16ToDouble disagree\n");
  return {reader, decoder};
}

// ---------------------------------------------------------------------------------------------
// Measurements

retnet::TokenMatrix randomTokens(Index count, Index vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int64_t> id(0, vocab - 1);
  retnet::TokenMatrix tokens(1, count);
  for (Index t = 0; t < count; ++t) tokens(0, t) = t == 0 ? 1 : id(rng);  // bos first
  return tokens;
}

/// Largest |a - b| over largest |b|.
double relativeDifference(const retnet::RowMatrix<float>& a, const retnet::RowMatrix<float>& b) {
  return double((a - b).cwiseAbs().maxCoeff()) / std::max(1e-30, double(b.cwiseAbs().maxCoeff()));
}

/// The prefill FLOP model of bench/README.md: every projection and the FFN (2 per
/// multiply-add), chunkwise retention T·C·(dk+dv) + 4·T·dk·dv per head, the head on one row.
double prefillFlops(const retnet::RetNetModelConfig& c, Index T, Index chunk) {
  const retnet::MultiScaleRetentionConfig r = c.block.retention();
  const double d = double(c.block.embedDim), I = double(c.block.ffnDim);
  const double dk = double(r.keyDim()), dv = double(r.headValueDim());
  const double H = double(r.heads), Hkv = double(r.keyValueHeads());
  const double C = double(std::min(chunk, T));
  const double linear = 2 * double(T) * d * (H * dk + Hkv * dk + Hkv * dv + 2 * H * dv + 3 * I);
  const double retention = H * (double(T) * C * (dk + dv) + 4 * double(T) * dk * dv);
  return double(c.layers) * (linear + retention) + 2 * double(c.vocab) * d;
}

double gb(double bytes) { return bytes / 1e9; }

/// Bytes an (out x in) weight takes stored as `type` (float32 for kFull).
double storedBytes(retnet::WeightType type, Index out, Index in) {
  const retnet::LinearWeight<float> row(retnet::RowMatrix<float>::Zero(1, in));
  return double(out) * double(row.converted(type).storedBytes());
}

// ---------------------------------------------------------------------------------------------

int run(const Options& o) {
  if (o.threads > 0) {
    retnet::setNumThreads(o.threads);
    Eigen::setNbThreads(o.threads);
  }
  Json result;
  result["dir"] = o.dir;
  result["mode"] = o.mode;
  result["threads"] = retnet::numThreads();
  result["mapped"] = o.map;
  result["weights"] =
      o.weights == retnet::WeightType::kFull ? "f32" : retnet::weightTypeName(o.weights);
  result["kernels"] = retnet::simdLevelName(retnet::simdLevel());
  retnet::setBf16Gemm(o.bf16Gemm);
  // Whether BF16 weights' prefill products run as BF16 GEMMs (oneDNN) in this run.
  result["bf16_gemm"] = retnet::detail::bf16GemmInUse();
  result["bf16_gemm_fast"] = retnet::bf16GemmFast();
#ifdef _OPENMP
  result["openmp"] = true;
#else
  result["openmp"] = false;
#endif

  // Headers only: a few KB, before the load so that they are not part of its figures.
  const FileSizes sizes = fileSizes(o.dir);
  bool evicted = false;
  if (o.cold) {
    evicted = true;
    for (const std::string& path : sizes.paths) evicted = evictFromPageCache(path) && evicted;
  }

  // --- load
  const Json before = memoryJson();
  retnet::io::ModelInfo info;
  const double loadCpuStart = processCpuSeconds();
  const auto loadStart = Clock::now();
  const Model model =
      retnet::io::loadModel<float>(o.dir, retnet::io::LoadOptions{o.weights, o.map}, &info);
  const double loadSeconds = secondsSince(loadStart);
  const double loadCpuSeconds = processCpuSeconds() - loadCpuStart;
  const Json after = memoryJson();

  const retnet::RetNetModelConfig& c = model.config();
  const retnet::MultiScaleRetentionConfig r = c.block.retention();
  const Index params = parameterCount(c);
  if (params != sizes.parameters) {
    std::cerr << "warning: the configuration implies " << params << " parameters, the files hold "
              << sizes.parameters << "\n";
  }
  // What the model keeps: the dense weights as stored and the other parameters in float32.
  Index dense = 0;
  model.forEachWeight(
      [&](const retnet::LinearWeight<float>& w) { dense += w.outputs() * w.inputs(); });
  const double weightBytes =
      double(model.storedWeightBytes()) + double(sizes.parameters - dense) * sizeof(float);
  const double peak = double(after["vm_hwm_bytes"].get<std::int64_t>());
  const double baseline = double(before["vm_rss_bytes"].get<std::int64_t>());
  const Index recommended = model.blocks().front().recommendedChunkSize();

  Json model_;
  model_["family"] = retnet::io::familyName(info.family);
  model_["dtype_on_disk"] = info.dtype ? retnet::io::dtypeName(*info.dtype) : "?";
  model_["hidden_size"] = c.block.embedDim;
  model_["layers"] = c.layers;
  model_["heads"] = r.heads;
  model_["kv_heads"] = r.keyValueHeads();
  model_["head_k_dim"] = r.keyDim();
  model_["head_v_dim"] = r.headValueDim();
  model_["intermediate_size"] = c.block.ffnDim;
  model_["vocab_size"] = c.vocab;
  model_["tied_embedding"] = c.tiedEmbedding;
  model_["parameters"] = sizes.parameters;
  model_["parameters_from_config"] = params;
  model_["file_bytes"] = sizes.bytes;
  model_["converted_weight_bytes"] = weightBytes;
  model_["recommended_chunk"] = recommended;
  result["model"] = model_;

  Json load;
  load["seconds"] = loadSeconds;
  load["cpu_seconds"] = loadCpuSeconds;
  load["cold_cache"] = o.cold;
  if (o.cold) load["evicted"] = evicted;
  load["file_read_gb_per_s"] = gb(double(sizes.bytes)) / loadSeconds;
  load["memory_before"] = before;
  load["memory_after"] = after;
  load["peak_over_weights"] = peak / weightBytes;
  load["peak_minus_start_over_weights"] = (peak - baseline) / weightBytes;
  load["rss_after_over_weights"] = double(after["vm_rss_bytes"].get<std::int64_t>()) / weightBytes;
  load["limit"] = 1.2;
  load["within_limit"] = peak <= 1.2 * weightBytes;
  result["load"] = load;

  std::printf(
      "retnet bench_real_size: %s (%s, %s on disk), %d thread(s), weights %s (kernels %s%s)\n",
      o.dir.c_str(), model_["family"].get<std::string>().c_str(),
      model_["dtype_on_disk"].get<std::string>().c_str(), retnet::numThreads(),
      result["weights"].get<std::string>().c_str(), retnet::simdLevelName(retnet::simdLevel()),
      result["bf16_gemm"].get<bool>() ? ", BF16 GEMM" : "");
  std::printf(
      "  model: d %lld, %lld layers, %lld heads (dk %lld, dv %lld), MLP %lld, vocab %lld, "
      "%.3f G parameters; as kept %.3f GB, file %.3f GB\n",
      static_cast<long long>(c.block.embedDim), static_cast<long long>(c.layers),
      static_cast<long long>(r.heads), static_cast<long long>(r.keyDim()),
      static_cast<long long>(r.headValueDim()), static_cast<long long>(c.block.ffnDim),
      static_cast<long long>(c.vocab), double(sizes.parameters) / 1e9, gb(weightBytes),
      gb(double(sizes.bytes)));
  std::printf("  load%s: %.2f s (CPU %.2f s; %.2f GB/s of file)\n", o.cold ? " (cold cache)" : "",
              loadSeconds, loadCpuSeconds, gb(double(sizes.bytes)) / loadSeconds);
  std::printf(
      "  memory: start RSS %.3f GB; after the load RSS %.3f GB, VmHWM %.3f GB, ru_maxrss "
      "%.3f GB\n",
      gb(baseline), gb(double(after["vm_rss_bytes"].get<std::int64_t>())), gb(peak),
      gb(double(after["ru_maxrss_bytes"].get<std::int64_t>())));
  std::printf("  peak / converted weights = %.3f (limit 1.2: %s)\n", peak / weightBytes,
              peak <= 1.2 * weightBytes ? "met" : "NOT met");

  if (o.mode == "load") {
    // After the figures above: where the load's time goes.
    const double read = rawReadSeconds(sizes.paths);
    const auto [reader, decoder] = bf16NanosecondsPerElement();
    const double params = double(sizes.parameters);
    Json parts;
    parts["raw_read_seconds"] = read;
    parts["bf16_to_float_ns_per_element_reader"] = reader;
    parts["bf16_to_float_ns_per_element_generic_decoder"] = decoder;
    parts["conversion_seconds_estimate_reader"] = reader * 1e-9 * params;
    parts["conversion_seconds_estimate_generic_decoder"] = decoder * 1e-9 * params;
    result["load"]["time_parts"] = parts;
    std::printf(
        "  where the load time goes: reading the file alone %.2f s (%.2f GB/s, now cached); "
        "BF16 -> float %.2f ns/element with the reader's bfloat16ToFloat (x %.2f G = %.1f s; the "
        "generic decoder: %.2f ns, %.1f s)\n",
        read, gb(double(sizes.bytes)) / read, reader, params / 1e9, reader * 1e-9 * params, decoder,
        decoder * 1e-9 * params);
  }

  if (o.mode != "load") {
    // --- prefill
    const Index V = c.vocab, D = c.block.embedDim;
    const Index longest = *std::max_element(o.lengths.begin(), o.lengths.end());
    const retnet::TokenMatrix tokens =
        randomTokens(std::max(longest, o.decodePrompt + o.decodeSteps + 8), V, 7);
    {
      Model::State warm;
      model.prefill(tokens.leftCols(std::min<Index>(64, tokens.cols())), warm, 64);
    }
    Json prefill = Json::array();
    std::printf(
        "\n  prefill (batch 1)          T  chunk     seconds    tokens/s   GFLOP/s   CPU s\n");
    for (Index T : o.lengths) {
      const retnet::TokenMatrix prompt = tokens.leftCols(T);
      retnet::RowMatrix<float> reference;
      for (Index chunk : o.chunks) {
        std::vector<double> times, cpu;
        retnet::RowMatrix<float> logits;
        for (int rep = 0; rep < o.reps; ++rep) {
          Model::State state;
          const double cpuStart = processCpuSeconds();
          const auto start = Clock::now();
          logits = model.prefill(prompt, state, chunk);
          times.push_back(secondsSince(start));
          cpu.push_back(processCpuSeconds() - cpuStart);
        }
        const Stats s = stats(times), sCpu = stats(cpu);
        const double flops = prefillFlops(c, T, chunk);
        Json row{{"T", T},
                 {"chunk", chunk},
                 {"seconds", statsJson(s, 1.0)},
                 {"cpu_seconds", statsJson(sCpu, 1.0)},
                 {"tokens_per_s", double(T) / s.min},
                 {"gflops", flops / s.min / 1e9},
                 {"logits_finite", logits.allFinite()}};
        if (reference.size() == 0) {
          reference = logits;
        } else {
          row["last_logits_rel_diff_vs_first_chunk"] = relativeDifference(logits, reference);
        }
        prefill.push_back(row);
        std::printf("  %24lld  %5lld  %10.3f  %10.1f  %8.1f  %6.2f%s\n", static_cast<long long>(T),
                    static_cast<long long>(chunk), s.min, double(T) / s.min, flops / s.min / 1e9,
                    sCpu.min, chunk == recommended ? "   (recommended chunk)" : "");
        std::fflush(stdout);
      }
    }
    result["prefill"] = prefill;

    // --- decode: after a prefill of decodePrompt tokens, steps timed one by one
    Json decode;
    Model::State state;
    const Index prompt = o.decodePrompt;
    model.prefill(tokens.leftCols(prompt), state, recommended);
    const Model::State afterPrompt = state;
    retnet::RowMatrix<float> logits;
    Model::Scratch scratch;
    Index position = prompt;
    for (int warmStep = 0; warmStep < 2; ++warmStep)
      model.decode({tokens(0, position++)}, state, logits, scratch);
    std::vector<double> steps, cpu;
    for (int step = 0; step < o.decodeSteps; ++step) {
      const double cpuStart = processCpuSeconds();
      const auto start = Clock::now();
      model.decode({tokens(0, position++)}, state, logits, scratch);
      steps.push_back(secondsSince(start));
      cpu.push_back(processCpuSeconds() - cpuStart);
    }
    const Stats s = stats(steps), sCpu = stats(cpu);
    // What a step must stream at least: every weight but the embedding table (one row of it),
    // and the retention state read and written.
    const double stateBytes = double(afterPrompt.bytes());
    const double stepBytes =
        weightBytes - storedBytes(o.weights, V, D) + double(D) * sizeof(float) + 2 * stateBytes;
    const double bandwidth = readBandwidth(std::size_t{1} << 30);
    decode["prompt"] = prompt;
    decode["steps"] = o.decodeSteps;
    decode["ms_per_token"] = statsJson(s, 1e3);
    decode["cpu_ms_per_token"] = statsJson(sCpu, 1e3);
    decode["tokens_per_s"] = 1.0 / s.mean;
    decode["state_bytes"] = stateBytes;
    decode["bytes_per_step"] = stepBytes;
    decode["gb_per_s"] = gb(stepBytes) / s.mean;
    decode["read_bandwidth_gb_per_s"] = bandwidth;
    decode["bandwidth_fraction"] = gb(stepBytes) / s.mean / bandwidth;
    decode["logits_finite"] = logits.allFinite();
    std::printf(
        "\n  decode (batch 1, after %lld tokens): %.1f ms/token mean (median %.1f, min %.1f, "
        "max %.1f; CPU %.1f ms) = %.2f tokens/s\n",
        static_cast<long long>(prompt), s.mean * 1e3, s.median * 1e3, s.min * 1e3, s.max * 1e3,
        sCpu.mean * 1e3, 1.0 / s.mean);
    std::printf(
        "  streams >= %.3f GB per token (weights without the embedding table, state %.1f MB "
        "read + written): %.1f GB/s = %.2f of a %.1f GB/s read-sum over 1 GiB\n",
        gb(stepBytes), stateBytes / 1e6, gb(stepBytes) / s.mean, gb(stepBytes) / s.mean / bandwidth,
        bandwidth);

    // --- where a decode step goes: the blocks one after another (so their weights come from
    // memory, as in decode), then the MSR layers alone, then a head-sized product.
    if (o.breakdownSteps > 0) {
      using Block = retnet::RetNetBlock<float>;
      using Msr = retnet::MultiScaleRetention<float>;
      Model::State blockState = afterPrompt, msrState = afterPrompt;
      Block::Scratch blockScratch;
      Msr::Scratch msrScratch;
      std::mt19937_64 rng(11);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      retnet::Tensor3<float> x(1, 1, D), y(1, 1, D);
      for (Index i = 0; i < D; ++i) x.data()[i] = normal(rng);
      const retnet::Tensor3<float> input = x;
      const retnet::LinearWeight<float> head =
          retnet::LinearWeight<float>(retnet::RowMatrix<float>::Random(V, D) * 0.02f)
              .converted(o.weights);
      retnet::RowMatrix<float> hidden(1, D), out(1, V);
      hidden.setRandom();
      std::vector<double> blockTimes, msrTimes, headTimes;
      for (int step = 0; step < o.breakdownSteps + 1; ++step) {
        x = input;
        double blocks = 0, msr = 0;
        for (const Block& block : model.blocks()) {
          const auto start = Clock::now();
          block.forwardRecurrent(x, blockState.layers[&block - model.blocks().data()], y,
                                 blockScratch);
          blocks += secondsSince(start);
          std::swap(x, y);
        }
        const auto headStart = Clock::now();
        retnet::stages::linear(hidden, head, out);
        const double headSeconds = secondsSince(headStart);
        x = input;
        for (const Block& block : model.blocks()) {
          const auto start = Clock::now();
          block.retention().forwardRecurrent(x, msrState.layers[&block - model.blocks().data()], y,
                                             msrScratch);
          msr += secondsSince(start);
        }
        if (step == 0) continue;  // warm-up
        blockTimes.push_back(blocks);
        msrTimes.push_back(msr);
        headTimes.push_back(headSeconds);
      }
      const double blockMs = stats(blockTimes).mean * 1e3, msrMs = stats(msrTimes).mean * 1e3;
      const double headMs = stats(headTimes).mean * 1e3;
      const double L = double(c.layers);
      const Index projections = r.heads * r.keyDim() + r.keyValueHeads() * r.keyDim() +
                                r.keyValueHeads() * r.headValueDim() + r.heads * r.headValueDim();
      const double msrBytes = (storedBytes(o.weights, projections, D) +
                               storedBytes(o.weights, D, r.heads * r.headValueDim())) *
                                  L +
                              2 * stateBytes;
      const double ffnBytes = (storedBytes(o.weights, 2 * c.block.ffnDim, D) +
                               storedBytes(o.weights, D, c.block.ffnDim)) *
                              L;
      const double headBytes = storedBytes(o.weights, V, D);
      Json breakdown;
      breakdown["steps"] = o.breakdownSteps;
      breakdown["all_blocks_ms"] = blockMs;
      breakdown["msr_ms"] = msrMs;
      breakdown["ffn_and_norms_ms"] = blockMs - msrMs;
      breakdown["head_ms"] = headMs;
      breakdown["msr_gb_per_s"] = gb(msrBytes) / (msrMs / 1e3);
      breakdown["ffn_gb_per_s"] = gb(ffnBytes) / ((blockMs - msrMs) / 1e3);
      breakdown["head_gb_per_s"] = gb(headBytes) / (headMs / 1e3);
      decode["breakdown"] = breakdown;
      std::printf(
          "  one step, by part: %lld blocks %.1f ms (MSR %.1f ms at %.1f GB/s incl. state, FFN + "
          "norms %.1f ms at %.1f GB/s), head %lldx%lld %.1f ms at %.1f GB/s\n",
          static_cast<long long>(c.layers), blockMs, msrMs, gb(msrBytes) / (msrMs / 1e3),
          blockMs - msrMs, gb(ffnBytes) / ((blockMs - msrMs) / 1e3), static_cast<long long>(V),
          static_cast<long long>(D), headMs, gb(headBytes) / (headMs / 1e3));
    }

    // --- agreement: prefill n tokens + decode 1 == prefill n + 1 (last logits)
    {
      const Index n = 64;
      Model::State a, b;
      model.prefill(tokens.leftCols(n), a, recommended);
      const retnet::RowMatrix<float> stepped = model.decode({tokens(0, n)}, a);
      const retnet::RowMatrix<float> whole = model.prefill(tokens.leftCols(n + 1), b, recommended);
      Eigen::ArrayXf values = whole.row(0).transpose().array();
      const double mean = values.mean();
      const double sd = std::sqrt((values - float(mean)).square().mean());
      decode["check_prefill_plus_decode_rel_diff"] = relativeDifference(stepped, whole);
      decode["check_logits_std"] = sd;
      std::printf(
          "  check: prefill(64) + decode(1) vs prefill(65): max |diff| / max |logit| = %.2e; "
          "logits std %.2f\n",
          relativeDifference(stepped, whole), sd);
    }

    // --- batched decoding: B sequences (copies of the prompt's state, each fed its own tokens)
    // per step; each weight is read once per step for all of them.
    Json batched = Json::array();
    std::printf("\n  batched decode      B   ms/step   tokens/s   x B=1\n");
    double single = 0;
    for (Index B : o.batches) {
      Model::State batch;
      for (Index b = 0; b < B; ++b) batch.append(afterPrompt);
      std::vector<std::int64_t> ids(static_cast<std::size_t>(B));
      Index at = prompt;
      const auto feed = [&] {
        for (Index b = 0; b < B; ++b)
          ids[static_cast<std::size_t>(b)] = tokens(0, (at + 7 * b) % tokens.cols());
        ++at;
        model.decode(ids, batch, logits, scratch);
      };
      feed();  // warm-up (sizes the scratch)
      const int stepsB = std::max(2, o.decodeSteps / 4);
      std::vector<double> times;
      for (int step = 0; step < stepsB; ++step) {
        const auto start = Clock::now();
        feed();
        times.push_back(secondsSince(start));
      }
      const double perStep = stats(times).median;
      const double tokensPerS = double(B) / perStep;
      if (B == 1) single = tokensPerS;
      batched.push_back({{"batch", B},
                         {"ms_per_step", perStep * 1e3},
                         {"tokens_per_s", tokensPerS},
                         {"logits_finite", logits.allFinite()}});
      std::printf("  %20lld  %8.1f  %9.1f  %6.2f\n", static_cast<long long>(B), perStep * 1e3,
                  tokensPerS, single > 0 ? tokensPerS / single : 0.0);
    }
    decode["batched"] = batched;
    result["decode"] = decode;
    result["memory_end"] = memoryJson();
  }

  return retnet_file_bench::writeResult(result, o.json);
}

}  // namespace

int main(int argc, char** argv) {
  return retnet_file_bench::guardedMain("bench_real_size", [&] { return run(parse(argc, argv)); });
}
