// FLA and syncdoth model directories read into the naive oracles' weights
// (tests/reference/naive_fla.hpp, naive_syncdoth.hpp), and the normwise error log of a case:
// shared by test_family_oracles (the golden case directories under tests/data) and
// test_load_model_shapes (directories it writes itself).
//
// A directory is read the way a loader reads a checkpoint: config.json and the weight files (one
// model.safetensors, or shards through model.safetensors.index.json) by the family's tensor
// names, every dimension from config.json and the tensor shapes. Only the safetensors reader of
// the library is used (to read the files), none of its layers or loaders, so the oracles stay
// independent of the code under test.
#pragma once

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "reference/naive_fla.hpp"
#include "reference/naive_syncdoth.hpp"
#include "retnet/io/safetensors.hpp"
#include "test_util.hpp"

namespace retnet::testing {

inline nlohmann::json readJson(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path.string() + ": cannot open");
  return nlohmann::json::parse(in);
}

inline std::vector<long> shapeOf(const std::vector<Eigen::Index>& shape) {
  return std::vector<long>(shape.begin(), shape.end());
}

/// config.json's torch_dtype for a weight dtype (F32, F16 or BF16).
inline const char* torchDtypeName(io::Dtype dtype) {
  switch (dtype) {
    case io::Dtype::F32:
      return "float32";
    case io::Dtype::F16:
      return "float16";
    case io::Dtype::BF16:
      return "bfloat16";
    default:
      throw std::invalid_argument(std::string("no torch_dtype for ") + io::dtypeName(dtype));
  }
}

/// The safetensors dtype name of the weights a config's torch_dtype names.
inline std::string safetensorsDtype(const std::string& torchDtype) {
  for (const io::Dtype dtype : {io::Dtype::F32, io::Dtype::F16, io::Dtype::BF16}) {
    if (torchDtype == torchDtypeName(dtype)) return io::dtypeName(dtype);
  }
  throw std::runtime_error("unexpected torch_dtype " + torchDtype);
}

/// The weights of a checkpoint directory: model.safetensors, or the shards that
/// model.safetensors.index.json names, each tensor looked up through its weight_map. Keeps track
/// of the tensors read, so a test can check that none was left over.
class CheckpointTensors {
 public:
  explicit CheckpointTensors(const std::filesystem::path& dir) {
    const std::filesystem::path single = dir / "model.safetensors";
    if (std::filesystem::exists(single)) {
      files_.push_back(io::SafetensorsFile::open(single.string()));
      for (const std::string& name : files_.back().names()) where_[name] = 0;
      return;
    }
    const nlohmann::json index = readJson(dir / "model.safetensors.index.json");
    std::map<std::string, std::size_t> shardIndex;
    for (const auto& [name, shard] : index.at("weight_map").items()) {
      const std::string file = shard.get<std::string>();
      if (shardIndex.count(file) == 0) {
        shardIndex[file] = files_.size();
        files_.push_back(io::SafetensorsFile::open((dir / file).string()));
      }
      where_[name] = shardIndex[file];
      EXPECT_TRUE(files_[where_[name]].contains(name)) << name << " is not in " << file;
    }
    // Every tensor of every shard is in the index, under that shard; total_size counts the bytes.
    std::uint64_t totalBytes = 0;
    for (const auto& [file, i] : shardIndex) {
      for (const std::string& name : files_[i].names()) {
        EXPECT_TRUE(where_.count(name) && where_[name] == i) << name << " (" << file << ")";
        totalBytes += files_[i].info(name).end - files_[i].info(name).begin;
      }
    }
    EXPECT_EQ(totalBytes, index.at("metadata").at("total_size").get<std::uint64_t>());
  }

  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  std::vector<long> shape(const std::string& name) const { return shapeOf(info(name).shape); }
  io::Dtype dtype(const std::string& name) const { return info(name).dtype; }

  /// The tensor's values (any float dtype, converted exactly) in row-major order.
  std::vector<double> read(const std::string& name) {
    read_.insert(name);
    return file(name).readFlat<double>(name);
  }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& entry : where_) out.push_back(entry.first);
    return out;
  }
  std::vector<std::string> unread() const {
    std::vector<std::string> out;
    for (const auto& entry : where_) {
      if (read_.count(entry.first) == 0) out.push_back(entry.first);
    }
    return out;
  }

 private:
  const io::SafetensorsFile& file(const std::string& name) const {
    const auto found = where_.find(name);
    if (found == where_.end()) throw std::runtime_error("the checkpoint has no tensor " + name);
    return files_[found->second];
  }
  const io::TensorInfo& info(const std::string& name) const { return file(name).info(name); }

  std::vector<io::SafetensorsFile> files_;
  std::map<std::string, std::size_t> where_;
  std::set<std::string> read_;
};

