// retnet::io::loadModel on FLA and syncdoth checkpoints of shapes the shipped golden cases do not
// have (tests/data/fla/README.md and tests/data/syncdoth/README.md list them as what acceptance
// checks may use). Each case is written by the test itself as a real model directory in a
// temporary directory: config.json with the family's full key set (the shipped cases' set, values
// changed), then model.safetensors or shards with model.safetensors.index.json, from random
// weights in F32, F16 or BF16. The directory is loaded as RetNetModel<double> and <float> and
// every form is compared with the naive float64 oracles (tests/reference/naive_fla.hpp,
// naive_syncdoth.hpp) run on exactly the stored weight values, read from the directory as
// test_family_oracles reads the golden cases (tests/family_checkpoints.hpp).
//
// FLA: the logits of forwardParallel, forwardChunkwise (chunk sizes with a ragged last chunk of
// length 1 and one above T) and forwardRecurrent against the oracle's same form, every layer's
// final state S (dk x dv per batch item and query head) against the oracle's, every layer's hidden
// state (embedding(), then blocks() in the parallel form), and prefill() of k tokens followed by
// decode() steps and forwardRecurrent with the state against the one-pass logits and final states.
// syncdoth: the logits of every form against the oracle's same form (syncdoth's forms differ from
// each other through the group-norm eps, README §5), and generate's path (forwardParallel on
// tokens[:, :k] with a state, then forwardRecurrent on the rest) against the oracle's
// prefill-then-decode (README §4.5).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "family_checkpoints.hpp"
#include "reference/naive_fla.hpp"
#include "reference/naive_syncdoth.hpp"
#include "retnet/io/load_model.hpp"
#include "retnet/io/safetensors_writer.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using retnet::Index;
using retnet::RowMatrix;
using retnet::Tensor3;
using retnet::TokenMatrix;
using retnet::io::Dtype;
using retnet::reference::NaiveFlaConfig;
using retnet::reference::NaiveFlaForm;
using retnet::reference::NaiveFlaOutput;
using retnet::reference::NaiveFlaWeights;
using retnet::reference::NaiveForm;
using retnet::reference::NaiveSyncdothWeights;
using retnet::testing::CheckpointTensors;
using retnet::testing::ErrorLog;
using retnet::testing::flaConfig;
using retnet::testing::readFlaWeights;
using retnet::testing::readJson;
using retnet::testing::readSyncdoth;
using retnet::testing::shapeOf;
using retnet::testing::SyncdothCheckpoint;
using retnet::testing::TempDir;
using retnet::testing::torchDtypeName;

// Tolerances, normwise max|a − b| / max|ref| per tensor (both READMEs' figures, §3 and §5).
//  - double ≤ 1e-9: the weights are exact in double and the oracles are float64 restatements of
//    the same functions, so only summation order differs (independent float64 implementations of
//    these models agree to ≤ 2.5e-14, also at T = 1024); 1e-9 still catches every eps-level
//    mistake the READMEs list (the smallest, syncdoth's stored rel-pos buffers used instead of the
//    float64 schedule, moves the logits by ≥ 4.7e-8).
//  - float ≤ 1e-4: the weights are exact in float too (F32/F16/BF16 values), so the error is
//    float32 rounding of the activations and states: FLA's own float32 code is 1e-6 off on short
//    sequences and 1.6e-5 at T = 1024, syncdoth's float32 8.6e-7 (READMEs).
template <typename Scalar>
double toleranceOf() {
  return std::is_same_v<Scalar, double> ? 1e-9 : 1e-4;
}
template <typename Scalar>
const char* scalarName() {
  return std::is_same_v<Scalar, double> ? "double" : "float";
}

// ---------------------------------------------------------------------------------------------
// Model directories

/// `x` rounded to the nearest value of `dtype` (ties to even), as a double. Written from the
/// formats' definitions rather than with the library's codec, so the oracle's weights do not
/// depend on the code under test: F16 has 11 significant bits down to 2^−14 (subnormals below,
/// with the spacing of that binade), BF16 8 bits with float32's exponent range. The weights here
/// are far from overflow.
double roundTo(Dtype dtype, double x) {
  if (dtype == Dtype::F32) return static_cast<double>(static_cast<float>(x));
  if (x == 0.0) return x;
  const int mantissaBits = dtype == Dtype::F16 ? 10 : 7;
  const int minExponent = dtype == Dtype::F16 ? -14 : -126;
  int exponent = 0;
  std::frexp(x, &exponent);  // |x| in [2^(exponent − 1), 2^exponent)
  const int quantum = std::max(exponent - 1, minExponent) - mantissaBits;
  return std::ldexp(std::nearbyint(std::ldexp(x, -quantum)), quantum);  // nearbyint: ties to even
}

/// A number for config.json: an integral value as an integer (as Python writes 1 and 0.5).
json number(double value) {
  if (value == std::floor(value)) return json(static_cast<std::int64_t>(value));
  return json(value);
}

struct NamedTensor {
  std::vector<Index> shape;
  std::vector<double> values;  ///< row-major, exactly representable in the checkpoint's dtype
};
/// A checkpoint in memory, by tensor name (sorted, as the safetensors library writes them).
using Tensors = std::map<std::string, NamedTensor>;

/// FNV-1a: a seed from a case name that is the same on every platform.
std::uint64_t seedOf(const std::string& name) {
  std::uint64_t hash = 1469598103934665603ull;
  for (const char c : name) hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return hash;
}

/// Draws random weights already rounded to the checkpoint's dtype, so the file holds exactly the
/// values the oracle uses.
class WeightMaker {
 public:
  WeightMaker(Dtype dtype, std::uint64_t seed) : dtype_(dtype), seed_(seed) {}

