// retnet::io::loadModel on the golden model directories of the FLA and syncdoth families
// (tests/data/fla/*, tests/data/syncdoth/*; every case directory found there is run), in float
// and double, and its refusals.
//
// FLA: logits of every form, every layer's hidden state and final retention state (from every
// form), and prefill of k tokens (chunkwise) + token-by-token decoding for several k, against
// golden.safetensors. syncdoth: logits of each form against that form's tensor, and the
// generate path (a parallel prompt of k tokens, then recurrent steps); a chunkwise prompt then
// recurrent steps is checked to the group-norm eps effect.
//
// Tolerances (normwise max|y − ref| / max|ref|): double 1e-9, float 1e-4. Independent float64
// implementations agree to ~2.5e-14 and a wrong eps, scale or decay shows at ≥ 7e-7 in double
// (tests/data/fla/README.md §3, tests/data/syncdoth/README.md §5); FLA's and syncdoth's own
// float32 code land within 1.6e-5 and 8.6e-7, so float gets 1e-4 for its summation orders.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "retnet/io/load_model.hpp"
#include "retnet/io/safetensors.hpp"
#include "test_util.hpp"

namespace retnet {
namespace {

namespace fs = std::filesystem;
using testing::normwiseError;

template <typename Scalar>
constexpr double tolerance() {
  return std::is_same_v<Scalar, double> ? 1e-9 : 1e-4;
}

fs::path dataDir() { return fs::path(RETNET_TEST_DATA_DIR); }

std::vector<std::string> caseDirs(const std::string& family) {
  std::vector<std::string> dirs;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dataDir() / family, error)) {
    if (entry.is_directory() && fs::exists(entry.path() / "golden.safetensors"))
      dirs.push_back(family + "/" + entry.path().filename().string());
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

struct Golden {
  io::SafetensorsFile file;
  TokenMatrix tokens;
  Index batch = 0, time = 0;

  explicit Golden(const fs::path& dir)
      : file(io::SafetensorsFile::open((dir / "golden.safetensors").string())) {
    const auto shape = file.info("tokens").shape;
    batch = shape.at(0);
    time = shape.at(1);
    const auto ids = file.readIntegers("tokens");
    tokens.resize(batch, time);
    for (Index i = 0; i < tokens.size(); ++i) tokens.data()[i] = ids[static_cast<std::size_t>(i)];
  }
  Index number(const std::string& key) const { return std::stol(file.metadataValue(key).value()); }
  std::vector<double> values(const std::string& name) const { return file.readFlat<double>(name); }
  /// Rows [begin, end) of every batch item of a (B, T, n) golden tensor.
  std::vector<double> rows(const std::string& name, Index begin, Index end) const {
    const std::vector<double> all = values(name);
    const std::size_t n = all.size() / static_cast<std::size_t>(batch * time);
    std::vector<double> out;
    for (Index b = 0; b < batch; ++b) {
      const auto first = all.begin() + static_cast<std::ptrdiff_t>((b * time + begin) * Index(n));
      out.insert(out.end(), first, first + static_cast<std::ptrdiff_t>((end - begin) * Index(n)));
    }
    return out;
  }
};

/// Logits of `tokens` after `prefix` is consumed by `first` in form `prefill` (chunk C), the rest
/// one token at a time by decode(): (B, T − k, vocab) for the last T − k positions.
template <typename Scalar>
std::vector<double> prefillThenDecode(const RetNetModel<Scalar>& model, const TokenMatrix& tokens,
                                      Index k, Form prefill, Index chunk,
                                      std::vector<double>* prefixLogits = nullptr) {
  typename RetNetModel<Scalar>::State state;
  const TokenMatrix prompt = tokens.leftCols(k);
  const Tensor3<Scalar> first = prefill == Form::kParallel
                                    ? model.forwardParallel(prompt, state)
                                    : model.forwardChunkwise(prompt, chunk, state);
  if (prefixLogits) prefixLogits->assign(first.data(), first.data() + first.size());
  const Index batch = tokens.rows(), vocab = model.config().vocab, rest = tokens.cols() - k;
  std::vector<double> out(static_cast<std::size_t>(batch * rest * vocab));
  RowMatrix<Scalar> logits;
  for (Index t = 0; t < rest; ++t) {
    std::vector<std::int64_t> step;
    for (Index b = 0; b < batch; ++b) step.push_back(tokens(b, k + t));
    model.decode(step, state, logits);
    for (Index b = 0; b < batch; ++b)
      for (Index v = 0; v < vocab; ++v)
        out[static_cast<std::size_t>((b * rest + t) * vocab + v)] = logits(b, v);
  }
  return out;
}

template <typename Scalar>
Tensor3<Scalar> runForm(const RetNetModel<Scalar>& model, Form form, const TokenMatrix& tokens,
                        Index chunk, typename RetNetModel<Scalar>::State& state) {
  switch (form) {
    case Form::kParallel:
      return model.forwardParallel(tokens, state);
    case Form::kChunkwise:
      return model.forwardChunkwise(tokens, chunk, state);
    case Form::kRecurrent:
      break;
  }
  return model.forwardRecurrent(tokens, state);
}

const char* logitsName(Form form) {
  return form == Form::kParallel    ? "logits_parallel"
         : form == Form::kChunkwise ? "logits_chunkwise"
                                    : "logits_recurrent";
}

template <typename Scalar>
void checkFla(const std::string& name) {
  const fs::path dir = dataDir() / name;
  io::ModelInfo info;
  const RetNetModel<Scalar> model = io::loadModel<Scalar>(dir.string(), &info);
  ASSERT_EQ(info.family, io::ModelFamily::kFla);
  const Golden golden(dir);
  const Index chunk = golden.number("chunk_size"), T = golden.time, B = golden.batch;
  const double tol = tolerance<Scalar>();
  const MultiScaleRetentionConfig r = model.config().block.retention();
  const Index H = r.heads, dk = r.keyDim(), dv = r.headValueDim();

  for (const Form form : {Form::kParallel, Form::kChunkwise, Form::kRecurrent}) {
    typename RetNetModel<Scalar>::State state;
    const Tensor3<Scalar> logits = runForm(model, form, golden.tokens, chunk, state);
    EXPECT_LE(normwiseError(logits, golden.values(logitsName(form))), tol)
        << name << " " << formName(form);
    // The final state S of every layer, K-major (B, H, dk, dv), as FLA's cache holds it.
    for (Index l = 0; l < model.config().layers; ++l) {
      const auto& layer = state.layers[static_cast<std::size_t>(l)];
      std::vector<double> ours;
      for (Index b = 0; b < B; ++b)
        for (Index h = 0; h < H; ++h)
          for (Index i = 0; i < dk; ++i)
            for (Index j = 0; j < dv; ++j) ours.push_back(layer.matrix(b, h)(i, j));
      const std::vector<double> ref = golden.values("state_" + std::to_string(l));
      ASSERT_EQ(ours.size(), ref.size());
      EXPECT_LE(normwiseError(ours.data(), ref.data(), ref.size()), tol)
          << name << " state_" << l << " " << formName(form);
    }
  }
  // Every layer's hidden state: the blocks one by one from the embedding, parallel form.
  Tensor3<Scalar> x = model.embedding(golden.tokens);
  for (Index l = 0; l < model.config().layers; ++l) {
    x = model.blocks()[static_cast<std::size_t>(l)].forwardParallel(x);
    EXPECT_LE(normwiseError(x, golden.values("hidden_" + std::to_string(l))), tol)
        << name << " hidden_" << l;
  }
  // A chunkwise prefill of k tokens, then decoding: the rows of one pass.
  for (const Index k : {Index(1), T / 2, T - 1}) {
    if (k < 1 || k >= T) continue;
    const std::vector<double> decoded =
        prefillThenDecode(model, golden.tokens, k, Form::kChunkwise, chunk);
    const std::vector<double> ref = golden.rows("logits_recurrent", k, T);
    EXPECT_LE(normwiseError(decoded.data(), ref.data(), ref.size()), tol) << name << " k=" << k;
  }
}

template <typename Scalar>
void checkSyncdoth(const std::string& name) {
  const fs::path dir = dataDir() / name;
  io::ModelInfo info;
  const RetNetModel<Scalar> model = io::loadModel<Scalar>(dir.string(), &info);
  ASSERT_EQ(info.family, io::ModelFamily::kSyncdoth);
  const Golden golden(dir);
  const Index chunk = info.chunkSize, T = golden.time, k = golden.number("k");
  ASSERT_GE(chunk, 1) << "recurrent_chunk_size";
  const double tol = tolerance<Scalar>();
  for (const Form form : {Form::kParallel, Form::kChunkwise, Form::kRecurrent}) {
    if (!golden.file.contains(logitsName(form))) continue;  // stored only where it is defined
    typename RetNetModel<Scalar>::State state;
    const Tensor3<Scalar> logits = runForm(model, form, golden.tokens, chunk, state);
    EXPECT_LE(normwiseError(logits, golden.values(logitsName(form))), tol)
        << name << " " << formName(form);
  }
  // generate's path: a parallel prompt of k tokens, then recurrent steps from its state.
  std::vector<double> prompt;
  const std::vector<double> decoded =
      prefillThenDecode(model, golden.tokens, k, Form::kParallel, chunk, &prompt);
  const std::vector<double> promptRef = golden.rows("logits_prefill_then_decode", 0, k);
  EXPECT_LE(normwiseError(prompt.data(), promptRef.data(), promptRef.size()), tol) << name;
  if (k < T) {
    const std::vector<double> ref = golden.rows("logits_prefill_then_decode", k, T);
    EXPECT_LE(normwiseError(decoded.data(), ref.data(), ref.size()), tol) << name;
    // A chunkwise prompt hands over the same state up to the group-norm eps effect (~1e-5,
    // README §4.5): its per-form factors differ from the parallel form's.
    const std::vector<double> chunked =
        prefillThenDecode(model, golden.tokens, k, Form::kChunkwise, chunk);
    EXPECT_LE(normwiseError(chunked.data(), ref.data(), ref.size()), 1e-3) << name;
  }
}

// generate() with syncdoth's prompt form: the first token is the argmax of the golden
// parallel-prompt logits at position k − 1.
TEST(LoadModel, GenerateWithParallelPrefill) {
  for (const std::string& name : caseDirs("syncdoth")) {
    const fs::path dir = dataDir() / name;
    const auto model = io::loadModel<double>(dir.string());
    const Golden golden(dir);
    const Index k = golden.number("k");
    GenerationOptions options;
    options.maxNewTokens = 1;
    options.prefillForm = Form::kParallel;
    std::vector<std::int64_t> prompt(golden.tokens.data(), golden.tokens.data() + k);
    const auto generated = model.generate({prompt}, options);
    const std::vector<double> row = golden.rows("logits_prefill_then_decode", k - 1, k);
    const Index vocab = model.config().vocab;
    const auto best = std::max_element(row.begin(), row.begin() + vocab) - row.begin();
    EXPECT_EQ(generated.at(0).at(0), best) << name;
  }
}

class FlaGolden : public ::testing::TestWithParam<std::string> {};
class SyncdothGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(FlaGolden, Double) { checkFla<double>(GetParam()); }
TEST_P(FlaGolden, Float) { checkFla<float>(GetParam()); }
TEST_P(SyncdothGolden, Double) { checkSyncdoth<double>(GetParam()); }
TEST_P(SyncdothGolden, Float) { checkSyncdoth<float>(GetParam()); }

std::string caseName(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param.substr(info.param.find('/') + 1);
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}
INSTANTIATE_TEST_SUITE_P(Cases, FlaGolden, ::testing::ValuesIn(caseDirs("fla")), caseName);
INSTANTIATE_TEST_SUITE_P(Cases, SyncdothGolden, ::testing::ValuesIn(caseDirs("syncdoth")),
                         caseName);

// A torchscale file keeps loading through the one loader.
TEST(LoadModel, TorchscaleFile) {
  io::ModelInfo info;
  const auto model =
      io::loadModel<double>((dataDir() / "decoder_small.safetensors").string(), &info);
  EXPECT_EQ(info.family, io::ModelFamily::kTorchscale);
  const auto direct = io::loadRetNetModel<double>(
      io::SafetensorsFile::open((dataDir() / "decoder_small.safetensors").string()));
  TokenMatrix tokens(1, 5);
  tokens << 1, 2, 3, 4, 5;
  const Tensor3<double> a = model.forwardParallel(tokens), b = direct.forwardParallel(tokens);
  EXPECT_EQ(normwiseError(a, std::vector<double>(b.data(), b.data() + b.size())), 0.0);
}

// A bare weights file (no config.json) of each family: the configuration from the shapes. FLA's
// files say everything; syncdoth's do not say the activation or the embedding scale (the
// metadata may: activation_fn, no_scale_embedding), so only the shapes are compared there.
TEST(LoadModel, BareFilesByTensorNames) {
  for (const std::string name : {"fla/fla_small", "syncdoth/sd_small"}) {
    const fs::path dir = dataDir() / name;
    io::ModelInfo fromDir, fromFile;
    const auto a = io::loadModel<double>(dir.string(), &fromDir);
    const auto b = io::loadModel<double>((dir / "model.safetensors").string(), &fromFile);
    EXPECT_EQ(fromDir.family, fromFile.family) << name;
    EXPECT_EQ(a.config().block.signature(), b.config().block.signature()) << name;
    EXPECT_EQ(a.config().block.retention().headDecays(), b.config().block.retention().headDecays())
        << name;
    if (fromFile.family != io::ModelFamily::kFla) continue;
    const Golden golden(dir);
    const Tensor3<double> y = b.forwardParallel(golden.tokens);
    EXPECT_LE(normwiseError(y, golden.values("logits_parallel")), 1e-9) << name;
  }
}

// ---- Refusals: a FormatError naming the key, file or tensor. ----

/// A copy of a test case directory, to damage.
class ScratchCase {
 public:
  explicit ScratchCase(const std::string& name)
      : dir_(fs::temp_directory_path() /
             ("retnet_load_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++))) {
    fs::create_directories(dir_);
    for (const auto& entry : fs::directory_iterator(dataDir() / name))
      fs::copy_file(entry.path(), dir_ / entry.path().filename());
  }
  ~ScratchCase() {
    std::error_code error;
    fs::remove_all(dir_, error);
  }
  std::string path() const { return dir_.string(); }
  fs::path file(const std::string& name) const { return dir_ / name; }

  nlohmann::json json(const std::string& name) const {
    std::ifstream in(file(name));
    return nlohmann::json::parse(in);
  }
  void write(const std::string& name, const std::string& text) const {
    fs::permissions(file(name), fs::perms::owner_write, fs::perm_options::add);
    std::ofstream(file(name), std::ios::trunc) << text;
  }
  /// Sets config.json's `key` to `value` (null removes nothing: it sets null).
  void setConfig(const std::string& key, const nlohmann::json& value) const {
    nlohmann::json config = json("config.json");
    config[key] = value;
    write("config.json", config.dump(2));
  }

 private:
  static int& counter() {
    static int n = 0;
    return n;
  }
  fs::path dir_;
};

#define EXPECT_REFUSED(path, ...) \
  RETNET_EXPECT_THROW_WITH(io::loadModel<float>(path), FormatError, __VA_ARGS__)

/// A copy of case directory `name` whose config.json sets `key` to `value`: refused with a
/// message holding every one of `parts`.
void expectRefusedWithConfig(const std::string& name, const std::string& key,
                             const nlohmann::json& value, const std::vector<std::string>& parts) {
  SCOPED_TRACE(name + " with " + key + " = " + value.dump());
  ScratchCase c(name);
  c.setConfig(key, value);
  EXPECT_REFUSED(c.path(), parts);
}

TEST(LoadModelRefuses, FlaHybridAttention) {
  expectRefusedWithConfig("fla/fla_small", "attn", {{"layers", {1}}, {"num_heads", 4}},
                          {"config.json", "'attn'", "softmax-attention"});
}

TEST(LoadModelRefuses, FlaShortConvolution) {
  expectRefusedWithConfig("fla/fla_small", "use_short_conv", true,
                          {"config.json", "'use_short_conv'"});
}

TEST(LoadModelRefuses, FlaFeatureMap) {
  expectRefusedWithConfig("fla/fla_small", "feature_map", "elu",
                          {"config.json", "'feature_map'", "elu"});
}

TEST(LoadModelRefuses, FlaUnknownAttnMode) {
  expectRefusedWithConfig("fla/fla_small", "attn_mode", "softmax",
                          {"config.json", "attn_mode", "softmax"});
}

TEST(LoadModelRefuses, UnknownConfigKey) {
  expectRefusedWithConfig("fla/fla_small", "use_rope", false,
                          {"config.json", "unknown FLA RetNet config key 'use_rope'"});
  expectRefusedWithConfig("syncdoth/sd_small", "xpos_scale_base", 512,
                          {"config.json", "unknown syncdoth RetNet config key 'xpos_scale_base'"});
}

TEST(LoadModelRefuses, FlaNoOutputGateOrAffine) {
  expectRefusedWithConfig("fla/fla_small", "use_output_gate", false, {"'use_output_gate'"});
  expectRefusedWithConfig("fla/fla_small", "elementwise_affine", false, {"'elementwise_affine'"});
}

TEST(LoadModelRefuses, SyncdothDeepnormAndNonGlu) {
  expectRefusedWithConfig("syncdoth/sd_small", "deepnorm", true, {"config.json", "'deepnorm'"});
  expectRefusedWithConfig("syncdoth/sd_small", "use_glu", false, {"config.json", "'use_glu'"});
  expectRefusedWithConfig("syncdoth/sd_small", "decoder_normalize_before", false,
                          {"config.json", "'decoder_normalize_before'"});
}

TEST(LoadModelRefuses, MissingShard) {
  ScratchCase c("fla/fla_sharded_fused_tied");
  fs::remove(c.file("model-00002-of-00002.safetensors"));
  EXPECT_REFUSED(c.path(), "model.safetensors.index.json",
                 "shard 'model-00002-of-00002.safetensors'", "missing");
}

TEST(LoadModelRefuses, WeightMapPointingNowhere) {
  ScratchCase c("fla/fla_sharded_fused_tied");
  nlohmann::json index = c.json("model.safetensors.index.json");
  index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors";
  c.write("model.safetensors.index.json", index.dump());
  EXPECT_REFUSED(c.path(), "'model.norm.weight'", "model-00001-of-00002.safetensors",
                 "does not hold it");
  index["weight_map"]["model.norm.weight"] = "../model-00002-of-00002.safetensors";
  c.write("model.safetensors.index.json", index.dump());
  EXPECT_REFUSED(c.path(), "plain file names");
}

// Sizes beyond any model (fuzzing found each: fuzz/crashes/): refused before anything is sized
// or converted out of range.
TEST(LoadModelRefuses, SizesBeyondAnyModel) {
  expectRefusedWithConfig("fla/fla_small", "expand_k", 1e300, {"expand_k", "is beyond"});
  expectRefusedWithConfig("fla/fla_small", "hidden_ratio", 1e300, {"MLP width"});
  expectRefusedWithConfig("fla/fla_small", "hidden_ratio", 0.001, {"MLP width", "must lie in [1"});
  expectRefusedWithConfig("fla/fla_small", "num_hidden_layers", 1e9,
                          {"'num_hidden_layers' must be an integer in [1, 16777216]"});
  expectRefusedWithConfig("syncdoth/sd_small", "decoder_retention_heads", 1000000,
                          {"config.json", "heads (1000000) must divide embedDim (64)"});
}

TEST(LoadModelRefuses, ShardNameWithNul) {
  ScratchCase c("fla/fla_sharded_fused_tied");
  nlohmann::json index = c.json("model.safetensors.index.json");
  index["weight_map"]["model.norm.weight"] = std::string("model-00002-of-00002.safetensors\0x", 34);
  c.write("model.safetensors.index.json", index.dump());
  EXPECT_REFUSED(c.path(), "plain file names");
}

TEST(LoadModelRefuses, NoWeights) {
  ScratchCase c("fla/fla_small");
  fs::remove(c.file("model.safetensors"));
  EXPECT_REFUSED(c.path(), "no model.safetensors and no model.safetensors.index.json");
}

TEST(LoadModelRefuses, ShapeContradictsConfig) {
  // down_proj is (64, 256).
  expectRefusedWithConfig(
      "fla/fla_small", "intermediate_size", 512,
      {"model.layers.0.mlp.down_proj.weight", "expected shape [64, 512]", "got [64, 256]"});
  expectRefusedWithConfig("syncdoth/sd_small", "vocab_size", 62,
                          {"model.embed_tokens.weight", "expected shape [62, 64]"});
}

TEST(LoadModelRefuses, DtypeOtherThanConfig) {
  // fla_small's weights are BF16.
  expectRefusedWithConfig("fla/fla_small", "torch_dtype", "float16",
                          {"model.embeddings.weight", "is BF16", "torch_dtype says F16"});
  expectRefusedWithConfig("fla/fla_small", "torch_dtype", "int8",
                          {"torch_dtype must be float32, float16 or bfloat16", "int8"});
}

// Keys of newer FLA and transformers versions: `dtype`, the name transformers 4.56 writes for
// torch_dtype (read the same way, by the FLA and the syncdoth readers; the two must agree), and
// `attnres_block_size` (FLA's attention residuals: null loads, a value is refused).
TEST(LoadModel, FlaConfigKeysOfNewerVersions) {
  ScratchCase c("fla/fla_small");  // BF16 weights
  nlohmann::json config = c.json("config.json");
  config.erase("torch_dtype");
  config["dtype"] = "bfloat16";
  config["attnres_block_size"] = nullptr;
  c.write("config.json", config.dump(2));
  io::ModelInfo info;
  EXPECT_NO_THROW(io::loadModel<float>(c.path(), &info));
  c.setConfig("dtype", "float16");
  EXPECT_REFUSED(c.path(), "model.embeddings.weight", "is BF16");
  c.setConfig("dtype", "bfloat16");
  c.setConfig("torch_dtype", "float16");
  EXPECT_REFUSED(c.path(), "'torch_dtype' and 'dtype' name different types");
  c.setConfig("torch_dtype", "bfloat16");
  c.setConfig("attnres_block_size", 4);
  EXPECT_REFUSED(c.path(), "attnres_block_size", "not supported");
  // syncdoth's configs are Hugging Face configs too
  ScratchCase sd("syncdoth/sd_small");  // F32 weights
  nlohmann::json sdConfig = sd.json("config.json");
  sdConfig.erase("torch_dtype");
  sdConfig["dtype"] = "float32";
  sd.write("config.json", sdConfig.dump(2));
  EXPECT_NO_THROW(io::loadModel<float>(sd.path()));
  sd.setConfig("dtype", "bfloat16");
  EXPECT_REFUSED(sd.path(), "is F32");
}

// The MLP width without intermediate_size: 256·ceil(trunc(d·r·2/3)/256) with r = hidden_ratio,
// 2 when the key is absent (RetNetConfig's default) and 4 when it is null (GatedMLP's). d = 256
// tells them apart: r = 2 gives trunc(341.3) -> 512, r = 4 gives trunc(682.7) -> 768.
TEST(LoadModel, FlaMlpWidthFromHiddenRatio) {
  nlohmann::json config = {{"model_type", "retnet"}, {"hidden_size", 256},
                           {"num_heads", 4},         {"num_hidden_layers", 1},
                           {"vocab_size", 97},       {"intermediate_size", nullptr}};
  const auto width = [&] {
    return io::readFlaConfig(io::JsonFile::parse(config.dump(), "config.json")).model.block.ffnDim;
  };
  EXPECT_EQ(width(), 512);
  config["hidden_ratio"] = nullptr;
  EXPECT_EQ(width(), 768);
  config["hidden_ratio"] = 3;
  EXPECT_EQ(width(), 512);
  config["intermediate_size"] = 100;
  EXPECT_EQ(width(), 100);
}

TEST(LoadModelRefuses, WeightsOfAnotherDtype) {
  // The golden file itself is F64: as weights, refused (and without config.json, by names).
  ScratchCase c("fla/fla_small");
  const io::SafetensorsFile weights =
      io::SafetensorsFile::open(c.file("model.safetensors").string());
  io::SafetensorsWriter writer;
  for (const std::string& name : weights.names()) {
    const auto values = weights.readFlat<double>(name);
    writer.addTensor(name, io::Dtype::F64, weights.info(name).shape, values.data());
  }
  fs::remove(c.file("model.safetensors"));
  writer.write(c.file("model.safetensors").string());
  c.setConfig("torch_dtype", nullptr);
  EXPECT_REFUSED(c.path(), "weights must be F32, F16 or BF16, got F64");
}

TEST(LoadModelRefuses, StoredRelPosBuffersOfAnotherSchedule) {
  // The file stores the default schedule.
  expectRefusedWithConfig("syncdoth/sd_small", "use_lm_decay", true,
                          {"model.retnet_rel_pos.decay", "the configuration gives"});
}

TEST(LoadModelRefuses, SyncdothEmbeddingNormMismatch) {
  expectRefusedWithConfig("syncdoth/sd_small", "layernorm_embedding", false,
                          {"model.layernorm_embedding.weight", "layernorm_embedding false"});
}

TEST(LoadModelRefuses, BadJson) {
  ScratchCase c("fla/fla_small");
  c.write("config.json", "{\"hidden_size\": 64, \"hidden_size\": 65}");
  EXPECT_REFUSED(c.path(), "config.json", "duplicate key 'hidden_size'");
  c.write("config.json", "[1, 2]");
  EXPECT_REFUSED(c.path(), "config.json", "expected a JSON object");
  c.write("config.json", std::string(io::kMaxConfigBytes + 1, ' '));
  EXPECT_REFUSED(c.path(), "config.json", "more than the");
  c.write("config.json", "{\"model_type\": \"llama\", \"vocab_size\": 3}");
  EXPECT_REFUSED(c.path(), "not a RetNet configuration", "llama");
  c.write("config.json", "{\"hidden_size\": 64.5, \"num_heads\": 4}");
  EXPECT_REFUSED(c.path(), "'hidden_size' must be an integer");
}

TEST(LoadModelRefuses, NotACheckpoint) {
  EXPECT_REFUSED((dataDir() / "fla/fla_small/golden.safetensors").string(),
                 "not a checkpoint retnet knows");
  EXPECT_REFUSED((dataDir() / "missing.safetensors").string(), "cannot open file");
}

}  // namespace
}  // namespace retnet
