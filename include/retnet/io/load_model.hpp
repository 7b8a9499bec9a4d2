// One loader for the published RetNets and RWKV-4s:
//   loadModel<Scalar>(path)              -> RetNetModel<Scalar> (torchscale, FLA, syncdoth)
//   loadModel<Rwkv4Model<Scalar>>(path)  -> Rwkv4Model<Scalar> (BlinkDL's or Hugging Face's names)
//   loadModel<AnyModel<Scalar>>(path)    -> whichever the checkpoint holds (a std::variant)
//
// `path` is a Hugging Face model directory (config.json, then model.safetensors or shards with
// model.safetensors.index.json) or a single .safetensors file. The family comes from config.json
// (FLA's RetNetConfig has hidden_size/num_heads, syncdoth's decoder_embed_dim/…), or, without
// one, from the tensor names (model.embeddings.* FLA, model.embed_tokens.* syncdoth,
// embed_tokens.* torchscale; emb.* / rwkv.embeddings.* RWKV-4) and the file's metadata. F32, F16
// and BF16 weights are converted to Scalar tensor by tensor, in pieces, so a load holds the
// converted weights and little else. LoadOptions::weights stores the dense weights as BF16, F16
// or int8 instead (linear_weight.hpp), each rounded as it is read; BF16 or F16 tensors kept in
// their own type are not copied at all: the file is memory-mapped and the weights point into it
// (linear_weight_file.hpp), so loading a BF16 model as BF16 costs the file's pages and no more.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>

#include "retnet/io/checkpoint.hpp"
#include "retnet/io/fla_checkpoint.hpp"
#include "retnet/io/json_file.hpp"
#include "retnet/io/rwkv4_checkpoint.hpp"
#include "retnet/io/syncdoth_checkpoint.hpp"
#include "retnet/io/weight_files.hpp"
#include "retnet/model.hpp"

