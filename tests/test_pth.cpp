// Tests of the PyTorch checkpoint reader (retnet/io/pth_reader.hpp): the files torch.save wrote
// (tests/data/pth, values against expected.json, views at storage offsets, a Parameter), the same
// layouts built byte by byte in classic and ZIP64 form, WeightFiles on .pth files, and one test
// per kind of refusal, each checking that the FormatError names the problem.
#include "retnet/io/pth_reader.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pth_builder.hpp"
#include "retnet/io/load_model.hpp"
#include "retnet/io/safetensors_reader.hpp"
#include "retnet/io/weight_files.hpp"

namespace {

namespace pb = retnet::pth_builder;
using retnet::io::Dtype;
using retnet::io::PthFile;
using Bytes = std::vector<unsigned char>;

std::string dataPath(const std::string& file) {
  return std::string(RETNET_TEST_DATA_DIR) + "/pth/" + file;
}

Bytes fileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
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

PthFile parse(const Bytes& bytes) { return PthFile::fromBytes(bytes, "bad.pth"); }

/// A well-formed archive: `tensors` over storage "0" of 24 floats (0, 1, ..., 23).
Bytes archive(const std::vector<pb::Tensor>& tensors, const pb::ZipOptions& options = {}) {
  return pb::zip(pb::archiveEntries(pb::stateDict(tensors), {{"0", pb::floatStorage(24)}}),
                 options);
}

pb::Tensor tensor(std::string name, std::vector<std::int64_t> size, std::int64_t offset = 0) {
  pb::Tensor t;
  t.name = std::move(name);
  t.storageNumel = 24;
  t.offset = offset;
  t.stride = pb::contiguous(size);
  t.size = std::move(size);
  return t;
}

/// An archive whose data.pkl is `pickle` (storage "0": 24 floats).
Bytes withPickle(const Bytes& pickle) {
  return pb::zip(pb::archiveEntries(pickle, {{"0", pb::floatStorage(24)}}));
}

/// The start of a pickle as torch writes one: PROTO 2, OrderedDict(), MARK, then `body` and
/// SETITEMS, STOP.
Bytes dictPickle(const std::function<void(pb::Pickle&)>& body) {
  pb::Pickle p;
  p.proto().global("collections", "OrderedDict").op(')').op('R').mark();
  body(p);
  return p.op('u').stop().bytes();
}

/// The offset of the first occurrence of `needle` in `bytes` (which must hold it).
std::size_t offsetOf(const Bytes& bytes, const std::string& needle) {
  const auto at = std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end());
  EXPECT_NE(at, bytes.end()) << needle;
  return static_cast<std::size_t>(at - bytes.begin());
}

std::string le32(std::uint32_t value) {
  std::string text;
  for (int i = 0; i < 4; ++i) text.push_back(static_cast<char>(value >> (8 * i)));
  return text;
}

// ---------------------------------------------------------------------------------------------
// Files written by torch.save.

TEST(PthTorchFiles, StateDictMatchesExpectedValues) {
  const auto expected = nlohmann::ordered_json::parse(fileBytes(dataPath("expected.json")));
  for (const char* name : {"state_dict.pth", "parameter.pth"}) {
    SCOPED_TRACE(name);
    const PthFile file = PthFile::open(dataPath(name));
    EXPECT_EQ(file.displayName(), dataPath(name));
    EXPECT_EQ(file.archiveName(), std::string(name).substr(0, std::string(name).size() - 4));
    const auto& tensors = expected.at(name);
    // names() in the pickle's order, which is the dict's.
    std::vector<std::string> names;
    for (auto item = tensors.begin(); item != tensors.end(); ++item) names.push_back(item.key());
    EXPECT_EQ(file.names(), names);
    for (auto item = tensors.begin(); item != tensors.end(); ++item) {
      SCOPED_TRACE(item.key());
      const retnet::io::TensorInfo& info = file.info(item.key());
      EXPECT_EQ(retnet::io::dtypeName(info.dtype), item.value().at("dtype").get<std::string>());
      EXPECT_EQ(info.shape, item.value().at("shape").get<std::vector<Eigen::Index>>());
      EXPECT_EQ(file.readFlat<double>(item.key()),
                item.value().at("values").get<std::vector<double>>());
      const std::vector<float> asFloat = file.readFlat<float>(item.key());
      const auto values = item.value().at("values").get<std::vector<double>>();
      ASSERT_EQ(asFloat.size(), values.size());
      for (std::size_t i = 0; i < values.size(); ++i) EXPECT_EQ(asFloat[i], values[i]);
    }
  }
}

