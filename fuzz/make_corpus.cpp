// Writes the seed corpora of the libFuzzer targets, one subdirectory each, into the directory
// given as the first argument; the second is the source tree's tests/data, whose model
// directories' config.json and model.safetensors.index.json files are seeds too. fuzz/corpus/
// holds its output; regenerate it with
//   rm -rf fuzz/corpus && <build>/fuzz/make_corpus fuzz/corpus tests/data
//
//   safetensors/    small valid files made by SafetensorsWriter (every dtype, ranks 0 to 5,
//                   metadata, empty and scalar tensors), and damaged variants of them
//                   (truncated, bad JSON, overlapping offsets, wrong or unknown dtype,
//                   shape/size mismatch, absurd header length or shape)
//   pth/            PyTorch checkpoints: tests/data/pth/*.pth (torch.save's own), archives built by
//                   tests/pth_builder.hpp (classic and ZIP64, views, every storage type) and
//                   damaged ones (truncated, compressed, big-endian), and raw pickles, which
//                   fuzz_pth puts into an archive next to its fixed storages: state dicts over
//                   those storages, with and without the memo, and refused ones (other globals,
//                   unknown opcodes, non-contiguous strides, storages too short)
//   model_config/   the config.json of tests/data/fla/*/ and tests/data/syncdoth/*/, and variants:
//                   tiny models of both families (built and loaded by the fuzzer), every option
//                   the readers know, and each thing they refuse
//   weight_index/   model.safetensors.index.json files for fuzz_weight_index's two shards
//                   (fuzz_common.hpp): every tensor, one family's, one shard's, and broken ones
//                   (unknown or escaping shard names, tensors in the wrong shard, bad types)
//   tokenizer_json/ tokenizer.json files: tests/data/bpe's three real ones cut down to 600 ids,
//                   and variants (merges as pairs, Split behaviors, added-token flags, refusals)
//   state_file/     state files of fuzz_state_file's two models written by serializeState
//                   (batch 1 and 2, float and double values, items at different positions),
//                   and damaged variants (truncated, bad magic, version, value size, checksum,
//                   batch count)
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "fuzz_common.hpp"
#include "fuzz_tensor_file.hpp"
#include "pth_builder.hpp"
#include "retnet/io/safetensors.hpp"
#include "retnet/io/state_file.hpp"

