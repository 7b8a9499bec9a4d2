// Tests of the safetensors reader/writer: the three reference files, writer -> reader round trips
// for every dtype (with F16/BF16 bit patterns checked exhaustively), and one test per kind of
// corruption, each checking that the FormatError message says what went wrong and where.
#include "retnet/io/safetensors.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace {

using retnet::io::Dtype;
using retnet::io::SafetensorsFile;
using retnet::io::SafetensorsWriter;

constexpr const char* kBadName = "bad.safetensors";

std::string dataPath(const std::string& file) {
  return std::string(RETNET_TEST_DATA_DIR) + "/" + file;
}

/// An 8-byte little-endian length (the header's unless `declaredLength` is given), the header
/// text and the data bytes: lets a test build any corruption byte for byte.
std::vector<unsigned char> rawFile(const std::string& header,
                                   const std::vector<unsigned char>& data = {},
                                   std::optional<std::uint64_t> declaredLength = std::nullopt) {
  const std::uint64_t length = declaredLength.value_or(header.size());
  std::vector<unsigned char> file;
  for (int i = 0; i < 8; ++i) file.push_back(static_cast<unsigned char>(length >> (8 * i)));
  file.insert(file.end(), header.begin(), header.end());
  file.insert(file.end(), data.begin(), data.end());
  return file;
}

SafetensorsFile parse(const std::string& header, std::size_t dataBytes = 0) {
  return SafetensorsFile::fromBytes(rawFile(header, std::vector<unsigned char>(dataBytes)),
                                    kBadName);
}

/// Runs `action`, which must throw retnet::FormatError whose message contains every needle.
void expectFormatError(const std::function<void()>& action,
                       const std::vector<std::string>& needles) {
  try {
    action();
  } catch (const retnet::FormatError& error) {
    const std::string message = error.what();
    for (const std::string& needle : needles) {
      EXPECT_NE(message.find(needle), std::string::npos)
          << "message \"" << message << "\" lacks \"" << needle << "\"";
    }
    return;
  } catch (const std::exception& error) {
    ADD_FAILURE() << "expected retnet::FormatError, got another exception: " << error.what();
    return;
  }
  ADD_FAILURE() << "expected retnet::FormatError, nothing was thrown";
}

