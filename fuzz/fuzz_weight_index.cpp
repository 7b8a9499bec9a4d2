// libFuzzer target for the sharded-checkpoint reader (include/retnet/io/weight_files.hpp) and
// what reads through it (inspectModel/loadModel of a directory without config.json).
//
// The input is a model.safetensors.index.json text. At start-up the harness makes a fresh
// directory (under /dev/shm when there is one) holding two valid shards written once with
// SafetensorsWriter (fuzz_common.hpp: tiny FLA, syncdoth and torchscale checkpoints split over
// them, and tensors of every dtype and rank 0 to 5), plus a truncated shard, an empty file, a
// text file, a symbolic link to the first shard and a subdirectory. Each input is written there
// as the index, then WeightFiles::open(dir) is called; only retnet::FormatError may escape it.
// When it accepts, every tensor the index lists is read and checked:
//   - names() is the index's weight_map keys, sorted; files() holds one file per shard named;
//   - every shard named is one of the directory's files, by exactly that name;
//   - each tensor comes from the file the index names, with the dtype, shape and values written,
//     read alike by readVector/readMatrix; a name the index does not list is a FormatError.
// Then inspectModel and loadModel<float> (shapes inferred, family by tensor names) run on the
// directory; they may refuse with FormatError only, and a model they load must have the inferred
// configuration and give finite logits.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "fuzz_common.hpp"
#include "retnet/errors.hpp"
#include "retnet/io/json_file.hpp"
#include "retnet/io/load_model.hpp"
#include "retnet/io/weight_files.hpp"