namespace retnet::io {

/// How loadModel builds the model.
struct LoadOptions {
  /// Storage of the dense weights (projections, embedding, head): kFull keeps Scalar; kBf16,
  /// kF16, kInt8 round each weight once (linear_weight.hpp). Norms and decays stay in Scalar.
  WeightType weights = WeightType::kFull;
  /// Weights kept in the file's own type (BF16/F16 as kBf16/kF16, I8 as kInt8) are used in place
  /// in the memory-mapped file (true: a load takes no copy and no time) or read into memory the
  /// process owns (false, as llama.cpp's --no-mmap). The kernel may drop a mapped file's clean
  /// pages whenever it reclaims memory, and each token's decode then reads them from disk again:
  /// on a VM with proactive reclaim, decoding the 1.3B BF16 model mapped took 224-228 ms a token
  /// (single tokens 103-381) and 103-112 from owned memory (README, "Low-precision weights").
  /// Other weights are always copies.
  bool map = true;
};

enum class ModelFamily {
  kTorchscale,  ///< torchscale's RetNetDecoder, retnet's own safetensors files
  kFla,         ///< flash-linear-attention's RetNet (fla-hub)
  kSyncdoth,    ///< syncdoth/RetNet, the Hugging Face port of torchscale
  kRwkv4,       ///< RWKV-4 (BlinkDL's names, or Hugging Face transformers' RwkvForCausalLM)
};

inline const char* familyName(ModelFamily family) {
  switch (family) {
    case ModelFamily::kTorchscale:
      return "torchscale";
    case ModelFamily::kFla:
      return "fla";
    case ModelFamily::kSyncdoth:
      return "syncdoth";
    case ModelFamily::kRwkv4:
      return "rwkv4";
  }
  return "?";
}

/// What loadModel() would build, read without loading any weight.
struct ModelInfo {
  ModelFamily family = ModelFamily::kTorchscale;
  RetNetModelConfig config;                      ///< the RetNet families' configuration
  Rwkv4ModelConfig rwkv4;                        ///< kRwkv4's configuration
  Rwkv4Names rwkv4Names = Rwkv4Names::kBlinkDL;  ///< kRwkv4: whose tensor names
  std::optional<Dtype> dtype;                    ///< the config's torch_dtype, when it names one
  Index chunkSize = 0;  ///< the checkpoint's own chunk size (syncdoth), else 0
};

namespace detail {

/// The family of a weights set without config.json, by its tensor names.
inline ModelFamily familyByNames(const WeightFiles& files) {
  if (files.contains("model.embeddings.weight")) return ModelFamily::kFla;
  if (files.contains("model.embed_tokens.weight")) return ModelFamily::kSyncdoth;
  if (files.contains("embed_tokens.weight")) return ModelFamily::kTorchscale;
  if (rwkv4Names(files)) return ModelFamily::kRwkv4;
  throw FormatError(retnet::detail::concat(
      files.name(),
      ": not a checkpoint retnet knows: no 'model.embeddings.weight' (FLA), "
      "'model.embed_tokens.weight' (syncdoth), 'embed_tokens.weight' (torchscale), "
      "'emb.weight' with 'blocks.0.att.time_decay' (RWKV-4) or 'rwkv.embeddings.weight' with "
      "'rwkv.blocks.0.attention.time_decay' (RWKV-4, Hugging Face)"));
}

/// An RWKV-4 description of `files` (config.json, if any, is checked against the shapes).
inline ModelInfo inspectRwkv4(const WeightFiles& files, const std::optional<JsonFile>& config) {
  const std::optional<Rwkv4Names> names = rwkv4Names(files);
  if (!names) {
    throw FormatError(retnet::detail::concat(
        files.name(),
        ": config.json says RWKV but the weights have neither 'emb.weight' with "
        "'blocks.0.att.time_decay' nor 'rwkv.embeddings.weight' with "
        "'rwkv.blocks.0.attention.time_decay'"));
  }
  ModelInfo info;
  info.family = ModelFamily::kRwkv4;
  info.rwkv4Names = *names;
  info.rwkv4 = inferRwkv4Config(files, *names, config);
  return info;
}

/// The model description of `path`, with its weights opened (headers only).
inline ModelInfo inspect(const std::string& path, const WeightFiles& files) {
  ModelInfo info;
  const std::filesystem::path configPath = std::filesystem::path(path) / "config.json";
  std::error_code error;
  if (std::filesystem::is_directory(path, error) && std::filesystem::exists(configPath, error)) {
    const JsonFile config = JsonFile::read(configPath.string(), kMaxConfigBytes);
    // Hugging Face's RwkvConfig says model_type "rwkv" (another family's reader judges its own
    // model_type, whatever its JSON type).
    const bool rwkv = config.has("model_type") && config.root().at("model_type").is_string() &&
                      config.root().at("model_type").get<std::string>() == "rwkv";
    if (rwkv) return inspectRwkv4(files, config);
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
    case ModelFamily::kRwkv4:
      return inspectRwkv4(files, std::nullopt);
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

/// A model of whichever family a checkpoint holds (loadModel<AnyModel<Scalar>>).
template <typename Scalar>
using AnyModel = std::variant<RetNetModel<Scalar>, Rwkv4Model<Scalar>>;

namespace detail {

template <typename T>
struct ModelRequest {  // loadModel<Scalar>: a RetNet model
  using Scalar = T;
  using Model = RetNetModel<T>;
};
template <typename S>
struct ModelRequest<Rwkv4Model<S>> {
  using Scalar = S;
  using Model = Rwkv4Model<S>;
};
template <typename S>
struct ModelRequest<AnyModel<S>> {
  using Scalar = S;
  using Model = AnyModel<S>;
};

/// A configuration's validate() failure as a FormatError naming the checkpoint.
template <typename Config>
void validateLoaded(const std::string& path, const Config& config) {
  try {
    config.validate("loadModel");
  } catch (const InvalidArgument& e) {
    throw FormatError(retnet::detail::concat(path, ": ", e.what()));
  }
}

template <typename Scalar>
RetNetModel<Scalar> loadRetNet(const std::string& path, const WeightFiles& files,
                               const ModelInfo& described, WeightType storage) {
  const RetNetModelConfig& c = described.config;
  if (described.family != ModelFamily::kRwkv4) validateLoaded(path, c);
  switch (described.family) {
    case ModelFamily::kFla:
      return RetNetModel<Scalar>(c, readFlaWeights<Scalar>(files, c, described.dtype, storage),
                                 storage);
    case ModelFamily::kSyncdoth:
      return RetNetModel<Scalar>(c, readSyncdothWeights<Scalar>(files, c, described.dtype, storage),
                                 storage);
    case ModelFamily::kRwkv4:
      throw FormatError(retnet::detail::concat(
          path,
          ": an RWKV-4 checkpoint, not a RetNet: load it with "
          "io::loadModel<Rwkv4Model<Scalar>> or io::loadModel<AnyModel<Scalar>>"));
    case ModelFamily::kTorchscale:
      break;
  }
  return loadRetNetModel<Scalar>(files.first(), c, storage);
}

template <typename Scalar>
Rwkv4Model<Scalar> loadRwkv4(const std::string& path, const WeightFiles& files,
                             const ModelInfo& described, WeightType storage) {
  if (described.family != ModelFamily::kRwkv4) {
    throw FormatError(retnet::detail::concat(
        path, ": a ", familyName(described.family),
        " RetNet checkpoint, not an RWKV-4: load it with io::loadModel<Scalar> or "
        "io::loadModel<AnyModel<Scalar>>"));
  }
  validateLoaded(path, described.rwkv4);
  return Rwkv4Model<Scalar>(
      described.rwkv4,
      readRwkv4Weights<Scalar>(files, described.rwkv4, described.rwkv4Names, storage), storage);
}

}  // namespace detail

/// The model at `path` (a model directory or one .safetensors file). `T` says what to build:
/// a scalar type (float, double) a RetNetModel, Rwkv4Model<Scalar> an RWKV-4, AnyModel<Scalar>
/// the family the checkpoint holds. FormatError naming the file, key or tensor for anything that
/// is not a supported checkpoint, or one of another family than T asks for. `options` says how
/// to store the weights.
template <typename T>
typename detail::ModelRequest<T>::Model loadModel(const std::string& path,
                                                  const LoadOptions& options,
                                                  ModelInfo* info = nullptr) {
  using Scalar = typename detail::ModelRequest<T>::Scalar;
  using Model = typename detail::ModelRequest<T>::Model;
  static_assert(std::is_floating_point_v<Scalar>,
                "loadModel<T>: T must be float, double, "
                "Rwkv4Model<Scalar> or AnyModel<Scalar>");
  const WeightFiles files = WeightFiles::open(path);
  if (!options.map) files.neverMap();
  const ModelInfo described = detail::inspect(path, files);
  if (info != nullptr) *info = described;
  const WeightType storage = options.weights;
  if constexpr (std::is_same_v<Model, RetNetModel<Scalar>>) {
    return detail::loadRetNet<Scalar>(path, files, described, storage);
  } else if constexpr (std::is_same_v<Model, Rwkv4Model<Scalar>>) {
    return detail::loadRwkv4<Scalar>(path, files, described, storage);
  } else {
    if (described.family == ModelFamily::kRwkv4)
      return Model(detail::loadRwkv4<Scalar>(path, files, described, storage));
    return Model(detail::loadRetNet<Scalar>(path, files, described, storage));
  }
}

/// The model at `path` with full-precision weights (LoadOptions{}).
template <typename T>
typename detail::ModelRequest<T>::Model loadModel(const std::string& path,
                                                  ModelInfo* info = nullptr) {
  return loadModel<T>(path, LoadOptions{}, info);
}

}  // namespace retnet::io