#define EXPECT_FORMAT_ERROR(statement, ...)                       \
  do {                                                            \
    SCOPED_TRACE(#statement);                                     \
    expectFormatError([&] { (void)(statement); }, {__VA_ARGS__}); \
  } while (0)

/// The data section of a file made by SafetensorsWriter.
std::vector<unsigned char> dataSection(const std::vector<unsigned char>& file) {
  std::uint64_t length = 0;
  for (int i = 0; i < 8; ++i) length |= std::uint64_t{file[static_cast<std::size_t>(i)]} << (8 * i);
  return {file.begin() + static_cast<std::ptrdiff_t>(8 + length), file.end()};
}

std::uint16_t uint16At(const std::vector<unsigned char>& data, std::size_t index) {
  return static_cast<std::uint16_t>(data[2 * index] | (data[2 * index + 1] << 8));
}

/// The 16-bit encodings SafetensorsWriter produces for `values` as `dtype` (F16 or BF16).
std::vector<std::uint16_t> encode16(Dtype dtype, const std::vector<double>& values) {
  SafetensorsWriter writer;
  writer.addTensor("t", dtype, {static_cast<Eigen::Index>(values.size())}, values.data());
  const std::vector<unsigned char> data = dataSection(writer.bytes());
  std::vector<std::uint16_t> bits;
  for (std::size_t i = 0; i < values.size(); ++i) bits.push_back(uint16At(data, i));
  return bits;
}

/// Every 16-bit pattern 0..65535 as one tensor of `dtype` (F16 or BF16), read back as doubles.
std::vector<double> decodeAll16(Dtype dtype) {
  std::vector<unsigned char> data;
  for (std::uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
    data.push_back(static_cast<unsigned char>(bits & 0xFF));
    data.push_back(static_cast<unsigned char>(bits >> 8));
  }
  const std::string header = std::string("{\"t\":{\"dtype\":\"") + retnet::io::dtypeName(dtype) +
                             "\",\"shape\":[65536],\"data_offsets\":[0,131072]}}";
  return SafetensorsFile::fromBytes(rawFile(header, data)).readFlat<double>("t");
}

// ---------------------------------------------------------------------------------------------
// The reference files in tests/data.

TEST(SafetensorsRealFiles, MsrSmallMetadataShapesAndValues) {
  const std::string path = dataPath("msr_small.safetensors");
  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.displayName(), path);
  EXPECT_EQ(file.metadataValue("kind"), std::optional<std::string>("msr"));
  EXPECT_EQ(file.metadata().at("heads"), "4");
  EXPECT_EQ(file.metadataValue("no such key"), std::nullopt);

  EXPECT_EQ(file.info("x").dtype, Dtype::F64);
  EXPECT_EQ(file.info("x").shape, (std::vector<Eigen::Index>{2, 32, 64}));
  EXPECT_EQ(file.info("x").numel(), 2 * 32 * 64);
  EXPECT_EQ(file.info("q_proj.weight").shape, (std::vector<Eigen::Index>{64, 64}));
  EXPECT_EQ(file.info("v_proj.weight").shape, (std::vector<Eigen::Index>{128, 64}));
  EXPECT_TRUE(file.contains("out_recurrent"));
  EXPECT_FALSE(file.contains("out_proj.bias"));

  // Names come in data-offset order; spans are contiguous from 0 in this file.
  ASSERT_EQ(file.names().size(), 11u);
  EXPECT_EQ(file.names().front(), "x");
  EXPECT_EQ(file.names().back(), "out_recurrent");
  std::size_t expectedBegin = 0;
  for (const std::string& name : file.names()) {
    EXPECT_EQ(file.info(name).begin, expectedBegin) << name;
    expectedBegin = file.info(name).end;
  }

  const auto decay = file.readVector<double>("decay", 4);
  for (int h = 0; h < 4; ++h) {
    EXPECT_NEAR(decay[h], std::log(1.0 - std::ldexp(1.0, -5 - h)), 1e-15) << "head " << h;
  }

  // Matrix and tensor reads keep the file's row-major order.
  const std::vector<double> qFlat = file.readFlat<double>("q_proj.weight");
  const auto q = file.readMatrix<double>("q_proj.weight", 64, 64);
  ASSERT_EQ(q.rows(), 64);
  ASSERT_EQ(q.cols(), 64);
  EXPECT_EQ(q(5, 7), qFlat[5 * 64 + 7]);
  EXPECT_EQ(q(63, 0), qFlat[63 * 64]);
  const auto qFloat = file.readMatrix<float>("q_proj.weight");
  EXPECT_EQ(qFloat(5, 7), static_cast<float>(qFlat[5 * 64 + 7]));

  const std::vector<double> xFlat = file.readFlat<double>("x");
  const auto x = file.readTensor<double, 3>("x", {2, 32, 64});
  EXPECT_EQ(x.dimension(0), 2);
  EXPECT_EQ(x.dimension(1), 32);
  EXPECT_EQ(x.dimension(2), 64);
  EXPECT_EQ(x(1, 2, 3), xFlat[(1 * 32 + 2) * 64 + 3]);
  EXPECT_EQ(x(0, 31, 63), xFlat[31 * 64 + 63]);
  EXPECT_NE(x(1, 2, 3), 0.0);
}

TEST(SafetensorsRealFiles, LayerSmall) {
  const SafetensorsFile file = SafetensorsFile::open(dataPath("layer_small.safetensors"));
  EXPECT_EQ(file.metadataValue("kind"), std::optional<std::string>("layer"));
  EXPECT_EQ(file.names().size(), 16u);
  EXPECT_EQ(file.readMatrix<double>("retention.q_proj.weight", 64, 64).rows(), 64);
  EXPECT_EQ(file.readMatrix<double>("ffn.fc1.weight", 128, 64).cols(), 64);
  EXPECT_EQ(file.readMatrix<double>("ffn.fc2.weight").rows(), 64);
  EXPECT_EQ(file.readVector<double>("final_layer_norm.weight").size(), 64);
  EXPECT_EQ((file.readTensor<double, 3>("out_parallel").dimension(1)), 32);
}

TEST(SafetensorsRealFiles, DecoderSmallTokensAreIntegers) {
  const SafetensorsFile file = SafetensorsFile::open(dataPath("decoder_small.safetensors"));
  EXPECT_EQ(file.metadataValue("kind"), std::optional<std::string>("decoder"));
  EXPECT_EQ(file.metadataValue("vocab"), std::optional<std::string>("50"));

  const retnet::io::TensorInfo& tokensInfo = file.info("tokens");
  EXPECT_EQ(tokensInfo.dtype, Dtype::I64);
  EXPECT_EQ(tokensInfo.shape, (std::vector<Eigen::Index>{2, 27}));
  EXPECT_EQ(file.names().front(), "tokens");  // Offset 0.

  const std::vector<std::int64_t> tokens = file.readIntegers("tokens");
  ASSERT_EQ(tokens.size(), 54u);
  EXPECT_EQ(tokens[0], 2);
  EXPECT_EQ(tokens[1], 7);
  EXPECT_EQ(tokens[2], 27);
  EXPECT_EQ(tokens[53], 21);
  for (std::int64_t token : tokens) {
    EXPECT_GE(token, 0);
    EXPECT_LT(token, 50);
  }
  // Integers convert to floating point too, in row-major order.
  const auto asMatrix = file.readMatrix<double>("tokens", 2, 27);
  EXPECT_EQ(asMatrix(0, 1), 7.0);
  EXPECT_EQ(asMatrix(1, 26), 21.0);

  EXPECT_EQ(file.readMatrix<double>("embed_tokens.weight", 50, 64).rows(), 50);
  EXPECT_EQ((file.readTensor<double, 3>("logits_parallel", {2, 27, 50}).dimension(2)), 50);
  EXPECT_FORMAT_ERROR(file.readIntegers("embed_tokens.weight"), "decoder_small.safetensors",
                      "tensor 'embed_tokens.weight'", "expected dtype I64, got F64");
}