TEST(PthTorchFiles, ViewsShareTheirStorageAtTheirOffsets) {
  const PthFile file = PthFile::open(dataPath("state_dict.pth"));
  const auto& table = file.info("table");
  EXPECT_EQ(file.info("table.rows3to5").begin, table.begin + 9 * 4);
  EXPECT_EQ(file.info("table.row6").begin, table.begin + 18 * 4);
  EXPECT_EQ(file.info("table.row2").begin, table.begin + 6 * 4);
  const auto whole = file.readMatrix<double>("table", 8, 3);
  const auto rows = file.readMatrix<double>("table.rows3to5", 2, 3);
  EXPECT_EQ(rows.row(0), whole.row(3));
  EXPECT_EQ(rows.row(1), whole.row(4));
  EXPECT_EQ(file.readVector<double>("table.row6", 3), whole.row(6).transpose());
  EXPECT_EQ(file.readMatrix<float>("table.row2", 1, 3).cast<double>(), whole.row(2));
  EXPECT_EQ(file.readIntegers("i64.counts"),
            (std::vector<std::int64_t>{0, 7, -3, std::int64_t(1) << 40}));
  EXPECT_EQ((file.readTensor<double, 3>("f32.cube", {2, 3, 4})(1, 2, 3)), 1.25);
  EXPECT_EQ((file.readTensor<double, 0>("f64.scalar")()), -2.5);
  EXPECT_TRUE(file.readFlat<double>("empty").empty());
}

TEST(PthTorchFiles, FromBytesReadsTheSame) {
  const PthFile opened = PthFile::open(dataPath("state_dict.pth"));
  const PthFile inMemory = PthFile::fromBytes(fileBytes(dataPath("state_dict.pth")));
  EXPECT_EQ(inMemory.displayName(), "<memory>");
  ASSERT_EQ(inMemory.names(), opened.names());
  for (const std::string& name : opened.names()) {
    EXPECT_EQ(inMemory.readFlat<double>(name), opened.readFlat<double>(name)) << name;
  }
}

TEST(PthTorchFiles, ShapeAndRankChecksNameTheTensor) {
  const PthFile file = PthFile::open(dataPath("state_dict.pth"));
  EXPECT_FORMAT_ERROR(file.readMatrix<double>("weight", 4, 3), "state_dict.pth", "tensor 'weight'",
                      "expected shape [4, 3], got [3, 4]");
  EXPECT_FORMAT_ERROR(file.readVector<double>("weight"), "tensor 'weight'",
                      "expected rank 1, got rank 2");
  EXPECT_FORMAT_ERROR(file.info("no.such"), "state_dict.pth", "no tensor 'no.such'");
  EXPECT_FORMAT_ERROR(file.readIntegers("weight"), "expected dtype I64, got F32");
}

TEST(PthTorchFiles, TransposedTensorIsRefused) {
  EXPECT_FORMAT_ERROR(PthFile::open(dataPath("transposed.pth")), "transposed.pth",
                      "tensor 'weight.T'", "stride [1, 3]", "size [3, 2]", "contiguous");
}

TEST(PthTorchFiles, LegacyFormatIsRefused) {
  EXPECT_FORMAT_ERROR(PthFile::open(dataPath("legacy.pth")), "legacy.pth", "not a ZIP archive",
                      "legacy format");
}

TEST(PthTorchFiles, OpenRefusesWhatIsNotAFile) {
  EXPECT_FORMAT_ERROR(PthFile::open(dataPath("")), "is a directory");
  EXPECT_FORMAT_ERROR(PthFile::open(dataPath("missing.pth")), "cannot open file");
}