inline std::string shapeText(const std::vector<long>& shape) {
  std::string text = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + ")";
}

inline void requireShape(const CheckpointTensors& t, const std::string& name,
                         const std::vector<long>& expected) {
  if (t.shape(name) != expected) {
    throw std::runtime_error(name + " has shape " + shapeText(t.shape(name)) + ", expected " +
                             shapeText(expected));
  }
}

/// A (rows, cols) weight as a matrix, its shape checked.
inline reference::NaiveFlaMatrix readMatrix(CheckpointTensors& t, const std::string& name,
                                            long rows, long cols) {
  requireShape(t, name, {rows, cols});
  const std::vector<double> values = t.read(name);
  return Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
      values.data(), rows, cols);
}

inline reference::NaiveFlaVector readVector(CheckpointTensors& t, const std::string& name,
                                            long size) {
  requireShape(t, name, {size});
  const std::vector<double> values = t.read(name);
  return Eigen::Map<const reference::NaiveFlaVector>(values.data(), size);
}

inline std::vector<double> readFlat(CheckpointTensors& t, const std::string& name,
                                    const std::vector<long>& shape) {
  requireShape(t, name, shape);
  return t.read(name);
}

/// Every tensor is stored in the dtype config.json's torch_dtype names.
inline void expectDtype(const CheckpointTensors& t, const std::string& torchDtype) {
  const std::string expected = safetensorsDtype(torchDtype);
  for (const std::string& name : t.names()) {
    EXPECT_EQ(io::dtypeName(t.dtype(name)), expected) << name;
  }
}

// ---------------------------------------------------------------------------------------------
// FLA (tests/data/fla/README.md)

/// A config.json number that may be null: nothing then.
inline std::optional<double> optionalNumber(const nlohmann::json& config, const std::string& key) {
  if (!config.contains(key) || config.at(key).is_null()) return std::nullopt;
  return config.at(key).get<double>();
}

/// FLA's configuration (README §1.3) resolved from config.json; dims cross-checked with shapes.
inline reference::NaiveFlaConfig flaConfig(const nlohmann::json& config) {
  reference::NaiveFlaConfig c;
  c.hidden = config.at("hidden_size").get<long>();
  c.layers = config.at("num_hidden_layers").get<long>();
  c.heads = config.at("num_heads").get<long>();
  c.kvHeads = config.at("num_kv_heads").is_null() ? c.heads : config.at("num_kv_heads").get<long>();
  const auto keyDim = static_cast<long>(std::trunc(c.hidden * config.at("expand_k").get<double>()));
  const auto valueDim =
      static_cast<long>(std::trunc(c.hidden * config.at("expand_v").get<double>()));
  EXPECT_EQ(keyDim % c.heads, 0);
  EXPECT_EQ(valueDim % c.heads, 0);
  c.keyDim = keyDim / c.heads;
  c.valueDim = valueDim / c.heads;
  if (const std::optional<double> size = optionalNumber(config, "intermediate_size")) {
    c.intermediate = static_cast<long>(*size);
  } else {
    // RetNetConfig's default 2 when absent, GatedMLP's 4 when null
    const double ratio = config.contains("hidden_ratio")
                             ? optionalNumber(config, "hidden_ratio").value_or(4.0)
                             : 2.0;
    const auto m = static_cast<long>(std::trunc(static_cast<double>(c.hidden) * ratio * 2.0 / 3.0));
    c.intermediate = 256 * ((m + 255) / 256);
  }
  c.vocab = config.at("vocab_size").get<long>();
  c.eps = optionalNumber(config, "norm_eps").value_or(config.at("rms_norm_eps").get<double>());
  c.tied = config.at("tie_word_embeddings").get<bool>();
  EXPECT_EQ(config.at("hidden_act").get<std::string>(), "swish");
  return c;
}