// ---------------------------------------------------------------------------------------------
// Writer -> reader round trips.

TEST(SafetensorsRoundTrip, EveryDtypeAndMetadata) {
  // Exactly representable in F16, BF16 and F32.
  const std::vector<double> exact = {0.0, 1.0, -2.0, 0.5, 0.375, 3.0, -1024.0, 96.0};
  const std::vector<double> inexact = {0.1, 1.0 / 3.0, -2.5e-3, 1e300};
  const std::vector<std::int64_t> integers = {0,
                                              -1,
                                              42,
                                              std::numeric_limits<std::int64_t>::min(),
                                              std::numeric_limits<std::int64_t>::max(),
                                              1LL << 53};

  SafetensorsWriter writer;
  writer.addMetadata("kind", "test");
  writer.addMetadata("note", "héllo \"quoted\"");
  writer.addTensor("f64", Dtype::F64, {2, 2}, inexact.data());
  writer.addTensor("f32", Dtype::F32, {2, 4}, exact.data());
  writer.addTensor("f16", Dtype::F16, {8}, exact.data());
  writer.addTensor("bf16", Dtype::BF16, {2, 2, 2}, exact.data());
  writer.addTensor("f32.inexact", Dtype::F32, {4}, inexact.data());
  writer.addIntegers("i64", {3, 2}, integers.data());
  writer.addTensor("scalar", Dtype::F64, {}, inexact.data());
  writer.addTensor("empty", Dtype::F32, {0, 5}, nullptr);
  const std::vector<unsigned char> bytes = writer.bytes();

  std::uint64_t headerLength = 0;
  for (int i = 0; i < 8; ++i)
    headerLength |= std::uint64_t{bytes[static_cast<std::size_t>(i)]} << (8 * i);
  EXPECT_EQ((8 + headerLength) % 8, 0u) << "data section must start 8-byte aligned";

  const SafetensorsFile file = SafetensorsFile::fromBytes(bytes, "roundtrip");
  EXPECT_EQ(file.metadataValue("kind"), std::optional<std::string>("test"));
  EXPECT_EQ(file.metadataValue("note"), std::optional<std::string>("héllo \"quoted\""));
  EXPECT_EQ(file.names(), (std::vector<std::string>{"f64", "f32", "f16", "bf16", "f32.inexact",
                                                    "i64", "scalar", "empty"}));

  EXPECT_EQ(file.readFlat<double>("f64"), inexact);
  EXPECT_EQ(file.readFlat<double>("f32"), exact);
  EXPECT_EQ(file.readFlat<double>("f16"), exact);
  EXPECT_EQ(file.readFlat<double>("bf16"), exact);
  EXPECT_EQ(file.readFlat<float>("f16"), std::vector<float>(exact.begin(), exact.end()));
  const std::vector<float> inexactF32 = file.readFlat<float>("f32.inexact");
  for (std::size_t i = 0; i < inexact.size(); ++i) {
    EXPECT_EQ(inexactF32[i], static_cast<float>(inexact[i]));
  }
  EXPECT_EQ(file.readIntegers("i64"), integers);
  EXPECT_EQ(file.info("i64").shape, (std::vector<Eigen::Index>{3, 2}));
  EXPECT_EQ(file.info("bf16").dtype, Dtype::BF16);
  EXPECT_EQ((file.readTensor<double, 3>("bf16")(1, 0, 1)), exact[5]);
  EXPECT_EQ(file.readMatrix<double>("f32")(1, 3), exact[7]);

  EXPECT_EQ(file.info("scalar").numel(), 1);
  EXPECT_EQ(file.readFlat<double>("scalar"), std::vector<double>{inexact[0]});
  EXPECT_EQ((file.readTensor<double, 0>("scalar")()), inexact[0]);
  EXPECT_EQ(file.info("empty").numel(), 0);
  EXPECT_EQ(file.readMatrix<double>("empty").rows(), 0);
  EXPECT_EQ(file.readMatrix<double>("empty").cols(), 5);
}

