// Writes the seed corpus for fuzz_safetensors into the directory given as the only argument:
// small valid files made by SafetensorsWriter (every dtype, ranks 0 to 5, metadata, empty and
// scalar tensors), and damaged variants of them (truncated, bad JSON, overlapping offsets, wrong
// or unknown dtype, shape/size mismatch, absurd header length or shape). fuzz/corpus/ holds its
// output; regenerate it with `make_corpus fuzz/corpus`.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "retnet/io/safetensors.hpp"

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

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <output directory>\n", argv[0]);
    return 2;
  }
  try {
    const std::filesystem::path directory = argv[1];
    std::filesystem::create_directories(directory);

    const Bytes every = everyDtype();
    write(directory, "valid_every_dtype", every);
    write(directory, "valid_every_rank", everyRank());
    write(directory, "valid_integers", integersOnly());
    write(directory, "valid_metadata_only", metadataOnly());
    write(directory, "valid_empty", SafetensorsWriter().bytes());

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
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 1;
  }
  return 0;
}