/// FLA's weights by their names (README §1.4): the head-norm name fuse_norm selects, the split or
/// fused MLP layout by the presence of up_proj; every tensor must be read.
inline reference::NaiveFlaWeights readFlaWeights(const reference::NaiveFlaConfig& c,
                                                 const nlohmann::json& config,
                                                 CheckpointTensors& t) {
  const long d = c.hidden, H = c.heads, Hkv = c.kvHeads, dk = c.keyDim, dv = c.valueDim;
  const long I = c.intermediate;
  reference::NaiveFlaWeights w;
  w.embedding = readMatrix(t, "model.embeddings.weight", c.vocab, d);
  w.finalNorm = readVector(t, "model.norm.weight", d);
  EXPECT_EQ(t.contains("lm_head.weight"), !c.tied);
  if (!c.tied) w.lmHead = readMatrix(t, "lm_head.weight", c.vocab, d);
  const bool fuseNorm = config.value("fuse_norm", true);
  for (long l = 0; l < c.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    reference::NaiveFlaLayerWeights layer;
    layer.attnNorm = readVector(t, p + "attn_norm.weight", d);
    layer.q = readMatrix(t, p + "attn.q_proj.weight", H * dk, d);
    layer.k = readMatrix(t, p + "attn.k_proj.weight", Hkv * dk, d);
    layer.v = readMatrix(t, p + "attn.v_proj.weight", Hkv * dv, d);
    layer.g = readMatrix(t, p + "attn.g_proj.weight", H * dv, d);
    layer.o = readMatrix(t, p + "attn.o_proj.weight", d, H * dv);
    // Exactly one head-norm name, the one fuse_norm selects.
    const std::string fused = p + "attn.g_norm_swish_gate.weight",
                      unfused = p + "attn.g_norm.weight";
    EXPECT_NE(t.contains(fused), t.contains(unfused)) << p;
    EXPECT_EQ(t.contains(fused), fuseNorm) << p;
    layer.headNorm = readVector(t, t.contains(fused) ? fused : unfused, dv);
    layer.mlpNorm = readVector(t, p + "mlp_norm.weight", d);
    // I from down_proj, which must agree with the config; the layout from the presence of up_proj.
    EXPECT_EQ(t.shape(p + "mlp.down_proj.weight"), (std::vector<long>{d, I}));
    layer.down = readMatrix(t, p + "mlp.down_proj.weight", d, I);
    if (t.contains(p + "mlp.up_proj.weight")) {
      layer.gate = readMatrix(t, p + "mlp.gate_proj.weight", I, d);
      layer.up = readMatrix(t, p + "mlp.up_proj.weight", I, d);
    } else {
      reference::naiveFlaSplitFusedGate(readMatrix(t, p + "mlp.gate_proj.weight", 2 * I, d),
                                        layer.gate, layer.up);
    }
    w.layers.push_back(std::move(layer));
  }
  EXPECT_TRUE(t.unread().empty()) << "unexpected tensor " << t.unread().front();
  return w;
}

// ---------------------------------------------------------------------------------------------
// syncdoth (tests/data/syncdoth/README.md)

/// syncdoth's model from a model directory (README §1): config.json and the weights.
struct SyncdothCheckpoint {
  reference::NaiveSyncdothWeights w;
  long chunk = 0;  ///< recurrent_chunk_size
  std::string torchDtype;
};