TEST(SafetensorsRoundTrip, WriteToDiskAndOpen) {
  // A random suffix keeps concurrent runs of this binary (several build trees) apart.
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() /
      ("retnet_test_safetensors_" + std::to_string(std::random_device{}()) + ".safetensors");
  const std::vector<double> values = {1.5, -2.25, 3.0};
  SafetensorsWriter writer;
  writer.addTensor("v", Dtype::F32, {3}, values.data());
  writer.write(path.string());
  const SafetensorsFile file = SafetensorsFile::open(path.string());
  std::filesystem::remove(path);
  EXPECT_EQ(file.readVector<double>("v", 3), Eigen::Vector3d(1.5, -2.25, 3.0));

  EXPECT_FORMAT_ERROR(SafetensorsFile::open(path.string()), path.string(), "cannot open");
  const std::string directory = std::filesystem::temp_directory_path().string();
  EXPECT_FORMAT_ERROR(SafetensorsFile::open(directory), directory, "is a directory");
  const std::string unwritable = (path / "no" / "such" / "dir.safetensors").string();
  EXPECT_FORMAT_ERROR(writer.write(unwritable), unwritable, "cannot open file for writing");
}

TEST(SafetensorsRoundTrip, HalfKnownBitPatterns) {
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<double> values = {1.0,
                                      -2.0,
                                      65504.0,                  // Largest finite.
                                      std::ldexp(1.0, -24),     // Smallest subnormal.
                                      std::ldexp(1023.0, -24),  // Largest subnormal.
                                      std::ldexp(1.0, -14),     // Smallest normal.
                                      inf,
                                      -inf,
                                      -0.0,
                                      0.1,                         // Rounds to 0x2E66.
                                      65519.0,                     // Below the tie: stays finite.
                                      65520.0,                     // Tie at the top: infinity.
                                      1.0 + std::ldexp(1.0, -11),  // Tie: to even (down).
                                      1.0 + std::ldexp(3.0, -11),  // Tie: to even (up).
                                      std::ldexp(1.0, -25),        // Tie with zero: zero.
                                      std::ldexp(3.0, -26),        // Above that tie: 0x0001.
                                      1e-10,                       // Underflow to zero.
                                      -1e10};                      // Overflow to -infinity.
  const std::vector<std::uint16_t> expected = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x0400,
                                               0x7C00, 0xFC00, 0x8000, 0x2E66, 0x7BFF, 0x7C00,
                                               0x3C00, 0x3C02, 0x0000, 0x0001, 0x0000, 0xFC00};
  const std::vector<std::uint16_t> bits = encode16(Dtype::F16, values);
  for (std::size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(bits[i], expected[i]) << "value " << values[i] << " (index " << i << ")";
  }
  const std::uint16_t nan = encode16(Dtype::F16, {std::nan("")})[0];
  EXPECT_EQ(nan & 0x7C00, 0x7C00);
  EXPECT_NE(nan & 0x03FF, 0);

  const std::vector<double> decoded = decodeAll16(Dtype::F16);
  EXPECT_EQ(decoded[0x3C00], 1.0);
  EXPECT_EQ(decoded[0xC000], -2.0);
  EXPECT_EQ(decoded[0x7BFF], 65504.0);
  EXPECT_EQ(decoded[0x0001], std::ldexp(1.0, -24));
  EXPECT_EQ(decoded[0x03FF], std::ldexp(1023.0, -24));
  EXPECT_EQ(decoded[0x0400], std::ldexp(1.0, -14));
  EXPECT_EQ(decoded[0x7C00], inf);
  EXPECT_EQ(decoded[0xFC00], -inf);
  EXPECT_TRUE(std::isnan(decoded[0x7E00]));
  EXPECT_TRUE(std::isnan(decoded[0xFC01]));
  EXPECT_EQ(decoded[0x8000], 0.0);
  EXPECT_TRUE(std::signbit(decoded[0x8000]));
}

TEST(SafetensorsRoundTrip, Bfloat16KnownBitPatterns) {
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<double> values = {1.0,
                                      -2.0,
                                      inf,
                                      -inf,
                                      std::ldexp(1.0, -133),      // Min subnormal.
                                      std::ldexp(1.0, -126),      // Min normal.
                                      std::ldexp(255.0, 120),     // Max finite.
                                      3.4e38,                     // Past it: inf.
                                      65504.0,                    // Rounds to 2^16.
                                      1.0 + std::ldexp(1.0, -8),  // Tie: to even.
                                      1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -30),
                                      -0.0};
  // The 11th value rounds up; converting through float first would round it to the tie and then
  // down to 1.0, which is why the writer converts straight from double.
  const std::vector<std::uint16_t> expected = {0x3F80, 0xC000, 0x7F80, 0xFF80, 0x0001, 0x0080,
                                               0x7F7F, 0x7F80, 0x4780, 0x3F80, 0x3F81, 0x8000};
  const std::vector<std::uint16_t> bits = encode16(Dtype::BF16, values);
  for (std::size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(bits[i], expected[i]) << "value " << values[i] << " (index " << i << ")";
  }
  const std::uint16_t nan = encode16(Dtype::BF16, {-std::nan("")})[0];
  EXPECT_EQ(nan & 0xFF80, 0xFF80);
  EXPECT_NE(nan & 0x007F, 0);

  const std::vector<double> decoded = decodeAll16(Dtype::BF16);
  EXPECT_EQ(decoded[0x3F80], 1.0);
  EXPECT_EQ(decoded[0xC000], -2.0);
  EXPECT_EQ(decoded[0x0001], std::ldexp(1.0, -133));
  EXPECT_EQ(decoded[0x7F7F], std::ldexp(255.0, 120));
  EXPECT_EQ(decoded[0x7F80], inf);
  EXPECT_TRUE(std::isnan(decoded[0x7FC0]));
}