namespace {

using retnet::io::Dtype;
using retnet::io::SafetensorsWriter;
using Bytes = std::vector<unsigned char>;

/// The 8-byte little-endian length (the header's own unless `declaredLength` is given), the
/// header text and `data`.
Bytes rawFile(const std::string& header, const Bytes& data,
              std::uint64_t declaredLength = std::numeric_limits<std::uint64_t>::max()) {
  const std::uint64_t length =
      declaredLength == std::numeric_limits<std::uint64_t>::max() ? header.size() : declaredLength;
  Bytes file;
  for (int i = 0; i < 8; ++i) file.push_back(static_cast<unsigned char>(length >> (8 * i)));
  file.insert(file.end(), header.begin(), header.end());
  file.insert(file.end(), data.begin(), data.end());
  return file;
}

std::uint64_t headerLength(const Bytes& file) {
  std::uint64_t length = 0;
  for (int i = 0; i < 8; ++i) length |= std::uint64_t{file[static_cast<std::size_t>(i)]} << (8 * i);
  return length;
}

std::string headerOf(const Bytes& file) {
  return std::string(file.begin() + 8, file.begin() + 8 + static_cast<long>(headerLength(file)));
}

Bytes dataOf(const Bytes& file) {
  return Bytes(file.begin() + 8 + static_cast<long>(headerLength(file)), file.end());
}

/// `file` with the first `from` in its header replaced by `to` (the length prefix follows).
Bytes replaceInHeader(const Bytes& file, const std::string& from, const std::string& to) {
  std::string header = headerOf(file);
  const std::size_t at = header.find(from);
  if (at == std::string::npos) throw std::logic_error("make_corpus: no '" + from + "' in header");
  header.replace(at, from.size(), to);
  return rawFile(header, dataOf(file));
}

Bytes everyDtype() {
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<double> values = {
      1.0,  -2.5, 0.0, -0.0,  65504.0,
      1e-8, -inf, inf, 1e300, std::numeric_limits<double>::quiet_NaN()};
  const std::vector<std::int64_t> integers = {
      0, -1, 42, std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max(),
      7};
  SafetensorsWriter writer;
  writer.addMetadata("format", "pt");
  writer.addMetadata("note", "h\xc3\xa9llo");
  writer.addTensor("f64", Dtype::F64, {2, 2}, values.data());
  writer.addTensor("f32", Dtype::F32, {3}, values.data() + 4);
  writer.addTensor("f16", Dtype::F16, {2, 1, 2}, values.data() + 2);
  writer.addTensor("bf16", Dtype::BF16, {1, 1, 1, 2}, values.data() + 6);
  writer.addIntegers("i64", {2, 3}, integers.data());
  writer.addTensor("scalar", Dtype::F64, {}, values.data() + 1);
  writer.addTensor("empty", Dtype::F32, {0, 3}, nullptr);
  return writer.bytes();
}

/// An int8 weight as io/quantize.hpp saves it: I8 codes (extremes included) and F32 scales.
Bytes int8Weight() {
  const std::vector<std::int8_t> codes = {0, 1, -1, 127, -127, -128, 5, 9, 100, -100, 33, 0};
  const std::vector<float> scales = {0.5f, 0.0f};
  SafetensorsWriter writer;
  writer.addMetadata("retnet.weights", "int8-g32");
  writer.addEncoded("w.scales", Dtype::F32, {2, 1}, scales.data());
  writer.addEncoded("w", Dtype::I8, {2, 6}, codes.data());
  return writer.bytes();
}

Bytes everyRank() {
  const std::vector<double> values(32, 0.25);
  SafetensorsWriter writer;
  writer.addTensor("r0", Dtype::F32, {}, values.data());
  writer.addTensor("r1", Dtype::F16, {2}, values.data());
  writer.addTensor("r2", Dtype::BF16, {2, 1}, values.data());
  writer.addTensor("r3", Dtype::F64, {1, 2, 1}, values.data());
  writer.addTensor("r4", Dtype::F32, {1, 1, 2, 1}, values.data());
  writer.addTensor("r5", Dtype::F16, {1, 1, 1, 2, 1}, values.data());
  return writer.bytes();
}

Bytes integersOnly() {
  const std::vector<std::int64_t> tokens = {2, 7, 27, 21};
  SafetensorsWriter writer;
  writer.addIntegers("tokens", {1, 4}, tokens.data());
  return writer.bytes();
}

Bytes metadataOnly() {
  SafetensorsWriter writer;
  writer.addMetadata("kind", "msr");
  writer.addMetadata("heads", "4");
  return writer.bytes();
}

void write(const std::filesystem::path& directory, const std::string& name, const Bytes& file) {
  std::ofstream out(directory / name, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(file.data()), static_cast<std::streamsize>(file.size()));
  out.close();
  if (!out) throw std::runtime_error("make_corpus: cannot write " + (directory / name).string());
}

void safetensorsCorpus(const std::filesystem::path& directory) {
  const Bytes every = everyDtype();
  write(directory, "valid_every_dtype", every);
  write(directory, "valid_every_rank", everyRank());
  write(directory, "valid_integers", integersOnly());
  write(directory, "valid_metadata_only", metadataOnly());
  write(directory, "valid_empty", SafetensorsWriter().bytes());
  write(directory, "valid_int8_weight", int8Weight());

  write(directory, "bad_truncated_data", Bytes(every.begin(), every.end() - 5));
  write(directory, "bad_truncated_header",
        Bytes(every.begin(), every.begin() + 8 + static_cast<long>(headerLength(every) / 2)));
  write(directory, "bad_short", Bytes(every.begin(), every.begin() + 5));
  write(directory, "bad_json", replaceInHeader(every, "\"shape\":[2,2]", "\"shape\":[2,2"));
  write(directory, "bad_unknown_dtype", replaceInHeader(every, "\"F32\"", "\"I32\""));
  write(directory, "bad_dtype_size", replaceInHeader(every, "\"F16\"", "\"F32\""));
  write(directory, "bad_shape_size", replaceInHeader(every, "\"shape\":[3]", "\"shape\":[4]"));
  write(directory, "bad_shape_overflow",
        replaceInHeader(every, "\"shape\":[3]", "\"shape\":[4294967296,4294967296]"));
  write(directory, "bad_huge_claim",
        replaceInHeader(every, "\"shape\":[3]", "\"shape\":[1152921504606846976]"));
  write(directory, "bad_header_length",
        rawFile(headerOf(every), dataOf(every), 0xFFFFFFFFFFFFFFF0u));
  write(directory, "bad_metadata_value",
        replaceInHeader(every, "\"format\":\"pt\"", "\"format\":[\"pt\"]"));
  write(directory, "bad_metadata_not_object",
        replaceInHeader(metadataOnly(), "{\"heads\":\"4\",\"kind\":\"msr\"}", "null"));
  write(directory, "bad_entry_not_object",
        replaceInHeader(integersOnly(), "\"tokens\":{", "\"tokens\":true,\"x\":{"));
  write(directory, "bad_duplicate_key",
        rawFile(R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},)"
                R"("a":{"dtype":"F64","shape":[1],"data_offsets":[8,16]}})",
                Bytes(16, 0x3f)));
  write(directory, "bad_overlapping_offsets",
        rawFile(R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
                R"("a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]},)"
                R"("e":{"dtype":"I64","shape":[0],"data_offsets":[4,4]}})",
                Bytes(12, 0x40)));
  write(directory, "bad_offsets",
        rawFile(R"({"w":{"dtype":"F16","shape":[2,2],"data_offsets":[-0,9007199254740993]}})",
                Bytes(8, 0x3c)));
}

