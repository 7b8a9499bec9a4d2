// The naive double-precision oracles of the two checkpoint families beyond torchscale, against
// their golden data in tests/data (tests/data/README.md):
//   - tests/reference/naive_fla.hpp (FLA's RetNet, fla-hub checkpoints) against every case
//     directory under tests/data/fla: logits of the recurrent, parallel and chunkwise forms, every
//     layer's hidden state and final retention state, and state hand-overs between forms;
//   - tests/reference/naive_syncdoth.hpp (syncdoth's RetNetForCausalLM) against every case
//     directory under tests/data/syncdoth: logits of the parallel, recurrent and chunkwise forms
//     and of the parallel-prompt-then-recurrent path.
// Each case is read the way a loader reads a checkpoint: config.json and the weight files (one
// model.safetensors, or shards through model.safetensors.index.json) by the family's tensor
// names, every dimension from config.json and the tensor shapes. Tolerance: 1e-9 normwise
// relative, form for form (the READMEs' float64 figure; exact re-implementations land at ~1e-14).
#include "reference/naive_fla.hpp"
#include "reference/naive_syncdoth.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "retnet/io/safetensors.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using retnet::io::SafetensorsFile;
using retnet::reference::NaiveFlaConfig;
using retnet::reference::NaiveFlaForm;
using retnet::reference::NaiveFlaMatrix;
using retnet::reference::NaiveFlaOutput;
using retnet::reference::NaiveFlaState;
using retnet::reference::NaiveFlaVector;
using retnet::reference::NaiveFlaWeights;
using retnet::reference::NaiveForm;
using retnet::reference::NaiveLayerWeights;
using retnet::reference::NaiveSyncdothWeights;
using retnet::testing::normwiseError;

constexpr double kGoldenTolerance = 1e-9;

fs::path familyDir(const std::string& family) { return fs::path(RETNET_TEST_DATA_DIR) / family; }