inline SyncdothCheckpoint readSyncdoth(const std::filesystem::path& dir, CheckpointTensors& t) {
  const nlohmann::json config = readJson(dir / "config.json");
  SyncdothCheckpoint sc;
  reference::NaiveSyncdothWeights& w = sc.w;
  const long D = config.at("decoder_embed_dim").get<long>();
  const long V = config.at("decoder_value_embed_dim").get<long>();
  const long F = config.at("decoder_ffn_embed_dim").get<long>();
  const long L = config.at("decoder_layers").get<long>();
  const long H = config.at("decoder_retention_heads").get<long>();
  const std::string activation = config.at("activation_fn").get<std::string>();
  EXPECT_TRUE(activation == "swish" || activation == "gelu") << activation;
  // The settings the model fixes (README §1.1): pre-norm blocks, a GLU FFN, no sub-LN.
  EXPECT_TRUE(config.at("use_glu").get<bool>());
  EXPECT_TRUE(config.at("subln").get<bool>());
  EXPECT_FALSE(config.at("deepnorm").get<bool>());
  EXPECT_TRUE(config.at("decoder_normalize_before").get<bool>());
  EXPECT_FALSE(config.at("use_ffn_rms_norm").get<bool>());
  w.embedDim = D;
  w.vocab = config.at("vocab_size").get<long>();
  w.eps = config.at("layernorm_eps").get<double>();
  w.embedScale = reference::naiveSyncdothEmbedScale(D, config.at("no_scale_embedding").get<bool>());
  w.useLmDecay = config.at("use_lm_decay").get<bool>();
  w.tied = config.at("tie_word_embeddings").get<bool>();
  sc.chunk = config.at("recurrent_chunk_size").get<long>();
  sc.torchDtype = config.at("torch_dtype").get<std::string>();

  w.embed = readFlat(t, "model.embed_tokens.weight", {w.vocab, D});
  EXPECT_EQ(t.contains("model.layernorm_embedding.weight"),
            config.at("layernorm_embedding").get<bool>());
  if (config.at("layernorm_embedding").get<bool>()) {
    w.embedNorm = readFlat(t, "model.layernorm_embedding.weight", {D});
  }
  w.finalNorm = readFlat(t, "model.layer_norm.weight", {D});
  EXPECT_EQ(t.contains("lm_head.weight"), !w.tied);
  if (!w.tied) w.lmHead = readFlat(t, "lm_head.weight", {w.vocab, D});
  for (long l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    reference::NaiveLayerWeights layer;
    layer.msr.embedDim = D;
    layer.msr.valueDim = V;
    layer.msr.heads = H;
    layer.msr.eps = w.eps;
    layer.msr.q = readFlat(t, p + "retention.q_proj.weight", {D, D});
    layer.msr.k = readFlat(t, p + "retention.k_proj.weight", {D, D});
    layer.msr.v = readFlat(t, p + "retention.v_proj.weight", {V, D});
    layer.msr.g = readFlat(t, p + "retention.g_proj.weight", {V, D});
    layer.msr.out = readFlat(t, p + "retention.out_proj.weight", {D, V});
    layer.ffnDim = F;
    layer.swish = activation == "swish";
    layer.retentionNorm = readFlat(t, p + "retention_layer_norm.weight", {D});
    layer.fc1 = readFlat(t, p + "ffn.fc1.weight", {F, D});
    layer.gate = readFlat(t, p + "ffn.gate.weight", {F, D});
    layer.fc2 = readFlat(t, p + "ffn.fc2.weight", {D, F});
    layer.finalNorm = readFlat(t, p + "final_layer_norm.weight", {D});
    w.layers.push_back(std::move(layer));
  }
  // The stored rel-pos buffers hold syncdoth's float32 computation in the file's dtype; the model
  // computes its own in float64 (README §4.3). They must agree with the schedules to the rounding
  // of their dtype (README §4.3: F32 angle ≤ ~6e-7, F32 use_lm_decay decay ≤ ~1e-5, F16 ≤ 2^-11).
  const long dk = D / H;
  const std::vector<double> angle = readFlat(t, "model.retnet_rel_pos.angle", {dk});
  const std::vector<double> decay = readFlat(t, "model.retnet_rel_pos.decay", {H});
  const bool half = safetensorsDtype(sc.torchDtype) == "F16";
  const auto maxRelative = [](const std::vector<double>& a, const std::vector<double>& ref) {
    double worst = 0.0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
      worst = std::max(worst, std::abs(a[i] - ref[i]) / std::abs(ref[i]));
    }
    return worst;
  };
  EXPECT_LE(maxRelative(angle, reference::naiveAngle(dk)), half ? 1e-3 : 2e-6);
  EXPECT_LE(maxRelative(decay, reference::naiveSyncdothLogDecay(H, w.useLmDecay)),
            half ? 1e-3 : 3e-5);
  EXPECT_TRUE(t.unread().empty()) << "unexpected tensor " << t.unread().front();
  return sc;
}

// ---------------------------------------------------------------------------------------------
// Comparisons

/// The time steps [from, to) of tokens (B, T).
inline std::vector<long> timeRange(const std::vector<long>& tokens, long batch, long time,
                                   long from, long to) {
  std::vector<long> out;
  for (long b = 0; b < batch; ++b) {
    for (long t = from; t < to; ++t) out.push_back(tokens[static_cast<std::size_t>(b * time + t)]);
  }
  return out;
}

/// Every comparison of a case, checked against its tolerance as a normwise error
/// (normwiseError); the worst error per kind is printed at the end (the figures the READMEs
/// quote).
class ErrorLog {
 public:
  explicit ErrorLog(std::string label) : label_(std::move(label)) {}

  void check(const std::string& kind, const std::string& detail, const std::vector<double>& got,
             const std::vector<double>& ref, double tolerance) {
    ASSERT_EQ(got.size(), ref.size()) << label_ << ": " << kind << " " << detail;
    const double error = normwiseError(got.data(), ref.data(), ref.size());
    EXPECT_LE(error, tolerance) << label_ << ": " << kind << " " << detail;
    double& worst = worst_[kind];
    worst = std::max(worst, error);
  }
  void print() const {
    for (const auto& [kind, error] : worst_) {
      std::printf("  [%s] %-34s worst normwise error %.2e\n", label_.c_str(), kind.c_str(), error);
    }
  }

 private:
  std::string label_;
  std::map<std::string, double> worst_;
};

}  // namespace retnet::testing
