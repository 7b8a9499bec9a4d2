// Building retnet layers from safetensors checkpoints by torchscale's state_dict names.
//
// A layer's configuration comes, in this order of precedence, from the caller, from the file's
// `__metadata__` (torchscale's argument names: embed_dim, value_dim, heads, ffn_dim,
// layernorm_eps, activation_fn, gate_fn), and from the tensor shapes; the head count, which no
// weight shape reveals, may also come from the length of a stored `decay` buffer. Every weight
// must have the shape the configuration implies, and stored `decay` / `angle` buffers must match
// the ones the configuration produces; anything else is a FormatError naming file and tensor.
#pragma once

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "retnet/block.hpp"
#include "retnet/io/linear_weight_file.hpp"
#include "retnet/io/safetensors.hpp"
#include "retnet/model.hpp"
#include "retnet/multiscale_retention.hpp"

namespace retnet::io {

namespace detail {

template <typename... Parts>
[[noreturn]] void failFile(const SafetensorsFile& file, Parts&&... parts) {
  throw FormatError(
      retnet::detail::concat(file.displayName(), ": ", std::forward<Parts>(parts)...));
}

/// A metadata value parsed as a number, or nullopt if the key is absent.
template <typename Number>
std::optional<Number> metadataNumber(const SafetensorsFile& file, const std::string& key) {
  const std::optional<std::string> text = file.metadataValue(key);
  if (!text) return std::nullopt;
  try {
    std::size_t used = 0;
    Number value{};
    if constexpr (std::is_integral_v<Number>) {
      value = static_cast<Number>(std::stoll(*text, &used));
    } else {
      value = static_cast<Number>(std::stod(*text, &used));
    }
    if (used != text->size()) throw std::invalid_argument("trailing characters");
    return value;
  } catch (const std::exception&) {
    failFile(file, "metadata '", key, "' must be a number, got \"", *text, "\"");
  }
}

inline std::vector<Index> shapeOf(const SafetensorsFile& file, const std::string& name) {
  return file.info(name).shape;
}

/// The first of `names` the file holds, or nullopt.
inline std::optional<std::string> firstPresent(const SafetensorsFile& file,
                                               const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    if (file.contains(name)) return name;
  }
  return std::nullopt;
}

/// Where a checkpoint may keep the relative-position buffers of a layer under `prefix`.
inline std::vector<std::string> bufferCandidates(const std::string& prefix,
                                                 const std::string& what) {
  return {prefix + what, prefix + "retnet_rel_pos." + what, "retnet_rel_pos." + what, what};
}

/// The `decay` buffer a configuration implies: ln γ_h of every head.
inline std::vector<double> decayBuffer(const MultiScaleRetentionConfig& config) {
  std::vector<double> logDecays;
  for (double gamma : config.headDecays()) logDecays.push_back(std::log(gamma));
  return logDecays;
}

/// The `angle` buffer a configuration implies: each of torchscale's θ_i twice (dk entries).
inline std::vector<double> angleBuffer(const MultiScaleRetentionConfig& config) {
  const Vector<double> angle = RotaryEmbedding<double>(config.keyDim()).angle();
  return std::vector<double>(angle.data(), angle.data() + angle.size());
}

/// Stored buffer `name` (of the file called `file`) must hold `expected` (one entry per `unit`
/// of the layer), every entry to the relative `tolerance`; FormatError naming the entry otherwise.
inline void checkStoredBuffer(const std::string& file, const std::string& name,
                              const Vector<double>& stored, const std::vector<double>& expected,
                              const char* unit, double tolerance) {
  if (stored.size() != static_cast<Index>(expected.size())) {
    throw FormatError(retnet::detail::concat(file, ": tensor '", name, "' has ", stored.size(),
                                             " entries but the layer has ", expected.size(), " ",
                                             unit));
  }
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const double e = expected[i], got = stored(static_cast<Index>(i));
    if (!(std::abs(got - e) <= tolerance * std::abs(e) + 1e-30)) {
      throw FormatError(retnet::detail::concat(file, ": tensor '", name, "'[", i, "] is ", got,
                                               " but the configuration gives ", e,
                                               " (allowed relative error ", tolerance, ")"));
    }
  }
}

