// What the libFuzzer targets of the model-directory and state-file readers and make_corpus share:
// a small deterministic generator, random weights of any RetNetModelConfig, the writers of those
// weights under FLA's and syncdoth's tensor names, the two fixed models of fuzz_state_file, and
// the shard files of fuzz_weight_index.
//
// Every weight value is a multiple of 1/16 in [-1, 1], exact in F32, F16 and BF16, so a model
// written in any of those dtypes and loaded back has exactly the weights it was built from.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "retnet/io/fla_checkpoint.hpp"
#include "retnet/io/safetensors.hpp"
#include "retnet/model.hpp"

namespace retnet_fuzz {

using retnet::Index;
using retnet::RetNetModelConfig;
using retnet::RowMatrix;
using retnet::Vector;
using retnet::io::Dtype;
using retnet::io::SafetensorsWriter;
using Bytes = std::vector<unsigned char>;

/// splitmix64: deterministic, seeded from the input, so a finding replays exactly.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// A multiple of 1/16 in [-1, 1].
  double weight() { return static_cast<double>(static_cast<int>(next() % 33) - 16) / 16.0; }

 private:
  std::uint64_t state_;
};

inline std::uint64_t hashBytes(const std::uint8_t* data, std::size_t size) {
  std::uint64_t hash = 0xCBF29CE484222325ull;
  for (std::size_t i = 0; i < size; ++i) hash = (hash ^ data[i]) * 0x100000001B3ull;
  return hash;
}

/// Every field equal (decays and eps exactly).
inline bool sameConfig(const RetNetModelConfig& a, const RetNetModelConfig& b) {
  const auto& x = a.block;
  const auto& y = b.block;
  return a.vocab == b.vocab && a.layers == b.layers && a.embedScale == b.embedScale &&
         a.tiedEmbedding == b.tiedEmbedding && a.embedNorm == b.embedNorm &&
         x.embedDim == y.embedDim && x.valueDim == y.valueDim && x.heads == y.heads &&
         x.ffnDim == y.ffnDim && x.eps == y.eps && x.activation == y.activation &&
         x.gate == y.gate && x.decays == y.decays && x.headKeyDim == y.headKeyDim &&
         x.kvHeads == y.kvHeads && x.rotary == y.rotary && x.normalization == y.normalization &&
         x.scaleSide == y.scaleSide;
}

template <typename Scalar>
RowMatrix<Scalar> randomMatrix(Index rows, Index cols, Rng& rng) {
  RowMatrix<Scalar> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(rng.weight());
  return m;
}

template <typename Scalar>
Vector<Scalar> randomVector(Index size, Rng& rng) {
  Vector<Scalar> v(size);
  for (Index i = 0; i < size; ++i) v(i) = static_cast<Scalar>(rng.weight());
  return v;
}

/// Number of weights a model of `c` has (with the head norm), in double: no overflow for any
/// configuration, so it can decide whether the model is small enough to build.
inline double parameterCount(const RetNetModelConfig& c) {
  const auto r = c.block.retention();
  const double D = static_cast<double>(c.block.embedDim), V = static_cast<double>(c.block.valueDim);
  const double H = static_cast<double>(r.heads), Hkv = static_cast<double>(r.keyValueHeads());
  const double dk = static_cast<double>(r.keyDim()), dv = static_cast<double>(r.headValueDim());
  const double F = static_cast<double>(c.block.ffnDim);
  // q, k, v, g, out, the head norm, the FFN's three matrices, the two RMSNorms
  const double layer =
      H * dk * D + Hkv * dk * D + Hkv * dv * D + V * D + D * V + dv + 3 * F * D + 2 * D;
  const double embed = static_cast<double>(c.vocab) * D;
  return embed * (c.tiedEmbedding ? 1 : 2) + 2 * D + static_cast<double>(c.layers) * layer;
}