TEST(PthTorchFiles, Rwkv4CheckpointLoadsLikeItsSafetensors) {
  // BlinkDL's names in a torch.save'd state dict: the golden model's weights, loaded through
  // WeightFiles by loadModel, give the same logits bit for bit as the golden file itself.
  const std::string pth = dataPath("rwkv4_model_small.pth");
  const std::string golden =
      std::string(RETNET_TEST_DATA_DIR) + "/rwkv4/rwkv4_model_small.safetensors";
  EXPECT_EQ(retnet::io::inspectModel(pth).family, retnet::io::ModelFamily::kRwkv4);
  const auto fromPth = retnet::io::loadModel<retnet::Rwkv4Model<double>>(pth);
  const auto fromGolden = retnet::io::loadModel<retnet::Rwkv4Model<double>>(golden);
  const retnet::io::SafetensorsFile file = retnet::io::SafetensorsFile::open(golden);
  const std::vector<std::int64_t> ids = file.readIntegers("tokens");
  const std::vector<Eigen::Index>& shape = file.info("tokens").shape;
  retnet::TokenMatrix tokens(shape[0], shape[1]);
  std::copy(ids.begin(), ids.end(), tokens.data());
  const retnet::Tensor3<double> a = fromPth.forwardRecurrent(tokens);
  const retnet::Tensor3<double> b = fromGolden.forwardRecurrent(tokens);
  ASSERT_EQ(a.size(), b.size());
  for (Eigen::Index i = 0; i < a.size(); ++i) ASSERT_EQ(a.data()[i], b.data()[i]) << i;
  const std::vector<double> reference = file.readFlat<double>("logits_recurrent");
  ASSERT_EQ(static_cast<std::size_t>(a.size()), reference.size());
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < reference.size(); ++i) {
    worst = std::max(worst, std::abs(a.data()[i] - reference[i]));
    scale = std::max(scale, std::abs(reference[i]));
  }
  // And they are the golden logits, within test_rwkv4's tolerance for double.
  EXPECT_LE(worst / scale, 1e-12);
}

// ---------------------------------------------------------------------------------------------
// WeightFiles reads .pth files.

TEST(PthWeightFiles, OpensPthByExtensionAndByMagic) {
  const retnet::io::WeightFiles files = retnet::io::WeightFiles::open(dataPath("state_dict.pth"));
  EXPECT_TRUE(files.contains("table.rows3to5"));
  EXPECT_EQ(files.readVector<double>("bias", 3),
            (Eigen::VectorXd(3) << 0.625, 0.75, 0.875).finished());
  EXPECT_EQ(files.readMatrix<float>("table.rows3to5", 2, 3)(1, 2), 1.75f);
  EXPECT_EQ(files.fileOf("weight").displayName(), dataPath("state_dict.pth"));
  EXPECT_EQ(files.metadataValue("norm_eps"), std::nullopt);
  EXPECT_FORMAT_ERROR(files.first(), "state_dict.pth", "no safetensors metadata");

  // Another extension: told by the ZIP magic.
  const auto copy = std::filesystem::temp_directory_path() / "retnet_test_pth_copy.bin";
  std::filesystem::copy_file(dataPath("state_dict.pth"), copy,
                             std::filesystem::copy_options::overwrite_existing);
  const retnet::io::WeightFiles byMagic = retnet::io::WeightFiles::open(copy.string());
  EXPECT_EQ(byMagic.names(), files.names());
  std::filesystem::remove(copy);

  EXPECT_FORMAT_ERROR(retnet::io::WeightFiles::open(dataPath("transposed.pth")),
                      "tensor 'weight.T'", "contiguous");
}

// ---------------------------------------------------------------------------------------------
// Archives built byte by byte: what is accepted.

TEST(PthBuilt, ClassicAndZip64LayoutsReadTheSame) {
  const std::vector<pb::Tensor> tensors = {tensor("all", {4, 6}), tensor("view", {2, 3}, 5),
                                           tensor("scalar", {}, 23)};
  for (bool zip64 : {false, true}) {
    for (bool descriptor : {false, true}) {
      for (bool align : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << "zip64 " << zip64 << " descriptor " << descriptor << " align " << align);
        pb::ZipOptions options;
        options.zip64 = zip64;
        options.dataDescriptor = descriptor;
        options.align = align;
        options.comment = align ? "a comment" : "";
        const PthFile file = parse(archive(tensors, options));
        EXPECT_EQ(file.names(), (std::vector<std::string>{"all", "view", "scalar"}));
        EXPECT_EQ(file.readFlat<double>("view"), (std::vector<double>{5, 6, 7, 8, 9, 10}));
        EXPECT_EQ(file.readMatrix<double>("all", 4, 6)(3, 5), 23.0);
        EXPECT_EQ(file.readFlat<float>("scalar"), std::vector<float>{23});
      }
    }
  }
}