// Decoding every pattern and encoding it again must give the same pattern (NaNs: some NaN of the
// same sign), and the float read must equal the double read rounded (both are exact).
void expectAll16BitPatternsRoundTrip(Dtype dtype, std::uint16_t exponentMask) {
  const std::vector<double> decoded = decodeAll16(dtype);
  ASSERT_EQ(decoded.size(), 65536u);
  const std::vector<std::uint16_t> reencoded = encode16(dtype, decoded);
  for (std::uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
    const std::uint16_t again = reencoded[bits];
    if (std::isnan(decoded[bits])) {
      EXPECT_EQ(again & exponentMask, exponentMask) << std::hex << bits;
      EXPECT_NE(again & static_cast<std::uint16_t>(0x7FFF & ~exponentMask), 0) << std::hex << bits;
      EXPECT_EQ(again & 0x8000, bits & 0x8000) << std::hex << bits;
    } else {
      EXPECT_EQ(again, bits) << std::hex << bits;
    }
  }
  const std::string header = std::string("{\"t\":{\"dtype\":\"") + retnet::io::dtypeName(dtype) +
                             "\",\"shape\":[65536],\"data_offsets\":[0,131072]}}";
  std::vector<unsigned char> data;
  for (std::uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
    data.push_back(static_cast<unsigned char>(bits & 0xFF));
    data.push_back(static_cast<unsigned char>(bits >> 8));
  }
  // The reader's fast decoders (halfToFloat, bfloat16ToFloat) against the generic one, for
  // every pattern, read as float and as double; signs of zeros included.
  const SafetensorsFile file = SafetensorsFile::fromBytes(rawFile(header, data));
  const std::vector<float> asFloat = file.readFlat<float>("t");
  const std::vector<double> asDouble = file.readFlat<double>("t");
  for (std::uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
    if (std::isnan(decoded[bits])) {
      EXPECT_TRUE(std::isnan(asFloat[bits]) && std::isnan(asDouble[bits])) << std::hex << bits;
    } else {
      EXPECT_EQ(asFloat[bits], static_cast<float>(decoded[bits])) << std::hex << bits;
      EXPECT_EQ(asDouble[bits], decoded[bits]) << std::hex << bits;
      EXPECT_EQ(std::signbit(asDouble[bits]), std::signbit(decoded[bits])) << std::hex << bits;
    }
  }
}

TEST(SafetensorsRoundTrip, EveryHalfBitPattern) {
  expectAll16BitPatternsRoundTrip(Dtype::F16, 0x7C00);
}

TEST(SafetensorsRoundTrip, EveryBfloat16BitPattern) {
  expectAll16BitPatternsRoundTrip(Dtype::BF16, 0x7F80);
}

TEST(SafetensorsRoundTrip, DtypeNamesAndSizes) {
  EXPECT_STREQ(retnet::io::dtypeName(Dtype::BF16), "BF16");
  EXPECT_EQ(retnet::io::dtypeSize(Dtype::F64), 8u);
  EXPECT_EQ(retnet::io::dtypeSize(Dtype::F32), 4u);
  EXPECT_EQ(retnet::io::dtypeSize(Dtype::F16), 2u);
  EXPECT_EQ(retnet::io::dtypeSize(Dtype::BF16), 2u);
  EXPECT_EQ(retnet::io::dtypeSize(Dtype::I64), 8u);
  EXPECT_EQ(retnet::io::dtypeFromName("I64"), Dtype::I64);
  EXPECT_EQ(retnet::io::dtypeFromName("U8"), std::nullopt);
}

