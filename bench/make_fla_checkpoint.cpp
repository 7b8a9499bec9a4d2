// Writes a synthetic checkpoint in the exact layout of fla-hub/retnet-1.3B-100B: a Hugging Face
// directory with FLA's config.json (the key set of tests/data/fla/fla_small/config.json, the 1.3B
// model's values) and one model.safetensors holding every tensor in BF16 under FLA's names
// (/work/shared/golden/fla/README.md §1.3-1.4: split MLP, fuse_norm head-norm name, untied head).
//
//   make_fla_checkpoint DIR [--layers N] [--small] [--seed S] [--via-writer]
//
// --small: the same layout at d = 256, 8 heads, 2 layers, vocab 1000 (for CI and quick runs);
// --layers N: N blocks instead of 24 (or 2); --via-writer: build the file with
// retnet::io::SafetensorsWriter, which holds every encoded tensor (and then the whole file) in
// memory, instead of streaming it tensor by tensor (the default; the two give identical bytes,
// which bench/real_size.sh checks on the small variant).
//
// Weights follow the golden data's recipe (golden README §4): embedding N(0, 0.25), every norm
// weight 1 + 0.2·N(0, 1), q_proj and k_proj N(0, 2.25/in), every other Linear N(0, 1/in), drawn in
// double and rounded to BF16 (nearest even). Each value is a function of (seed, tensor name,
// index) only — a counter-based SplitMix64 stream per tensor with Box-Muller normals — so the
// file does not depend on the thread count, and the first N layers of a --layers N file equal
// those of the full one.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "retnet/io/dtype.hpp"
#include "retnet/io/safetensors_writer.hpp"

namespace {

using Index = std::int64_t;

struct Shape {
  Index hidden = 2048, layers = 24, heads = 8, vocab = 32000;
  double expandK = 1, expandV = 2, hiddenRatio = 2;

  Index keyDim() const { return static_cast<Index>(std::trunc(double(hidden) * expandK)); }
  Index valueDim() const { return static_cast<Index>(std::trunc(double(hidden) * expandV)); }
  Index headValueDim() const { return valueDim() / heads; }
  /// FLA's MLP width for intermediate_size null: 256·ceil(trunc(d·r·2/3) / 256).
  Index intermediate() const {
    const auto m = static_cast<Index>(std::trunc(double(hidden) * hiddenRatio * 2.0 / 3.0));
    return 256 * ((m + 255) / 256);
  }
};

/// How a tensor's values are drawn.
enum class Init { kEmbedding, kNorm, kQueryKey, kLinear };

struct TensorSpec {
  std::string name;
  std::vector<Index> shape;
  Init init;

  Index numel() const {
    Index n = 1;
    for (Index extent : shape) n *= extent;
    return n;
  }
};

/// Every tensor of the checkpoint, in FLA's state_dict order.
std::vector<TensorSpec> tensorList(const Shape& s) {
  const Index d = s.hidden, K = s.keyDim(), V = s.valueDim(), I = s.intermediate();
  std::vector<TensorSpec> list;
  list.push_back({"model.embeddings.weight", {s.vocab, d}, Init::kEmbedding});
  for (Index i = 0; i < s.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    list.push_back({p + "attn_norm.weight", {d}, Init::kNorm});
    list.push_back({p + "attn.q_proj.weight", {K, d}, Init::kQueryKey});
    list.push_back({p + "attn.k_proj.weight", {K, d}, Init::kQueryKey});  // num_kv_heads = H
    list.push_back({p + "attn.v_proj.weight", {V, d}, Init::kLinear});
    list.push_back({p + "attn.g_proj.weight", {V, d}, Init::kLinear});
    list.push_back({p + "attn.o_proj.weight", {d, V}, Init::kLinear});
    list.push_back({p + "attn.g_norm_swish_gate.weight", {s.headValueDim()}, Init::kNorm});
    list.push_back({p + "mlp_norm.weight", {d}, Init::kNorm});
    list.push_back({p + "mlp.gate_proj.weight", {I, d}, Init::kLinear});
    list.push_back({p + "mlp.up_proj.weight", {I, d}, Init::kLinear});
    list.push_back({p + "mlp.down_proj.weight", {d, I}, Init::kLinear});
  }
  list.push_back({"model.norm.weight", {d}, Init::kNorm});
  list.push_back({"lm_head.weight", {s.vocab, d}, Init::kLinear});
  return list;
}

/// config.json: the key set of fla-hub/retnet-1.3B-100B's (as in tests/data/fla/fla_small).
nlohmann::ordered_json configJson(const Shape& s, bool small) {
  nlohmann::ordered_json c;
  c["_name_or_path"] = small ? "synthetic/retnet-small-fla-layout" : "synthetic/retnet-1.3B-100B";
  c["architectures"] = {"RetNetForCausalLM"};
  c["attn"] = nullptr;
  c["attn_mode"] = "chunk";
  c["bos_token_id"] = 1;
  c["conv_size"] = 4;
  c["elementwise_affine"] = true;
  c["eos_token_id"] = 2;
  c["expand_k"] = static_cast<Index>(s.expandK);
  c["expand_v"] = static_cast<Index>(s.expandV);
  c["feature_map"] = nullptr;
  c["fuse_cross_entropy"] = true;
  c["fuse_norm"] = true;
  c["hidden_act"] = "swish";
  c["hidden_ratio"] = static_cast<Index>(s.hiddenRatio);
  c["hidden_size"] = s.hidden;
  c["initializer_range"] = 0.02;
  c["intermediate_size"] = nullptr;
  c["max_position_embeddings"] = 2048;
  c["model_type"] = "retnet";
  c["norm_eps"] = 1e-06;
  c["num_heads"] = s.heads;
  c["num_hidden_layers"] = s.layers;
  c["num_kv_heads"] = nullptr;
  c["rms_norm_eps"] = 1e-06;
  c["share_conv_kernel"] = true;
  c["tie_word_embeddings"] = false;
  c["torch_dtype"] = "bfloat16";
  c["transformers_version"] = "4.40.2";
  c["use_cache"] = true;
  c["use_output_gate"] = true;
  c["use_short_conv"] = false;
  c["vocab_size"] = s.vocab;
  return c;
}

// ---------------------------------------------------------------------------------------------
// Values: counter-based, so any element can be computed on its own.

constexpr std::uint64_t kGamma = 0x9E3779B97F4A7C15ull;

std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// The stream key of a tensor: FNV-1a of its name, mixed with the seed.
std::uint64_t tensorKey(std::uint64_t seed, const std::string& name) {
  std::uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : name) h = (h ^ c) * 0x100000001B3ull;
  return mix64(h ^ mix64(seed + kGamma));
}