/// Stored `decay` (ln γ_h) and `angle` buffers, when present, must be what the configuration
/// computes. Relative tolerance 1e-6: stock torchscale stores them in float32.
inline void checkPositionBuffers(const SafetensorsFile& file, const std::string& prefix,
                                 const MultiScaleRetentionConfig& config) {
  if (const auto name = firstPresent(file, bufferCandidates(prefix, "decay"))) {
    // torchscale files store torchscale's schedule; decays a caller configures replace it.
    MultiScaleRetentionConfig standard = config;
    standard.decays.clear();
    checkStoredBuffer(file.displayName(), *name, file.readVector<double>(*name),
                      decayBuffer(standard), "heads", 1e-6);
  }
  if (const auto name = firstPresent(file, bufferCandidates(prefix, "angle"))) {
    checkStoredBuffer(file.displayName(), *name, file.readVector<double>(*name),
                      angleBuffer(config), "key dims (dk)", 1e-6);
  }
}

template <typename Scalar>
LinearWeight<Scalar> readWeight(const SafetensorsFile& file, const std::string& name, Index rows,
                                Index cols, WeightType storage = WeightType::kFull) {
  if (!file.contains(name)) failFile(file, "missing tensor '", name, "'");
  return readLinearWeight<Scalar>(file, name, rows, cols, storage);
}

template <typename Scalar>
Vector<Scalar> readVectorWeight(const SafetensorsFile& file, const std::string& name, Index size) {
  if (!file.contains(name)) failFile(file, "missing tensor '", name, "'");
  const Dtype dtype = file.info(name).dtype;
  if (dtype == Dtype::I64 || dtype == Dtype::I8)
    failFile(file, "tensor '", name, "': must be F64, F32, F16 or BF16, got ", dtypeName(dtype));
  return file.readVector<Scalar>(name, size);
}

/// The weights of the RetNet block under `prefix` by torchscale's names, shapes as `c` implies:
/// matrix(name, rows, cols) and vector(name, size) read one tensor (torchscale's files, or
/// syncdoth's under "model.").
template <typename Scalar, typename ReadMatrix, typename ReadVector>
RetNetBlockWeights<Scalar> readBlockWeights(const std::string& prefix, const RetNetBlockConfig& c,
                                            ReadMatrix matrix, ReadVector vector) {
  const Index D = c.embedDim, V = c.valueDim, F = c.ffnDim;
  const std::string r = prefix + "retention.";
  RetNetBlockWeights<Scalar> w;
  w.retention.q = matrix(r + "q_proj.weight", D, D);
  w.retention.k = matrix(r + "k_proj.weight", D, D);
  w.retention.v = matrix(r + "v_proj.weight", V, D);
  w.retention.g = matrix(r + "g_proj.weight", V, D);
  w.retention.out = matrix(r + "out_proj.weight", D, V);
  w.retentionNorm = vector(prefix + "retention_layer_norm.weight", D);
  w.fc1 = matrix(prefix + "ffn.fc1.weight", F, D);
  w.gate = matrix(prefix + "ffn.gate.weight", F, D);
  w.fc2 = matrix(prefix + "ffn.fc2.weight", D, F);
  w.finalNorm = vector(prefix + "final_layer_norm.weight", D);
  return w;
}

/// The same from one torchscale safetensors file, the dense weights stored as `storage`.
template <typename Scalar>
RetNetBlockWeights<Scalar> readBlockWeights(const SafetensorsFile& file, const std::string& prefix,
                                            const RetNetBlockConfig& c,
                                            WeightType storage = WeightType::kFull) {
  return readBlockWeights<Scalar>(
      prefix, c,
      [&](const std::string& name, Index rows, Index cols) {
        return readWeight<Scalar>(file, name, rows, cols, storage);
      },
      [&](const std::string& name, Index size) {
        return readVectorWeight<Scalar>(file, name, size);
      });
}

}  // namespace detail