TEST(SafetensorsWriterValidation, RejectsBadTensors) {
  const std::vector<double> values(4, 1.0);
  const std::vector<std::int64_t> integers(4, 1);
  SafetensorsWriter writer;
  writer.addTensor("a", Dtype::F64, {4}, values.data());
  EXPECT_THROW(writer.addTensor("a", Dtype::F32, {4}, values.data()), retnet::InvalidArgument);
  EXPECT_THROW(writer.addIntegers("a", {4}, integers.data()), retnet::InvalidArgument);
  EXPECT_THROW(writer.addTensor("b", Dtype::F64, {-1, 4}, values.data()), retnet::InvalidArgument);
  EXPECT_THROW(writer.addTensor("b", Dtype::I64, {4}, values.data()), retnet::InvalidArgument);
  EXPECT_THROW(writer.addTensor("b", Dtype::F64, {4}, nullptr), retnet::InvalidArgument);
  EXPECT_THROW(writer.addTensor("__metadata__", Dtype::F64, {4}, values.data()),
               retnet::InvalidArgument);
  EXPECT_THROW(writer.addTensor("bad\xff", Dtype::F64, {4}, values.data()),
               retnet::InvalidArgument);
  writer.addMetadata("k", "v");
  EXPECT_THROW(writer.addMetadata("k", "w"), retnet::InvalidArgument);
  try {
    writer.addTensor("a", Dtype::F64, {4}, values.data());
    ADD_FAILURE() << "duplicate tensor accepted";
  } catch (const retnet::InvalidArgument& error) {
    EXPECT_NE(std::string(error.what()).find("duplicate tensor 'a'"), std::string::npos);
  }
  // The failed calls left nothing behind.
  EXPECT_EQ(SafetensorsFile::fromBytes(writer.bytes()).names(), std::vector<std::string>{"a"});
}

// ---------------------------------------------------------------------------------------------
// Corrupt files: each is rejected with a message naming the file, the tensor and the problem.

TEST(SafetensorsCorrupt, ShorterThanLengthPrefix) {
  EXPECT_FORMAT_ERROR(SafetensorsFile::fromBytes({}, kBadName), kBadName, "file is 0 bytes",
                      "shorter than the 8-byte header length");
  EXPECT_FORMAT_ERROR(SafetensorsFile::fromBytes(std::vector<unsigned char>(7, 0), kBadName),
                      "file is 7 bytes");
}

TEST(SafetensorsCorrupt, HeaderLengthBeyondFile) {
  EXPECT_FORMAT_ERROR(SafetensorsFile::fromBytes(rawFile("{}", {}, 1000), kBadName), kBadName,
                      "header length 1000 exceeds the 2 bytes");
  // A huge length must be rejected before anything is allocated from it.
  EXPECT_FORMAT_ERROR(SafetensorsFile::fromBytes(
                          rawFile("{}", {}, std::numeric_limits<std::uint64_t>::max()), kBadName),
                      "header length 18446744073709551615 exceeds");
}

TEST(SafetensorsCorrupt, HeaderLengthBeyondFormatLimit) {
  // The format caps headers at 100 MB; a longer one is refused before the file size matters.
  EXPECT_FORMAT_ERROR(SafetensorsFile::fromBytes(rawFile("{}", {}, 100'000'001), kBadName),
                      kBadName, "header length 100000001 exceeds the safetensors limit",
                      "100000000 bytes");
  EXPECT_FORMAT_ERROR(SafetensorsFile::fromBytes(rawFile("{}", {}, 100'000'000), kBadName),
                      "header length 100000000 exceeds the 2 bytes");
}

TEST(SafetensorsCorrupt, MalformedJson) {
  EXPECT_FORMAT_ERROR(parse("{\"a\": "), kBadName, "header is not valid JSON");
  EXPECT_FORMAT_ERROR(parse("{} trailing"), kBadName, "header is not valid JSON");
  EXPECT_FORMAT_ERROR(parse(""), kBadName, "header is not valid JSON");
  EXPECT_FORMAT_ERROR(parse("{\"bad\xff\": 1}"), kBadName, "header is not valid JSON");
}

TEST(SafetensorsCorrupt, HeaderNotAnObject) {
  EXPECT_FORMAT_ERROR(parse("[1, 2]"), kBadName, "header must be a JSON object, got array");
  EXPECT_FORMAT_ERROR(parse("42"), kBadName, "got number");
}

TEST(SafetensorsCorrupt, DuplicateKey) {
  EXPECT_FORMAT_ERROR(parse(R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},)"
                            R"("a":{"dtype":"F64","shape":[1],"data_offsets":[8,16]}})",
                            16),
                      kBadName, "duplicate key 'a'");
}

TEST(SafetensorsCorrupt, DuplicateKeyInsideAnEntry) {
  EXPECT_FORMAT_ERROR(parse(R"({"a":{"dtype":"F64","shape":[1],"dtype":"F32",)"
                            R"("data_offsets":[0,8]}})",
                            8),
                      kBadName, "duplicate key 'dtype'");
}