/// Random weights of the shapes `c` implies; the head norm has a weight when `headNorm` (FLA).
template <typename Scalar>
retnet::RetNetModelWeights<Scalar> randomWeights(const RetNetModelConfig& c, bool headNorm,
                                                 Rng& rng) {
  const auto r = c.block.retention();
  const Index D = c.block.embedDim, V = c.block.valueDim, F = c.block.ffnDim;
  const Index dk = r.keyDim(), dv = r.headValueDim(), H = r.heads, Hkv = r.keyValueHeads();
  retnet::RetNetModelWeights<Scalar> w;
  w.embed = randomMatrix<Scalar>(c.vocab, D, rng);
  if (c.embedNorm) w.embedNorm = randomVector<Scalar>(D, rng);
  for (Index l = 0; l < c.layers; ++l) {
    retnet::RetNetBlockWeights<Scalar> b;
    b.retention.q = randomMatrix<Scalar>(H * dk, D, rng);
    b.retention.k = randomMatrix<Scalar>(Hkv * dk, D, rng);
    b.retention.v = randomMatrix<Scalar>(Hkv * dv, D, rng);
    b.retention.g = randomMatrix<Scalar>(V, D, rng);
    b.retention.out = randomMatrix<Scalar>(D, V, rng);
    if (headNorm) b.retention.headNorm = randomVector<Scalar>(dv, rng);
    b.retentionNorm = randomVector<Scalar>(D, rng);
    b.fc1 = randomMatrix<Scalar>(F, D, rng);
    b.gate = randomMatrix<Scalar>(F, D, rng);
    b.fc2 = randomMatrix<Scalar>(D, F, rng);
    b.finalNorm = randomVector<Scalar>(D, rng);
    w.layers.push_back(std::move(b));
  }
  w.finalNorm = randomVector<Scalar>(D, rng);
  if (!c.tiedEmbedding) w.outputProjection = randomMatrix<Scalar>(c.vocab, D, rng);
  return w;
}

/// Adds a matrix or vector of any Scalar to `writer`, converted to `dtype`.
template <typename Derived>
void addDense(SafetensorsWriter& writer, const std::string& name, Dtype dtype,
              const Eigen::MatrixBase<Derived>& value, bool vector) {
  std::vector<double> values;
  // Row-major order whatever the storage.
  for (Index i = 0; i < value.rows(); ++i)
    for (Index j = 0; j < value.cols(); ++j) values.push_back(static_cast<double>(value(i, j)));
  if (vector) {
    writer.addTensor(name, dtype, {value.size()}, values.data());
  } else {
    writer.addTensor(name, dtype, {value.rows(), value.cols()}, values.data());
  }
}

/// Adds a dense weight's values (any WeightType) to `writer`, converted to `dtype`.
template <typename Scalar>
void addDense(SafetensorsWriter& writer, const std::string& name, Dtype dtype,
              const retnet::LinearWeight<Scalar>& weight, bool vector) {
  addDense(writer, name, dtype, weight.dequantized(), vector);
}

/// How fuzz_model_config lays out an FLA checkpoint: FLA's two MLP layouts and two head-norm
/// names.
struct FlaLayout {
  bool fusedGate = false;      ///< mlp.gate_proj holds gate and up (2I x d), no up_proj
  bool plainHeadNorm = false;  ///< attn.g_norm.weight instead of attn.g_norm_swish_gate.weight
};

