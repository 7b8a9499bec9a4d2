// Training checkpoints: a trained RetNet saved under torchscale's RetNetDecoder state_dict names
// (what io::loadModel reads back and torchscale's Python loads with load_state_dict), and
// AdamW's state (its step count and the moments of every parameter), to resume training where
// it stopped.
#pragma once

#include <cstdint>
#include <cstdio>
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

}  // namespace detail

/// Writes `model` to the safetensors file `path` under torchscale's RetNetDecoder names
/// (`embed_tokens.weight`, `layers.{i}.retention.q_proj.weight` …, `layer_norm.weight`,
/// `output_projection.weight` unless tied), with the `retnet_rel_pos.decay` / `angle` buffers
/// torchscale's state_dict holds and its arguments as metadata (embed_dim, value_dim, heads,
/// ffn_dim, layers, vocab, layernorm_eps, activation_fn, embed_scale,
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
  refuse(!config.embedNorm, "embedding norm in this library's support");
  refuse(config.norm == ModelNorm::kRms, "LayerNorm final norm");
  refuse(block.gate == Activation::kSwish, "retention gate other than swish");
  refuse(block.activation == Activation::kGelu || block.activation == Activation::kSwish,
         "FFN activation other than gelu and swish");

  SafetensorsWriter writer;
  bool headNorm = false;
  model.forEachParameter([&](const char* name, auto parameter) {
    const std::string text = name;
    headNorm = headNorm || text.find("g_norm_swish_gate") != std::string::npos;
    detail::addValues(writer, text, dtype, detail::torchShape(parameter.rows(), parameter.cols()),
                      parameter.data(), parameter.size());
  });
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
  writer.addMetadata("share_decoder_input_output_embed", config.tiedEmbedding ? "True" : "False");
  writer.write(path);
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