// Found while hardening the reader for fuzz/fuzz_safetensors (at sizes beyond its inputs): deep
// nesting made the error message's JSON dump recurse until the stack overflowed, a crash instead
// of an error, from a header of a few hundred kilobytes.
TEST(SafetensorsCorrupt, DeepNestingIsRejected) {
  const std::size_t depth = 200'000;
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"dtype":"F64","shape":[)" + std::string(depth, '[') +
                                std::string(depth, ']') + R"(],"data_offsets":[0,8]}})",
                            8),
                      kBadName, "header nests JSON objects and arrays deeper than 64 levels");
  // 64 levels are fine: header object, entry, and 62 in a field the reader ignores.
  const SafetensorsFile file =
      parse(R"({"w":{"dtype":"F64","shape":[1],"x":)" + std::string(62, '[') +
                std::string(62, ']') + R"(,"data_offsets":[0,8]}})",
            8);
  EXPECT_EQ(file.names(), std::vector<std::string>{"w"});
  std::string objects;
  for (int i = 0; i < 63; ++i) objects += R"({"k":)";
  objects += "0" + std::string(63, '}');
  EXPECT_FORMAT_ERROR(
      parse(R"({"w":{"dtype":"F64","shape":[1],"x":)" + objects + R"(,"data_offsets":[0,8]}})", 8),
      "deeper than 64 levels");
}

// Found while hardening the reader for fuzz/fuzz_safetensors: parsing through nlohmann's callback
// API rescanned the enclosing container at the end of every object, so a header of n objects
// took time quadratic in n (minutes for a megabyte). Parsing is linear now; the bound below is
// about 100x what it needs.
// A header with 200 000 objects: the old callback parser rescanned its container per object
// (minutes here); the linear one takes ~0.2 s under ASan. Speed is not asserted (no timed
// assertions in tests): a quadratic regression shows up as this test hitting CTest's timeout.
TEST(SafetensorsCorrupt, ManyObjectsParse) {
  std::string many = "[";
  for (int i = 0; i < 200'000; ++i) many += "{},";
  many += "{}]";
  const std::string header = R"({"w":{"dtype":"F64","shape":[1],"x":)" + many +
                             R"(,"data_offsets":[0,8]},"__metadata__":{"k":"v"}})";
  const SafetensorsFile file = parse(header, 8);
  EXPECT_EQ(file.names(), std::vector<std::string>{"w"});
  EXPECT_EQ(file.metadataValue("k"), std::optional<std::string>("v"));
}

TEST(SafetensorsCorrupt, EntryNotAnObjectOrFieldsMissing) {
  EXPECT_FORMAT_ERROR(parse(R"({"w": 3})"), kBadName, "tensor 'w'",
                      "entry must be an object, got number");
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"shape":[1],"data_offsets":[0,8]}})", 8), "tensor 'w'",
                      "missing \"dtype\"");
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"dtype":"F64","data_offsets":[0,8]}})", 8), "tensor 'w'",
                      "missing \"shape\"");
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"dtype":"F64","shape":[1]}})", 8), "tensor 'w'",
                      "missing \"data_offsets\"");
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"dtype":64,"shape":[1],"data_offsets":[0,8]}})", 8),
                      "tensor 'w'", "\"dtype\" must be a string, got number 64");
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"dtype":"F64","shape":1,"data_offsets":[0,8]}})", 8),
                      "tensor 'w'", "\"shape\" must be an array, got number 1");
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0]}})", 8),
                      "tensor 'w'", "\"data_offsets\" must be an array [begin, end], got [0]");
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[-8,0]}})", 8),
                      "tensor 'w'", "must be non-negative integers, got [-8,0]");
}

TEST(SafetensorsCorrupt, UnknownDtype) {
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})", 8),
                      kBadName, "tensor 'w'", "unknown dtype 'I32'", "supported: F64");
}

TEST(SafetensorsCorrupt, BadShapeEntries) {
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"dtype":"F64","shape":[-1,2],"data_offsets":[0,8]}})", 8),
                      kBadName, "tensor 'w'", "non-negative integers, got -1 in [-1,2]");
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"dtype":"F64","shape":[2.5],"data_offsets":[0,8]}})", 8),
                      "tensor 'w'", "got 2.5");
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"dtype":"F64","shape":["2"],"data_offsets":[0,8]}})", 8),
                      "tensor 'w'", "got \"2\"");
  EXPECT_FORMAT_ERROR(
      parse(R"({"w":{"dtype":"F64","shape":[9223372036854775808],"data_offsets":[0,8]}})", 8),
      "tensor 'w'", "shape entry 9223372036854775808 does not fit");
}

TEST(SafetensorsCorrupt, ShapeProductOverflow) {
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],)"
                            R"("data_offsets":[0,8]}})",
                            8),
                      kBadName, "tensor 'w'", "element count", "overflows");
  // 2^61 elements fit in Eigen::Index, but not 2^61 * 8 bytes in size_t.
  EXPECT_FORMAT_ERROR(
      parse(R"({"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}})", 8),
      "tensor 'w'", "byte size", "overflows");
}

