// Training checkpoints: a trained RetNet saved under its family's names — torchscale's
// RetNetDecoder state_dict (one .safetensors file) or FLA's Hugging Face directory — which
// io::loadModel reads back and the family's own Python code loads, and
// AdamW's state (its step count and the moments of every parameter), to resume training where
// it stopped.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "retnet/io/checkpoint.hpp"
#include "retnet/io/safetensors.hpp"
#include "retnet/model.hpp"
#include "retnet/optimizer.hpp"

namespace retnet::io {

namespace detail {

/// A double as text that reads back to the same double.
inline std::string exactNumber(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", value);
  return text;
}

template <typename Scalar>
constexpr Dtype dtypeOf() {
  return std::is_same_v<Scalar, float> ? Dtype::F32 : Dtype::F64;
}

/// Adds `count` Scalars as a tensor of `shape` in `dtype`.
template <typename Scalar>
void addValues(SafetensorsWriter& writer, std::string name, Dtype dtype,
               std::vector<Eigen::Index> shape, const Scalar* values, Index count) {
  std::vector<double> converted(values, values + count);
  writer.addTensor(std::move(name), dtype, std::move(shape), converted.data());
}

/// A parameter's shape as PyTorch has it: a vector weight (one column) is rank 1.
inline std::vector<Eigen::Index> torchShape(Index rows, Index cols) {
  if (cols == 1) return {rows};
  return {rows, cols};
}

/// Adds every parameter of `model` to `writer` as `dtype`, under rename(retnet's name) and in
/// PyTorch's shapes; returns whether a head-norm weight was among them.
template <typename Scalar, typename Rename>
bool addParameters(SafetensorsWriter& writer, const RetNetModel<Scalar>& model, Dtype dtype,
                   Rename&& rename) {
  bool headNorm = false;
  model.forEachParameter([&](const char* name, auto parameter) {
    const std::string text = name;
    headNorm = headNorm || text.find("g_norm_swish_gate") != std::string::npos;
    addValues(writer, rename(text), dtype, torchShape(parameter.rows(), parameter.cols()),
              parameter.data(), parameter.size());
  });
  return headNorm;
}

}  // namespace detail

/// Writes `model` to the safetensors file `path` under torchscale's RetNetDecoder names
/// (`embed_tokens.weight`, `layers.{i}.retention.q_proj.weight` …, `layer_norm.weight`,
/// `output_projection.weight` unless tied), with the `retnet_rel_pos.decay` / `angle` buffers
/// torchscale's state_dict holds and its arguments as metadata (embed_dim, value_dim, heads,
/// ffn_dim, layers, vocab, layernorm_eps, activation_fn, embed_scale, layernorm_embedding,
/// share_decoder_input_output_embed). `dtype` is F32 or F64 (by default Scalar's: the weights'
/// exact bits, so that training resumes where it stopped), BF16 or F16. The model's weights must be
/// full precision, and its configuration one torchscale can express: InvalidArgument naming the
/// setting otherwise. An existing file is replaced.
template <typename Scalar>
void saveTorchscaleModel(const RetNetModel<Scalar>& model, const std::string& path,
                         Dtype dtype = detail::dtypeOf<Scalar>()) {
  const char* where = "io::saveTorchscaleModel";
  const RetNetModelConfig& config = model.config();
  const RetNetBlockConfig& block = config.block;
  const MultiScaleRetentionConfig retention = block.retention();
  retnet::detail::require(
      dtype == Dtype::F32 || dtype == Dtype::F64 || dtype == Dtype::BF16 || dtype == Dtype::F16,
      where, "dtype must be F32, F64, BF16 or F16");
  const auto refuse = [&](bool ok, const char* what) {
    retnet::detail::require(ok, where, "torchscale's RetNetDecoder has no ", what,
                            "; this model cannot be saved under its names");
  };
  refuse(block.decays.empty(), "configurable decays (it derives them from the heads)");
  refuse(block.headKeyDim == 0 || block.headKeyDim * block.heads == block.embedDim,
         "key dimension other than embed_dim / heads");
  refuse(block.kvHeads == 0 || block.kvHeads == block.heads, "grouped key/value heads");
  refuse(block.rotary == RotaryLayout::kInterleaved, "half-split rotary layout");
  refuse(block.normalization == RetentionNormalization::kTorchscale,
         "retention without its normalisers (FLA's semantics)");
  refuse(block.scaleSide == ScaleSide::kKey, "query-side dk^-1/2 scale");
  refuse(config.norm == ModelNorm::kRms, "LayerNorm final norm");
  refuse(block.gate == Activation::kSwish, "retention gate other than swish");
  refuse(block.activation == Activation::kGelu || block.activation == Activation::kSwish,
         "FFN activation other than gelu and swish");

  SafetensorsWriter writer;
  const bool headNorm =
      detail::addParameters(writer, model, dtype, [](const std::string& name) { return name; });
  refuse(!headNorm, "group-norm weight");
  const std::vector<double> decay = detail::decayBuffer(retention);
  const std::vector<double> angle = detail::angleBuffer(retention);
  writer.addTensor("retnet_rel_pos.decay", dtype, {static_cast<Eigen::Index>(decay.size())},
                   decay.data());
  writer.addTensor("retnet_rel_pos.angle", dtype, {static_cast<Eigen::Index>(angle.size())},
                   angle.data());
  writer.addMetadata("format", "pt");
  writer.addMetadata("embed_dim", std::to_string(block.embedDim));
  writer.addMetadata("value_dim", std::to_string(block.valueDim));
  writer.addMetadata("heads", std::to_string(block.heads));
  writer.addMetadata("ffn_dim", std::to_string(block.ffnDim));
  writer.addMetadata("layers", std::to_string(config.layers));
  writer.addMetadata("vocab", std::to_string(config.vocab));
  writer.addMetadata("layernorm_eps", detail::exactNumber(block.eps));
  writer.addMetadata("activation_fn", activationName(block.activation));
  writer.addMetadata("embed_scale", detail::exactNumber(config.embedScale));
  writer.addMetadata("layernorm_embedding", config.embedNorm ? "True" : "False");
  writer.addMetadata("share_decoder_input_output_embed", config.tiedEmbedding ? "True" : "False");
  writer.write(path);
}

namespace detail {

/// retnet's parameter name (torchscale's) as FLA's: model.embeddings, model.layers.{i}.attn.*,
/// attn_norm, mlp.{gate,up,down}_proj, mlp_norm, model.norm, lm_head.
inline std::string flaName(const std::string& name) {
  static const std::pair<const char*, const char*> tops[] = {
      {"embed_tokens.weight", "model.embeddings.weight"},
      {"layer_norm.weight", "model.norm.weight"},
      {"output_projection.weight", "lm_head.weight"}};
  for (const auto& [from, to] : tops)
    if (name == from) return to;
  static const std::pair<const char*, const char*> inLayer[] = {
      {"retention.q_proj.weight", "attn.q_proj.weight"},
      {"retention.k_proj.weight", "attn.k_proj.weight"},
      {"retention.v_proj.weight", "attn.v_proj.weight"},
      {"retention.g_proj.weight", "attn.g_proj.weight"},
      {"retention.out_proj.weight", "attn.o_proj.weight"},
      {"retention.g_norm_swish_gate.weight", "attn.g_norm_swish_gate.weight"},
      {"retention_layer_norm.weight", "attn_norm.weight"},
      {"ffn.fc1.weight", "mlp.gate_proj.weight"},
      {"ffn.gate.weight", "mlp.up_proj.weight"},
      {"ffn.fc2.weight", "mlp.down_proj.weight"},
      {"final_layer_norm.weight", "mlp_norm.weight"}};
  const std::size_t dot = name.find('.', 7);  // "layers.{i}." + the block's name
  if (name.rfind("layers.", 0) == 0 && dot != std::string::npos) {
    const std::string rest = name.substr(dot + 1);
    for (const auto& [from, to] : inLayer)
      if (rest == from) return "model." + name.substr(0, dot + 1) + to;
  }
  throw InvalidArgument("io::saveFlaModel: parameter '" + name + "' has no FLA name");
}

/// An expand_k / expand_v for FLA's config.json: e with trunc(d·e) = width exactly.
inline double flaExpand(Index width, Index d) {
  double e = static_cast<double>(width) / static_cast<double>(d);
  while (std::trunc(static_cast<double>(d) * e) < static_cast<double>(width))
    e = std::nextafter(e, 2 * e + 1);
  return e;
}

}  // namespace detail

/// Writes `model` as an FLA (fla-hub) Hugging Face directory: `dir/config.json` (FLA's
/// RetNetConfig: sizes, heads, key/value heads, eps, tied embeddings, fuse_norm, torch_dtype) and
/// `dir/model.safetensors` under FLA's names (model.embeddings.weight,
/// model.layers.{i}.attn.q_proj.weight …, attn.g_norm_swish_gate.weight, mlp.gate_proj/up_proj/
/// down_proj, model.norm.weight, lm_head.weight), which io::loadModel and FLA's
/// RetNetForCausalLM.from_pretrained read. `dtype` is F32 (default), BF16 or F16: FLA's
/// checkpoints have no float64. The model must have FLA's semantics (MultiScaleRetentionConfig::
/// fla: half-split rotary, q-side scale, no normalisers, a head-norm weight, SwiGLU, no embedding
/// scale or norm) and a per-head key dim of at most 256 (FLA asserts it): InvalidArgument naming
/// the setting otherwise. Loadable by FLA from b48ca31d (2025-02, every tagged release) on,
/// read from FLA's source, not run. `dir` is created if needed;
/// files in it are replaced.
template <typename Scalar>
void saveFlaModel(const RetNetModel<Scalar>& model, const std::string& dir,
                  Dtype dtype = Dtype::F32) {
  const char* where = "io::saveFlaModel";
  const RetNetModelConfig& config = model.config();
  const RetNetBlockConfig& block = config.block;
  const MultiScaleRetentionConfig retention = block.retention();
  retnet::detail::require(dtype == Dtype::F32 || dtype == Dtype::BF16 || dtype == Dtype::F16, where,
                          "dtype must be F32, BF16 or F16 (FLA's checkpoints)");
  const auto refuse = [&](bool ok, const char* what) {
    retnet::detail::require(ok, where, "FLA's RetNet has ", what,
                            "; this model cannot be saved under its names");
  };
  refuse(block.decays.empty(), "no configurable decays");
  refuse(block.rotary == RotaryLayout::kHalfSplit, "the half-split rotary layout only");
  refuse(block.normalization == RetentionNormalization::kNone, "no retention normalisers");
  refuse(block.scaleSide == ScaleSide::kQuery, "the dk^-1/2 scale on q only");
  refuse(block.activation == Activation::kSwish && block.gate == Activation::kSwish,
         "swish (SiLU) activations only");
  refuse(config.embedScale == 1.0 && !config.embedNorm && config.norm == ModelNorm::kRms,
         "no embedding scale or embedding norm");
  refuse(retention.keyDim() <= 256, "a per-head key dim of at most 256");

  SafetensorsWriter writer;
  const bool headNorm = detail::addParameters(writer, model, dtype, detail::flaName);
  refuse(headNorm, "a head-norm weight (g_norm_swish_gate)");
  writer.addMetadata("format", "pt");

  const Index d = block.embedDim, H = retention.heads;
  const nlohmann::json json = {{"architectures", {"RetNetForCausalLM"}},
                               {"model_type", "retnet"},
                               {"attn", nullptr},
                               {"attn_mode", "chunk"},
                               {"elementwise_affine", true},
                               {"expand_k", detail::flaExpand(H * retention.keyDim(), d)},
                               {"expand_v", detail::flaExpand(H * retention.headValueDim(), d)},
                               {"feature_map", nullptr},
                               {"fuse_norm", true},  // names the head norm g_norm_swish_gate
                               {"hidden_act", "swish"},
                               {"hidden_size", d},
                               {"intermediate_size", block.ffnDim},
                               {"norm_eps", block.eps},
                               {"num_heads", H},
                               {"num_hidden_layers", config.layers},
                               {"num_kv_heads", retention.keyValueHeads()},
                               {"tie_word_embeddings", config.tiedEmbedding},
                               {"torch_dtype", dtype == Dtype::F32    ? "float32"
                                               : dtype == Dtype::BF16 ? "bfloat16"
                                                                      : "float16"},
                               {"use_output_gate", true},
                               {"use_short_conv", false},
                               {"vocab_size", config.vocab}};
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  retnet::detail::require(!error, where, "cannot create the directory ", dir, ": ",
                          error.message());
  writer.write((std::filesystem::path(dir) / "model.safetensors").string());
  const std::string configPath = (std::filesystem::path(dir) / "config.json").string();
  std::ofstream out(configPath);
  out << json.dump(2) << "\n";
  if (!out) throw FormatError(std::string(where) + ": cannot write " + configPath);
}

/// Writes AdamW's state to the safetensors file `path`: `exp_avg.{name}` and `exp_avg_sq.{name}`
/// for every parameter (PyTorch's names for the moments, the parameter's shape, F32 for a float
/// optimiser and F64 for double), and as metadata the step count, the options and the parameter
/// order. An existing file is replaced.
template <typename Scalar>
void saveAdamW(const AdamW<Scalar>& optimizer, const std::string& path) {
  SafetensorsWriter writer;
  constexpr Dtype dtype = detail::dtypeOf<Scalar>();
  nlohmann::json order = nlohmann::json::array();
  for (const auto& moment : optimizer.moments()) {
    const auto shape = detail::torchShape(moment.rows, moment.cols);
    detail::addValues(writer, "exp_avg." + moment.name, dtype, shape, moment.m.data(),
                      moment.m.size());
    detail::addValues(writer, "exp_avg_sq." + moment.name, dtype, shape, moment.v.data(),
                      moment.v.size());
    order.push_back(moment.name);
  }
  const AdamWOptions& options = optimizer.options();
  writer.addMetadata("format", "retnet-adamw");
  writer.addMetadata("step", std::to_string(optimizer.steps()));
  writer.addMetadata("lr", detail::exactNumber(options.learningRate));
  writer.addMetadata("beta1", detail::exactNumber(options.beta1));
  writer.addMetadata("beta2", detail::exactNumber(options.beta2));
  writer.addMetadata("eps", detail::exactNumber(options.eps));
  writer.addMetadata("weight_decay", detail::exactNumber(options.weightDecay));
  writer.addMetadata("decay_vectors", options.decayVectors ? "True" : "False");
  writer.addMetadata("parameters", order.dump());
  writer.write(path);
}

/// AdamW<Scalar> as saveAdamW left it (moments converted to Scalar from the stored dtype).
/// FormatError naming the file and key for anything else.
template <typename Scalar>
AdamW<Scalar> loadAdamW(const std::string& path) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  if (file.metadataValue("format").value_or("") != "retnet-adamw")
    detail::failFile(file, "not an AdamW state: metadata 'format' must be \"retnet-adamw\"");
  const auto number = [&](const char* key) {
    const std::optional<double> value = detail::metadataNumber<double>(file, key);
    if (!value) detail::failFile(file, "missing metadata '", key, "'");
    return *value;
  };
  AdamWOptions options;
  options.learningRate = number("lr");
  options.beta1 = number("beta1");
  options.beta2 = number("beta2");
  options.eps = number("eps");
  options.weightDecay = number("weight_decay");
  options.decayVectors = file.metadataValue("decay_vectors").value_or("False") == "True";
  const std::optional<std::int64_t> steps = detail::metadataNumber<std::int64_t>(file, "step");
  if (!steps || *steps < 0) detail::failFile(file, "metadata 'step' must be a count >= 0");
  nlohmann::json order;
  try {
    order = nlohmann::json::parse(file.metadataValue("parameters").value_or(""));
  } catch (const nlohmann::json::exception&) {
    detail::failFile(file, "metadata 'parameters' must be a JSON list of names");
  }
  if (!order.is_array())
    detail::failFile(file, "metadata 'parameters' must be a JSON list of names");
  std::vector<typename AdamW<Scalar>::Moments> moments;
  for (const nlohmann::json& entry : order) {
    if (!entry.is_string())
      detail::failFile(file, "metadata 'parameters' must list names (strings)");
    typename AdamW<Scalar>::Moments moment;
    moment.name = entry.get<std::string>();
    const std::string m = "exp_avg." + moment.name, v = "exp_avg_sq." + moment.name;
    if (!file.contains(m) || !file.contains(v))
      detail::failFile(file, "missing tensor '", file.contains(m) ? v : m, "'");
    const std::vector<Index> shape = detail::shapeOf(file, m);
    if (shape.empty() || shape.size() > 2)
      detail::failFile(file, "tensor '", m, "' must have rank 1 or 2");
    file.requireShape(v, shape);
    moment.rows = shape[0];
    moment.cols = shape.size() == 2 ? shape[1] : 1;
    const std::vector<Scalar> mValues = file.readFlat<Scalar>(m),
                              vValues = file.readFlat<Scalar>(v);
    moment.m = Eigen::Map<const Vector<Scalar>>(mValues.data(), Index(mValues.size()));
    moment.v = Eigen::Map<const Vector<Scalar>>(vValues.data(), Index(vValues.size()));
    moments.push_back(std::move(moment));
  }
  try {
    return AdamW<Scalar>(options, *steps, std::move(moments));
  } catch (const InvalidArgument& error) {
    detail::failFile(file, error.what());
  }
}

}  // namespace retnet::io