/// `w` under FLA's names (readFlaWeights).
template <typename Scalar>
void addFlaWeights(SafetensorsWriter& writer, const retnet::RetNetModelWeights<Scalar>& w,
                   Dtype dtype, FlaLayout layout) {
  addDense(writer, "model.embeddings.weight", dtype, w.embed, false);
  for (std::size_t i = 0; i < w.layers.size(); ++i) {
    const auto& b = w.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    addDense(writer, p + "attn_norm.weight", dtype, b.retentionNorm, true);
    addDense(writer, p + "attn.q_proj.weight", dtype, b.retention.q, false);
    addDense(writer, p + "attn.k_proj.weight", dtype, b.retention.k, false);
    addDense(writer, p + "attn.v_proj.weight", dtype, b.retention.v, false);
    addDense(writer, p + "attn.g_proj.weight", dtype, b.retention.g, false);
    addDense(writer, p + "attn.o_proj.weight", dtype, b.retention.out, false);
    addDense(writer,
             p + (layout.plainHeadNorm ? "attn.g_norm.weight" : "attn.g_norm_swish_gate.weight"),
             dtype, b.retention.headNorm, true);
    addDense(writer, p + "mlp_norm.weight", dtype, b.finalNorm, true);
    if (layout.fusedGate) {
      RowMatrix<Scalar> both(2 * b.fc1.outputs(), b.fc1.inputs());
      both << b.fc1.dequantized(), b.gate.dequantized();
      addDense(writer, p + "mlp.gate_proj.weight", dtype, both, false);
    } else {
      addDense(writer, p + "mlp.gate_proj.weight", dtype, b.fc1, false);
      addDense(writer, p + "mlp.up_proj.weight", dtype, b.gate, false);
    }
    addDense(writer, p + "mlp.down_proj.weight", dtype, b.fc2, false);
  }
  addDense(writer, "model.norm.weight", dtype, w.finalNorm, true);
  if (!w.outputProjection.empty())
    addDense(writer, "lm_head.weight", dtype, w.outputProjection, false);
}

/// `w` under syncdoth's names (readSyncdothWeights); with `relPos` also the rotary and decay
/// buffers syncdoth stores, as the configuration computes them.
template <typename Scalar>
void addSyncdothWeights(SafetensorsWriter& writer, const RetNetModelConfig& c,
                        const retnet::RetNetModelWeights<Scalar>& w, Dtype dtype, bool relPos) {
  addDense(writer, "model.embed_tokens.weight", dtype, w.embed, false);
  if (w.embedNorm.size() != 0)
    addDense(writer, "model.layernorm_embedding.weight", dtype, w.embedNorm, true);
  for (std::size_t i = 0; i < w.layers.size(); ++i) {
    const auto& b = w.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".", r = p + "retention.";
    addDense(writer, r + "q_proj.weight", dtype, b.retention.q, false);
    addDense(writer, r + "k_proj.weight", dtype, b.retention.k, false);
    addDense(writer, r + "v_proj.weight", dtype, b.retention.v, false);
    addDense(writer, r + "g_proj.weight", dtype, b.retention.g, false);
    addDense(writer, r + "out_proj.weight", dtype, b.retention.out, false);
    addDense(writer, p + "retention_layer_norm.weight", dtype, b.retentionNorm, true);
    addDense(writer, p + "ffn.fc1.weight", dtype, b.fc1, false);
    addDense(writer, p + "ffn.gate.weight", dtype, b.gate, false);
    addDense(writer, p + "ffn.fc2.weight", dtype, b.fc2, false);
    addDense(writer, p + "final_layer_norm.weight", dtype, b.finalNorm, true);
  }
  addDense(writer, "model.layer_norm.weight", dtype, w.finalNorm, true);
  if (!w.outputProjection.empty())
    addDense(writer, "lm_head.weight", dtype, w.outputProjection, false);
  if (relPos) {
    const auto r = c.block.retention();
    std::vector<double> logDecays;
    for (double gamma : r.headDecays()) logDecays.push_back(std::log(gamma));
    writer.addTensor("model.retnet_rel_pos.decay", dtype, {static_cast<Index>(logDecays.size())},
                     logDecays.data());
    const Vector<double> angle = retnet::RotaryEmbedding<double>(r.keyDim()).angle();
    writer.addTensor("model.retnet_rel_pos.angle", dtype, {angle.size()}, angle.data());
  }
}

// ---- fuzz_state_file: two fixed models ----------------------------------------------------

/// torchscale semantics: 2 layers, D = 8, V = 16, 2 heads (dk = 4, dv = 8), F = 16, vocab 11.
inline RetNetModelConfig stateTorchscaleConfig() {
  RetNetModelConfig c;
  c.vocab = 11;
  c.layers = 2;
  c.block.embedDim = 8;
  c.block.valueDim = 16;
  c.block.heads = 2;
  c.block.ffnDim = 16;
  return c;
}