TEST(SafetensorsCorrupt, ShapeDisagreesWithByteCount) {
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 24),
                      kBadName, "tensor 'w'", "shape [2, 3] with dtype F32 needs 24 bytes",
                      "data_offsets [0, 20] span 20");
}

TEST(SafetensorsCorrupt, BeginAfterEnd) {
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[16,8]}})", 24),
                      kBadName, "tensor 'w'", "begin 16 is greater than end 8");
}

TEST(SafetensorsCorrupt, OffsetsBeyondDataSection) {
  EXPECT_FORMAT_ERROR(parse(R"({"w":{"dtype":"F64","shape":[4],"data_offsets":[0,32]}})", 24),
                      kBadName, "tensor 'w'", "[0, 32] end beyond the data section of 24 bytes");
}

TEST(SafetensorsCorrupt, OverlappingSpans) {
  EXPECT_FORMAT_ERROR(parse(R"({"b":{"dtype":"F64","shape":[2],"data_offsets":[8,24]},)"
                            R"("a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})",
                            24),
                      kBadName, "tensors 'a' (data_offsets [0, 16]) and 'b'", "[8, 24]) overlap");
  // Contained in a longer, earlier span that is not the immediate predecessor.
  EXPECT_FORMAT_ERROR(parse(R"({"long":{"dtype":"F64","shape":[4],"data_offsets":[0,32]},)"
                            R"("x":{"dtype":"F64","shape":[1],"data_offsets":[8,16]},)"
                            R"("y":{"dtype":"F64","shape":[1],"data_offsets":[16,24]}})",
                            32),
                      "'long'", "'x'", "overlap");
}

TEST(SafetensorsCorrupt, AdjacentAndEmptySpansAreFine) {
  const SafetensorsFile file = parse(R"({"b":{"dtype":"F64","shape":[1],"data_offsets":[8,16]},)"
                                     R"("a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},)"
                                     R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                                     16);
  EXPECT_EQ(file.names(), (std::vector<std::string>{"a", "e", "b"}));
}

TEST(SafetensorsCorrupt, MetadataMustBeStrings) {
  EXPECT_FORMAT_ERROR(parse(R"({"__metadata__":{"k":1}})"), kBadName,
                      "__metadata__ value of 'k' must be a string, got number 1");
  EXPECT_FORMAT_ERROR(parse(R"({"__metadata__":"text"})"), kBadName,
                      "__metadata__ must be an object of strings, got string");
}

TEST(SafetensorsCorrupt, PaddedHeaderIsAccepted) {
  const std::string header = R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})";
  const SafetensorsFile file = parse(header + std::string(7, ' '), 8);
  EXPECT_EQ(file.readFlat<double>("w"), std::vector<double>{0.0});
  EXPECT_TRUE(file.metadata().empty());
}

TEST(SafetensorsLookup, MissingTensor) {
  const SafetensorsFile file =
      parse(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", 8);
  EXPECT_FORMAT_ERROR(file.info("nope"), kBadName, "no tensor 'nope'");
  EXPECT_FORMAT_ERROR(file.readFlat<double>("nope"), "no tensor 'nope'");
  EXPECT_FORMAT_ERROR(file.readIntegers("nope"), "no tensor 'nope'");
}

TEST(SafetensorsLookup, RankAndShapeMismatch) {
  const SafetensorsFile file = parse(R"({"v":{"dtype":"F64","shape":[6],"data_offsets":[0,48]},)"
                                     R"("m":{"dtype":"F64","shape":[2,3],"data_offsets":[48,96]}})",
                                     96);
  EXPECT_FORMAT_ERROR(file.readMatrix<double>("v"), kBadName, "tensor 'v'",
                      "expected rank 2, got rank 1 (shape [6])");
  EXPECT_FORMAT_ERROR(file.readVector<float>("m"), "tensor 'm'", "expected rank 1, got rank 2");
  EXPECT_FORMAT_ERROR((file.readTensor<double, 3>("m")), "tensor 'm'", "expected rank 3");
  EXPECT_FORMAT_ERROR(file.readMatrix<double>("m", 3, 2), kBadName, "tensor 'm'",
                      "expected shape [3, 2], got [2, 3]");
  EXPECT_FORMAT_ERROR(file.readVector<double>("v", 5), "expected shape [5], got [6]");
  EXPECT_FORMAT_ERROR((file.readTensor<double, 2>("m", {2, 4})), "expected shape [2, 4]");
  EXPECT_FORMAT_ERROR(file.requireShape("m", {2}), "expected shape [2], got [2, 3]");
  EXPECT_NO_THROW(file.requireShape("m", {2, 3}));
}

}  // namespace
