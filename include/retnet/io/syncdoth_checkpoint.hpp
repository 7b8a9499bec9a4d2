// syncdoth/RetNet checkpoints (the Hugging Face port of torchscale: SDPrompt-RetNet-300M,
// Spiral-RetNet-3b-base, LightNovel-Intro-RetNet-400M): torchscale's RetNet decoder under the
// names "model.…" and "lm_head.weight", plus the embedding scale √D (unless no_scale_embedding),
// the embedding RMSNorm (layernorm_embedding), the use_lm_decay schedule and tied heads
// (docs/semantics/syncdoth.md).
//
// The rotary angles and decays are computed from the configuration in double precision; the
// stored `retnet_rel_pos` buffers are only checked, to the precision of their dtype.
#pragma once

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "retnet/io/checkpoint.hpp"
#include "retnet/io/fla_checkpoint.hpp"
#include "retnet/io/json_file.hpp"
#include "retnet/io/weight_files.hpp"
#include "retnet/model.hpp"

namespace retnet::io {

/// The keys syncdoth's RetNetConfig saves, and transformers' bookkeeping. Others are refused.
inline const std::vector<std::string>& syncdothConfigKeys() {
  static const std::vector<std::string> keys = {"_name_or_path",
                                                "activation_dropout",
                                                "activation_fn",
                                                "architectures",
                                                "auto_map",
                                                "bos_token_id",
                                                "decoder_embed_dim",
                                                "decoder_ffn_embed_dim",
                                                "decoder_layers",
                                                "decoder_normalize_before",
                                                "decoder_retention_heads",
                                                "decoder_value_embed_dim",
                                                "deepnorm",
                                                "drop_path_rate",
                                                "dropout",
                                                "eos_token_id",
                                                "forward_impl",
                                                "initializer_range",
                                                "is_decoder",
                                                "layernorm_embedding",
                                                "layernorm_eps",
                                                "model_type",
                                                "no_scale_embedding",
                                                "output_retentions",
                                                "pad_token_id",
                                                "recurrent_chunk_size",
                                                "subln",
                                                "tie_word_embeddings",
                                                "dtype",
                                                "torch_dtype",
                                                "transformers_version",
                                                "unk_token_id",
                                                "use_cache",
                                                "use_ffn_rms_norm",
                                                "use_glu",
                                                "use_lm_decay",
                                                "vocab_size",
                                                "z_loss_coeff"};
  return keys;
}

/// syncdoth's decay schedule with use_lm_decay: 1 − γ_h log-spaced from 1/32 to 1/512,
/// γ_h = 1 − 2^(−5 − 4h/(H−1)) (γ_0 = 31/32 for H = 1).
inline std::vector<double> syncdothLmDecays(Index heads) {
  std::vector<double> gammas;
  for (Index h = 0; h < heads; ++h) {
    const double exponent = heads == 1 ? -5.0 : -5.0 - 4.0 * double(h) / double(heads - 1);
    gammas.push_back(1.0 - std::exp2(exponent));
  }
  return gammas;
}

struct SyncdothConfig {
  RetNetModelConfig model;
  std::optional<Dtype> dtype;  ///< torch_dtype, when given
  Index chunkSize = 0;         ///< recurrent_chunk_size, when given
};

/// syncdoth's RetNetConfig (config.json) as a RetNetModel configuration; refuses deepnorm,
/// post-norm, non-GLU FFNs and the FFN RMSNorm.
inline SyncdothConfig readSyncdothConfig(const JsonFile& config) {
  const std::vector<std::string> unknown = config.unknownKeys(syncdothConfigKeys());
  if (!unknown.empty()) {
    config.fail("unknown syncdoth RetNet config key '", unknown.front(),
                "': it may change the computation, so the model is refused");
  }
  if (config.boolean("deepnorm", false))
    config.fail("key 'deepnorm' is true: DeepNorm is not supported");
  if (!config.boolean("use_glu", true))
    config.fail("key 'use_glu' is false: only the GLU feed-forward network is supported");
  if (!config.boolean("decoder_normalize_before", true))
    config.fail("key 'decoder_normalize_before' is false: post-norm blocks are not supported");
  if (config.boolean("use_ffn_rms_norm", false))
    config.fail("key 'use_ffn_rms_norm' is true: the FFN's inner RMSNorm is not supported");

  SyncdothConfig result;
  RetNetModelConfig& c = result.model;
  c.vocab = config.integer("vocab_size");
  c.layers = config.integer("decoder_layers");
  c.block.embedDim = config.integer("decoder_embed_dim");
  c.block.valueDim = config.optionalInteger("decoder_value_embed_dim").value_or(c.block.embedDim);
  c.block.heads = config.integer("decoder_retention_heads");
  c.block.ffnDim = config.integer("decoder_ffn_embed_dim");
  c.block.eps = config.optionalNumber("layernorm_eps").value_or(1e-6);
  if (!(c.block.eps >= 0)) config.fail("key 'layernorm_eps' must be >= 0, got ", c.block.eps);
  const std::string act = config.string("activation_fn", "gelu");
  if (act != "swish" && act != "silu" && act != "gelu")
    config.fail("activation_fn must be \"swish\" or \"gelu\", got \"", act, "\"");
  c.block.activation = parseActivation(act);
  c.embedNorm = config.boolean("layernorm_embedding", false);
  c.embedScale = config.boolean("no_scale_embedding", true)
                     ? 1.0
                     : std::sqrt(static_cast<double>(c.block.embedDim));
  c.tiedEmbedding = config.boolean("tie_word_embeddings", false);
  try {
    c.validate("config.json");  // before anything is sized by the head count
  } catch (const InvalidArgument& e) {
    config.fail(e.what());
  }
  if (config.boolean("use_lm_decay", false)) c.block.decays = syncdothLmDecays(c.block.heads);
  result.dtype = detail::configDtype(config);
  result.chunkSize = config.optionalInteger("recurrent_chunk_size").value_or(0);
  return result;
}

namespace detail {

/// Relative error a stored rel-pos value of `dtype` may have: syncdoth computes the buffers in
/// float32 (use_lm_decay's 1 − x is rounded there: up to ~1e-5 relative), then stores them.
inline double relPosTolerance(Dtype dtype) {
  switch (dtype) {
    case Dtype::F64:
    case Dtype::F32:
      return 3e-5;
    case Dtype::F16:
      return 2e-3;  // 2^−11 rounding of a float32 value: 4.9e-4, with margin
    case Dtype::BF16:
      return 1.6e-2;  // 2^−8
    default:
      return 0.0;
  }
}

/// The stored model.retnet_rel_pos.{decay, angle} buffers, when present, must be the ones the
/// configuration computes (ln γ_h; each torchscale θ_i twice), within their dtype's precision.
inline void checkRelPosBuffers(const WeightFiles& files, const RetNetModelConfig& c) {
  const MultiScaleRetentionConfig r = c.block.retention();
  const auto check = [&](const std::string& name, const std::vector<double>& expected,
                         const char* unit) {
    if (!files.contains(name)) return;
    checkStoredBuffer(files.fileOf(name).displayName(), name, files.readVector<double>(name),
                      expected, unit, relPosTolerance(files.info(name).dtype));
  };
  check("model.retnet_rel_pos.decay", decayBuffer(r), "heads");
  check("model.retnet_rel_pos.angle", angleBuffer(r), "key dims (dk)");
}

}  // namespace detail

/// The weights of a syncdoth RetNetForCausalLM (names as torchscale's under "model.", the head
/// as lm_head.weight), shapes as `c` implies; the dense ones stored as `storage`.
template <typename Scalar>
RetNetModelWeights<Scalar> readSyncdothWeights(const WeightFiles& files, const RetNetModelConfig& c,
                                               const std::optional<Dtype>& dtype = std::nullopt,
                                               WeightType storage = WeightType::kFull) {
  detail::checkRelPosBuffers(files, c);
  const auto matrix = [&](const std::string& name, Index rows, Index cols) {
    return detail::readWeightMatrix<Scalar>(files, name, rows, cols, dtype, "torch_dtype", storage);
  };
  const auto vector = [&](const std::string& name, Index size) {
    return detail::readWeightVector<Scalar>(files, name, size, dtype, "torch_dtype");
  };
  const Index D = c.block.embedDim;
  RetNetModelWeights<Scalar> w;
  w.embed = matrix("model.embed_tokens.weight", c.vocab, D);
  if (c.embedNorm) {
    w.embedNorm = vector("model.layernorm_embedding.weight", D);
  } else if (files.contains("model.layernorm_embedding.weight")) {
    throw FormatError(
        retnet::detail::concat(files.name(),
                               ": tensor 'model.layernorm_embedding.weight' is present but the "
                               "configuration has layernorm_embedding false"));
  }
  for (Index i = 0; i < c.layers; ++i) {
    w.layers.push_back(detail::readBlockWeights<Scalar>("model.layers." + std::to_string(i) + ".",
                                                        c.block, matrix, vector));
  }
  w.finalNorm = vector("model.layer_norm.weight", D);
  if (!c.tiedEmbedding) w.outputProjection = matrix("lm_head.weight", c.vocab, D);
  return w;
}

/// The configuration of a bare syncdoth weights file (no config.json): sizes from the shapes,
/// H from the stored decay buffer (which also tells use_lm_decay), the embedding norm from its
/// weight, tied when lm_head.weight is absent; the metadata may give config.json's keys
/// (activation_fn, layernorm_eps, no_scale_embedding), else syncdoth's defaults (gelu, 1e-6,
/// no scale).
inline RetNetModelConfig inferSyncdothConfig(const WeightFiles& files) {
  if (!files.contains("model.retnet_rel_pos.decay")) {
    throw FormatError(retnet::detail::concat(
        files.name(),
        ": no config.json and no 'model.retnet_rel_pos.decay' tensor: the number "
        "of heads is unknown"));
  }
  const auto shape = [&](const std::string& name) { return files.info(name).shape; };
  const auto embed = shape("model.embed_tokens.weight");
  const auto v = shape("model.layers.0.retention.v_proj.weight");
  const auto fc1 = shape("model.layers.0.ffn.fc1.weight");
  const auto decay = shape("model.retnet_rel_pos.decay");
  if (embed.size() != 2 || v.size() != 2 || fc1.size() != 2 || decay.size() != 1) {
    throw FormatError(retnet::detail::concat(files.name(), ": unexpected tensor ranks"));
  }
  nlohmann::json keys = {
      {"vocab_size", embed[0]},
      {"decoder_embed_dim", embed[1]},
      {"decoder_value_embed_dim", v[0]},
      {"decoder_ffn_embed_dim", fc1[0]},
      {"decoder_retention_heads", decay[0]},
      {"layernorm_embedding", files.contains("model.layernorm_embedding.weight")},
      {"tie_word_embeddings", !files.contains("lm_head.weight")}};
  Index layers = 0;
  while (files.contains("model.layers." + std::to_string(layers) + ".retention.q_proj.weight"))
    ++layers;
  keys["decoder_layers"] = layers;
  if (const auto act = files.metadataValue("activation_fn")) keys["activation_fn"] = *act;
  if (const auto eps = files.metadataValue("layernorm_eps")) {
    keys["layernorm_eps"] = nlohmann::json::parse(*eps, nullptr, false);
  }
  if (const auto flag = files.metadataValue("no_scale_embedding"))
    keys["no_scale_embedding"] = *flag == "true" || *flag == "True";
  // use_lm_decay: whichever schedule the stored buffer matches.
  const Vector<double> stored = files.readVector<double>("model.retnet_rel_pos.decay");
  const std::vector<double> lm = syncdothLmDecays(decay[0]);
  bool isLm = decay[0] > 1;
  for (Index h = 0; h < decay[0] && isLm; ++h)
    isLm = std::abs(stored(h) - std::log(lm[static_cast<std::size_t>(h)])) <=
           1e-2 * std::abs(std::log(lm[static_cast<std::size_t>(h)]));
  keys["use_lm_decay"] = isLm;
  return readSyncdothConfig(JsonFile::parse(keys.dump(), files.name() + " (from its shapes)"))
      .model;
}

}  // namespace retnet::io