namespace {

using namespace retnet_fuzz;
using retnet::io::WeightFiles;

[[noreturn]] void broken(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_weight_index: invariant broken: %s: %s\n", what, detail.c_str());
  std::abort();
}

void check(bool condition, const char* what, const std::string& detail = "") {
  if (!condition) broken(what, detail);
}

struct Fixture {
  std::filesystem::path dir;
  std::vector<ShardTensor> tensors;
  std::map<std::string, std::size_t> byName;  ///< tensor name -> index in `tensors`
  std::set<std::string> files;  ///< the regular files a shard name may name (after links)
};

const Fixture& fixture() {
  static const Fixture made = [] {
    namespace fs = std::filesystem;
    Fixture f;
    f.dir = makeScratchDirectory("fuzz_weight_index");
    f.tensors = shardTensors();
    for (std::size_t i = 0; i < f.tensors.size(); ++i) f.byName[f.tensors[i].name] = i;
    for (int s = 0; s < 2; ++s) {
      writeFile(f.dir / kShardNames[s], shardBytes(f.tensors, s));
      f.files.insert(kShardNames[s]);
    }
    const Bytes first = shardBytes(f.tensors, 0);
    writeFile(f.dir / "broken.safetensors", Bytes(first.begin(), first.end() - 12));
    writeFile(f.dir / "empty.safetensors", std::string());
    writeFile(f.dir / "notes.txt", std::string("{\"not\": \"a safetensors file\"}\n"));
    fs::create_symlink(kShardNames[0], f.dir / "link.safetensors");
    fs::create_directory(f.dir / "subdir");
    for (const char* name :
         {"broken.safetensors", "empty.safetensors", "notes.txt", "link.safetensors"})
      f.files.insert(name);
    return f;
  }();
  static const bool cleanup = [] {
    std::atexit([] {
      std::error_code error;
      std::filesystem::remove_all(fixture().dir, error);
    });
    return true;
  }();
  (void)cleanup;
  return made;
}

bool sameValue(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return a == b && std::signbit(a) == std::signbit(b);
}

void exercise(const Fixture& f, const WeightFiles& files, const std::string& text) {
  // WeightFiles accepted it, so it parses; and its weight_map is an object of strings.
  const retnet::io::JsonFile index = retnet::io::JsonFile::parse(text, "index");
  const nlohmann::json& map = index.root().at("weight_map");
  std::set<std::string> shards;
  std::vector<std::string> keys;
  for (auto entry = map.begin(); entry != map.end(); ++entry) {
    const std::string shard = entry.value().get<std::string>();
    check(f.files.count(shard) == 1, "a shard name that is not a file of the directory",
          entry.key() + " -> " + entry.value().dump());
    shards.insert(shard);
    keys.push_back(entry.key());
  }
  std::sort(keys.begin(), keys.end());
  check(files.names() == keys, "names() != the weight_map's keys");
  check(files.files().size() == shards.size(), "files() != one per shard named");

  for (auto entry = map.begin(); entry != map.end(); ++entry) {
    const std::string& name = entry.key();
    const std::string shard = entry.value().get<std::string>();
    check(files.contains(name), "contains() misses a listed tensor", name);
    const retnet::io::TensorFile& file = files.fileOf(name);
    check(file.displayName() == (f.dir / shard).string(), "tensor read from another file", name);
    const auto known = f.byName.find(name);
    check(known != f.byName.end(), "a tensor that no shard holds was accepted", name);
    const ShardTensor& t = f.tensors[known->second];
    const int expectedShard = shard == "link.safetensors" ? 0 : shard == kShardNames[1] ? 1 : 0;
    check(t.shard == expectedShard, "tensor accepted from a shard that does not hold it", name);
    const retnet::io::TensorInfo& info = files.info(name);
    check(info.dtype == t.dtype && info.shape == t.shape, "dtype or shape", name);
    const std::vector<double> flat = file.readFlat<double>(name);
    check(flat.size() == t.values.size(), "element count", name);
    for (std::size_t i = 0; i < flat.size(); ++i)
      check(sameValue(flat[i], t.values[i]), "values", name);
    if (t.shape.size() == 1) {
      const auto v = files.readVector<double>(name);
      const auto sized = files.readVector<float>(name, t.shape[0]);
      for (Index i = 0; i < v.size(); ++i)
        check(sameValue(v(i), flat[static_cast<std::size_t>(i)]) &&
                  sameValue(sized(i), flat[static_cast<std::size_t>(i)]),
              "readVector", name);
    } else if (t.shape.size() == 2) {
      const auto m = files.readMatrix<double>(name, t.shape[0], t.shape[1]);
      for (Index i = 0; i < m.size(); ++i)
        check(sameValue(m.data()[i], flat[static_cast<std::size_t>(i)]), "readMatrix", name);
    }
  }
  // Not UTF-8, so no JSON key can name it.
  bool refused = false;
  try {
    (void)files.fileOf("\xff not listed");
  } catch (const retnet::FormatError&) {
    refused = true;
  }
  check(refused, "fileOf(an unlisted name) did not throw FormatError");
}

void loadDirectory(const Fixture& f) {
  const std::string dir = f.dir.string();
  retnet::io::ModelInfo info;
  try {
    info = retnet::io::inspectModel(dir);
  } catch (const retnet::FormatError&) {
    return;
  }
  try {
    const retnet::RetNetModel<float> model = retnet::io::loadModel<float>(dir);
    check(sameConfig(model.config(), info.config), "loadModel's configuration != inspectModel's");
    retnet::TokenMatrix tokens(1, 2);
    tokens << 0, model.config().vocab - 1;
    const retnet::Tensor3<float> logits = model.forwardRecurrent(tokens);
    for (Index i = 0; i < logits.size(); ++i)
      check(std::isfinite(logits.data()[i]), "logits must be finite");
  } catch (const retnet::FormatError&) {
  }
}

/// Keys and values the structure-aware mutator tries: the index's keys and the shards' tensor
/// names; the directory's files and names no shard may have, tensor names, other JSON types.
JsonMutationSpace indexSpace() {
  JsonMutationSpace space;
  space.keys = {"weight_map", "metadata", "total_size", "model.layers.1.attn.q_proj.weight"};
  for (const ShardTensor& t : shardTensors()) {
    space.keys.push_back(t.name);
    space.values.push_back(t.name);
  }
  for (const char* name : {kShardNames[0], kShardNames[1], "link.safetensors", "broken.safetensors",
                           "empty.safetensors", "notes.txt", "subdir", "model.safetensors",
                           "model.safetensors.index.json", "model-00003-of-00003.safetensors", "",
                           ".", "..", "../model-00001-of-00002.safetensors", "subdir/x", "a\\b"})
    space.values.push_back(name);
  space.values.push_back(std::string("x\0y", 3));
  for (const nlohmann::json& other :
       {nlohmann::json(nullptr), nlohmann::json(true), nlohmann::json(4096), nlohmann::json(-1),
        nlohmann::json::object(), nlohmann::json::array()})
    space.values.push_back(other);
  return space;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > retnet::io::kMaxIndexBytes) return 0;  // JsonFile::read refuses it unread
  const Fixture& f = fixture();
  const std::string text(reinterpret_cast<const char*>(data), size);
  writeFile(f.dir / "model.safetensors.index.json", text);
  std::optional<WeightFiles> files;
  try {
    files.emplace(WeightFiles::open(f.dir.string()));
  } catch (const retnet::FormatError&) {
    return 0;
  } catch (const std::exception& error) {
    broken("WeightFiles::open threw other than FormatError", error.what());
  }
  try {
    exercise(f, *files, text);
  } catch (const std::exception& error) {
    broken("reading the tensors of an accepted index threw", error.what());
  }
  try {
    loadDirectory(f);
  } catch (const std::exception& error) {
    broken("inspectModel or loadModel threw other than FormatError", error.what());
  }
  return 0;
}

extern "C" std::size_t LLVMFuzzerMutate(std::uint8_t* data, std::size_t size, std::size_t maxSize);

/// Half the mutations edit the index as a JSON document (indexSpace()), the other half
/// libFuzzer's byte mutations (with fuzz/weight_index.dict).
extern "C" std::size_t LLVMFuzzerCustomMutator(std::uint8_t* data, std::size_t size,
                                               std::size_t maxSize, unsigned int seed) {
  static const JsonMutationSpace space = indexSpace();
  if (seed % 2 == 0) {
    const std::size_t mutated = mutateJson(data, size, maxSize, seed, space);
    if (mutated != 0) return mutated;
  }
  return LLVMFuzzerMutate(data, size, maxSize);
}