/// Uniform in (0, 1): the top 53 bits, centred in their cell (never 0, so log() is finite).
double uniform(std::uint64_t bits) { return (double(bits >> 11) + 0.5) * 0x1.0p-53; }

/// Standard normals [first, first + count) of the stream `key`: Box-Muller on the pair i / 2
/// (cosine for even i, sine for odd i).
void normals(std::uint64_t key, Index first, Index count, double* out) {
  const double twoPi = 6.283185307179586476925;
  const Index end = first + count;
  for (Index i = first; i < end;) {
    const auto pair = static_cast<std::uint64_t>(i / 2);
    const double u1 = uniform(mix64(key + (2 * pair + 1) * kGamma));
    const double u2 = uniform(mix64(key + (2 * pair + 2) * kGamma));
    const double r = std::sqrt(-2.0 * std::log(u1));
    if (i % 2 == 0) out[i++ - first] = r * std::cos(twoPi * u2);
    if (i < end) out[i++ - first] = r * std::sin(twoPi * u2);
  }
}

/// Values [first, first + count) of tensor `t` (row-major), in double.
void values(const TensorSpec& t, std::uint64_t seed, Index first, Index count, double* out) {
  normals(tensorKey(seed, t.name), first, count, out);
  const Index in = t.shape.size() == 2 ? t.shape[1] : 1;
  double scale = 1.0, offset = 0.0;
  switch (t.init) {
    case Init::kEmbedding:
      scale = 0.5;
      break;
    case Init::kNorm:
      scale = 0.2, offset = 1.0;
      break;
    case Init::kQueryKey:
      scale = 1.5 / std::sqrt(double(in));
      break;
    case Init::kLinear:
      scale = 1.0 / std::sqrt(double(in));
      break;
  }
  for (Index i = 0; i < count; ++i) out[i] = offset + scale * out[i];
}

/// Elements per parallel block, and per block group written at once.
constexpr Index kBlock = Index{1} << 16;
constexpr Index kGroup = 64 * kBlock;

/// Tensor `t` encoded to BF16 bytes, elements [first, first + count), threads over blocks.
void encodeBf16(const TensorSpec& t, std::uint64_t seed, Index first, Index count,
                std::vector<unsigned char>& bytes) {
  bytes.resize(static_cast<std::size_t>(count) * 2);
  const Index blocks = (count + kBlock - 1) / kBlock;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1)
#endif
  for (Index b = 0; b < blocks; ++b) {
    std::vector<double> buffer(static_cast<std::size_t>(kBlock));
    const Index begin = b * kBlock, n = std::min(kBlock, count - begin);
    values(t, seed, first + begin, n, buffer.data());
    for (Index i = 0; i < n; ++i) {
      retnet::io::detail::storeLittleEndian(retnet::io::detail::doubleToBfloat16(buffer[i]),
                                            bytes.data() + 2 * (begin + i));
    }
  }
}