TEST(PthBuilt, TorchsMemoizedOpcodesReadTheSame) {
  // 300 tensors: the memo passes 256 entries, so LONG_BINPUT and LONG_BINGET too.
  std::vector<pb::Tensor> tensors;
  for (int i = 0; i < 300; ++i) tensors.push_back(tensor("t" + std::to_string(i), {2}, i % 20));
  const PthFile plain = parse(withPickle(pb::stateDict(tensors)));
  const PthFile memo = parse(withPickle(pb::stateDict(tensors, true)));
  ASSERT_EQ(memo.names(), plain.names());
  for (const std::string& name : plain.names()) {
    EXPECT_EQ(memo.readFlat<double>(name), plain.readFlat<double>(name)) << name;
  }
  EXPECT_EQ(memo.readFlat<double>("t299"), (std::vector<double>{19, 20}));
}

TEST(PthBuilt, SharedTensorsMemoAndBuildAreAccepted) {
  // One tensor under two names through the memo, protocol 4 framing, MEMOIZE, STACK_GLOBAL,
  // a plain dict with SETITEM, and BUILD of a dict's attributes.
  pb::Pickle p;
  p.proto(4).op(0x95).raw(0, 8);  // FRAME (advisory)
  p.op('}').op(0x94);             // EMPTY_DICT, MEMOIZE -> memo 0
  p.string("a");
  p.op(0x8C).raw(12, 1).append(Bytes{'t', 'o', 'r', 'c', 'h', '.', '_', 'u', 't', 'i', 'l', 's'});
  p.op(0x8C).raw(18, 1);
  p.append(Bytes{'_', 'r', 'e', 'b', 'u', 'i', 'l', 'd', '_', 't', 'e', 'n', 's', 'o', 'r', '_',
                 'v', '2'});
  p.op(0x93).mark();  // STACK_GLOBAL, args:
  p.mark().string("storage").global("torch", "FloatStorage").string("0").string("cpu");
  p.integer(24).op('t').op('Q').integer(2).tuple({2, 2}).tuple({2, 1}).boolean(true).op('}');
  p.op('N').op('t').op('R');  // 7 arguments: metadata None
  p.op('r').raw(1000, 4);     // LONG_BINPUT 1000
  p.op('s');                  // SETITEM a
  p.string("b").op('j').raw(1000, 4).op('s');
  p.op('}').string("_metadata").op('}').op('s').op('b');  // BUILD with {"_metadata": {}}
  p.stop();
  const PthFile file = parse(withPickle(p.bytes()));
  EXPECT_EQ(file.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(file.readFlat<double>("b"), (std::vector<double>{2, 3, 4, 5}));
  EXPECT_EQ(file.info("a").begin, file.info("b").begin);
}

TEST(PthBuilt, ParameterAndOtherStorageTypes) {
  pb::Pickle p;
  p.proto().op('}').mark().string("p").global("torch._utils", "_rebuild_parameter").mark();
  pb::Tensor t = tensor("", {3});
  t.storageType = "HalfStorage";
  t.storageNumel = 48;  // the 96 bytes as F16
  pb::pickleTensor(p, t);
  p.boolean(true).global("collections", "OrderedDict").op(')').op('R').op('t').op('R');
  p.op('u').stop();
  const PthFile file = parse(withPickle(p.bytes()));
  EXPECT_EQ(file.info("p").dtype, Dtype::F16);
  EXPECT_EQ(file.info("p").shape, (std::vector<Eigen::Index>{3}));
}

// ---------------------------------------------------------------------------------------------
// Refusals: the pickle.

TEST(PthRefuses, GlobalsOtherThanTheStateDictOnes) {
  EXPECT_FORMAT_ERROR(parse(withPickle(pb::Pickle().proto().global("os", "system").bytes())),
                      "bad.pth", "archive/data.pkl at byte 2", "imports os.system");
  EXPECT_FORMAT_ERROR(parse(withPickle(pb::Pickle().proto().global("builtins", "eval").bytes())),
                      "imports builtins.eval");
  pb::Pickle stack;
  stack.proto(4).string("posix").string("system").op(0x93);
  EXPECT_FORMAT_ERROR(parse(withPickle(stack.bytes())), "imports posix.system");
  EXPECT_FORMAT_ERROR(parse(withPickle(pb::Pickle().proto().global("torch", "IntStorage").bytes())),
                      "storage type torch.IntStorage is not supported");
  EXPECT_FORMAT_ERROR(
      parse(withPickle(pb::Pickle().proto().global("torch._utils", "_rebuild_qtensor").bytes())),
      "imports torch._utils._rebuild_qtensor");
  // A GLOBAL line without its newline.
  EXPECT_FORMAT_ERROR(
      parse(withPickle(pb::Pickle().proto().op('c').append(Bytes(300, 'a')).bytes())),
      "not a line of at most 256 bytes");
}

TEST(PthRefuses, UnknownOpcodes) {
  // INST ('i'), OBJ ('o'), NEWOBJ (0x81), an undefined byte.
  for (unsigned char code : {static_cast<unsigned char>('i'), static_cast<unsigned char>('o'),
                             static_cast<unsigned char>(0x81), static_cast<unsigned char>(0xFF)}) {
    const Bytes pickle = dictPickle([&](pb::Pickle& p) { p.op(code); });
    static const char* digits = "0123456789abcdef";
    const std::string hex = std::string("opcode 0x") + digits[code >> 4] + digits[code & 15];
    EXPECT_FORMAT_ERROR(parse(withPickle(pickle)), "unsupported pickle", hex, "at byte 30");
  }
  EXPECT_FORMAT_ERROR(parse(withPickle(pb::Pickle().proto(6).bytes())), "protocol 6");
}

TEST(PthRefuses, MalformedPickles) {
  const auto refused = [](const Bytes& pickle, const std::string& needle) {
    EXPECT_FORMAT_ERROR(parse(withPickle(pickle)), needle);
  };
  refused(pb::Pickle().proto().bytes(), "ends without STOP");
  refused(pb::Pickle().proto().op('X').raw(1000, 4).bytes(), "ends inside the opcode's argument");
  refused(pb::Pickle().proto().op('}').op('}').stop().bytes(), "STOP with 2 values");
  refused(pb::Pickle().proto().op('}').mark().stop().bytes(), "MARK(s) still open");
  refused(pb::Pickle().proto().op('}').stop().op('N').bytes(), "1 bytes follow STOP");
  refused(pb::Pickle().proto().op(']').stop().bytes(), "holds a list, not a dict of tensors");
  refused(pb::Pickle().proto().op('s').bytes(), "SETITEM needs a value");
  refused(pb::Pickle().proto().op('t').bytes(), "TUPLE without a MARK");
  refused(pb::Pickle().proto().op('h').raw(7, 1).bytes(), "memo entry 7, never stored");
  refused(pb::Pickle().proto().op(']').string("k").integer(1).op('s').bytes(),
          "SETITEM on a list, not a dict");
  refused(pb::Pickle().proto().op(']').op(']').op('b').bytes(), "BUILD sets the state of a list");
  refused(pb::Pickle().proto().op(0x8A).raw(9, 1).bytes(), "LONG1 of 9 bytes");
  refused(pb::Pickle().proto().integer(1).op(')').op('R').bytes(), "REDUCE calls a int");
  refused(pb::Pickle().proto().global("torch", "FloatStorage").op(')').op('R').bytes(),
          "storages come from persistent ids only");
  refused(pb::Pickle().proto().global("collections", "OrderedDict").tuple({1}).op('R').bytes(),
          "only OrderedDict() is accepted");
  refused(pb::Pickle().proto().tuple({1, 2}).op('Q').bytes(), "persistent id must be a tuple");
  refused(dictPickle([](pb::Pickle& p) { p.integer(3).string("x"); }),
          "the dict's key 0 is a int, not a string");
  refused(dictPickle([](pb::Pickle& p) { p.string("epoch").integer(3); }),
          "the dict's value 'epoch' is a int, not a tensor");
  refused(dictPickle([](pb::Pickle& p) {
            p.string("x");
            pb::pickleTensor(p, tensor("", {2}));
            p.string("x");
            pb::pickleTensor(p, tensor("", {2}));
          }),
          "tensor name 'x' appears twice");
  // _rebuild_tensor_v2 with wrong arguments.
  refused(dictPickle([](pb::Pickle& p) {
            p.string("x").global("torch._utils", "_rebuild_tensor_v2").tuple({1, 2}).op('R');
          }),
          "_rebuild_tensor_v2 called with 2 arguments");
}

TEST(PthRefuses, HugeAndNegativeDeclaredSizes) {
  // Shapes whose element count overflows, negative extents, ranks beyond the cap.
  pb::Tensor huge = tensor("huge", {std::int64_t(1) << 40, std::int64_t(1) << 40});
  EXPECT_FORMAT_ERROR(parse(archive({huge})), "tensor 'huge'", "too many elements");
  pb::Tensor negative = tensor("negative", {-1, 4});
  EXPECT_FORMAT_ERROR(parse(archive({negative})), "tensor 'negative'", "negative extent");
  pb::Tensor deep = tensor("deep", std::vector<std::int64_t>(65, 1));
  EXPECT_FORMAT_ERROR(parse(archive({deep})), "size has 65 dimensions");
  // A storage declaring more elements than its entry holds.
  pb::Tensor big = tensor("big", {24});
  big.storageNumel = std::int64_t(1) << 62;
  EXPECT_FORMAT_ERROR(parse(archive({big})), "tensor 'big'",
                      "declares 4611686018427387904 elements of F32", "holds 96 bytes");
  pb::Tensor negativeNumel = tensor("n", {1});
  negativeNumel.storageNumel = -1;
  EXPECT_FORMAT_ERROR(parse(archive({negativeNumel})), "numel must be an integer >= 0, got -1");
  // A storage entry whose size claims far more than the file (its numel agrees).
  for (bool zip64 : {false, true}) {
    const std::uint64_t size = zip64 ? std::uint64_t(1) << 40 : 0xFFFFFFF0u;
    pb::Tensor t = tensor("t", {24});
    t.storageNumel = static_cast<std::int64_t>(size / 4);
    std::vector<pb::Entry> entries =
        pb::archiveEntries(pb::stateDict({t}), {{"0", pb::floatStorage(24)}});
    entries[1].size = size;
    pb::ZipOptions options;
    options.zip64 = zip64;
    EXPECT_FORMAT_ERROR(parse(pb::zip(entries, options)), "entry 'archive/data/0'",
                        std::to_string(size) + " bytes at byte", "run into the central directory");
  }
}

TEST(PthRefuses, TensorsOutsideTheirStorage) {
  EXPECT_FORMAT_ERROR(parse(archive({tensor("x", {2, 3}, 19)})), "tensor 'x'",
                      "storage offset 19 and 6 elements do not fit in the 24 elements");
  EXPECT_FORMAT_ERROR(parse(archive({tensor("x", {25})})), "storage offset 0 and 25 elements");
  EXPECT_FORMAT_ERROR(parse(archive({tensor("x", {0}, 25)})), "storage offset 25 and 0 elements");
  EXPECT_FORMAT_ERROR(parse(archive({tensor("x", {1}, -1)})), "storage offset -1");
  // Strides other than contiguous row-major.
  pb::Tensor strided = tensor("strided", {3, 4});
  strided.stride = {1, 3};
  EXPECT_FORMAT_ERROR(parse(archive({strided})), "tensor 'strided'", "stride [1, 3]", "size [3, 4]",
                      "contiguous");
  pb::Tensor gaps = tensor("gaps", {2, 3});
  gaps.stride = {6, 2};
  EXPECT_FORMAT_ERROR(parse(archive({gaps})), "stride [6, 2]");
  pb::Tensor rank = tensor("rank", {2, 3});
  rank.stride = {3};
  EXPECT_FORMAT_ERROR(parse(archive({rank})), "differ in rank");
  // Extents of 1 and empty tensors may have any stride, as torch's is_contiguous says.
  pb::Tensor unit = tensor("unit", {1, 3});
  unit.stride = {99, 1};
  pb::Tensor empty = tensor("empty", {0, 3});
  empty.stride = {7, 7};
  EXPECT_NO_THROW(parse(archive({unit, empty})));
  // Two persistent ids of one key that disagree.
  pb::Tensor other = tensor("b", {2});
  other.storageType = "DoubleStorage";
  other.storageNumel = 12;
  EXPECT_FORMAT_ERROR(parse(archive({tensor("a", {2}), other})), "tensor 'b'",
                      "storage '0' is declared as 12 F64 elements here but as 24 F32");
}

TEST(PthRefuses, MissingEntries) {
  pb::Tensor t = tensor("t", {2});
  t.key = "7";
  EXPECT_FORMAT_ERROR(parse(archive({t})), "tensor 't'",
                      "storage '7' has no entry 'archive/data/7'");
  std::vector<pb::Entry> entries = {{"archive/version", Bytes{'3'}}};
  EXPECT_FORMAT_ERROR(parse(pb::zip(entries)), "no entry 'archive/data.pkl'");
  entries = {{"data.pkl", pb::stateDict({})}};
  EXPECT_FORMAT_ERROR(parse(pb::zip(entries)), "first entry 'data.pkl' is not in a directory");
  EXPECT_FORMAT_ERROR(parse(pb::zip({})), "not a ZIP archive");
}

// ---------------------------------------------------------------------------------------------
// Refusals: the archive.

TEST(PthRefuses, CompressedAndEncryptedEntries) {
  std::vector<pb::Entry> entries =
      pb::archiveEntries(pb::stateDict({tensor("t", {24})}), {{"0", pb::floatStorage(24)}});
  entries[1].method = 8;
  EXPECT_FORMAT_ERROR(parse(pb::zip(entries)), "entry 'archive/data/0'",
                      "is compressed (method 8, deflate)");
  // Only the local header says so.
  Bytes bytes = archive({tensor("t", {24})});
  const std::size_t local = offsetOf(bytes, "archive/data/0") - 30;
  bytes[local + 8] = 8;
  EXPECT_FORMAT_ERROR(parse(bytes), "is compressed in its local header (method 8)");
  // Encrypted (flag bit 0).
  bytes = archive({tensor("t", {24})});
  const std::size_t central = offsetOf(bytes, le32(0x02014b50));
  bytes[central + 8] |= 1;
  EXPECT_FORMAT_ERROR(parse(bytes), "entry 'archive/data.pkl': is encrypted");
}

TEST(PthRefuses, BigEndianStorages) {
  std::vector<pb::Entry> entries =
      pb::archiveEntries(pb::stateDict({tensor("t", {24})}), {{"0", pb::floatStorage(24)}});
  entries.push_back({"archive/byteorder", Bytes{'b', 'i', 'g'}});
  EXPECT_FORMAT_ERROR(parse(pb::zip(entries)), "big-endian");
  entries.back().data = Bytes{'l', 'i', 't', 't', 'l', 'e'};
  EXPECT_NO_THROW(parse(pb::zip(entries)));
  entries.back().data = Bytes{'m', 'i', 'd'};
  EXPECT_FORMAT_ERROR(parse(pb::zip(entries)), "byteorder must be 'little' or 'big', got 'mid'");
}

TEST(PthRefuses, CorruptPickleCrc) {
  std::vector<pb::Entry> entries =
      pb::archiveEntries(pb::stateDict({tensor("t", {24})}), {{"0", pb::floatStorage(24)}});
  entries[0].crc = 1234;
  EXPECT_FORMAT_ERROR(parse(pb::zip(entries)), "entry 'archive/data.pkl'", "CRC-32 mismatch");
}

TEST(PthRefuses, EveryTruncation) {
  // torch's file and the builder's ZIP64 file cut at every length: each refused, none crashes.
  pb::ZipOptions zip64;
  zip64.zip64 = true;
  for (const Bytes& whole :
       {fileBytes(dataPath("state_dict.pth")), archive({tensor("t", {4, 6})}, zip64)}) {
    for (std::size_t cut = 0; cut < whole.size(); ++cut) {
      SCOPED_TRACE(cut);
      const Bytes part(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(cut));
      EXPECT_THROW(parse(part), retnet::FormatError);
    }
  }
  const Bytes whole = fileBytes(dataPath("state_dict.pth"));
  const auto cut = [&](std::size_t size) { return Bytes(whole.begin(), whole.begin() + size); };
  EXPECT_FORMAT_ERROR(parse(cut(3)), "not a ZIP archive");
  EXPECT_FORMAT_ERROR(parse(cut(whole.size() - 1)), "no end-of-central-directory record");
  EXPECT_FORMAT_ERROR(parse(cut(whole.size() / 2)), "no end-of-central-directory record");
}

TEST(PthRefuses, EndRecordsThatLie) {
  const Bytes good = archive({tensor("t", {24})});
  const std::size_t end = offsetOf(good, le32(0x06054b50));
  // The directory's offset beyond the end record.
  Bytes bytes = good;
  bytes[end + 16] = 0xFF;
  bytes[end + 17] = 0xFF;
  EXPECT_FORMAT_ERROR(parse(bytes), "central directory", "does not end before");
  // More entries than the directory's bytes can hold.
  bytes = good;
  bytes[end + 8] = bytes[end + 10] = 0xF0;
  bytes[end + 9] = bytes[end + 11] = 0xFF;
  EXPECT_FORMAT_ERROR(parse(bytes), "declares 65520 entries");
  // Multi-disk.
  bytes = good;
  bytes[end + 4] = 1;
  EXPECT_FORMAT_ERROR(parse(bytes), "multi-disk");
  // A local header offset that points elsewhere.
  std::vector<pb::Entry> entries =
      pb::archiveEntries(pb::stateDict({tensor("t", {24})}), {{"0", pb::floatStorage(24)}});
  entries[1].offset = 0;
  EXPECT_FORMAT_ERROR(parse(pb::zip(entries)), "entry 'archive/data/0'",
                      "its local header at byte 0 names another entry");
  // Duplicate names.
  entries = pb::archiveEntries(pb::stateDict({tensor("t", {24})}),
                               {{"0", pb::floatStorage(24)}, {"0", pb::floatStorage(24)}});
  EXPECT_FORMAT_ERROR(parse(pb::zip(entries)), "entry 'archive/data/0' appears twice");

  // ZIP64: a locator pointing nowhere, a record that disagrees with the classic one.
  pb::ZipOptions options;
  options.zip64 = true;
  const Bytes good64 = archive({tensor("t", {24})}, options);
  const std::size_t locator = offsetOf(good64, le32(0x07064b50));
  bytes = good64;
  bytes[locator + 8] ^= 0x10;
  EXPECT_FORMAT_ERROR(parse(bytes), "ZIP64 end-of-central-directory record");
  bytes = good64;
  bytes[locator + 14] = 0x7F;  // offset ~2^55
  EXPECT_FORMAT_ERROR(parse(bytes), "does not fit before its locator");
  const std::size_t record = offsetOf(good64, le32(0x06064b50));
  bytes = good64;
  bytes[record + 47] = 0x40;  // directory size ~2^62
  EXPECT_FORMAT_ERROR(parse(bytes), "central directory", "does not end before");
  bytes = good64;
  const std::size_t end64 = offsetOf(good64, le32(0x06054b50));
  bytes[end64 + 8] = bytes[end64 + 10] = 5;  // classic entry counts not saturated, and wrong
  bytes[end64 + 9] = bytes[end64 + 11] = 0;
  EXPECT_FORMAT_ERROR(parse(bytes), "disagree");
  // A saturated field without its ZIP64 extra field.
  bytes = good64;
  const std::size_t central = offsetOf(bytes, le32(0x02014b50));
  bytes[central + 30] = 0;  // extra length 0
  EXPECT_FORMAT_ERROR(parse(bytes), "saturated (0xFFFFFFFF) but no ZIP64 extra field");
}

TEST(PthRefuses, UnpicklerBounds) {
  // As many MARKs as the cap allows, and one more.
  Bytes marks = pb::Pickle().proto().bytes();
  marks.insert(marks.end(), retnet::io::kMaxPthPickleStack + 1, '(');
  EXPECT_FORMAT_ERROR(parse(withPickle(marks)), "more than 1048576 MARKs");
  Bytes pushes = pb::Pickle().proto().bytes();
  pushes.insert(pushes.end(), retnet::io::kMaxPthPickleStack + 1, 'N');
  EXPECT_FORMAT_ERROR(parse(withPickle(pushes)), "more than 1048576 values on the stack");
  // Objects: empty tuples appended to one list, a million at a time.
  pb::Pickle list;
  list.proto().op(']');
  for (int round = 0; round < 5; ++round) {
    list.mark();
    list.append(Bytes((std::size_t(1) << 20) - 16, 'N'));
    list.op('e');
  }
  EXPECT_FORMAT_ERROR(parse(withPickle(list.bytes())), "more than 4194304 objects and items");
}

}  // namespace