/// FLA semantics (half-split rotary, raw retention, q-side scale) with GQA and a key width that
/// is not D / H: 1 layer, D = 8, 2 query heads on 1 key/value head, dk = 6, dv = 4, I = 16.
inline RetNetModelConfig stateFlaConfig() {
  return retnet::io::detail::flaModelConfig(13, 1, 8, 2, 1, 6, 4, 16, 1e-6, true);
}

// ---- fuzz_weight_index: the shard files -----------------------------------------------------

/// The two shards fuzz_weight_index writes next to each index, with the names of the sharded
/// test checkpoint (tests/data/fla/fla_sharded_fused_tied), so its index is a seed too.
inline const char* const kShardNames[2] = {"model-00001-of-00002.safetensors",
                                           "model-00002-of-00002.safetensors"};

/// One tensor of a shard: where it is and what was written.
struct ShardTensor {
  std::string name;
  int shard = 0;  ///< 0 or 1
  Dtype dtype = Dtype::F32;
  std::vector<Index> shape;
  std::vector<double> values;  ///< exact in `dtype`; integers for I64
};

/// The tensors of the two shards: tiny FLA, syncdoth and torchscale models (each a whole
/// checkpoint, FLA's and syncdoth's split over both shards, torchscale's in the first), and a few
/// tensors of other dtypes and ranks. vocab 5, D = V = F = 4, one head, one layer.
inline std::vector<ShardTensor> shardTensors() {
  Rng rng(20240611);
  std::vector<ShardTensor> t;
  const auto add = [&](std::string name, int shard, Dtype dtype, std::vector<Index> shape) {
    Index count = 1;
    for (Index extent : shape) count *= extent;
    std::vector<double> values;
    for (Index i = 0; i < count; ++i) values.push_back(rng.weight());
    t.push_back({std::move(name), shard, dtype, std::move(shape), std::move(values)});
  };
  const std::vector<Index> square = {4, 4}, vec = {4}, table = {5, 4};
  // FLA: layer 0 in shard 0, the rest in shard 1.
  add("model.embeddings.weight", 1, Dtype::BF16, table);
  for (const char* m :
       {"attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight", "attn.g_proj.weight",
        "attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"})
    add(std::string("model.layers.0.") + m, 0, Dtype::BF16, square);
  for (const char* v : {"attn_norm.weight", "attn.g_norm_swish_gate.weight", "mlp_norm.weight"})
    add(std::string("model.layers.0.") + v, 0, Dtype::BF16, vec);
  add("model.norm.weight", 1, Dtype::BF16, vec);
  add("lm_head.weight", 1, Dtype::F32, table);  // FLA's and syncdoth's
  // syncdoth: embedding and buffers in shard 0, the layer in shard 1.
  add("model.embed_tokens.weight", 0, Dtype::F16, table);
  for (const char* m :
       {"q_proj.weight", "k_proj.weight", "v_proj.weight", "g_proj.weight", "out_proj.weight"})
    add(std::string("model.layers.0.retention.") + m, 1, Dtype::F16, square);
  for (const char* m : {"ffn.fc1.weight", "ffn.gate.weight", "ffn.fc2.weight"})
    add(std::string("model.layers.0.") + m, 1, Dtype::F16, square);
  for (const char* v : {"retention_layer_norm.weight", "final_layer_norm.weight"})
    add(std::string("model.layers.0.") + v, 1, Dtype::F16, vec);
  add("model.layer_norm.weight", 1, Dtype::F16, vec);
  // The buffers as float32 holds them (the values must be exact in their dtype).
  const auto asFloat = [](double v) { return static_cast<double>(static_cast<float>(v)); };
  t.push_back({"model.retnet_rel_pos.decay",
               0,
               Dtype::F32,
               {1},
               {asFloat(std::log(1.0 - std::exp2(-5.0)))}});
  const Vector<double> angle = retnet::RotaryEmbedding<double>(4).angle();
  std::vector<double> angles;
  for (Index i = 0; i < angle.size(); ++i) angles.push_back(asFloat(angle(i)));
  t.push_back({"model.retnet_rel_pos.angle", 0, Dtype::F32, {4}, angles});
  // torchscale, tied, all in shard 0 (its loader reads one file).
  add("embed_tokens.weight", 0, Dtype::F32, table);
  for (const char* m :
       {"retention.q_proj.weight", "retention.k_proj.weight", "retention.v_proj.weight",
        "retention.g_proj.weight", "retention.out_proj.weight", "ffn.fc1.weight", "ffn.gate.weight",
        "ffn.fc2.weight"})
    add(std::string("layers.0.") + m, 0, Dtype::F32, square);
  for (const char* v : {"retention_layer_norm.weight", "final_layer_norm.weight"})
    add(std::string("layers.0.") + v, 0, Dtype::F32, vec);
  add("layer_norm.weight", 0, Dtype::F32, vec);
  // Other dtypes and ranks.
  t.push_back({"extra.i64", 0, Dtype::I64, {2, 3}, {0, -1, 42, 7, -9007199254740992.0, 5}});
  add("extra.f64_scalar", 0, Dtype::F64, {});
  add("extra.f16_rank3", 1, Dtype::F16, {2, 1, 2});
  t.push_back({"extra.empty", 1, Dtype::F32, {0, 3}, {}});
  add("extra.bf16_rank5", 1, Dtype::BF16, {1, 2, 1, 1, 2});
  return t;
}