  /// N(0, scale²) entries.
  void random(const std::string& name, std::vector<Index> shape, double scale) {
    Index count = 1;
    for (const Index extent : shape) count *= extent;
    std::vector<double> values =
        retnet::testing::randomValues(static_cast<std::size_t>(count), seed_++, scale);
    set(name, std::move(shape), std::move(values));
  }
  /// A norm weight: 1 + 0.2·N(0, 1).
  void norm(const std::string& name, Index size) {
    std::vector<double> values =
        retnet::testing::randomValues(static_cast<std::size_t>(size), seed_++, 0.2);
    for (double& value : values) value += 1.0;
    set(name, {size}, std::move(values));
  }
  void set(const std::string& name, std::vector<Index> shape, std::vector<double> values) {
    for (double& value : values) value = roundTo(dtype_, value);
    tensors_[name] = NamedTensor{std::move(shape), std::move(values)};
  }

  const Tensors& tensors() const { return tensors_; }

 private:
  Dtype dtype_;
  std::uint64_t seed_;
  Tensors tensors_;
};

void writeText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error(path.string() + ": cannot write");
}

/// A Hugging Face model directory: config.json (indent 2, sorted keys, newline) and the tensors
/// in one model.safetensors or, with shards > 1, in model-0000i-of-0000n.safetensors (the
/// sorted names split into n consecutive runs) with model.safetensors.index.json. Read back the
/// way the oracles' weights are (CheckpointTensors), the directory holds exactly `tensors`.
void writeModelDir(const fs::path& dir, const json& config, const Tensors& tensors, Dtype dtype,
                   int shards) {
  writeText(dir / "config.json", config.dump(2) + "\n");
  std::vector<std::string> names;
  for (const auto& entry : tensors) names.push_back(entry.first);
  const auto shardName = [&](int i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", i + 1, shards);
    return std::string(name);
  };
  json weightMap = json::object();
  std::uint64_t totalBytes = 0;
  const std::size_t count = names.size(), parts = static_cast<std::size_t>(shards);
  for (std::size_t part = 0; part < parts; ++part) {
    retnet::io::SafetensorsWriter writer;
    writer.addMetadata("format", "pt");
    for (std::size_t i = part * count / parts; i < (part + 1) * count / parts; ++i) {
      const NamedTensor& tensor = tensors.at(names[i]);
      writer.addTensor(names[i], dtype, tensor.shape, tensor.values.data());
      totalBytes += tensor.values.size() * retnet::io::dtypeSize(dtype);
      if (shards > 1) weightMap[names[i]] = shardName(static_cast<int>(part));
    }
    writer.write(
        (dir / (shards > 1 ? shardName(static_cast<int>(part)) : "model.safetensors")).string());
  }
  if (shards > 1) {
    const json index = {{"metadata", {{"total_size", totalBytes}}}, {"weight_map", weightMap}};
    writeText(dir / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  EXPECT_EQ(fs::exists(dir / "model.safetensors"), shards == 1);
  EXPECT_EQ(fs::exists(dir / "model.safetensors.index.json"), shards > 1);
  CheckpointTensors stored(dir);
  EXPECT_EQ(stored.names(), names);
  for (const auto& [name, tensor] : tensors) {
    EXPECT_EQ(stored.dtype(name), dtype) << name;
    EXPECT_EQ(stored.shape(name), shapeOf(tensor.shape)) << name;
    EXPECT_EQ(stored.read(name), tensor.values) << name;
  }
}

/// Uniform token ids in [0, vocab), each row its own; token 0 is 1 (bos) when T > 1.
std::vector<long> randomTokens(long batch, long time, long vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<long> pick(0, vocab - 1);
  std::vector<long> tokens;
  for (long b = 0; b < batch; ++b) {
    for (long t = 0; t < time; ++t) tokens.push_back(t == 0 && time > 1 ? 1 : pick(rng));
  }
  return tokens;
}

/// Columns [from, to) of tokens (B, T) as the model's TokenMatrix.
TokenMatrix tokenColumns(const std::vector<long>& tokens, long batch, long time, long from,
                         long to) {
  TokenMatrix m(batch, to - from);
  for (long b = 0; b < batch; ++b) {
    for (long t = from; t < to; ++t) {
      m(b, t - from) = tokens[static_cast<std::size_t>(b * time + t)];
    }
  }
  return m;
}

template <typename Scalar>
std::vector<double> flatten(const Tensor3<Scalar>& t) {
  return std::vector<double>(t.data(), t.data() + t.size());
}

/// Rows [from, to) of every batch item of a flattened (B, T, V) tensor.
std::vector<double> timeRows(const std::vector<double>& full, long batch, long time, long vocab,
                             long from, long to) {
  std::vector<double> out;
  for (long b = 0; b < batch; ++b) {
    const auto begin = full.begin() + (b * time + from) * vocab;
    out.insert(out.end(), begin, begin + (to - from) * vocab);
  }
  return out;
}

/// Writes segment logits (B, n, V) into rows [offset, offset + n) of a flattened (B, T, V).
template <typename Scalar>
void putRows(std::vector<double>& full, long time, long offset, const Tensor3<Scalar>& segment) {
  const long batch = segment.dimension(0), n = segment.dimension(1), vocab = segment.dimension(2);
  for (long b = 0; b < batch; ++b) {
    for (long t = 0; t < n; ++t) {
      for (long v = 0; v < vocab; ++v) {
        full[static_cast<std::size_t>((b * time + offset + t) * vocab + v)] =
            static_cast<double>(segment(b, t, v));
      }
    }
  }
}
/// The same for one position's logits (B, V).
template <typename Scalar>
void putRow(std::vector<double>& full, long time, long offset, const RowMatrix<Scalar>& row) {
  for (long b = 0; b < row.rows(); ++b) {
    for (long v = 0; v < row.cols(); ++v) {
      full[static_cast<std::size_t>((b * time + offset) * row.cols() + v)] =
          static_cast<double>(row(b, v));
    }
  }
}

/// Prompt lengths: 1, one inside, T − 1 and T (distinct, in [1, T]).
std::vector<long> promptLengths(long time) {
  std::set<long> ks = {1, std::max(1L, time / 2 + 1), std::max(1L, time - 1), time};
  return std::vector<long>(ks.begin(), ks.end());
}

/// The model's final state of layer l as FLA's (B, H, dk, dv) cache tensor, through matrix(b, h).
template <typename State>
std::vector<double> stateTensor(const State& state, std::size_t layer) {
  const auto& s = state.layers.at(layer);
  std::vector<double> out;
  for (Index b = 0; b < s.batch(); ++b) {
    for (Index h = 0; h < s.heads(); ++h) {
      const auto S = s.matrix(b, h);
      for (Index i = 0; i < S.rows(); ++i) {
        for (Index j = 0; j < S.cols(); ++j) out.push_back(static_cast<double>(S(i, j)));
      }
    }
  }
  return out;
}

template <typename State>
void expectPositions(const State& state, long batch, long position, const std::string& what) {
  ASSERT_EQ(state.batch(), batch) << what;
  for (long b = 0; b < batch; ++b) EXPECT_EQ(state.position(b), position) << what << " item " << b;
}

/// A case of either family: its defaults, named, with `change` applied.
template <typename Case>
Case namedCase(std::string name, const std::function<void(Case&)>& change) {
  Case c;
  c.name = std::move(name);
  change(c);
  return c;
}

/// The test name of a case.
template <typename Case>
std::string caseName(const ::testing::TestParamInfo<Case>& info) {
  return info.param.name;
}

/// The oracle's outputs for a case, computed once for both scalars: the tokens (B, T), then the
/// output of each form (chunkwise: per chunk size).
template <typename Output>
struct Reference {
  std::vector<long> tokens;
  Output parallel, recurrent;
  std::map<long, Output> chunkwise;

  /// Every form's output from oracle(form, chunk); `Form` is the oracle's form enum.
  template <typename Form, typename Oracle>
  void computeForms(const std::vector<long>& chunks, Oracle&& oracle) {
    parallel = oracle(Form::kParallel, 0L);
    recurrent = oracle(Form::kRecurrent, 0L);
    for (const long chunk : chunks) chunkwise[chunk] = oracle(Form::kChunkwise, chunk);
  }
};

/// The model over all of ref.tokens in every form the reference holds, each from an empty state:
/// expect(form, detail, logits, state, the reference's output of that form).
template <typename Model, typename Output, typename Expect>
void forEachForm(const Model& model, const Reference<Output>& ref, long batch, long time,
                 Expect&& expect) {
  using State = typename Model::State;
  const TokenMatrix tokens = tokenColumns(ref.tokens, batch, time, 0, time);
  {
    State state;
    expect("parallel", "", model.forwardParallel(tokens, state), state, ref.parallel);
  }
  for (const auto& [chunk, out] : ref.chunkwise) {
    State state;
    expect("chunkwise", "chunk " + std::to_string(chunk),
           model.forwardChunkwise(tokens, chunk, state), state, out);
  }
  {
    State state;
    expect("recurrent", "", model.forwardRecurrent(tokens, state), state, ref.recurrent);
  }
}

/// The model directory loaded as RetNetModel<Scalar>; the loader must have seen `family` and
/// weights of `dtype`.
template <typename Scalar>
retnet::RetNetModel<Scalar> loadChecked(const std::string& dir, retnet::io::ModelFamily family,
                                        Dtype dtype, retnet::io::ModelInfo& info) {
  retnet::RetNetModel<Scalar> model = retnet::io::loadModel<Scalar>(dir, &info);
  EXPECT_EQ(info.family, family);
  EXPECT_EQ(info.dtype, std::optional<Dtype>(dtype));
  return model;
}

// ---------------------------------------------------------------------------------------------
// FLA (tests/data/fla/README.md)

struct FlaCase {
  std::string name;
  long hidden = 32, layers = 2, heads = 2;
  long kvHeads = 0;  ///< num_kv_heads; 0 writes null (= heads)
  double expandK = 1.0, expandV = 2.0;
  long intermediateSize = 0;  ///< 0 writes null: I from hidden_ratio
  double hiddenRatio = 2.0;
  double eps = 1e-6;
  Dtype dtype = Dtype::F32;
  bool fuseNorm = true;  ///< false: the head-norm weight is attn.g_norm.weight
  bool fusedMlp = false;
  bool tied = false;
  int shards = 1;
  long vocab = 41, batch = 2, time = 25, chunk = 8;
};

void PrintTo(const FlaCase& c, std::ostream* out) { *out << c.name; }

std::vector<FlaCase> flaCases() {
  const auto flaCase = namedCase<FlaCase>;
  return {
      flaCase("Heads1", [](FlaCase& c) { c.heads = 1; }),
      // γ_h = 1 − 2^(−5−h) down to 1 − 2^−12.
      flaCase("Heads8",
              [](FlaCase& c) {
                c.hidden = 64;
                c.heads = 8;
                c.expandV = 1.0;
                c.batch = 1;
              }),
      flaCase("GroupedHeads4Kv2",
              [](FlaCase& c) {
                c.heads = 4;
                c.kvHeads = 2;
              }),
      flaCase("GroupedHeads4Kv1",
              [](FlaCase& c) {
                c.heads = 4;
                c.kvHeads = 1;
              }),
      flaCase("ExpandK05ExpandV1",
              [](FlaCase& c) {
                c.expandK = 0.5;
                c.expandV = 1.0;
              }),
      flaCase("ExplicitIntermediateSize", [](FlaCase& c) { c.intermediateSize = 72; }),
      // d = 160: ratio 3 gives I = 512 (ratio 2 would give 256). Short, to stay cheap in Debug.
      flaCase("HiddenRatio3",
              [](FlaCase& c) {
                c.hidden = 160;
                c.heads = 4;
                c.hiddenRatio = 3.0;
                c.layers = 1;
                c.batch = 1;
                c.time = 9;
                c.chunk = 4;
              }),
      flaCase("NormEps1e5", [](FlaCase& c) { c.eps = 1e-5; }),
      flaCase("F16Weights", [](FlaCase& c) { c.dtype = Dtype::F16; }),
      flaCase("BF16Weights", [](FlaCase& c) { c.dtype = Dtype::BF16; }),
      flaCase("UnfusedHeadNorm", [](FlaCase& c) { c.fuseNorm = false; }),
      flaCase("ThreeLayers", [](FlaCase& c) { c.layers = 3; }),
      flaCase("Hidden128",
              [](FlaCase& c) {
                c.hidden = 128;
                c.heads = 4;
                c.batch = 1;
                c.time = 13;
              }),
      flaCase("ThreeShards",
              [](FlaCase& c) {
                c.shards = 3;
                c.layers = 3;
              }),
      flaCase("FusedMlpUntiedHead", [](FlaCase& c) { c.fusedMlp = true; }),
      flaCase("TiedHead", [](FlaCase& c) { c.tied = true; }),
      flaCase("SingleToken",
              [](FlaCase& c) {
                c.batch = 1;
                c.time = 1;
              }),
      flaCase("Batch3", [](FlaCase& c) { c.batch = 3; }),
      // T = 1025 = 16·64 + 1: chunk 64 leaves a last chunk of one token. Tiny otherwise.
      flaCase("Long1025",
              [](FlaCase& c) {
                c.hidden = 16;
                c.expandV = 1.0;
                c.intermediateSize = 32;
                c.vocab = 29;
                c.batch = 1;
                c.time = 1025;
                c.chunk = 64;
              }),
  };
}

/// config.json with the key set of fla-hub/retnet-1.3B-100B (tests/data/fla/fla_small).
json flaConfigJson(const FlaCase& c) {
  return {{"_name_or_path", "retnet-tests/" + c.name},
          {"architectures", json::array({"RetNetForCausalLM"})},
          {"attn", nullptr},
          {"attn_mode", "chunk"},
          {"bos_token_id", 1},
          {"conv_size", 4},
          {"elementwise_affine", true},
          {"eos_token_id", 2},
          {"expand_k", number(c.expandK)},
          {"expand_v", number(c.expandV)},
          {"feature_map", nullptr},
          {"fuse_cross_entropy", true},
          {"fuse_norm", c.fuseNorm},
          {"hidden_act", "swish"},
          {"hidden_ratio", number(c.hiddenRatio)},
          {"hidden_size", c.hidden},
          {"initializer_range", 0.02},
          {"intermediate_size", c.intermediateSize > 0 ? json(c.intermediateSize) : json()},
          {"max_position_embeddings", 2048},
          {"model_type", "retnet"},
          {"norm_eps", c.eps},
          {"num_heads", c.heads},
          {"num_hidden_layers", c.layers},
          {"num_kv_heads", c.kvHeads > 0 ? json(c.kvHeads) : json()},
          {"rms_norm_eps", c.eps},
          {"share_conv_kernel", true},
          {"tie_word_embeddings", c.tied},
          {"torch_dtype", torchDtypeName(c.dtype)},
          {"transformers_version", "4.40.2"},
          {"use_cache", true},
          {"use_output_gate", true},
          {"use_short_conv", false},
          {"vocab_size", c.vocab}};
}

/// Random weights under FLA's names (README §1.4), drawn as README §4 describes.
Tensors flaTensors(const FlaCase& fc, const NaiveFlaConfig& c) {
  WeightMaker m(fc.dtype, seedOf("fla " + fc.name));
  const long d = c.hidden, H = c.heads, Hkv = c.kvHeads, dk = c.keyDim, dv = c.valueDim;
  const long I = c.intermediate;
  const double in = 1.0 / std::sqrt(static_cast<double>(d));
  m.random("model.embeddings.weight", {c.vocab, d}, 0.5);
  m.norm("model.norm.weight", d);
  if (!c.tied) m.random("lm_head.weight", {c.vocab, d}, in);
  for (long l = 0; l < c.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    m.norm(p + "attn_norm.weight", d);
    m.random(p + "attn.q_proj.weight", {H * dk, d}, 1.5 * in);
    m.random(p + "attn.k_proj.weight", {Hkv * dk, d}, 1.5 * in);
    m.random(p + "attn.v_proj.weight", {Hkv * dv, d}, in);
    m.random(p + "attn.g_proj.weight", {H * dv, d}, in);
    m.random(p + "attn.o_proj.weight", {d, H * dv}, 1.0 / std::sqrt(static_cast<double>(H * dv)));
    m.norm(p + (fc.fuseNorm ? "attn.g_norm_swish_gate.weight" : "attn.g_norm.weight"), dv);
    m.norm(p + "mlp_norm.weight", d);
    if (fc.fusedMlp) {
      m.random(p + "mlp.gate_proj.weight", {2 * I, d}, in);
    } else {
      m.random(p + "mlp.gate_proj.weight", {I, d}, in);
      m.random(p + "mlp.up_proj.weight", {I, d}, in);
    }
    m.random(p + "mlp.down_proj.weight", {d, I}, 1.0 / std::sqrt(static_cast<double>(I)));
  }
  return m.tensors();
}

/// Chunk sizes: the case's, T − 1 (which leaves a last chunk of one token; not for the long case,
/// whose own chunk does that) and T + 5 (above T).
std::vector<long> flaChunks(const FlaCase& fc) {
  std::set<long> chunks = {fc.chunk, fc.time + 5};
  if (fc.time > 2 && fc.time <= 256) chunks.insert(fc.time - 1);
  return std::vector<long>(chunks.begin(), chunks.end());
}

struct FlaReference : Reference<NaiveFlaOutput> {
  NaiveFlaConfig config;
};

template <typename Scalar>
void checkFlaModel(const FlaCase& fc, const std::string& dir, const FlaReference& ref,
                   ErrorLog& errors) {
  using Model = retnet::RetNetModel<Scalar>;
  using State = typename Model::State;
  const std::string s = scalarName<Scalar>();
  const double tolerance = toleranceOf<Scalar>();
  const NaiveFlaConfig& c = ref.config;
  const long B = fc.batch, T = fc.time, V = c.vocab;

  retnet::io::ModelInfo info;
  const Model model = loadChecked<Scalar>(dir, retnet::io::ModelFamily::kFla, fc.dtype, info);
  // What the loader made of config.json, against the oracle's reading of it.
  const retnet::RetNetModelConfig& mc = model.config();
  EXPECT_EQ(mc.vocab, c.vocab);
  EXPECT_EQ(mc.layers, c.layers);
  EXPECT_EQ(mc.tiedEmbedding, c.tied);
  EXPECT_EQ(mc.block.embedDim, c.hidden);
  EXPECT_EQ(mc.block.heads, c.heads);
  EXPECT_EQ(mc.block.retention().keyValueHeads(), c.kvHeads);
  EXPECT_EQ(mc.block.retention().keyDim(), c.keyDim);
  EXPECT_EQ(mc.block.retention().headValueDim(), c.valueDim);
  EXPECT_EQ(mc.block.ffnDim, c.intermediate);
  EXPECT_EQ(mc.block.eps, c.eps);

  const TokenMatrix tokens = tokenColumns(ref.tokens, B, T, 0, T);
  const auto expectRun = [&](const std::string& form, const std::string& detail,
                             const Tensor3<Scalar>& logits, const State& state,
                             const NaiveFlaOutput& out) {
    errors.check(s + " " + form + " logits", detail, flatten(logits),
                 retnet::reference::naiveFlaFlatten(out.logits), tolerance);
    ASSERT_EQ(state.layers.size(), static_cast<std::size_t>(c.layers));
    for (long l = 0; l < c.layers; ++l) {
      const auto& layer = state.layers[static_cast<std::size_t>(l)];
      ASSERT_EQ(layer.heads(), c.heads);
      ASSERT_EQ(layer.keyDim(), c.keyDim);
      ASSERT_EQ(layer.valueDim(), c.valueDim);
      errors.check(s + " " + form + " final state", detail + " layer " + std::to_string(l),
                   stateTensor(state, static_cast<std::size_t>(l)),
                   retnet::reference::naiveFlaStateTensor(c, out.state, l), tolerance);
    }
    expectPositions(state, B, T, form + " " + detail);
  };
  forEachForm(model, ref, B, T, expectRun);
  // Every layer's output: embedding(), then each block in the parallel form.
  {
    Tensor3<Scalar> x = model.embedding(tokens);
    for (long l = 0; l < c.layers; ++l) {
      x = model.blocks()[static_cast<std::size_t>(l)].forwardParallel(x);
      errors.check(
          s + " parallel hidden", "layer " + std::to_string(l), flatten(x),
          retnet::reference::naiveFlaFlatten(ref.parallel.hidden[static_cast<std::size_t>(l)]),
          tolerance);
    }
  }
  // prefill() of k tokens (chunkwise), then up to 8 decode() steps one token at a time, then
  // forwardRecurrent on the rest with the state: rows k − 1 … T − 1 and the final states are the
  // one-pass ones.
  const std::vector<double> oneLogits = retnet::reference::naiveFlaFlatten(ref.recurrent.logits);
  for (const long k : promptLengths(T)) {
    const std::string detail = "k " + std::to_string(k);
    State state;
    std::vector<double> got(static_cast<std::size_t>(B * T * V), 0.0);
    putRow(got, T, k - 1, model.prefill(tokenColumns(ref.tokens, B, T, 0, k), state, fc.chunk));
    long t = k;
    for (; t < std::min(T, k + 8); ++t) {
      std::vector<std::int64_t> step;
      for (long b = 0; b < B; ++b) step.push_back(ref.tokens[static_cast<std::size_t>(b * T + t)]);
      putRow(got, T, t, model.decode(step, state));
    }
    if (t < T) {
      putRows(got, T, t, model.forwardRecurrent(tokenColumns(ref.tokens, B, T, t, T), state));
    }
    errors.check(s + " prefill+decode logits", detail, timeRows(got, B, T, V, k - 1, T),
                 timeRows(oneLogits, B, T, V, k - 1, T), tolerance);
    for (long l = 0; l < c.layers; ++l) {
      errors.check(s + " prefill+decode final state", detail + " layer " + std::to_string(l),
                   stateTensor(state, static_cast<std::size_t>(l)),
                   retnet::reference::naiveFlaStateTensor(c, ref.recurrent.state, l), tolerance);
    }
    expectPositions(state, B, T, "prefill+decode " + detail);
  }
}

class FlaShapes : public ::testing::TestWithParam<FlaCase> {};

TEST_P(FlaShapes, LoadedModelMatchesOracle) {
  const FlaCase& fc = GetParam();
  const TempDir dir("load-model-shapes-fla-" + fc.name);
  const json config = flaConfigJson(fc);
  FlaReference ref;
  ref.config = flaConfig(config);
  writeModelDir(dir.path(), config, flaTensors(fc, ref.config), fc.dtype, fc.shards);
  // The oracle's weights read from the directory as test_family_oracles reads the golden cases.
  CheckpointTensors stored(dir.path());
  const NaiveFlaWeights w = readFlaWeights(ref.config, config, stored);
  const long B = fc.batch, T = fc.time;
  ref.tokens = randomTokens(B, T, fc.vocab, seedOf("fla tokens " + fc.name));
  ref.computeForms<NaiveFlaForm>(flaChunks(fc), [&](NaiveFlaForm form, long chunk) {
    return retnet::reference::naiveFla(ref.config, w, ref.tokens, B, T, form, chunk);
  });

  ErrorLog errors("fla " + fc.name);
  checkFlaModel<double>(fc, dir.path().string(), ref, errors);
  checkFlaModel<float>(fc, dir.path().string(), ref, errors);
  errors.print();
}

INSTANTIATE_TEST_SUITE_P(Cases, FlaShapes, ::testing::ValuesIn(flaCases()), caseName<FlaCase>);

// ---------------------------------------------------------------------------------------------
// syncdoth (tests/data/syncdoth/README.md)

struct SyncdothCase {
  std::string name;
  long embed = 32, value = 64, ffn = 64, layers = 2, heads = 4, vocab = 37;
  std::string activation = "swish";
  double eps = 1e-6;
  bool layernormEmbedding = true;
  bool noScaleEmbedding = false;
  bool useLmDecay = false;
  bool tied = false;
  Dtype dtype = Dtype::F32;
  int shards = 1;
  long batch = 2, time = 21;
  std::vector<long> chunks = {8, 26};   ///< the first is recurrent_chunk_size
  std::vector<long> prompts = {1, 10};  ///< prompt lengths k; T is always added
};

void PrintTo(const SyncdothCase& c, std::ostream* out) { *out << c.name; }

std::vector<SyncdothCase> syncdothCases() {
  const auto syncdothCase = namedCase<SyncdothCase>;
  return {
      syncdothCase("LmDecayHeads1",
                   [](SyncdothCase& c) {
                     c.useLmDecay = true;
                     c.heads = 1;
                   }),
      syncdothCase("LmDecayHeads3",
                   [](SyncdothCase& c) {
                     c.useLmDecay = true;
                     c.heads = 3;
                     c.embed = 24;
                     c.value = 48;
                   }),
      syncdothCase("LmDecayHeads8ThreeLayers",
                   [](SyncdothCase& c) {
                     c.useLmDecay = true;
                     c.heads = 8;
                     c.embed = 64;
                     c.value = 128;
                     c.layers = 3;
                   }),
      syncdothCase("TiedHead", [](SyncdothCase& c) { c.tied = true; }),
      syncdothCase("NoEmbedNormScaled", [](SyncdothCase& c) { c.layernormEmbedding = false; }),
      syncdothCase("NoEmbedNormUnscaled",
                   [](SyncdothCase& c) {
                     c.layernormEmbedding = false;
                     c.noScaleEmbedding = true;
                   }),
      syncdothCase("Gelu", [](SyncdothCase& c) { c.activation = "gelu"; }),
      syncdothCase("LayernormEps1e5", [](SyncdothCase& c) { c.eps = 1e-5; }),
      syncdothCase("ValueDimEqualsEmbedDim", [](SyncdothCase& c) { c.value = c.embed; }),
      syncdothCase("FfnNotMultipleOfD", [](SyncdothCase& c) { c.ffn = 100; }),
      syncdothCase("F16WeightsAndRelPos", [](SyncdothCase& c) { c.dtype = Dtype::F16; }),
      syncdothCase("TwoShards", [](SyncdothCase& c) { c.shards = 2; }),
      syncdothCase("SingleTokenBatch3",
                   [](SyncdothCase& c) {
                     c.batch = 3;
                     c.time = 1;
                     c.prompts = {};
                   }),
      syncdothCase("PromptEqualsT", [](SyncdothCase& c) { c.prompts = {}; }),
      // T = 300: chunk 64 does not divide it, 512 is above it; k = 137 is not a multiple of 64.
      syncdothCase("Long300",
                   [](SyncdothCase& c) {
                     c.useLmDecay = true;
                     c.batch = 1;
                     c.time = 300;
                     c.chunks = {64, 512};
                     c.prompts = {137};
                   }),
  };
}

/// config.json with the key set of syncdoth's RetNetConfig (tests/data/syncdoth/sd_small).
json syncdothConfigJson(const SyncdothCase& c) {
  return {{"activation_dropout", 0.0},
          {"activation_fn", c.activation},
          {"architectures", json::array({"RetNetForCausalLM"})},
          {"decoder_embed_dim", c.embed},
          {"decoder_ffn_embed_dim", c.ffn},
          {"decoder_layers", c.layers},
          {"decoder_normalize_before", true},
          {"decoder_retention_heads", c.heads},
          {"decoder_value_embed_dim", c.value},
          {"deepnorm", false},
          {"drop_path_rate", 0.0},
          {"dropout", 0.0},
          {"eos_token_id", 0},
          {"forward_impl", "parallel"},
          {"initializer_range", 0.02},
          {"is_decoder", true},
          {"layernorm_embedding", c.layernormEmbedding},
          {"layernorm_eps", c.eps},
          {"model_type", "retnet"},
          {"no_scale_embedding", c.noScaleEmbedding},
          {"output_retentions", false},
          {"pad_token_id", 0},
          {"recurrent_chunk_size", c.chunks.front()},
          {"subln", true},
          {"tie_word_embeddings", c.tied},
          {"torch_dtype", torchDtypeName(c.dtype)},
          {"transformers_version", "4.35.0"},
          {"use_cache", true},
          {"use_ffn_rms_norm", false},
          {"use_glu", true},
          {"use_lm_decay", c.useLmDecay},
          {"vocab_size", c.vocab},
          {"z_loss_coeff", 0.0}};
}

/// syncdoth's rel-pos buffers as its float32 process computes them (README §4.3), before they
/// are rounded to the file's dtype: angle = 1 / 10000^linspace(0, 1, dk/2), each twice; decay =
/// log(1 − 2^(−5−h)), or with use_lm_decay log(1 − exp(linspace(ln 1/32, ln 1/512, H))).
std::vector<double> syncdothFloat32Angle(long keyDim) {
  const long n = keyDim / 2;
  std::vector<double> angle;
  for (long i = 0; i < n; ++i) {
    const float exponent = n == 1 ? 0.0f : static_cast<float>(i) / static_cast<float>(n - 1);
    const float theta = 1.0f / std::pow(10000.0f, exponent);
    angle.push_back(theta);
    angle.push_back(theta);
  }
  return angle;
}
std::vector<double> syncdothFloat32Decay(long heads, bool useLmDecay) {
  std::vector<double> decay;
  for (long h = 0; h < heads; ++h) {
    float value = 0.0f;
    if (useLmDecay) {
      const float first = std::log(1.0f / 32.0f), last = std::log(1.0f / 512.0f);
      const float x = heads == 1 ? first
                                 : first + (last - first) * static_cast<float>(h) /
                                               static_cast<float>(heads - 1);
      value = std::log(1.0f - std::exp(x));
    } else {
      value = std::log(1.0f - std::exp2(static_cast<float>(-5 - h)));
    }
    decay.push_back(value);
  }
  return decay;
}

/// Random weights under syncdoth's names (README §1.2), with the rel-pos buffers.
Tensors syncdothTensors(const SyncdothCase& c) {
  WeightMaker m(c.dtype, seedOf("syncdoth " + c.name));
  const long D = c.embed, V = c.value, F = c.ffn;
  const double in = 1.0 / std::sqrt(static_cast<double>(D));
  m.random("model.embed_tokens.weight", {c.vocab, D}, 0.5);
  if (c.layernormEmbedding) m.norm("model.layernorm_embedding.weight", D);
  m.norm("model.layer_norm.weight", D);
  if (!c.tied) m.random("lm_head.weight", {c.vocab, D}, in);
  for (long l = 0; l < c.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    m.random(p + "retention.q_proj.weight", {D, D}, 1.5 * in);
    m.random(p + "retention.k_proj.weight", {D, D}, 1.5 * in);
    m.random(p + "retention.v_proj.weight", {V, D}, in);
    m.random(p + "retention.g_proj.weight", {V, D}, in);
    m.random(p + "retention.out_proj.weight", {D, V}, 1.0 / std::sqrt(static_cast<double>(V)));
    m.norm(p + "retention_layer_norm.weight", D);
    m.random(p + "ffn.fc1.weight", {F, D}, in);
    m.random(p + "ffn.gate.weight", {F, D}, in);
    m.random(p + "ffn.fc2.weight", {D, F}, 1.0 / std::sqrt(static_cast<double>(F)));
    m.norm(p + "final_layer_norm.weight", D);
  }
  m.set("model.retnet_rel_pos.angle", {D / c.heads}, syncdothFloat32Angle(D / c.heads));
  m.set("model.retnet_rel_pos.decay", {c.heads}, syncdothFloat32Decay(c.heads, c.useLmDecay));
  return m.tensors();
}

std::vector<long> syncdothPrompts(const SyncdothCase& c) {
  std::set<long> ks(c.prompts.begin(), c.prompts.end());
  ks.insert(c.time);
  return std::vector<long>(ks.begin(), ks.end());
}

struct SyncdothReference : Reference<std::vector<double>> {
  std::map<long, std::vector<double>> prefillThenDecode;  ///< by prompt length k
};

template <typename Scalar>
void checkSyncdothModel(const SyncdothCase& c, const std::string& dir, const SyncdothReference& ref,
                        ErrorLog& errors) {
  using Model = retnet::RetNetModel<Scalar>;
  using State = typename Model::State;
  const std::string s = scalarName<Scalar>();
  const double tolerance = toleranceOf<Scalar>();
  const long B = c.batch, T = c.time;

  retnet::io::ModelInfo info;
  const Model model = loadChecked<Scalar>(dir, retnet::io::ModelFamily::kSyncdoth, c.dtype, info);
  EXPECT_EQ(info.chunkSize, c.chunks.front());
  const retnet::RetNetModelConfig& mc = model.config();
  EXPECT_EQ(mc.vocab, c.vocab);
  EXPECT_EQ(mc.layers, c.layers);
  EXPECT_EQ(mc.tiedEmbedding, c.tied);
  EXPECT_EQ(mc.embedNorm, c.layernormEmbedding);
  EXPECT_EQ(mc.embedScale, retnet::reference::naiveSyncdothEmbedScale(c.embed, c.noScaleEmbedding));
  EXPECT_EQ(mc.block.embedDim, c.embed);
  EXPECT_EQ(mc.block.valueDim, c.value);
  EXPECT_EQ(mc.block.heads, c.heads);
  EXPECT_EQ(mc.block.ffnDim, c.ffn);
  EXPECT_EQ(mc.block.eps, c.eps);

  forEachForm(model, ref, B, T,
              [&](const std::string& form, const std::string& detail, const Tensor3<Scalar>& logits,
                  const State& state, const std::vector<double>& expected) {
                errors.check(s + " " + form + " logits", detail, flatten(logits), expected,
                             tolerance);
                expectPositions(state, B, T, form + " " + detail);
              });
  // generate's path: the prompt in the parallel form with a state, then recurrent steps.
  for (const auto& [k, logits] : ref.prefillThenDecode) {
    State state;
    std::vector<double> got(static_cast<std::size_t>(B * T * c.vocab), 0.0);
    putRows(got, T, 0, model.forwardParallel(tokenColumns(ref.tokens, B, T, 0, k), state));
    if (k < T) {
      putRows(got, T, k, model.forwardRecurrent(tokenColumns(ref.tokens, B, T, k, T), state));
    }
    errors.check(s + " parallel prompt+recurrent logits", "k " + std::to_string(k), got, logits,
                 tolerance);
    expectPositions(state, B, T, "parallel prompt+recurrent k " + std::to_string(k));
  }
}

class SyncdothShapes : public ::testing::TestWithParam<SyncdothCase> {};

TEST_P(SyncdothShapes, LoadedModelMatchesOracle) {
  const SyncdothCase& c = GetParam();
  const TempDir dir("load-model-shapes-syncdoth-" + c.name);
  writeModelDir(dir.path(), syncdothConfigJson(c), syncdothTensors(c), c.dtype, c.shards);
  // The oracle's weights read from the directory as test_family_oracles reads the golden cases.
  CheckpointTensors stored(dir.path());
  const SyncdothCheckpoint checkpoint = readSyncdoth(dir.path(), stored);
  EXPECT_EQ(checkpoint.chunk, c.chunks.front());
  const NaiveSyncdothWeights& w = checkpoint.w;
  const long B = c.batch, T = c.time;
  SyncdothReference ref;
  ref.tokens = randomTokens(B, T, c.vocab, seedOf("syncdoth tokens " + c.name));
  ref.computeForms<NaiveForm>(c.chunks, [&](NaiveForm form, long chunk) {
    return retnet::reference::naiveSyncdoth(w, ref.tokens, B, T, form, chunk);
  });
  for (const long k : syncdothPrompts(c)) {
    ref.prefillThenDecode[k] =
        retnet::reference::naiveSyncdothPrefillThenDecode(w, ref.tokens, B, T, k);
  }

  ErrorLog errors("syncdoth " + c.name);
  checkSyncdothModel<double>(c, dir.path().string(), ref, errors);
  checkSyncdothModel<float>(c, dir.path().string(), ref, errors);
  errors.print();
}

INSTANTIATE_TEST_SUITE_P(Cases, SyncdothShapes, ::testing::ValuesIn(syncdothCases()),
                         caseName<SyncdothCase>);

// ---------------------------------------------------------------------------------------------
// The written directories are real ones

std::set<std::string> keysOf(const json& object) {
  std::set<std::string> keys;
  for (const auto& entry : object.items()) keys.insert(entry.key());
  return keys;
}
// The config.json files written above have exactly the key sets of the shipped cases.
TEST(ShapesConfig, KeySetsAreTheShippedCases) {
  const fs::path data(RETNET_TEST_DATA_DIR);
  const std::set<std::string> fla = keysOf(readJson(data / "fla" / "fla_small" / "config.json"));
  for (const FlaCase& c : flaCases()) EXPECT_EQ(keysOf(flaConfigJson(c)), fla) << c.name;
  const std::set<std::string> syncdoth =
      keysOf(readJson(data / "syncdoth" / "sd_small" / "config.json"));
  for (const SyncdothCase& c : syncdothCases()) {
    EXPECT_EQ(keysOf(syncdothConfigJson(c)), syncdoth) << c.name;
  }
}

// The rounding the oracle's weights get is the writer's: a stored value reads back exactly.
TEST(ShapesConfig, RoundedWeightsAreStoredExactly) {
  for (const Dtype dtype : {Dtype::F32, Dtype::F16, Dtype::BF16}) {
    WeightMaker m(dtype, 7);
    m.random("w", {64, 64}, 1.0);
    m.random("tiny", {256}, 1e-6);  // F16 subnormals
    const TempDir dir(std::string("load-model-shapes-rounding-") + retnet::io::dtypeName(dtype));
    retnet::io::SafetensorsWriter writer;
    for (const auto& [name, tensor] : m.tensors()) {
      writer.addTensor(name, dtype, tensor.shape, tensor.values.data());
    }
    const std::string path = (dir.path() / "w.safetensors").string();
    writer.write(path);
    const retnet::io::SafetensorsFile file = retnet::io::SafetensorsFile::open(path);
    for (const auto& [name, tensor] : m.tensors()) {
      EXPECT_EQ(file.readFlat<double>(name), tensor.values) << retnet::io::dtypeName(dtype);
    }
  }
}

}  // namespace