/// The case directories of a family: every subdirectory of tests/data/<family> with a
/// config.json, sorted by name.
std::vector<std::string> caseNames(const std::string& family) {
  std::vector<std::string> names;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(familyDir(family), error)) {
    if (entry.is_directory() && fs::exists(entry.path() / "config.json")) {
      names.push_back(entry.path().filename().string());
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

/// A gtest parameter name for a case directory: its name with every other character as '_'.
std::string testName(const ::testing::TestParamInfo<std::string>& info) {
  std::string name = info.param;
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

json readJson(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path.string() + ": cannot open");
  return json::parse(in);
}

std::vector<long> shapeOf(const std::vector<Eigen::Index>& shape) {
  return std::vector<long>(shape.begin(), shape.end());
}

/// The weights of a checkpoint directory: model.safetensors, or the shards that
/// model.safetensors.index.json names, each tensor looked up through its weight_map. Keeps track
/// of the tensors read, so a test can check that none was left over.
class CheckpointTensors {
 public:
  explicit CheckpointTensors(const fs::path& dir) {
    const fs::path single = dir / "model.safetensors";
    if (fs::exists(single)) {
      files_.push_back(SafetensorsFile::open(single.string()));
      for (const std::string& name : files_.back().names()) where_[name] = 0;
      return;
    }
    const json index = readJson(dir / "model.safetensors.index.json");
    std::map<std::string, std::size_t> shardIndex;
    for (const auto& [name, shard] : index.at("weight_map").items()) {
      const std::string file = shard.get<std::string>();
      if (shardIndex.count(file) == 0) {
        shardIndex[file] = files_.size();
        files_.push_back(SafetensorsFile::open((dir / file).string()));
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
  retnet::io::Dtype dtype(const std::string& name) const { return info(name).dtype; }

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
  const SafetensorsFile& file(const std::string& name) const {
    const auto found = where_.find(name);
    if (found == where_.end()) throw std::runtime_error("the checkpoint has no tensor " + name);
    return files_[found->second];
  }
  const retnet::io::TensorInfo& info(const std::string& name) const {
    return file(name).info(name);
  }

  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::size_t> where_;
  std::set<std::string> read_;
};

std::string shapeText(const std::vector<long>& shape) {
  std::string text = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + ")";
}

void requireShape(const CheckpointTensors& t, const std::string& name,
                  const std::vector<long>& expected) {
  if (t.shape(name) != expected) {
    throw std::runtime_error(name + " has shape " + shapeText(t.shape(name)) + ", expected " +
                             shapeText(expected));
  }
}

/// A (rows, cols) weight as a matrix, its shape checked.
NaiveFlaMatrix readMatrix(CheckpointTensors& t, const std::string& name, long rows, long cols) {
  requireShape(t, name, {rows, cols});
  const std::vector<double> values = t.read(name);
  return Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
      values.data(), rows, cols);
}

NaiveFlaVector readVector(CheckpointTensors& t, const std::string& name, long size) {
  requireShape(t, name, {size});
  const std::vector<double> values = t.read(name);
  return Eigen::Map<const NaiveFlaVector>(values.data(), size);
}

std::vector<double> readFlat(CheckpointTensors& t, const std::string& name,
                             const std::vector<long>& shape) {
  requireShape(t, name, shape);
  return t.read(name);
}

/// The dtype the config's torch_dtype names.
std::string safetensorsDtype(const std::string& torchDtype) {
  if (torchDtype == "bfloat16") return "BF16";
  if (torchDtype == "float16") return "F16";
  if (torchDtype == "float32") return "F32";
  throw std::runtime_error("unexpected torch_dtype " + torchDtype);
}

void expectDtype(const CheckpointTensors& t, const std::string& torchDtype) {
  const std::string expected = safetensorsDtype(torchDtype);
  for (const std::string& name : t.names()) {
    EXPECT_EQ(retnet::io::dtypeName(t.dtype(name)), expected) << name;
  }
}

std::string metadata(const SafetensorsFile& file, const std::string& key) {
  const std::optional<std::string> value = file.metadataValue(key);
  if (!value) throw std::runtime_error(file.displayName() + ": no metadata key " + key);
  return *value;
}
long metadataLong(const SafetensorsFile& file, const std::string& key) {
  return std::stol(metadata(file, key));
}
bool metadataBool(const SafetensorsFile& file, const std::string& key) {
  const std::string value = metadata(file, key);
  if (value != "True" && value != "False") throw std::runtime_error(key + " is not a boolean");
  return value == "True";
}

std::vector<long> readTokens(const SafetensorsFile& golden, long& batch, long& time) {
  const std::vector<long> shape = shapeOf(golden.info("tokens").shape);
  if (shape.size() != 2) throw std::runtime_error("tokens must be (B, T)");
  batch = shape[0];
  time = shape[1];
  const std::vector<std::int64_t> ids = golden.readIntegers("tokens");
  return std::vector<long>(ids.begin(), ids.end());
}

/// The worst error seen per tensor kind, printed at the end of a case.
class Errors {
 public:
  /// Compares y with the golden tensor `name` of shape `shape`, records the error under `kind`.
  void expect(const SafetensorsFile& golden, const std::string& name, const std::string& kind,
              const std::vector<long>& shape, const std::vector<double>& y,
              const std::string& what = "") {
    ASSERT_EQ(shapeOf(golden.info(name).shape), shape) << name;
    const std::vector<double> ref = golden.readFlat<double>(name);
    ASSERT_EQ(y.size(), ref.size()) << name;
    const double error = normwiseError(y.data(), ref.data(), ref.size());
    EXPECT_LE(error, kGoldenTolerance) << name << " " << what;
    worst_[kind] = std::max(worst_[kind], error);
  }
  void print(const std::string& label) const {
    for (const auto& [kind, error] : worst_) {
      std::printf("  %s %-34s worst normwise error %.2e\n", label.c_str(), kind.c_str(), error);
    }
  }

 private:
  std::map<std::string, double> worst_;
};

// ---------------------------------------------------------------------------------------------
// FLA (tests/data/fla/README.md)

/// A config.json number that may be null: nothing then.
std::optional<double> optionalNumber(const json& config, const std::string& key) {
  if (!config.contains(key) || config.at(key).is_null()) return std::nullopt;
  return config.at(key).get<double>();
}

/// FLA's configuration (README §1.3) resolved from config.json; dims cross-checked with shapes.
NaiveFlaConfig flaConfig(const json& config) {
  NaiveFlaConfig c;
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
    const double ratio = optionalNumber(config, "hidden_ratio").value_or(4.0);
    const auto m = static_cast<long>(std::trunc(static_cast<double>(c.hidden) * ratio * 2.0 / 3.0));
    c.intermediate = 256 * ((m + 255) / 256);
  }
  c.vocab = config.at("vocab_size").get<long>();
  c.eps = optionalNumber(config, "norm_eps").value_or(config.at("rms_norm_eps").get<double>());
  c.tied = config.at("tie_word_embeddings").get<bool>();
  EXPECT_EQ(config.at("hidden_act").get<std::string>(), "swish");
  return c;
}

NaiveFlaWeights readFlaWeights(const NaiveFlaConfig& c, const json& config, CheckpointTensors& t) {
  const long d = c.hidden, H = c.heads, Hkv = c.kvHeads, dk = c.keyDim, dv = c.valueDim;
  const long I = c.intermediate;
  NaiveFlaWeights w;
  w.embedding = readMatrix(t, "model.embeddings.weight", c.vocab, d);
  w.finalNorm = readVector(t, "model.norm.weight", d);
  EXPECT_EQ(t.contains("lm_head.weight"), !c.tied);
  if (!c.tied) w.lmHead = readMatrix(t, "lm_head.weight", c.vocab, d);
  const bool fuseNorm = config.value("fuse_norm", true);
  for (long l = 0; l < c.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    retnet::reference::NaiveFlaLayerWeights layer;
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
      retnet::reference::naiveFlaSplitFusedGate(readMatrix(t, p + "mlp.gate_proj.weight", 2 * I, d),
                                                layer.gate, layer.up);
    }
    w.layers.push_back(std::move(layer));
  }
  EXPECT_TRUE(t.unread().empty()) << "unexpected tensor " << t.unread().front();
  return w;
}

constexpr NaiveFlaForm kFlaForms[] = {NaiveFlaForm::kRecurrent, NaiveFlaForm::kParallel,
                                      NaiveFlaForm::kChunkwise};
const char* flaFormName(NaiveFlaForm form) {
  return form == NaiveFlaForm::kRecurrent  ? "recurrent"
         : form == NaiveFlaForm::kParallel ? "parallel"
                                           : "chunkwise";
}

/// The time steps [from, to) of tokens (B, T).
std::vector<long> timeRange(const std::vector<long>& tokens, long batch, long time, long from,
                            long to) {
  std::vector<long> out;
  for (long b = 0; b < batch; ++b) {
    for (long t = from; t < to; ++t) out.push_back(tokens[std::size_t(b * time + t)]);
  }
  return out;
}

/// Two segments' logits (B·T1, V) and (B·T2, V) as one (B, T1+T2, V) row-major tensor.
std::vector<double> joinSegments(const NaiveFlaMatrix& a, const NaiveFlaMatrix& b, long batch) {
  const long t1 = a.rows() / batch, t2 = b.rows() / batch;
  NaiveFlaMatrix joined(a.rows() + b.rows(), a.cols());
  for (long i = 0; i < batch; ++i) {
    joined.middleRows(i * (t1 + t2), t1) = a.middleRows(i * t1, t1);
    joined.middleRows(i * (t1 + t2) + t1, t2) = b.middleRows(i * t2, t2);
  }
  return retnet::reference::naiveFlaFlatten(joined);
}

class FlaGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(FlaGolden, OracleMatchesGoldenData) {
  const fs::path dir = familyDir("fla") / GetParam();
  const json config = readJson(dir / "config.json");
  const NaiveFlaConfig c = flaConfig(config);
  CheckpointTensors tensors(dir);
  expectDtype(tensors, config.at("torch_dtype").get<std::string>());
  const NaiveFlaWeights w = readFlaWeights(c, config, tensors);

  const SafetensorsFile golden = SafetensorsFile::open((dir / "golden.safetensors").string());
  long B = 0, T = 0;
  const std::vector<long> tokens = readTokens(golden, B, T);
  const long C = metadataLong(golden, "chunk_size");
  // The golden file's copy of the configuration against what was derived above.
  EXPECT_EQ(metadata(golden, "kind"), "fla_retnet");
  EXPECT_EQ(metadataLong(golden, "seq_len"), T);
  EXPECT_EQ(metadataLong(golden, "batch"), B);
  EXPECT_EQ(metadataLong(golden, "hidden_size"), c.hidden);
  EXPECT_EQ(metadataLong(golden, "num_hidden_layers"), c.layers);
  EXPECT_EQ(metadataLong(golden, "num_heads"), c.heads);
  EXPECT_EQ(metadataLong(golden, "num_kv_heads"), c.kvHeads);
  EXPECT_EQ(metadataLong(golden, "head_k_dim"), c.keyDim);
  EXPECT_EQ(metadataLong(golden, "head_v_dim"), c.valueDim);
  EXPECT_EQ(metadataLong(golden, "intermediate_size"), c.intermediate);
  EXPECT_EQ(metadataLong(golden, "vocab_size"), c.vocab);
  EXPECT_EQ(std::stod(metadata(golden, "norm_eps")), c.eps);
  EXPECT_EQ(metadataBool(golden, "tie_word_embeddings"), c.tied);
  EXPECT_EQ(metadata(golden, "weights_dtype"),
            safetensorsDtype(config.at("torch_dtype").get<std::string>()));
  EXPECT_EQ(metadata(golden, "mlp_layout"),
            tensors.contains("model.layers.0.mlp.up_proj.weight") ? "split" : "fused");
  EXPECT_TRUE(tensors.contains("model.layers.0." + metadata(golden, "head_norm_name")));

  const std::vector<long> logitsShape{B, T, c.vocab}, hiddenShape{B, T, c.hidden},
      stateShape{B, c.heads, c.keyDim, c.valueDim};
  Errors errors;
  const auto expectOutput = [&](const NaiveFlaOutput& out, const std::string& form,
                                const std::string& what) {
    errors.expect(golden, "logits_" + form, "logits_" + form, logitsShape,
                  retnet::reference::naiveFlaFlatten(out.logits), what);
    for (long l = 0; l < c.layers; ++l) {
      const std::string suffix = "_" + std::to_string(l);
      errors.expect(golden, "hidden" + suffix, "hidden_l (every form)", hiddenShape,
                    retnet::reference::naiveFlaFlatten(out.hidden[std::size_t(l)]), what);
      errors.expect(golden, "state" + suffix, "state_l (every form)", stateShape,
                    retnet::reference::naiveFlaStateTensor(c, out.state, l), what);
    }
    EXPECT_EQ(out.state.position, T);
  };

  // Each form against its own logits, and every layer's hidden state and final state.
  for (const NaiveFlaForm form : kFlaForms) {
    SCOPED_TRACE(flaFormName(form));
    const NaiveFlaOutput out = retnet::reference::naiveFla(c, w, tokens, B, T, form, C);
    expectOutput(out, flaFormName(form), "");
    if (form == NaiveFlaForm::kParallel) {
      errors.expect(golden, "logits", "logits (= parallel)", logitsShape,
                    retnet::reference::naiveFlaFlatten(out.logits));
    }
  }
  // Other chunk sizes (1, one that leaves a last chunk of length 1 when it can, one above T):
  // the same function, the same final states (README §2.6: a short last chunk decays by γ^n).
  for (const long chunk : {1L, T > 2 ? T - 1 : 1L, T + 3}) {
    const NaiveFlaOutput out =
        retnet::reference::naiveFla(c, w, tokens, B, T, NaiveFlaForm::kChunkwise, chunk);
    expectOutput(out, "chunkwise", "chunk " + std::to_string(chunk));
  }
  // Hand-overs: a prefix in one form, the rest in another from the prefix's states at its
  // position, against the recurrent logits and the final states (README §2.6, continuing).
  if (T > 1) {
    const long P = T / 2;
    const std::vector<long> head = timeRange(tokens, B, T, 0, P),
                            tail = timeRange(tokens, B, T, P, T);
    const std::pair<NaiveFlaForm, NaiveFlaForm> handovers[] = {
        {NaiveFlaForm::kChunkwise, NaiveFlaForm::kRecurrent},
        {NaiveFlaForm::kRecurrent, NaiveFlaForm::kParallel},
        {NaiveFlaForm::kParallel, NaiveFlaForm::kChunkwise}};
    for (const auto& [first, second] : handovers) {
      const std::string what =
          std::string(flaFormName(first)) + " prefix then " + flaFormName(second);
      SCOPED_TRACE(what);
      const NaiveFlaOutput a = retnet::reference::naiveFla(c, w, head, B, P, first, C);
      ASSERT_EQ(a.state.position, P);
      const NaiveFlaOutput b =
          retnet::reference::naiveFla(c, w, tail, B, T - P, second, C, &a.state);
      errors.expect(golden, "logits_recurrent", "hand-over logits", logitsShape,
                    joinSegments(a.logits, b.logits, B), what);
      for (long l = 0; l < c.layers; ++l) {
        errors.expect(golden, "state_" + std::to_string(l), "hand-over state_l", stateShape,
                      retnet::reference::naiveFlaStateTensor(c, b.state, l), what);
      }
    }
  }
  errors.print(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Cases, FlaGolden, ::testing::ValuesIn(caseNames("fla")), testName);

// Grouped key/value heads and expand_k 0.5 are not in the shipped cases: the forms must agree on
// random weights there too (they compute the same function in FLA), with chunks of every kind.
TEST(FlaOracle, GroupedHeadsFormsAgree) {
  NaiveFlaConfig c;
  c.hidden = 32;
  c.layers = 2;
  c.heads = 4;
  c.kvHeads = 2;
  c.keyDim = 4;
  c.valueDim = 8;
  c.intermediate = 48;
  c.vocab = 23;
  c.eps = 1e-5;
  c.tied = true;
  using retnet::testing::randomValues;
  std::uint64_t seed = 1;
  const auto matrix = [&](long rows, long cols, double scale) {
    const std::vector<double> v = randomValues(std::size_t(rows * cols), seed++, scale);
    return NaiveFlaMatrix(Eigen::Map<const NaiveFlaMatrix>(v.data(), rows, cols));
  };
  const auto norm = [&](long size) { return NaiveFlaVector(matrix(size, 1, 0.2).array() + 1.0); };
  NaiveFlaWeights w;
  w.embedding = matrix(c.vocab, c.hidden, 0.5);
  w.finalNorm = norm(c.hidden);
  const double s = 1.0 / std::sqrt(double(c.hidden));
  for (long l = 0; l < c.layers; ++l) {
    retnet::reference::NaiveFlaLayerWeights layer;
    layer.attnNorm = norm(c.hidden);
    layer.q = matrix(c.heads * c.keyDim, c.hidden, 1.5 * s);
    layer.k = matrix(c.kvHeads * c.keyDim, c.hidden, 1.5 * s);
    layer.v = matrix(c.kvHeads * c.valueDim, c.hidden, s);
    layer.g = matrix(c.heads * c.valueDim, c.hidden, s);
    layer.o = matrix(c.hidden, c.heads * c.valueDim, 1.0 / std::sqrt(double(c.heads * c.valueDim)));
    layer.headNorm = norm(c.valueDim);
    layer.mlpNorm = norm(c.hidden);
    layer.gate = matrix(c.intermediate, c.hidden, s);
    layer.up = matrix(c.intermediate, c.hidden, s);
    layer.down = matrix(c.hidden, c.intermediate, 1.0 / std::sqrt(double(c.intermediate)));
    w.layers.push_back(layer);
  }
  const long B = 3, T = 29;
  std::vector<long> tokens;
  for (long i = 0; i < B * T; ++i) tokens.push_back((i * 7 + 3) % c.vocab);
  using retnet::reference::naiveFla;
  const NaiveFlaOutput ref = naiveFla(c, w, tokens, B, T, NaiveFlaForm::kRecurrent);
  const std::vector<double> refLogits = retnet::reference::naiveFlaFlatten(ref.logits);
  const std::pair<NaiveFlaForm, long> runs[] = {{NaiveFlaForm::kParallel, 0},
                                                {NaiveFlaForm::kChunkwise, 1},
                                                {NaiveFlaForm::kChunkwise, 4},
                                                {NaiveFlaForm::kChunkwise, 7},
                                                {NaiveFlaForm::kChunkwise, 64}};
  for (const auto& [form, chunk] : runs) {
    SCOPED_TRACE(std::string(flaFormName(form)) + " chunk " + std::to_string(chunk));
    const NaiveFlaOutput out = naiveFla(c, w, tokens, B, T, form, chunk);
    const std::vector<double> logits = retnet::reference::naiveFlaFlatten(out.logits);
    EXPECT_LE(normwiseError(logits.data(), refLogits.data(), refLogits.size()), 1e-13);
    for (long l = 0; l < c.layers; ++l) {
      const std::vector<double> state = retnet::reference::naiveFlaStateTensor(c, out.state, l);
      const std::vector<double> refState = retnet::reference::naiveFlaStateTensor(c, ref.state, l);
      EXPECT_LE(normwiseError(state.data(), refState.data(), refState.size()), 1e-13);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// syncdoth (tests/data/syncdoth/README.md)

/// syncdoth's model from a case directory (README §1): config.json and the weights.
struct SyncdothCase {
  NaiveSyncdothWeights w;
  long chunk = 0;
  std::string torchDtype;
};

SyncdothCase readSyncdoth(const fs::path& dir, CheckpointTensors& t) {
  const json config = readJson(dir / "config.json");
  SyncdothCase sc;
  NaiveSyncdothWeights& w = sc.w;
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
  w.embedScale =
      retnet::reference::naiveSyncdothEmbedScale(D, config.at("no_scale_embedding").get<bool>());
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
    NaiveLayerWeights layer;
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
  EXPECT_LE(maxRelative(angle, retnet::reference::naiveAngle(dk)), half ? 1e-3 : 2e-6);
  EXPECT_LE(maxRelative(decay, retnet::reference::naiveSyncdothLogDecay(H, w.useLmDecay)),
            half ? 1e-3 : 3e-5);
  EXPECT_TRUE(t.unread().empty()) << "unexpected tensor " << t.unread().front();
  return sc;
}

class SyncdothGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(SyncdothGolden, OracleMatchesGoldenData) {
  const fs::path dir = familyDir("syncdoth") / GetParam();
  CheckpointTensors tensors(dir);
  const SyncdothCase sc = readSyncdoth(dir, tensors);
  expectDtype(tensors, sc.torchDtype);
  const NaiveSyncdothWeights& w = sc.w;

  const SafetensorsFile golden = SafetensorsFile::open((dir / "golden.safetensors").string());
  long B = 0, T = 0;
  const std::vector<long> tokens = readTokens(golden, B, T);
  const long k = metadataLong(golden, "k");
  const long H = w.layers.front().msr.heads;
  EXPECT_EQ(metadata(golden, "kind"), "syncdoth_retnet");
  EXPECT_EQ(metadataLong(golden, "seq_len"), T);
  EXPECT_EQ(metadataLong(golden, "batch"), B);
  EXPECT_EQ(metadataLong(golden, "chunk_size"), sc.chunk);
  EXPECT_EQ(metadataLong(golden, "padded_len_chunkwise"), (T + sc.chunk - 1) / sc.chunk * sc.chunk);
  EXPECT_EQ(metadataLong(golden, "embed_dim"), w.embedDim);
  EXPECT_EQ(metadataLong(golden, "value_dim"), w.layers.front().msr.valueDim);
  EXPECT_EQ(metadataLong(golden, "ffn_dim"), w.layers.front().ffnDim);
  EXPECT_EQ(metadataLong(golden, "layers"), static_cast<long>(w.layers.size()));
  EXPECT_EQ(metadataLong(golden, "heads"), H);
  EXPECT_EQ(metadataLong(golden, "vocab_size"), w.vocab);
  EXPECT_EQ(metadataBool(golden, "use_lm_decay"), w.useLmDecay);
  EXPECT_EQ(metadataBool(golden, "tie_word_embeddings"), w.tied);
  EXPECT_EQ(metadataBool(golden, "layernorm_embedding"), !w.embedNorm.empty());
  EXPECT_EQ(std::stod(metadata(golden, "layernorm_eps")), w.eps);
  EXPECT_NEAR(std::stod(metadata(golden, "embed_scale")), w.embedScale, 1e-14 * w.embedScale);
  const json gammas = json::parse(metadata(golden, "gammas"));
  const std::vector<double> ownGammas = retnet::reference::naiveSyncdothGammas(H, w.useLmDecay);
  ASSERT_EQ(gammas.size(), ownGammas.size());
  for (std::size_t h = 0; h < ownGammas.size(); ++h) {
    EXPECT_NEAR(gammas[h].get<double>(), ownGammas[h], 1e-15) << "head " << h;
  }

  const std::vector<long> shape{B, T, w.vocab};
  Errors errors;
  using retnet::reference::naiveSyncdoth;
  errors.expect(golden, "logits_parallel", "logits_parallel", shape,
                naiveSyncdoth(w, tokens, B, T, NaiveForm::kParallel));
  errors.expect(golden, "logits_recurrent", "logits_recurrent", shape,
                naiveSyncdoth(w, tokens, B, T, NaiveForm::kRecurrent));
  if (golden.contains("logits_chunkwise")) {
    errors.expect(golden, "logits_chunkwise", "logits_chunkwise", shape,
                  naiveSyncdoth(w, tokens, B, T, NaiveForm::kChunkwise, sc.chunk));
  }
  errors.expect(golden, "logits_prefill_then_decode", "logits_prefill_then_decode", shape,
                retnet::reference::naiveSyncdothPrefillThenDecode(w, tokens, B, T, k));
  errors.print(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Cases, SyncdothGolden, ::testing::ValuesIn(caseNames("syncdoth")),
                         testName);

// The syncdoth oracle restates torchscale's three retention forms with a decay argument; under
// torchscale's schedule, with no embedding norm and an untied head, it must be naive_msr.hpp's
// RetNetDecoder to rounding. Then use_lm_decay: with the group-norm eps ~ 0 every form and the
// prompt hand-over divide out their own factors and agree (README §5: ≤ 1.1e-15).
TEST(SyncdothOracle, AgreesWithTorchscaleOracleAndAcrossForms) {
  const std::vector<std::string> cases = caseNames("syncdoth");
  ASSERT_FALSE(cases.empty());
  const fs::path dir = familyDir("syncdoth") / cases.front();
  CheckpointTensors tensors(dir);
  NaiveSyncdothWeights w = readSyncdoth(dir, tensors).w;
  const long B = 2, T = 21, C = 8, k = 9;
  std::vector<long> tokens;
  for (long i = 0; i < B * T; ++i) tokens.push_back((i * 5 + 1) % w.vocab);

  w.embedNorm.clear();
  w.useLmDecay = false;
  if (w.tied) {
    w.tied = false;
    w.lmHead = w.embed;
  }
  retnet::reference::NaiveDecoderWeights torchscale;
  torchscale.vocab = w.vocab;
  torchscale.embed = w.embed;
  torchscale.embedScale = w.embedScale;
  torchscale.finalNorm = w.finalNorm;
  torchscale.outputProjection = w.lmHead;
  torchscale.layers = w.layers;
  for (const NaiveForm form :
       {NaiveForm::kParallel, NaiveForm::kChunkwise, NaiveForm::kRecurrent}) {
    const std::vector<double> ours = retnet::reference::naiveSyncdoth(w, tokens, B, T, form, C);
    const std::vector<double> ref =
        retnet::reference::naiveDecoder(torchscale, tokens, B, T, form, C);
    EXPECT_LE(normwiseError(ours.data(), ref.data(), ref.size()), 1e-13);
  }

  w.useLmDecay = true;
  w.eps = 1e-300;
  for (NaiveLayerWeights& layer : w.layers) layer.msr.eps = w.eps;
  using retnet::reference::naiveSyncdoth;
  const std::vector<double> parallel = naiveSyncdoth(w, tokens, B, T, NaiveForm::kParallel);
  const std::vector<std::vector<double>> others = {
      naiveSyncdoth(w, tokens, B, T, NaiveForm::kChunkwise, C),
      naiveSyncdoth(w, tokens, B, T, NaiveForm::kRecurrent),
      retnet::reference::naiveSyncdothPrefillThenDecode(w, tokens, B, T, k)};
  for (const std::vector<double>& other : others) {
    EXPECT_LE(normwiseError(other.data(), parallel.data(), parallel.size()), 1e-12);
  }
}

TEST(FamilyOracles, CaseDirectoriesPresent) {
  EXPECT_FALSE(caseNames("fla").empty());
  EXPECT_FALSE(caseNames("syncdoth").empty());
}

}  // namespace