/// The bytes of shard `shard` (0 or 1). The first carries the metadata the bare-checkpoint
/// readers consult (the torchscale head count, FLA's norm_eps, syncdoth's keys).
inline Bytes shardBytes(const std::vector<ShardTensor>& tensors, int shard) {
  SafetensorsWriter writer;
  if (shard == 0) {
    writer.addMetadata("format", "pt");
    writer.addMetadata("heads", "1");
    writer.addMetadata("norm_eps", "1e-5");
    writer.addMetadata("activation_fn", "swish");
    writer.addMetadata("layernorm_eps", "1e-6");
  }
  for (const ShardTensor& tensor : tensors) {
    if (tensor.shard != shard) continue;
    if (tensor.dtype == Dtype::I64) {
      std::vector<std::int64_t> integers;
      for (double v : tensor.values) integers.push_back(static_cast<std::int64_t>(v));
      writer.addIntegers(tensor.name, tensor.shape, integers.data());
    } else {
      writer.addTensor(tensor.name, tensor.dtype, tensor.shape, tensor.values.data());
    }
  }
  return writer.bytes();
}

// ---- structure-aware mutation of JSON inputs ----------------------------------------------------

/// What mutateJson() may put into a JSON document: keys and values worth trying.
struct JsonMutationSpace {
  std::vector<std::string> keys;
  std::vector<nlohmann::json> values;
};

/// Every object in `json` (itself first), for mutateJson to pick from.
inline void collectObjects(nlohmann::json& json, std::vector<nlohmann::json*>& objects) {
  if (json.is_object()) objects.push_back(&json);
  if (json.is_structured()) {
    for (auto& item : json) collectObjects(item, objects);
  }
}

/// A value near `number`: ±1, doubled, halved, negated, or one of the space's.
inline nlohmann::json nearbyNumber(const nlohmann::json& number, Rng& rng) {
  const double x = number.get<double>();
  switch (rng.next() % 6) {
    case 0:
      return x + 1;
    case 1:
      return x - 1;
    case 2:
      return x * 2;
    case 3:
      return x / 2;
    case 4:
      return -x;
    default:
      return std::trunc(x * 3 / 2);
  }
}