/// The multi-scale retention configuration of the layer under `prefix` ("", "retention.",
/// "layers.3.retention." …), from metadata and shapes.
inline MultiScaleRetentionConfig readMultiScaleRetentionConfig(const SafetensorsFile& file,
                                                               const std::string& prefix = "") {
  const std::string qName = prefix + "q_proj.weight", vName = prefix + "v_proj.weight";
  if (!file.contains(qName)) detail::failFile(file, "missing tensor '", qName, "'");
  if (!file.contains(vName)) detail::failFile(file, "missing tensor '", vName, "'");
  const auto qShape = detail::shapeOf(file, qName), vShape = detail::shapeOf(file, vName);
  if (qShape.size() != 2 || vShape.size() != 2) {
    detail::failFile(file, "tensors '", qName, "' and '", vName, "' must be matrices");
  }
  MultiScaleRetentionConfig config;
  config.embedDim = detail::metadataNumber<Index>(file, "embed_dim").value_or(qShape[1]);
  config.valueDim = detail::metadataNumber<Index>(file, "value_dim").value_or(vShape[0]);
  std::optional<Index> heads = detail::metadataNumber<Index>(file, "heads");
  if (!heads) {
    if (const auto decay = detail::firstPresent(
            file,
            detail::bufferCandidates(prefix.substr(0, prefix.rfind("retention.")), "decay"))) {
      heads = detail::shapeOf(file, *decay).at(0);
    }
  }
  if (!heads) {
    detail::failFile(file,
                     "the number of heads is neither in the metadata ('heads') nor given by a "
                     "'decay' tensor; pass a configuration");
  }
  config.heads = *heads;
  config.eps = detail::metadataNumber<double>(file, "layernorm_eps").value_or(1e-6);
  if (const auto gate = file.metadataValue("gate_fn")) config.gate = parseActivation(*gate);
  return config;
}

/// The RetNet block configuration of the layer under `prefix` ("", "layers.3." …).
inline RetNetBlockConfig readRetNetBlockConfig(const SafetensorsFile& file,
                                               const std::string& prefix = "") {
  const MultiScaleRetentionConfig retention =
      readMultiScaleRetentionConfig(file, prefix + "retention.");
  RetNetBlockConfig config;
  config.embedDim = retention.embedDim;
  config.valueDim = retention.valueDim;
  config.heads = retention.heads;
  config.eps = retention.eps;
  config.gate = retention.gate;
  const std::string fc1 = prefix + "ffn.fc1.weight";
  if (!file.contains(fc1)) detail::failFile(file, "missing tensor '", fc1, "'");
  config.ffnDim =
      detail::metadataNumber<Index>(file, "ffn_dim").value_or(detail::shapeOf(file, fc1).at(0));
  if (const auto act = file.metadataValue("activation_fn"))
    config.activation = parseActivation(*act);
  return config;
}

/// Multi-scale retention from `file`, tensors `{prefix}q_proj.weight` … `{prefix}out_proj.weight`.
template <typename Scalar>
MultiScaleRetention<Scalar> loadMultiScaleRetention(
    const SafetensorsFile& file, const std::string& prefix = "",
    const std::optional<MultiScaleRetentionConfig>& config = std::nullopt) {
  const MultiScaleRetentionConfig c =
      config ? *config : readMultiScaleRetentionConfig(file, prefix);
  c.validate("loadMultiScaleRetention");
  detail::checkPositionBuffers(file, prefix.substr(0, prefix.rfind("retention.")), c);
  const Index D = c.embedDim, V = c.valueDim;
  MultiScaleRetentionWeights<Scalar> w;
  w.q = detail::readWeight<Scalar>(file, prefix + "q_proj.weight", D, D);
  w.k = detail::readWeight<Scalar>(file, prefix + "k_proj.weight", D, D);
  w.v = detail::readWeight<Scalar>(file, prefix + "v_proj.weight", V, D);
  w.g = detail::readWeight<Scalar>(file, prefix + "g_proj.weight", V, D);
  w.out = detail::readWeight<Scalar>(file, prefix + "out_proj.weight", D, V);
  return MultiScaleRetention<Scalar>(c, w);
}

/// A RetNet block from `file`, torchscale DecoderLayer names under `prefix`: `{prefix}retention.*`,
/// `{prefix}retention_layer_norm.weight`, `{prefix}ffn.{fc1,gate,fc2}.weight`,
/// `{prefix}final_layer_norm.weight`.
template <typename Scalar>
RetNetBlock<Scalar> loadRetNetBlock(const SafetensorsFile& file, const std::string& prefix = "",
                                    const std::optional<RetNetBlockConfig>& config = std::nullopt) {
  const RetNetBlockConfig c = config ? *config : readRetNetBlockConfig(file, prefix);
  c.validate("loadRetNetBlock");
  detail::checkPositionBuffers(file, prefix, c.retention());
  return RetNetBlock<Scalar>(c, detail::readBlockWeights<Scalar>(file, prefix, c));
}

