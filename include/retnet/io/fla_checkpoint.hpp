// FLA (flash-linear-attention) RetNet checkpoints, as fla-hub publishes them: a Hugging Face
// directory with FLA's RetNetConfig in config.json and FLA's state_dict names. The model is
// RetNetModel with FLA's semantics (docs/semantics/fla.md): half-split rotary, q scaled by
// dk^(−1/2), raw retention, the head norm's shared weight, the SwiGLU MLP (split or the legacy
// fused gate_proj), RMSNorm weights everywhere, no embedding scale.
#pragma once

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "retnet/io/json_file.hpp"
#include "retnet/io/linear_weight_file.hpp"
#include "retnet/io/weight_files.hpp"
#include "retnet/model.hpp"

namespace retnet::io {

/// Every key of FLA's RetNetConfig, with the legacy ones of fla-hub's config.json and the
/// transformers bookkeeping. A key outside this list may change the computation: refused.
inline const std::vector<std::string>& flaConfigKeys() {
  static const std::vector<std::string> keys = {"_name_or_path",
                                                "architectures",
                                                "attn",
                                                "attn_mode",
                                                "attnres_block_size",
                                                "bos_token_id",
                                                "conv_size",
                                                "dtype",
                                                "elementwise_affine",
                                                "eos_token_id",
                                                "expand_k",
                                                "expand_v",
                                                "feature_map",
                                                "fuse_cross_entropy",
                                                "fuse_linear_cross_entropy",
                                                "fuse_norm",
                                                "fuse_swiglu",
                                                "hidden_act",
                                                "hidden_ratio",
                                                "hidden_size",
                                                "initializer_range",
                                                "intermediate_size",
                                                "max_position_embeddings",
                                                "model_type",
                                                "norm_eps",
                                                "num_heads",
                                                "num_hidden_layers",
                                                "num_kv_heads",
                                                "pad_token_id",
                                                "rms_norm_eps",
                                                "share_conv_kernel",
                                                "tie_word_embeddings",
                                                "torch_dtype",
                                                "transformers_version",
                                                "use_cache",
                                                "use_l2warp",
                                                "use_output_gate",
                                                "use_short_conv",
                                                "vocab_size"};
  return keys;
}

/// What a model directory's config.json says, in retnet's terms.
struct FlaConfig {
  RetNetModelConfig model;
  std::optional<Dtype> dtype;  ///< torch_dtype, when given
};

namespace detail {

/// torch_dtype's (or dtype's) name as a safetensors dtype.
inline Dtype torchDtype(const JsonFile& config, const char* key, const std::string& name) {
  if (name == "float32") return Dtype::F32;
  if (name == "float16") return Dtype::F16;
  if (name == "bfloat16") return Dtype::BF16;
  config.fail(key, " must be float32, float16 or bfloat16, got \"", name, "\"");
}

/// The weights' dtype a Hugging Face config.json names: torch_dtype, or dtype (its name from
/// transformers 4.56 on); when both are given they must agree. Empty when neither is.
inline std::optional<Dtype> configDtype(const JsonFile& config) {
  std::optional<Dtype> result;
  for (const char* key : {"torch_dtype", "dtype"}) {
    if (config.isNull(key)) continue;
    const Dtype named = torchDtype(config, key, config.string(key, ""));
    if (result && *result != named)
      config.fail("keys 'torch_dtype' and 'dtype' name different types");
    result = named;
  }
  return result;
}

/// MLP width: intermediate_size, or 256·ceil(trunc(d·r·2/3) / 256) with r = hidden_ratio: 2 when
/// the key is absent (RetNetConfig's default), 4 when it is null (GatedMLP's).
inline Index flaIntermediateSize(const JsonFile& config, Index d) {
  if (const auto size = config.optionalInteger("intermediate_size")) return *size;
  const double ratio =
      config.has("hidden_ratio") ? config.optionalNumber("hidden_ratio").value_or(4.0) : 2.0;
  if (!(ratio > 0)) config.fail("key 'hidden_ratio' must be > 0, got ", ratio);
  const double width = std::trunc(static_cast<double>(d) * ratio * 2.0 / 3.0);
  if (!(width >= 1 && width <= static_cast<double>(kMaxConfigInteger))) {
    config.fail("the MLP width trunc(hidden_size·hidden_ratio·2/3) = ", width, " must lie in [1, ",
                kMaxConfigInteger, "]");
  }
  const auto m = static_cast<Index>(width);
  return 256 * ((m + 255) / 256);
}

/// A RetNetModel configuration with FLA's semantics and these sizes.
inline RetNetModelConfig flaModelConfig(Index vocab, Index layers, Index d, Index H, Index Hkv,
                                        Index dk, Index dv, Index I, double eps, bool tied) {
  const MultiScaleRetentionConfig r = MultiScaleRetentionConfig::fla(d, H, Hkv, dk, dv, eps);
  RetNetModelConfig c;
  c.vocab = vocab;
  c.layers = layers;
  c.tiedEmbedding = tied;
  c.embedScale = 1.0;
  c.block.embedDim = d;
  c.block.valueDim = r.valueDim;
  c.block.heads = H;
  c.block.ffnDim = I;
  c.block.eps = eps;
  c.block.activation = Activation::kSwish;  // silu on gate_proj
  c.block.gate = Activation::kSwish;
  c.block.headKeyDim = dk;
  c.block.kvHeads = Hkv;
  c.block.rotary = r.rotary;
  c.block.normalization = r.normalization;
  c.block.scaleSide = r.scaleSide;
  return c;
}

}  // namespace detail

/// FLA's RetNetConfig (config.json) as a RetNetModel configuration; refuses what retnet does not
/// compute (hybrid attention layers, short convolutions, feature maps, no output gate, …).
inline FlaConfig readFlaConfig(const JsonFile& config) {
  const std::vector<std::string> unknown = config.unknownKeys(flaConfigKeys());
  if (!unknown.empty()) {
    config.fail("unknown FLA RetNet config key '", unknown.front(),
                "': it may change the computation, so the model is refused");
  }
  if (!config.isNull("attnres_block_size")) {
    config.fail("key 'attnres_block_size' is set: attention residuals are not supported");
  }
  if (!config.isNull("attn")) {
    config.fail("key 'attn' is set: hybrid models with softmax-attention layers are not supported");
  }
  if (config.boolean("use_short_conv", false))
    config.fail("key 'use_short_conv' is true: short convolutions are not supported");
  if (!config.isNull("feature_map")) {
    config.fail("key 'feature_map' is ", config.root().at("feature_map").dump(),
                ": feature maps are not supported");
  }
  if (!config.boolean("use_output_gate", true))
    config.fail(
        "key 'use_output_gate' is false: retention without the output gate is not supported");
  if (!config.boolean("elementwise_affine", true))
    config.fail("key 'elementwise_affine' is false: norms without weights are not supported");
  const std::string mode = config.string("attn_mode", "chunk");
  if (mode != "chunk" && mode != "fused_chunk" && mode != "parallel" && mode != "fused_recurrent")
    config.fail("unknown attn_mode \"", mode, "\"");
  const std::string act = config.string("hidden_act", "swish");
  if (act != "swish" && act != "silu")
    config.fail("hidden_act must be \"swish\", got \"", act, "\"");

  const Index d = config.integer("hidden_size"), H = config.integer("num_heads");
  const Index Hkv = config.optionalInteger("num_kv_heads").value_or(H);
  const auto width = [&](const char* key) {
    const double expand = config.optionalNumber(key).value_or(1.0);
    if (!(expand > 0)) config.fail("key '", key, "' must be > 0, got ", expand);
    const double product = std::trunc(static_cast<double>(d) * expand);
    if (!(product <= static_cast<double>(kMaxConfigInteger)))
      config.fail("trunc(hidden_size·", key, ") = ", product, " is beyond ", kMaxConfigInteger);
    const auto total = static_cast<Index>(product);
    if (total < H || total % H != 0) {
      config.fail("trunc(hidden_size·", key, ") = ", total, " must be a positive multiple of ",
                  "num_heads (", H, ")");
    }
    return total / H;
  };
  const Index dk = width("expand_k"), dv = width("expand_v");
  if (H % Hkv != 0) config.fail("num_kv_heads (", Hkv, ") must divide num_heads (", H, ")");
  if (dk % 2 != 0) config.fail("the per-head key dim ", dk, " must be even for the rotary pairs");
  const double eps = config.optionalNumber("norm_eps")
                         .value_or(config.optionalNumber("rms_norm_eps").value_or(1e-6));
  if (!(eps >= 0)) config.fail("key 'norm_eps' must be >= 0, got ", eps);

  FlaConfig result;
  result.model = detail::flaModelConfig(
      config.integer("vocab_size"), config.integer("num_hidden_layers"), d, H, Hkv, dk, dv,
      detail::flaIntermediateSize(config, d), eps, config.boolean("tie_word_embeddings", false));
  try {
    result.model.validate("config.json");
  } catch (const InvalidArgument& e) {
    config.fail(e.what());
  }
  result.dtype = detail::configDtype(config);
  return result;
}

namespace detail {

/// Weights must be F32, F16 or BF16, and `dtype` when the config names one; a dense weight
/// (`matrix`) may also be I8, an int8 weight of a quantized file (its scales checked on reading).
inline void checkWeightDtype(const WeightFiles& files, const std::string& name,
                             const std::optional<Dtype>& dtype, const char* dtypeKey,
                             bool matrix = false) {
  const Dtype stored = files.info(name).dtype;
  if (matrix && stored == Dtype::I8) return;
  // A quantized file's dense weights are in the type it was saved with (quantize.hpp).
  if (const auto saved = files.metadataValue(kWeightsMetadataKey); matrix && saved) {
    if (!weightsFromMetadata(*saved)) {
      throw FormatError(retnet::detail::concat(files.name(), ": metadata '", kWeightsMetadataKey,
                                               "' must be bf16, f16 or int8-g32, got \"", *saved,
                                               "\""));
    }
    return checkWeightDtype(files, name, {}, dtypeKey);
  }
  if (stored != Dtype::F32 && stored != Dtype::F16 && stored != Dtype::BF16) {
    throw FormatError(retnet::detail::concat(files.fileOf(name).displayName(), ": tensor '", name,
                                             "': weights must be F32, F16 or BF16, got ",
                                             dtypeName(stored)));
  }
  if (dtype && stored != *dtype) {
    throw FormatError(retnet::detail::concat(files.fileOf(name).displayName(), ": tensor '", name,
                                             "' is ", dtypeName(stored), " but config.json's ",
                                             dtypeKey, " says ", dtypeName(*dtype)));
  }
}

/// Reads weight `name` of shape (rows, cols) after its dtype check, stored as `storage`.
template <typename Scalar>
LinearWeight<Scalar> readWeightMatrix(const WeightFiles& files, const std::string& name, Index rows,
                                      Index cols, const std::optional<Dtype>& dtype,
                                      const char* dtypeKey, WeightType storage) {
  checkWeightDtype(files, name, dtype, dtypeKey, true);
  return readLinearWeight<Scalar>(files.fileOf(name), name, rows, cols, storage);
}
template <typename Scalar>
Vector<Scalar> readWeightVector(const WeightFiles& files, const std::string& name, Index size,
                                const std::optional<Dtype>& dtype, const char* dtypeKey) {
  checkWeightDtype(files, name, dtype, dtypeKey);
  return files.readVector<Scalar>(name, size);
}

}  // namespace detail

/// The weights of an FLA RetNet under FLA's names (model.embeddings.weight,
/// model.layers.{i}.attn.*, .mlp.*, model.norm.weight, lm_head.weight), shapes as `c` implies;
/// the dense ones stored as `storage` (BF16/F16 tensors kept as they are: used in place).
template <typename Scalar>
RetNetModelWeights<Scalar> readFlaWeights(const WeightFiles& files, const RetNetModelConfig& c,
                                          const std::optional<Dtype>& dtype = std::nullopt,
                                          WeightType storage = WeightType::kFull) {
  const MultiScaleRetentionConfig r = c.block.retention();
  const Index d = c.block.embedDim, I = c.block.ffnDim, dk = r.keyDim(), dv = r.headValueDim();
  const Index H = r.heads, Hkv = r.keyValueHeads();
  const auto matrix = [&](const std::string& name, Index rows, Index cols) {
    return detail::readWeightMatrix<Scalar>(files, name, rows, cols, dtype, "torch_dtype", storage);
  };
  const auto vector = [&](const std::string& name, Index size) {
    return detail::readWeightVector<Scalar>(files, name, size, dtype, "torch_dtype");
  };
  RetNetModelWeights<Scalar> w;
  w.embed = matrix("model.embeddings.weight", c.vocab, d);
  for (Index i = 0; i < c.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    RetNetBlockWeights<Scalar> layer;
    layer.retentionNorm = vector(p + "attn_norm.weight", d);
    layer.retention.q = matrix(p + "attn.q_proj.weight", H * dk, d);
    layer.retention.k = matrix(p + "attn.k_proj.weight", Hkv * dk, d);
    layer.retention.v = matrix(p + "attn.v_proj.weight", Hkv * dv, d);
    layer.retention.g = matrix(p + "attn.g_proj.weight", H * dv, d);
    layer.retention.out = matrix(p + "attn.o_proj.weight", d, H * dv);
    const std::string fused = p + "attn.g_norm_swish_gate.weight", plain = p + "attn.g_norm.weight";
    if (files.contains(fused) && files.contains(plain)) {
      throw FormatError(retnet::detail::concat(files.name(), ": both '", fused, "' and '", plain,
                                               "' are present; exactly one head-norm weight is "
                                               "expected"));
    }
    layer.retention.headNorm = vector(files.contains(plain) ? plain : fused, dv);
    layer.finalNorm = vector(p + "mlp_norm.weight", d);
    // I is the config's; down_proj must agree (the message names it if not).
    layer.fc2 = matrix(p + "mlp.down_proj.weight", d, I);
    if (files.contains(p + "mlp.up_proj.weight")) {
      layer.fc1 = matrix(p + "mlp.gate_proj.weight", I, d);
      layer.gate = matrix(p + "mlp.up_proj.weight", I, d);
    } else {  // the fused layout of FLA before b48ca31d: rows [0, I) gate, [I, 2I) up
      const LinearWeight<Scalar> both = matrix(p + "mlp.gate_proj.weight", 2 * I, d);
      layer.fc1 = both.middleRows(0, I);
      layer.gate = both.middleRows(I, I);
    }
    w.layers.push_back(std::move(layer));
  }
  w.finalNorm = vector("model.norm.weight", d);
  if (!c.tiedEmbedding) w.outputProjection = matrix("lm_head.weight", c.vocab, d);
  return w;
}

/// The configuration of a bare FLA weights file (no config.json), from its shapes: d and V from
/// the embedding, dv from the head norm, H from g_proj, dk from q_proj, H_kv from k_proj, I from
/// down_proj, L by counting layers, tied when lm_head.weight is absent; eps from the metadata key
/// `norm_eps` (else FLA's 1e-6).
inline RetNetModelConfig inferFlaConfig(const WeightFiles& files) {
  const auto shape = [&](const std::string& name, std::size_t rank) {
    const std::vector<Index>& s = files.info(name).shape;
    if (s.size() != rank || s[0] < 1 || (rank == 2 && s[1] < 1)) {
      throw FormatError(retnet::detail::concat(files.name(), ": tensor '", name,
                                               "' must be a non-empty rank-", rank, " tensor"));
    }
    return s;
  };
  const auto embed = shape("model.embeddings.weight", 2);
  const std::string p = "model.layers.0.";
  const std::string headNorm = files.contains(p + "attn.g_norm.weight")
                                   ? p + "attn.g_norm.weight"
                                   : p + "attn.g_norm_swish_gate.weight";
  const Index d = embed[1], dv = shape(headNorm, 1)[0];
  const Index gRows = shape(p + "attn.g_proj.weight", 2)[0];
  const Index H = gRows / dv;
  const Index qRows = shape(p + "attn.q_proj.weight", 2)[0];
  const Index kRows = shape(p + "attn.k_proj.weight", 2)[0];
  if (H < 1 || gRows % dv != 0 || qRows % H != 0 || kRows % (qRows / H) != 0) {
    throw FormatError(retnet::detail::concat(
        files.name(), ": the shapes of g_proj (", gRows, " rows), the head norm (", dv,
        "), q_proj (", qRows, ") and k_proj (", kRows, ") do not fit any head layout"));
  }
  const Index dk = qRows / H, Hkv = kRows / dk;
  double eps = 1e-6;
  if (const auto value = files.metadataValue("norm_eps")) {
    std::size_t used = 0;
    try {
      eps = std::stod(*value, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != value->size() || !(eps >= 0)) {
      throw FormatError(retnet::detail::concat(
          files.name(), ": metadata 'norm_eps' must be a number >= 0, got \"", *value, "\""));
    }
  }
  Index layers = 0;
  while (files.contains("model.layers." + std::to_string(layers) + ".attn.q_proj.weight")) ++layers;
  return detail::flaModelConfig(embed[0], layers, d, H, Hkv, dk, dv,
                                shape(p + "mlp.down_proj.weight", 2)[1], eps,
                                !files.contains("lm_head.weight"));
}

}  // namespace retnet::io