// ---- model_config ---------------------------------------------------------------------------

std::string readText(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("make_corpus: cannot read " + path.string());
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void writeText(const std::filesystem::path& directory, const std::string& name,
               const std::string& text) {
  write(directory, name, Bytes(text.begin(), text.end()));
}

/// The model directories under `familyDir`, sorted (directory_iterator's order is not).
std::vector<std::filesystem::path> modelDirectories(const std::filesystem::path& familyDir) {
  std::vector<std::filesystem::path> dirs;
  for (const auto& entry : std::filesystem::directory_iterator(familyDir))
    if (entry.is_directory()) dirs.push_back(entry.path());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

/// `base` with `changes` merged in (a null value removes the key).
nlohmann::json changed(const nlohmann::json& base, const nlohmann::json& changes) {
  nlohmann::json result = base;
  for (auto item = changes.begin(); item != changes.end(); ++item) {
    if (item.value().is_discarded()) {
      result.erase(item.key());
    } else {
      result[item.key()] = item.value();
    }
  }
  return result;
}

/// Marks a key for removal in changed().
nlohmann::json removed() { return nlohmann::json(nlohmann::json::value_t::discarded); }

void modelConfigCorpus(const std::filesystem::path& out, const std::filesystem::path& data) {
  // The configs of the test checkpoints, byte for byte.
  std::map<std::string, nlohmann::json> parsed;
  for (const char* family : {"fla", "syncdoth"}) {
    for (const auto& dir : modelDirectories(data / family)) {
      const std::string text = readText(dir / "config.json");
      const std::string name = std::string(family) + "_" + dir.filename().string() + ".json";
      writeText(out, name, text);
      parsed[name] = nlohmann::json::parse(text);
    }
  }
  const auto seed = [&](const std::string& name, const nlohmann::json& json) {
    writeText(out, name + ".json", json.dump(2) + "\n");
  };

  // FLA: tiny models the fuzzer builds and loads, then one variant per refusal.
  const nlohmann::json fla = parsed.at("fla_fla_small.json");
  const nlohmann::json flaTiny = changed(fla, {{"hidden_size", 8},
                                               {"num_heads", 2},
                                               {"num_hidden_layers", 1},
                                               {"vocab_size", 11},
                                               {"intermediate_size", 16},
                                               {"torch_dtype", "float32"}});
  seed("fla_tiny", flaTiny);
  seed("fla_tiny_gqa", changed(flaTiny, {{"num_heads", 4},
                                         {"num_kv_heads", 2},
                                         {"expand_k", 1.5},
                                         {"expand_v", 1},
                                         {"hidden_size", 16},
                                         {"torch_dtype", "bfloat16"}}));
  seed("fla_tiny_tied_f16", changed(flaTiny, {{"tie_word_embeddings", true},
                                              {"torch_dtype", "float16"},
                                              {"norm_eps", nullptr},
                                              {"rms_norm_eps", 1e-5},
                                              {"attn_mode", "fused_recurrent"},
                                              {"hidden_act", "silu"}}));
  seed("fla_tiny_ratio", changed(flaTiny, {{"intermediate_size", removed()},
                                           {"hidden_ratio", 1.5},
                                           {"torch_dtype", removed()},
                                           {"norm_eps", 0}}));
  seed("fla_minimal",
       {{"hidden_size", 4}, {"num_heads", 1}, {"num_hidden_layers", 2}, {"vocab_size", 3}});
  seed("fla_model_type_other", changed(flaTiny, {{"model_type", "gla"}}));
  seed("fla_bad_unknown_key", changed(flaTiny, {{"use_rope", true}}));
  seed("fla_bad_attn", changed(flaTiny, {{"attn", {{"layers", {0}}, {"num_heads", 2}}}}));
  seed("fla_bad_short_conv", changed(flaTiny, {{"use_short_conv", true}}));
  seed("fla_bad_feature_map", changed(flaTiny, {{"feature_map", "elu"}}));
  seed("fla_bad_no_output_gate", changed(flaTiny, {{"use_output_gate", false}}));
  seed("fla_bad_no_affine", changed(flaTiny, {{"elementwise_affine", false}}));
  seed("fla_bad_attn_mode", changed(flaTiny, {{"attn_mode", "softmax"}}));
  seed("fla_bad_hidden_act", changed(flaTiny, {{"hidden_act", "gelu"}}));
  seed("fla_bad_kv_heads", changed(flaTiny, {{"num_kv_heads", 3}}));
  seed("fla_bad_odd_key_dim", changed(flaTiny, {{"expand_k", 0.75}}));
  seed("fla_bad_expand", changed(flaTiny, {{"expand_v", -1}}));
  seed("fla_bad_ratio", changed(flaTiny, {{"intermediate_size", nullptr}, {"hidden_ratio", 0}}));
  seed("fla_bad_dtype", changed(flaTiny, {{"torch_dtype", "float64"}}));
  seed("fla_bad_eps", changed(flaTiny, {{"norm_eps", -1e-6}}));
  seed("fla_bad_size_string", changed(flaTiny, {{"hidden_size", "8"}}));
  seed("fla_bad_size_fraction", changed(flaTiny, {{"hidden_size", 8.5}}));
  seed("fla_bad_size_zero", changed(flaTiny, {{"num_hidden_layers", 0}}));
  seed("fla_bad_size_huge", changed(flaTiny, {{"vocab_size", 1e300}}));
  seed("fla_bad_missing", changed(flaTiny, {{"vocab_size", removed()}}));
  seed("fla_bad_bool", changed(flaTiny, {{"tie_word_embeddings", "yes"}}));

  // syncdoth.
  const nlohmann::json sd = parsed.at("syncdoth_sd_small.json");
  const nlohmann::json sdTiny = changed(sd, {{"decoder_embed_dim", 8},
                                             {"decoder_value_embed_dim", 16},
                                             {"decoder_retention_heads", 2},
                                             {"decoder_ffn_embed_dim", 16},
                                             {"decoder_layers", 1},
                                             {"vocab_size", 11}});
  seed("syncdoth_tiny", sdTiny);
  seed("syncdoth_tiny_lm_decay", changed(sdTiny, {{"use_lm_decay", true},
                                                  {"decoder_retention_heads", 4},
                                                  {"decoder_value_embed_dim", removed()},
                                                  {"torch_dtype", "bfloat16"}}));
  seed("syncdoth_tiny_gelu_tied", changed(sdTiny, {{"activation_fn", "gelu"},
                                                   {"tie_word_embeddings", true},
                                                   {"layernorm_embedding", false},
                                                   {"no_scale_embedding", true},
                                                   {"torch_dtype", "float16"},
                                                   {"recurrent_chunk_size", nullptr}}));
  seed("syncdoth_tiny_no_dtype",
       changed(sdTiny,
               {{"torch_dtype", removed()}, {"layernorm_eps", 0}, {"activation_fn", "silu"}}));
  seed("syncdoth_minimal", {{"decoder_embed_dim", 4},
                            {"decoder_retention_heads", 1},
                            {"decoder_ffn_embed_dim", 4},
                            {"decoder_layers", 2},
                            {"vocab_size", 3}});
  seed("syncdoth_bad_unknown_key", changed(sdTiny, {{"hidden_size", 8}}));
  seed("syncdoth_bad_deepnorm", changed(sdTiny, {{"deepnorm", true}}));
  seed("syncdoth_bad_no_glu", changed(sdTiny, {{"use_glu", false}}));
  seed("syncdoth_bad_post_norm", changed(sdTiny, {{"decoder_normalize_before", false}}));
  seed("syncdoth_bad_ffn_rms_norm", changed(sdTiny, {{"use_ffn_rms_norm", true}}));
  seed("syncdoth_bad_activation", changed(sdTiny, {{"activation_fn", "relu"}}));
  seed("syncdoth_bad_heads", changed(sdTiny, {{"decoder_retention_heads", 3}}));
  seed("syncdoth_bad_value_dim",
       changed(sdTiny, {{"decoder_value_embed_dim", 6}, {"decoder_retention_heads", 4}}));
  seed("syncdoth_bad_eps", changed(sdTiny, {{"layernorm_eps", -1}}));
  seed("syncdoth_bad_chunk", changed(sdTiny, {{"recurrent_chunk_size", 0}}));
  seed("syncdoth_bad_dtype", changed(sdTiny, {{"torch_dtype", "int8"}}));

  // JSON that is not a config at all.
  writeText(out, "json_duplicate_key.json", R"({"hidden_size": 8, "hidden_size": 16})");
  writeText(out, "json_not_object.json", "[1, 2, 3]");
  writeText(out, "json_truncated.json", R"({"hidden_size": 8, "num_heads")");
  writeText(out, "json_deep.json", std::string(100, '[') + std::string(100, ']'));
  writeText(out, "json_bad_utf8.json", "{\"_name_or_path\": \"\xff\"}");
  writeText(out, "json_escapes.json", R"({"_name_or_path": "\u00e9\ud83d\ude00\u0000"})");
  writeText(out, "json_empty.json", "");
}

// ---- weight_index ---------------------------------------------------------------------------

void weightIndexCorpus(const std::filesystem::path& out, const std::filesystem::path& data) {
  for (const auto& dir : modelDirectories(data / "fla")) {
    const auto index = dir / "model.safetensors.index.json";
    if (std::filesystem::exists(index))
      writeText(out, "fla_" + dir.filename().string() + ".json", readText(index));
  }
  const std::vector<retnet_fuzz::ShardTensor> tensors = retnet_fuzz::shardTensors();
  const auto shardOf = [](const retnet_fuzz::ShardTensor& t) {
    return std::string(retnet_fuzz::kShardNames[t.shard]);
  };
  /// An index of every tensor whose name starts with one of `prefixes` ("" for all).
  const auto index = [&](const std::vector<std::string>& prefixes) {
    nlohmann::json map = nlohmann::json::object();
    for (const auto& t : tensors) {
      for (const std::string& prefix : prefixes) {
        if (t.name.compare(0, prefix.size(), prefix) == 0) map[t.name] = shardOf(t);
      }
    }
    return nlohmann::json{{"metadata", {{"total_size", 4096}}}, {"weight_map", map}};
  };
  const auto seed = [&](const std::string& name, const nlohmann::json& json) {
    writeText(out, name + ".json", json.dump(2) + "\n");
  };
  const nlohmann::json all = index({""});
  seed("all", all);
  const std::vector<std::string> fla = {"model.embeddings.", "model.layers.0.attn",
                                        "model.layers.0.mlp", "model.norm.", "lm_head."};
  seed("fla", index(fla));
  seed("syncdoth", index({"model.embed_tokens.", "model.layers.0.retention", "model.layers.0.ffn.",
                          "model.layers.0.final_layer_norm.", "model.layer_norm.",
                          "model.retnet_rel_pos.", "lm_head."}));
  seed("torchscale", index({"embed_tokens.", "layers.", "layer_norm."}));
  seed("extras", index({"extra."}));
  nlohmann::json flaLinked = index(fla);
  for (auto& value : flaLinked["weight_map"])
    if (value == retnet_fuzz::kShardNames[0]) value = "link.safetensors";
  seed("fla_through_link", flaLinked);
  seed("no_metadata", {{"weight_map", {{"extra.f64_scalar", retnet_fuzz::kShardNames[0]}}}});

  const auto withEntry = [&](const std::string& name, const nlohmann::json& shard) {
    nlohmann::json json = index(fla);
    json["weight_map"][name] = shard;
    return json;
  };
  seed("bad_wrong_shard", withEntry("model.norm.weight", retnet_fuzz::kShardNames[0]));
  seed("bad_unknown_tensor",
       withEntry("model.layers.1.attn.q_proj.weight", retnet_fuzz::kShardNames[1]));
  seed("bad_missing_shard", withEntry("extra.i64", "model-00003-of-00003.safetensors"));
  seed("bad_parent_dir", withEntry("extra.i64", "../model-00001-of-00002.safetensors"));
  seed("bad_backslash", withEntry("extra.i64", "sub\\model-00001-of-00002.safetensors"));
  seed("bad_dot", withEntry("extra.i64", "."));
  seed("bad_dotdot", withEntry("extra.i64", ".."));
  seed("bad_empty_name", withEntry("extra.i64", ""));
  seed("bad_subdir", withEntry("extra.i64", "subdir"));
  seed("bad_truncated_shard", withEntry("extra.i64", "broken.safetensors"));
  seed("bad_empty_shard", withEntry("extra.i64", "empty.safetensors"));
  seed("bad_text_shard", withEntry("extra.i64", "notes.txt"));
  seed("bad_index_as_shard", withEntry("extra.i64", "model.safetensors.index.json"));
  seed("bad_number", withEntry("extra.i64", 1));
  seed("bad_null", withEntry("extra.i64", nullptr));
  seed("bad_map_empty", {{"weight_map", nlohmann::json::object()}});
  seed("bad_map_array", {{"weight_map", {retnet_fuzz::kShardNames[0]}}});
  seed("bad_no_map", {{"metadata", {{"total_size", 1}}}});
  writeText(out, "bad_duplicate_key.json",
            std::string(R"({"weight_map": {"extra.i64": ")") + retnet_fuzz::kShardNames[0] +
                R"(", "extra.i64": ")" + retnet_fuzz::kShardNames[1] + "\"}}");
  writeText(out, "bad_not_object.json", "[]");
  writeText(out, "bad_truncated.json", all.dump().substr(0, 200));
}

// ---- state_file -----------------------------------------------------------------------------

/// `bytes` with its checksum (the last 8 bytes) recomputed.
Bytes withChecksum(Bytes bytes) {
  const std::size_t body = bytes.size() - 8;
  const std::uint64_t sum = retnet::io::state_file::fnv1a(bytes.data(), body);
  for (std::size_t i = 0; i < 8; ++i) bytes[body + i] = static_cast<unsigned char>(sum >> (8 * i));
  return bytes;
}

void storeU64(Bytes& bytes, std::size_t at, std::uint64_t value) {
  for (std::size_t i = 0; i < 8; ++i) bytes[at + i] = static_cast<unsigned char>(value >> (8 * i));
}

/// A state of `c` for `positions.size()` sequences at those positions, random values.
template <typename Scalar>
retnet::RetNetModelState<Scalar> randomState(const retnet::RetNetModelConfig& c,
                                             const std::vector<retnet::Index>& positions,
                                             retnet_fuzz::Rng& rng) {
  retnet::RetNetModelState<Scalar> state;
  for (retnet::Index l = 0; l < c.layers; ++l) {
    auto layer = retnet::RetNetBlock<Scalar>::makeState(
        c.block, static_cast<retnet::Index>(positions.size()));
    for (retnet::Index i = 0; i < layer.size(); ++i)
      layer.data()[i] = static_cast<Scalar>(rng.weight());
    for (std::size_t b = 0; b < positions.size(); ++b)
      layer.setPosition(static_cast<retnet::Index>(b), positions[b]);
    state.layers.push_back(std::move(layer));
  }
  return state;
}

void stateFileCorpus(const std::filesystem::path& out) {
  retnet_fuzz::Rng rng(11);
  for (const bool fla : {false, true}) {
    const retnet::RetNetModelConfig c =
        fla ? retnet_fuzz::stateFlaConfig() : retnet_fuzz::stateTorchscaleConfig();
    const std::string name = fla ? "fla" : "torchscale";
    // A state the model itself leaves, after three tokens.
    const retnet::RetNetModel<float> model(c, retnet_fuzz::randomWeights<float>(c, fla, rng));
    retnet::RetNetModelState<float> run;
    retnet::TokenMatrix tokens(1, 3);
    tokens << 1, 2, 3;
    (void)model.forwardRecurrent(tokens, run);
    const Bytes valid = retnet::io::serializeState(run, c);
    write(out, name + "_after_3_tokens", valid);
    write(out, name + "_batch2_float",
          retnet::io::serializeState(randomState<float>(c, {0, 17}, rng), c));
    write(out, name + "_batch2_double",
          retnet::io::serializeState(randomState<double>(c, {5, 5}, rng), c));
    write(out, name + "_batch3_double",
          retnet::io::serializeState(randomState<double>(c, {1, 1000000, 2}, rng), c));

    const std::size_t batchAt = 16 + 8 * retnet::io::modelSignature(c).size();
    write(out, name + "_bad_truncated", Bytes(valid.begin(), valid.end() - 9));
    write(out, name + "_bad_checksum_only", Bytes(valid.end() - 8, valid.end()));
    Bytes magic = valid;
    magic[0] = 'X';
    write(out, name + "_bad_magic", withChecksum(magic));
    Bytes version = valid;
    version[8] = 2;
    write(out, name + "_bad_version", withChecksum(version));
    Bytes valueSize = valid;
    valueSize[12] = 2;
    write(out, name + "_bad_value_size", withChecksum(valueSize));
    Bytes checksum = valid;
    checksum[batchAt + 9] ^= 0x40;
    write(out, name + "_bad_checksum", checksum);
    Bytes batchZero = valid;
    storeU64(batchZero, batchAt, 0);
    write(out, name + "_bad_batch_zero", withChecksum(batchZero));
    Bytes batchHuge = valid;
    storeU64(batchHuge, batchAt, 0x2000000000000001ull);
    write(out, name + "_bad_batch_huge", withChecksum(batchHuge));
    Bytes position = valid;
    storeU64(position, batchAt + 8, 0x8000000000000000ull);
    write(out, name + "_bad_position", withChecksum(position));
    Bytes longer = valid;
    longer.insert(longer.end() - 8, 4, 0);
    write(out, name + "_bad_extra_bytes", withChecksum(longer));
  }
}

// ---- pth ----------------------------------------------------------------------------------------

namespace pb = retnet::pth_builder;

pb::Tensor pthTensor(std::string name, std::string type, std::string key, std::int64_t numel,
                     std::vector<std::int64_t> size, std::int64_t offset = 0) {
  pb::Tensor t;
  t.name = std::move(name);
  t.storageType = std::move(type);
  t.key = std::move(key);
  t.storageNumel = numel;
  t.offset = offset;
  t.stride = pb::contiguous(size);
  t.size = std::move(size);
  return t;
}

void pthCorpus(const std::filesystem::path& out, const std::filesystem::path& data) {
  for (const char* name : {"state_dict", "parameter", "transposed", "legacy"}) {
    std::ifstream in(data / "pth" / (std::string(name) + ".pth"), std::ios::binary);
    if (!in) throw std::runtime_error(std::string("make_corpus: no tests/data/pth/") + name);
    write(out, std::string("torch_") + name,
          Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
  }
  // Tensors over fuzz_pth's storages ("0": 24 F32, "2": empty, "1", "3", "4", "5": 16 bytes).
  const std::vector<pb::Tensor> tensors = {
      pthTensor("a", "FloatStorage", "0", 24, {4, 6}),
      pthTensor("view", "FloatStorage", "0", 24, {2, 3}, 5),
      pthTensor("scalar", "FloatStorage", "0", 24, {}, 23),
      pthTensor("rank5", "FloatStorage", "0", 24, {1, 2, 1, 3, 1}, 1),
      pthTensor("bf16", "BFloat16Storage", "1", 8, {2, 4}),
      pthTensor("f16", "HalfStorage", "3", 8, {8}),
      pthTensor("f64", "DoubleStorage", "4", 2, {2}),
      pthTensor("i64", "LongStorage", "5", 2, {2, 1}),
      pthTensor("empty", "FloatStorage", "2", 0, {0, 3})};
  const Bytes pickle = pb::stateDict(tensors);
  write(out, "pickle_state_dict", pickle);
  write(out, "pickle_state_dict_memo", pb::stateDict(tensors, true));
  write(out, "pickle_one", pb::stateDict({tensors[1]}));
  pb::Tensor strided = tensors[0];
  strided.stride = {1, 4};
  write(out, "pickle_bad_strided", pb::stateDict({strided}));
  pb::Tensor beyond = tensors[1];
  beyond.offset = 20;
  write(out, "pickle_bad_beyond_storage", pb::stateDict({beyond}));
  pb::Tensor missing = tensors[0];
  missing.key = "9";
  write(out, "pickle_bad_missing_storage", pb::stateDict({missing}));
  write(out, "pickle_bad_global", pb::Pickle().proto().global("os", "system").bytes());
  write(out, "pickle_bad_opcode", pb::Pickle().proto().op('}').op('i').stop().bytes());
  pb::Pickle misc;  // opcodes a state dict does not need but the reader accepts
  misc.proto(4).op(0x95).raw(0, 8).op('}').op(0x94).string("x").op(']').mark().integer(-70000);
  misc.op(0x8A).raw(2, 1).raw(0x8001, 2).op('G').raw(0x000000000000F03Full, 8).op('N');
  misc.op('e').op('s').op(0x8C).raw(1, 1).raw('y', 1).op('j').raw(0, 4).op('s').stop();
  write(out, "pickle_bad_misc_values", misc.bytes());

  // Whole archives.
  const std::vector<pb::Entry> entries = pb::archiveEntries(pickle, retnet_fuzz::pthFuzzStorages());
  const Bytes classic = pb::zip(entries);
  write(out, "zip_classic", classic);
  pb::ZipOptions zip64;
  zip64.zip64 = true;
  write(out, "zip_zip64", pb::zip(entries, zip64));
  pb::ZipOptions plain;
  plain.dataDescriptor = false;
  plain.align = false;
  plain.comment = "comment";
  write(out, "zip_plain_comment", pb::zip(entries, plain));
  write(out, "zip_bad_truncated", Bytes(classic.begin(), classic.end() - 30));
  std::vector<pb::Entry> compressed = entries;
  compressed[1].method = 8;
  write(out, "zip_bad_compressed", pb::zip(compressed));
  std::vector<pb::Entry> bigEndian = entries;
  bigEndian.emplace_back("archive/byteorder", Bytes{'b', 'i', 'g'});
  write(out, "zip_bad_big_endian", pb::zip(bigEndian));
}

/// RWKV World vocabularies: the CLI test's tiny one (every byte and some words), a few lines of it,
/// and lines of each literal form (str with escapes, bytes, \u, non-ASCII).
void vocabularyCorpus(const std::filesystem::path& out, const std::filesystem::path& data) {
  const std::string tiny = readText(data / "rwkv4" / "cli_tiny" / "rwkv_vocab_tiny.txt");
  writeText(out, "tiny", tiny);
  writeText(out, "tiny_head", tiny.substr(0, 200));
  writeText(out, "literal_forms",
            tiny +
                "300 '\\t\\n\\r\\x41\\'' 5\n301 \"it's\" 4\n302 b'\\xff\\x00' 2\n"
                "303 '\\u00e9\\U0001F642' 6\n304 '\xC3\xA9t\xC3\xA9' 5\n");
}

/// Hugging Face tokenizer.json files: tests/data/bpe's real files (Mistral's SentencePiece-style,
/// GPT-2's ByteLevel, cl100k's Split + ByteLevel) cut down to their first 600 ids and the merges
/// among those (small enough to fuzz fast, every part of the pipeline as in the real file), and
/// variants: merges as pairs, ignore_merges, each Split behavior, added-token flags, and parts
/// Unicode normalizers, and parts that are refused (another model type, a Lowercase normalizer, a
/// Metaspace pre-tokenizer).
void tokenizerJsonCorpus(const std::filesystem::path& out, const std::filesystem::path& data) {
  // The first 600 ids, and the single characters up to U+024F and "▁" wherever they are (Mistral
  // keeps its single characters at the end), renumbered densely in their order; then the merges
  // among the kept tokens, and the added tokens and template ids renumbered to match.
  const auto small = [&](const char* name) {
    nlohmann::json file = nlohmann::json::parse(readText(data / "bpe" / name / "tokenizer.json"));
    nlohmann::json& model = file["model"];
    std::map<int, std::string> kept;  // old id -> token
    for (auto item = model["vocab"].begin(); item != model["vocab"].end(); ++item) {
      const std::string& token = item.key();
      const auto lead = static_cast<unsigned char>(token.empty() ? 0 : token[0]);
      const bool oneCharacter = token.size() == 1 || (token.size() == 2 && lead < 0xCA);
      if (item.value().get<int>() < 600 || oneCharacter || token == "\xE2\x96\x81")
        kept[item.value().get<int>()] = token;
    }
    std::map<int, int> renumber;
    nlohmann::json vocab = nlohmann::json::object();
    for (const auto& [id, token] : kept) {
      const int fresh = static_cast<int>(renumber.size());
      renumber[id] = fresh;
      vocab[token] = fresh;
    }
    const auto newId = [&](int id) {
      const auto found = renumber.find(id);
      if (found != renumber.end()) return found->second;
      const int fresh = static_cast<int>(renumber.size());
      renumber[id] = fresh;
      return fresh;
    };
    nlohmann::json merges = nlohmann::json::array();
    for (const auto& merge : model["merges"]) {
      const std::string both = merge.get<std::string>();
      const std::size_t space = both.find(' ');
      const std::string left = both.substr(0, space), right = both.substr(space + 1);
      if (vocab.contains(left) && vocab.contains(right) && vocab.contains(left + right))
        merges.push_back(merge);
    }
    model["vocab"] = vocab;
    model["merges"] = merges;
    for (auto& token : file["added_tokens"]) token["id"] = newId(token["id"].get<int>());
    if (file["post_processor"].is_object() &&
        file["post_processor"]["type"] == "TemplateProcessing") {
      for (auto& special : file["post_processor"]["special_tokens"]) {
        for (auto& id : special["ids"]) id = newId(id.get<int>());
      }
    }
    return file;
  };
  const auto put = [&](const std::string& name, const nlohmann::json& file) {
    writeText(out, name, file.dump());
  };
  const nlohmann::json mistral = small("mistral"), gpt2 = small("gpt2"), cl100k = small("cl100k");
  put("mistral_small", mistral);
  put("gpt2_small", gpt2);
  put("cl100k_small", cl100k);

  nlohmann::json pairs = gpt2;
  for (auto& merge : pairs["model"]["merges"]) {
    const std::string both = merge.get<std::string>();
    const std::size_t space = both.find(' ');
    merge = nlohmann::json::array({both.substr(0, space), both.substr(space + 1)});
  }
  pairs["model"]["ignore_merges"] = true;
  put("gpt2_pairs_ignore_merges", pairs);
  for (const char* behavior : {"Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"}) {
    nlohmann::json file = cl100k;
    file["pre_tokenizer"]["pretokenizers"][0]["behavior"] = behavior;
    file["pre_tokenizer"]["pretokenizers"][0]["invert"] = false;
    put(std::string("cl100k_split_") + behavior, file);
  }
  nlohmann::json flags = mistral;
  flags["added_tokens"].push_back({{"id", 1},
                                   {"content", "<s>"},
                                   {"lstrip", true},
                                   {"rstrip", true},
                                   {"single_word", true},
                                   {"normalized", false},
                                   {"special", true}});
  flags["added_tokens"].erase(1);
  put("mistral_added_flags", flags);
  nlohmann::json metaspace = mistral;
  metaspace["decoder"] = {{"type", "Metaspace"},
                          {"replacement", "\xE2\x96\x81"},
                          {"prepend_scheme", "always"},
                          {"split", false}};
  put("mistral_metaspace_decoder", metaspace);
  for (const char* form : {"NFC", "NFKD"}) {  // Unicode normalizers (read with libutf8proc)
    nlohmann::json file = gpt2;
    file["normalizer"] = {{"type", form}};
    put(std::string("gpt2_") + form, file);
  }
  nlohmann::json refused = gpt2;
  refused["normalizer"] = {{"type", "Lowercase"}};
  put("bad_lowercase", refused);
  refused = mistral;
  refused["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "x"}};
  put("bad_metaspace_pre_tokenizer", refused);
  refused = mistral;
  refused["model"]["type"] = "Unigram";
  put("bad_unigram", refused);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <output directory> <tests/data directory>\n", argv[0]);
    return 2;
  }
  try {
    const std::filesystem::path out = argv[1], data = argv[2];
    if (!std::filesystem::is_directory(data / "fla") ||
        !std::filesystem::is_directory(data / "syncdoth"))
      throw std::runtime_error(std::string("make_corpus: no fla/ and syncdoth/ in ") + argv[2]);
    const auto subdirectory = [&](const char* name) {
      std::filesystem::create_directories(out / name);
      return out / name;
    };
    safetensorsCorpus(subdirectory("safetensors"));
    modelConfigCorpus(subdirectory("model_config"), data);
    weightIndexCorpus(subdirectory("weight_index"), data);
    stateFileCorpus(subdirectory("state_file"));
    pthCorpus(subdirectory("pth"), data);
    vocabularyCorpus(subdirectory("vocabulary"), data);
    tokenizerJsonCorpus(subdirectory("tokenizer_json"), data);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 1;
  }
  return 0;
}