/// The configuration of a torchscale RetNetDecoder checkpoint: layers from the metadata or by
/// counting `layers.{i}.` prefixes, each block's shape from layer 0, the vocabulary from the
/// embedding, the embedding scale from `embed_scale` / `no_scale_embedding`, the embedding's
/// RMSNorm (`layernorm_embedding.weight`) when `layernorm_embedding` says so or the weight is
/// stored, and tied output embeddings when `share_decoder_input_output_embed` says so or no
/// output projection is stored.
inline RetNetModelConfig readRetNetModelConfig(const SafetensorsFile& file) {
  const auto flag = [&](const char* key) {
    return file.metadataValue(key).value_or("False") == "True";
  };
  if (flag("deepnorm"))
    detail::failFile(file, "deepnorm=True is not supported (torchscale's default is False)");
  RetNetModelConfig config;
  if (const auto layers = detail::metadataNumber<Index>(file, "layers")) {
    config.layers = *layers;
  } else {
    while (file.contains("layers." + std::to_string(config.layers) + ".retention.q_proj.weight"))
      ++config.layers;
  }
  if (config.layers < 1)
    detail::failFile(file, "no layers: missing tensor 'layers.0.retention.q_proj.weight'");
  config.block = readRetNetBlockConfig(file, "layers.0.");
  if (!file.contains("embed_tokens.weight"))
    detail::failFile(file, "missing tensor 'embed_tokens.weight'");
  const auto embedShape = detail::shapeOf(file, "embed_tokens.weight");
  if (embedShape.size() != 2)
    detail::failFile(file, "tensor 'embed_tokens.weight' must be a matrix");
  config.vocab = detail::metadataNumber<Index>(file, "vocab").value_or(embedShape[0]);
  if (const auto scale = detail::metadataNumber<double>(file, "embed_scale")) {
    config.embedScale = *scale;
  } else {
    const bool noScale = file.metadataValue("no_scale_embedding").value_or("True") == "True";
    config.embedScale = noScale ? 1.0 : std::sqrt(static_cast<double>(config.block.embedDim));
  }
  config.embedNorm = flag("layernorm_embedding") || file.contains("layernorm_embedding.weight");
  config.tiedEmbedding =
      flag("share_decoder_input_output_embed") || !file.contains("output_projection.weight");
  return config;
}

/// A RetNet language model from a torchscale RetNetDecoder checkpoint (`embed_tokens.weight`,
/// `layers.{i}.…`, `layer_norm.weight`, `output_projection.weight`), the dense weights stored as
/// `storage` (linear_weight.hpp).
template <typename Scalar>
RetNetModel<Scalar> loadRetNetModel(const SafetensorsFile& file,
                                    const std::optional<RetNetModelConfig>& config = std::nullopt,
                                    WeightType storage = WeightType::kFull) {
  const RetNetModelConfig c = config ? *config : readRetNetModelConfig(file);
  c.validate("loadRetNetModel");
  const Index D = c.block.embedDim;
  RetNetModelWeights<Scalar> w;
  w.embed = detail::readWeight<Scalar>(file, "embed_tokens.weight", c.vocab, D, storage);
  if (c.embedNorm)
    w.embedNorm = detail::readVectorWeight<Scalar>(file, "layernorm_embedding.weight", D);
  for (Index i = 0; i < c.layers; ++i) {
    const std::string prefix = "layers." + std::to_string(i) + ".";
    detail::checkPositionBuffers(file, prefix, c.block.retention());
    w.layers.push_back(detail::readBlockWeights<Scalar>(file, prefix, c.block, storage));
  }
  w.finalNorm = detail::readVectorWeight<Scalar>(file, "layer_norm.weight", D);
  if (!c.tiedEmbedding)
    w.outputProjection =
        detail::readWeight<Scalar>(file, "output_projection.weight", c.vocab, D, storage);
  return RetNetModel<Scalar>(c, std::move(w), storage);
}

}  // namespace retnet::io