/// The safetensors header exactly as SafetensorsWriter::bytes() lays it out: nlohmann::json
/// objects (keys sorted), data in list order, padded with spaces to a multiple of 8 bytes.
std::string headerText(const std::vector<TensorSpec>& list) {
  nlohmann::json header = nlohmann::json::object();
  std::size_t offset = 0;
  for (const TensorSpec& t : list) {
    const auto size = static_cast<std::size_t>(t.numel()) * 2;
    header[t.name] = {
        {"dtype", "BF16"}, {"shape", t.shape}, {"data_offsets", {offset, offset + size}}};
    offset += size;
  }
  header["__metadata__"] = {{"format", "pt"}};
  std::string text = header.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  return text;
}

void streamFile(const std::vector<TensorSpec>& list, std::uint64_t seed, const std::string& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error(path + ": cannot open for writing");
  const std::string header = headerText(list);
  unsigned char length[8];
  retnet::io::detail::storeLittleEndian(static_cast<std::uint64_t>(header.size()), length);
  out.write(reinterpret_cast<const char*>(length), 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  std::vector<unsigned char> bytes;
  for (const TensorSpec& t : list) {
    for (Index first = 0; first < t.numel(); first += kGroup) {
      encodeBf16(t, seed, first, std::min(kGroup, t.numel() - first), bytes);
      out.write(reinterpret_cast<const char*>(bytes.data()),
                static_cast<std::streamsize>(bytes.size()));
    }
  }
  out.close();
  if (!out) throw std::runtime_error(path + ": write failed (disk full?)");
}

void writeWithLibraryWriter(const std::vector<TensorSpec>& list, std::uint64_t seed,
                            const std::string& path) {
  retnet::io::SafetensorsWriter writer;
  std::vector<double> buffer;
  for (const TensorSpec& t : list) {
    buffer.resize(static_cast<std::size_t>(t.numel()));
    values(t, seed, 0, t.numel(), buffer.data());
    writer.addTensor(t.name, retnet::io::Dtype::BF16,
                     std::vector<Eigen::Index>(t.shape.begin(), t.shape.end()), buffer.data());
  }
  writer.addMetadata("format", "pt");
  writer.write(path);
}

[[noreturn]] void usage(const char* message) {
  std::cerr << "error: " << message << "\n"
            << "usage: make_fla_checkpoint DIR [--layers N] [--small] [--seed S] [--via-writer]\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  Index layers = -1;
  bool small = false, viaWriter = false;
  std::uint64_t seed = 20240611;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value after " + arg).c_str());
      return argv[++i];
    };
    if (arg == "--layers") {
      layers = std::stoll(next());
      if (layers < 1) usage("--layers must be >= 1");
    } else if (arg == "--small") {
      small = true;
    } else if (arg == "--seed") {
      seed = std::stoull(next());
    } else if (arg == "--via-writer") {
      viaWriter = true;
    } else if (!arg.empty() && arg[0] == '-') {
      usage(("unknown option " + arg).c_str());
    } else if (dir.empty()) {
      dir = arg;
    } else {
      usage("more than one directory given");
    }
  }
  if (dir.empty()) usage("no output directory given");

  Shape s;
  if (small) s.hidden = 256, s.layers = 2, s.vocab = 1000;
  if (layers > 0) s.layers = layers;
  const std::vector<TensorSpec> list = tensorList(s);
  Index params = 0;
  for (const TensorSpec& t : list) params += t.numel();

  try {
    namespace fs = std::filesystem;
    fs::create_directories(dir);
    // The weights go to a temporary name first: a directory with model.safetensors is complete.
    const std::string target = (fs::path(dir) / "model.safetensors").string();
    const std::string partial = target + ".partial";
    const auto start = std::chrono::steady_clock::now();
    {
      std::ofstream config((fs::path(dir) / "config.json").string(), std::ios::trunc);
      config << configJson(s, small).dump(2) << "\n";
      if (!config) throw std::runtime_error(dir + "/config.json: write failed");
    }
    if (viaWriter) {
      writeWithLibraryWriter(list, seed, partial);
    } else {
      streamFile(list, seed, partial);
    }
    fs::rename(partial, target);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf(
        "%s: d %lld, %lld layers, %lld heads (dk %lld, dv %lld), MLP %lld, vocab %lld; "
        "%zu tensors, %lld parameters, %.3f GB BF16 (%s, %.1f s)\n",
        target.c_str(), static_cast<long long>(s.hidden), static_cast<long long>(s.layers),
        static_cast<long long>(s.heads), static_cast<long long>(s.keyDim() / s.heads),
        static_cast<long long>(s.headValueDim()), static_cast<long long>(s.intermediate()),
        static_cast<long long>(s.vocab), list.size(), static_cast<long long>(params),
        static_cast<double>(fs::file_size(target)) / 1e9,
        viaWriter ? "SafetensorsWriter" : "streamed", seconds);
  } catch (const std::exception& e) {
    std::cerr << "make_fla_checkpoint: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