/// A string near `text`: cut short, or with a NUL, a slash, a dot or another value's text added.
inline std::string nearbyString(std::string text, const std::string& other, Rng& rng) {
  switch (rng.next() % 5) {
    case 0:
      return text.substr(0, text.empty() ? 0 : rng.next() % text.size());
    case 1:
      return text + std::string(1, '\0') + other;
    case 2:
      return text + "/" + other;
    case 3:
      return "." + text;
    default:
      return text + other;
  }
}

/// Mutates the JSON document in data[0, size) as a document when it parses as one: a value of
/// some object replaced (by one of `space`'s, or a number or string near it), a key removed, added
/// or renamed; the result is written back (compact or indented) if it fits `maxSize`. Returns the
/// new size, or 0 if the input does not parse (the caller then mutates bytes).
inline std::size_t mutateJson(std::uint8_t* data, std::size_t size, std::size_t maxSize,
                              unsigned int seed, const JsonMutationSpace& space) {
  nlohmann::json json = nlohmann::json::parse(data, data + size, nullptr, false);
  if (json.is_discarded()) return 0;
  std::vector<nlohmann::json*> objects;
  collectObjects(json, objects);
  if (objects.empty()) return 0;
  Rng rng(seed);
  const auto pick = [&](std::size_t count) { return static_cast<std::size_t>(rng.next() % count); };
  nlohmann::json& object = *objects[pick(objects.size())];
  const auto randomValue = [&]() -> nlohmann::json {
    return space.values.empty() ? nlohmann::json(nullptr) : space.values[pick(space.values.size())];
  };
  const auto randomKey = [&]() -> std::string {
    return space.keys.empty() ? std::string("x") : space.keys[pick(space.keys.size())];
  };
  const int rounds = 1 + static_cast<int>(rng.next() % 3);
  for (int round = 0; round < rounds; ++round) {
    std::vector<std::string> present;
    for (auto item = object.begin(); item != object.end(); ++item) present.push_back(item.key());
    const unsigned op = present.empty() ? 2 : static_cast<unsigned>(rng.next() % 5);
    if (op == 0 || op == 1) {  // a value replaced
      nlohmann::json& value = object[present[pick(present.size())]];
      if (op == 1 && value.is_number()) {
        value = nearbyNumber(value, rng);
      } else if (op == 1 && value.is_string()) {
        const nlohmann::json other = randomValue();
        value = nearbyString(value.get<std::string>(),
                             other.is_string() ? other.get<std::string>() : "", rng);
      } else {
        value = randomValue();
      }
    } else if (op == 2) {  // a key added (or set)
      object[randomKey()] = randomValue();
    } else if (op == 3) {  // a key removed
      object.erase(present[pick(present.size())]);
    } else {  // a key renamed
      const std::string from = present[pick(present.size())];
      nlohmann::json value = object[from];
      object.erase(from);
      object[randomKey()] = std::move(value);
    }
  }
  std::string text;
  try {
    text = rng.next() % 2 ? json.dump() : json.dump(2);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  if (text.size() > maxSize) return 0;
  std::memcpy(data, text.data(), text.size());
  return text.size();
}

inline void writeFile(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.close();
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", path.string().c_str());
    std::abort();
  }
}

inline void writeFile(const std::filesystem::path& path, const Bytes& bytes) {
  writeFile(path, std::string(bytes.begin(), bytes.end()));
}

/// A fresh directory for this process under $TMPDIR when set (fuzz/run.sh sets it to its scratch
/// directory), else /dev/shm (memory) when there is one, else the temporary directory. The
/// caller removes it at exit; a run that ends in a crash leaves it behind.
inline std::filesystem::path makeScratchDirectory(const char* prefix) {
  std::error_code error;
  std::filesystem::path base = "/dev/shm";
  const char* tmpdir = std::getenv("TMPDIR");
  if (tmpdir != nullptr && *tmpdir != '\0') {
    base = tmpdir;
  } else if (!std::filesystem::is_directory(base, error)) {
    base = std::filesystem::temp_directory_path();
  }
  std::string pattern = (base / (std::string(prefix) + "-XXXXXX")).string();
  if (mkdtemp(pattern.data()) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  return pattern;
}

}  // namespace retnet_fuzz
