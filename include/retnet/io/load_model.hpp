// One loader for the published RetNets: retnet::io::loadModel<Scalar>(path) -> RetNetModel.
//
// `path` is a Hugging Face model directory (config.json, then model.safetensors or shards with
// model.safetensors.index.json) or a single .safetensors file. The family comes from config.json
// (FLA's RetNetConfig has hidden_size/num_heads, syncdoth's decoder_embed_dim/…), or, without
// one, from the tensor names (model.embeddings.* FLA, model.embed_tokens.* syncdoth,
// embed_tokens.* torchscale) and the file's metadata. F32, F16 and BF16 weights are converted
// to Scalar tensor by tensor, in pieces, so a load holds the converted weights and little else.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "retnet/io/checkpoint.hpp"
#include "retnet/io/fla_checkpoint.hpp"
#include "retnet/io/json_file.hpp"
#include "retnet/io/syncdoth_checkpoint.hpp"
#include "retnet/io/weight_files.hpp"
#include "retnet/model.hpp"

namespace retnet::io {

enum class ModelFamily {
  kTorchscale,  ///< torchscale's RetNetDecoder, retnet's own safetensors files
  kFla,         ///< flash-linear-attention's RetNet (fla-hub)
  kSyncdoth,    ///< syncdoth/RetNet, the Hugging Face port of torchscale
};

inline const char* familyName(ModelFamily family) {
  switch (family) {
    case ModelFamily::kTorchscale:
      return "torchscale";
    case ModelFamily::kFla:
      return "fla";
    case ModelFamily::kSyncdoth:
      return "syncdoth";
  }
  return "?";
}

/// What loadModel() would build, read without loading any weight.
struct ModelInfo {
  ModelFamily family = ModelFamily::kTorchscale;
  RetNetModelConfig config;
  std::optional<Dtype> dtype;  ///< the config's torch_dtype, when it names one
  Index chunkSize = 0;         ///< the checkpoint's own chunk size (syncdoth), else 0
};

namespace detail {

/// The family of a weights set without config.json, by its tensor names.
inline ModelFamily familyByNames(const WeightFiles& files) {
  if (files.contains("model.embeddings.weight")) return ModelFamily::kFla;
  if (files.contains("model.embed_tokens.weight")) return ModelFamily::kSyncdoth;
  if (files.contains("embed_tokens.weight")) return ModelFamily::kTorchscale;
  throw FormatError(retnet::detail::concat(
      files.name(),
      ": not a RetNet checkpoint retnet knows: no 'model.embeddings.weight' (FLA), "
      "'model.embed_tokens.weight' (syncdoth) or 'embed_tokens.weight' (torchscale)"));
}

/// The model description of `path`, with its weights opened (headers only).
inline ModelInfo inspect(const std::string& path, const WeightFiles& files) {
  ModelInfo info;
  const std::filesystem::path configPath = std::filesystem::path(path) / "config.json";
  std::error_code error;
  if (std::filesystem::is_directory(path, error) && std::filesystem::exists(configPath, error)) {
    const JsonFile config = JsonFile::read(configPath.string(), kMaxConfigBytes);
    if (config.has("decoder_embed_dim")) {
      const SyncdothConfig c = readSyncdothConfig(config);
      info.family = ModelFamily::kSyncdoth;
      info.config = c.model;
      info.dtype = c.dtype;
      info.chunkSize = c.chunkSize;
    } else if (config.has("hidden_size") && config.has("num_heads")) {
      const std::string type = config.string("model_type", "retnet");
      if (type != "retnet") config.fail("model_type must be \"retnet\", got \"", type, "\"");
      const FlaConfig c = readFlaConfig(config);
      info.family = ModelFamily::kFla;
      info.config = c.model;
      info.dtype = c.dtype;
    } else {
      config.fail(
          "not a RetNet configuration retnet knows (FLA: hidden_size and num_heads; syncdoth: "
          "decoder_embed_dim; model_type \"",
          config.string("model_type", "?"), "\")");
    }
    return info;
  }
  info.family = familyByNames(files);
  switch (info.family) {
    case ModelFamily::kFla:
      info.config = inferFlaConfig(files);
      break;
    case ModelFamily::kSyncdoth:
      info.config = inferSyncdothConfig(files);
      break;
    case ModelFamily::kTorchscale:
      if (files.files().size() != 1) {
        throw FormatError(retnet::detail::concat(
            files.name(), ": torchscale checkpoints are read from a single file"));
      }
      info.config = readRetNetModelConfig(files.first());
      break;
  }
  return info;
}

}  // namespace detail

/// The family and configuration of the checkpoint at `path`, without loading its weights.
inline ModelInfo inspectModel(const std::string& path) {
  return detail::inspect(path, WeightFiles::open(path));
}

/// The model at `path` (a model directory or one .safetensors file) with weights in Scalar.
/// FormatError naming the file, key or tensor for anything that is not a supported checkpoint.
template <typename Scalar>
RetNetModel<Scalar> loadModel(const std::string& path, ModelInfo* info = nullptr) {
  const WeightFiles files = WeightFiles::open(path);
  const ModelInfo described = detail::inspect(path, files);
  if (info != nullptr) *info = described;
  const RetNetModelConfig& c = described.config;
  try {
    c.validate("loadModel");
  } catch (const InvalidArgument& e) {
    throw FormatError(retnet::detail::concat(path, ": ", e.what()));
  }
  switch (described.family) {
    case ModelFamily::kFla:
      return RetNetModel<Scalar>(c, readFlaWeights<Scalar>(files, c, described.dtype));
    case ModelFamily::kSyncdoth:
      return RetNetModel<Scalar>(c, readSyncdothWeights<Scalar>(files, c, described.dtype));
    case ModelFamily::kTorchscale:
      break;
  }
  return loadRetNetModel<Scalar>(files.first(), c);
}

}  // namespace retnet::io
