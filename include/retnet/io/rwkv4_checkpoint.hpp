// RWKV-4 checkpoints (docs/semantics/rwkv4.md): BlinkDL's state_dict names (`emb.weight`,
// `blocks.{i}.att.time_decay`, …; the golden files, and `.pth` files converted or read directly)
// and Hugging Face transformers' names (`rwkv.embeddings.weight`, `rwkv.blocks.{i}.attention.*`,
// `feed_forward.*`, `pre_ln`, `head.weight`) with their config.json. Sizes come from the shapes:
// C and V from the embedding, A from the time-mixing key, F from the channel-mixing key, L from
// the block indices. Weights may be F32, F16, BF16 or F64 (the golden data); tensors outside the
// model's namespaces (a golden file's inputs and outputs) are ignored, and a tensor inside them
// that RWKV-4 does not have (RWKV-4a/4b's extra heads, RWKV-5/6/7's) is refused by name.
#pragma once

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "retnet/io/json_file.hpp"
#include "retnet/io/linear_weight_file.hpp"
#include "retnet/io/weight_files.hpp"
#include "retnet/rwkv4.hpp"

namespace retnet::io {

/// Whose names a checkpoint uses.
enum class Rwkv4Names {
  kBlinkDL,      ///< emb.weight, blocks.{i}.att.*, blocks.{i}.ffn.*, ln_out.*, head.weight
  kHuggingFace,  ///< rwkv.embeddings.weight, rwkv.blocks.{i}.attention.*, .feed_forward.*, …
};

namespace detail {

/// The name of BlinkDL's tensor `name` in a checkpoint that uses `names`.
inline std::string rwkv4Name(Rwkv4Names names, const std::string& name) {
  if (names == Rwkv4Names::kBlinkDL) return name;
  if (name == "emb.weight") return "rwkv.embeddings.weight";
  if (name == "head.weight") return name;
  if (name.rfind("ln_out.", 0) == 0) return "rwkv." + name;
  // blocks.{i}.<part>: ln0 -> pre_ln, att -> attention, ffn -> feed_forward,
  // time_mix_k/v/r -> time_mix_key/value/receptance.
  const std::size_t dot = name.find('.', 7);
  std::string rest = name.substr(dot + 1);
  const auto replacePrefix = [&](const std::string& from, const std::string& to) {
    if (rest.rfind(from, 0) == 0) rest = to + rest.substr(from.size());
  };
  replacePrefix("ln0.", "pre_ln.");
  replacePrefix("att.", "attention.");
  replacePrefix("ffn.", "feed_forward.");
  for (const auto& [from, to] : {std::pair<std::string, std::string>{"time_mix_k", "time_mix_key"},
                                 {"time_mix_v", "time_mix_value"},
                                 {"time_mix_r", "time_mix_receptance"}}) {
    const std::size_t at = rest.size() >= from.size() ? rest.size() - from.size() : 0;
    if (rest.compare(at, std::string::npos, from) == 0) rest = rest.substr(0, at) + to;
  }
  return "rwkv." + name.substr(0, dot + 1) + rest;
}

/// BlinkDL's names of block i's tensors, in checkpoint order (ln0 in block 0 only).
inline std::vector<std::string> rwkv4BlockNames(Index i) {
  const std::string p = "blocks." + std::to_string(i) + ".";
  std::vector<std::string> names;
  if (i == 0) names = {p + "ln0.weight", p + "ln0.bias"};
  for (const char* part :
       {"ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "att.time_decay", "att.time_first",
        "att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "att.key.weight", "att.value.weight",
        "att.receptance.weight", "att.output.weight", "ffn.time_mix_k", "ffn.time_mix_r",
        "ffn.key.weight", "ffn.receptance.weight", "ffn.value.weight"})
    names.push_back(p + part);
  return names;
}

/// Why a tensor name that is not RWKV-4's is there, when it is recognisable.
inline std::string rwkv4ForeignHint(const std::string& name) {
  const auto has = [&](const char* part) { return name.find(part) != std::string::npos; };
  if (has("tiny_")) return " (RWKV-4a's tiny attention)";
  if (has("head_q") || has("head_k") || has("copy_mask")) return " (RWKV-4b's copy head)";
  if (has("time_faaaa") || has("ln_x") || has("att.gate") || has("attention.gate"))
    return " (RWKV-5/6)";
  if (has("time_maa") || has("time_decay_w")) return " (RWKV-6)";
  if (has(".w0") || has(".a0") || has(".v0") || has(".k_k")) return " (RWKV-7)";
  return "";
}

}  // namespace detail

/// The naming of an RWKV-4 weights set, or nothing if it is not one.
inline std::optional<Rwkv4Names> rwkv4Names(const WeightFiles& files) {
  if (files.contains("emb.weight") && files.contains("blocks.0.att.time_decay"))
    return Rwkv4Names::kBlinkDL;
  if (files.contains("rwkv.embeddings.weight") &&
      files.contains("rwkv.blocks.0.attention.time_decay"))
    return Rwkv4Names::kHuggingFace;
  return std::nullopt;
}

/// The configuration of an RWKV-4 weights set from its shapes; eps from config.json
/// (`layer_norm_epsilon`, Hugging Face's RwkvConfig) when given, else RWKV's 1e-5. Every
/// tensor under the model's names must be one RWKV-4 has.
inline Rwkv4ModelConfig inferRwkv4Config(const WeightFiles& files, Rwkv4Names names,
                                         const std::optional<JsonFile>& config = std::nullopt) {
  const auto name = [&](const std::string& blink) { return detail::rwkv4Name(names, blink); };
  const auto fail = [&](auto&&... parts) {
    throw FormatError(retnet::detail::concat(files.name(), ": ", parts...));
  };
  const auto shape = [&](const std::string& blink, std::size_t rank) {
    const std::string stored = name(blink);
    if (!files.contains(stored)) fail("missing tensor '", stored, "'");
    const std::vector<Index>& s = files.info(stored).shape;
    if (s.size() != rank || s[0] < 1 || (rank == 2 && s[1] < 1))
      fail("tensor '", stored, "' must be a non-empty rank-", rank, " tensor");
    return s;
  };
  const auto embed = shape("emb.weight", 2);
  Rwkv4BlockConfig block;
  block.embedDim = embed[1];
  block.attDim = shape("blocks.0.att.key.weight", 2)[0];
  block.ffnDim = shape("blocks.0.ffn.key.weight", 2)[0];
  // The layers, and every tensor in the model's namespaces accounted for.
  Index layers = 0;
  while (files.contains(name("blocks." + std::to_string(layers) + ".att.time_decay"))) ++layers;
  std::vector<std::string> known = {name("emb.weight"), name("ln_out.weight"), name("ln_out.bias"),
                                    name("head.weight")};
  for (Index i = 0; i < layers; ++i)
    for (const std::string& part : detail::rwkv4BlockNames(i)) known.push_back(name(part));
  // An int8 weight's scales (quantize.hpp) belong to it.
  for (std::size_t i = 0, n = known.size(); i < n; ++i)
    if (files.contains(known[i]) && files.info(known[i]).dtype == Dtype::I8)
      known.push_back(int8ScalesName(known[i]));
  for (const std::string& stored : files.names()) {
    const bool ours = names == Rwkv4Names::kBlinkDL
                          ? stored.rfind("emb.", 0) == 0 || stored.rfind("blocks.", 0) == 0 ||
                                stored.rfind("ln_out.", 0) == 0 || stored.rfind("head", 0) == 0
                          : stored.rfind("rwkv.", 0) == 0 || stored.rfind("head", 0) == 0;
    if (ours && std::find(known.begin(), known.end(), stored) == known.end()) {
      fail("tensor '", stored, "' is not part of an RWKV-4 model of ", layers, " layers",
           detail::rwkv4ForeignHint(stored), ": refused");
    }
  }
  if (config) {
    const JsonFile& c = *config;
    const auto agree = [&](const char* key, Index value) {
      if (const auto stated = c.optionalInteger(key)) {
        if (*stated != value)
          c.fail("key '", key, "' is ", *stated, " but the weights' shapes say ", value);
      }
    };
    agree("hidden_size", block.embedDim);
    agree("attention_hidden_size", block.attDim);
    agree("intermediate_size", block.ffnDim);
    agree("num_hidden_layers", layers);
    agree("vocab_size", embed[0]);
    if (c.boolean("tie_word_embeddings", false))
      c.fail("key 'tie_word_embeddings' is true: RWKV-4's head is its own weight");
    block.eps = c.optionalNumber("layer_norm_epsilon").value_or(1e-5);
    if (!(block.eps > 0)) c.fail("key 'layer_norm_epsilon' must be > 0, got ", block.eps);
  }
  Rwkv4ModelConfig model = rwkv4ModelConfig(embed[0], layers, block);
  try {
    model.validate("RWKV-4 checkpoint");
  } catch (const InvalidArgument& e) {
    fail(e.what());
  }
  return model;
}

/// The weights of an RWKV-4 model of shape `c` under `names`; F32, F16, BF16 or F64 tensors,
/// the (1, 1, C) time-mix tensors flattened; the dense ones stored as `storage`.
template <typename Scalar>
Rwkv4ModelWeights<Scalar> readRwkv4Weights(const WeightFiles& files, const Rwkv4ModelConfig& c,
                                           Rwkv4Names names,
                                           WeightType storage = WeightType::kFull) {
  const Index C = c.block.embedDim, A = c.block.attentionDim(), F = c.block.ffnDim;
  const auto checked = [&](const std::string& blink, bool matrix = false) {
    const std::string stored = detail::rwkv4Name(names, blink);
    if (!files.contains(stored))
      throw FormatError(retnet::detail::concat(files.name(), ": missing tensor '", stored, "'"));
    const Dtype dtype = files.info(stored).dtype;
    if (matrix && dtype == Dtype::I8) return stored;  // int8 codes (quantize.hpp)
    if (dtype != Dtype::F32 && dtype != Dtype::F16 && dtype != Dtype::BF16 && dtype != Dtype::F64) {
      throw FormatError(retnet::detail::concat(
          files.fileOf(stored).displayName(), ": tensor '", stored,
          "': weights must be F32, F16, BF16 or F64, got ", dtypeName(dtype)));
    }
    return stored;
  };
  const auto matrix = [&](const std::string& blink, Index rows, Index cols) {
    const std::string stored = checked(blink, true);
    return readLinearWeight<Scalar>(files.fileOf(stored), stored, rows, cols, storage);
  };
  const auto vector = [&](const std::string& blink, Index size) {
    return files.readVector<Scalar>(checked(blink), size);
  };
  const auto mix = [&](const std::string& blink) {  // (1, 1, C), or (C)
    const std::string stored = checked(blink);
    const std::vector<Index>& s = files.info(stored).shape;
    if (s != std::vector<Index>{1, 1, C} && s != std::vector<Index>{C}) {
      throw FormatError(retnet::detail::concat(files.fileOf(stored).displayName(), ": tensor '",
                                               stored, "': expected shape (1, 1, ", C, ") or (", C,
                                               "), got ", detail::shapeString(s)));
    }
    const std::vector<Scalar> flat = files.fileOf(stored).template readFlat<Scalar>(stored);
    return Vector<Scalar>(Eigen::Map<const Vector<Scalar>>(flat.data(), C));
  };
  Rwkv4ModelWeights<Scalar> w;
  w.embed = matrix("emb.weight", c.vocab, C);
  w.embedNorm = vector("blocks.0.ln0.weight", C);
  w.embedNormBias = vector("blocks.0.ln0.bias", C);
  for (Index i = 0; i < c.layers; ++i) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    Rwkv4BlockWeights<Scalar> b;
    b.ln1Weight = vector(p + "ln1.weight", C);
    b.ln1Bias = vector(p + "ln1.bias", C);
    b.ln2Weight = vector(p + "ln2.weight", C);
    b.ln2Bias = vector(p + "ln2.bias", C);
    b.timeDecay = vector(p + "att.time_decay", A);
    b.timeFirst = vector(p + "att.time_first", A);
    b.attMixK = mix(p + "att.time_mix_k");
    b.attMixV = mix(p + "att.time_mix_v");
    b.attMixR = mix(p + "att.time_mix_r");
    b.attKey = matrix(p + "att.key.weight", A, C);
    b.attValue = matrix(p + "att.value.weight", A, C);
    b.attReceptance = matrix(p + "att.receptance.weight", A, C);
    b.attOutput = matrix(p + "att.output.weight", C, A);
    b.ffnMixK = mix(p + "ffn.time_mix_k");
    b.ffnMixR = mix(p + "ffn.time_mix_r");
    b.ffnKey = matrix(p + "ffn.key.weight", F, C);
    b.ffnReceptance = matrix(p + "ffn.receptance.weight", C, C);
    b.ffnValue = matrix(p + "ffn.value.weight", C, F);
    w.layers.push_back(std::move(b));
  }
  w.finalNorm = vector("ln_out.weight", C);
  w.finalNormBias = vector("ln_out.bias", C);
  w.outputProjection = matrix("head.weight", c.vocab, C);
  return w;
}

}  // namespace retnet::io
