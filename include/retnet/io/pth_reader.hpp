// Reader for PyTorch checkpoints written by torch.save (`.pth`, `.pt`): a state dict of tensors,
// as BlinkDL's RWKV-4 checkpoints are saved (`torch.save(model.state_dict(), path)`), read without
// Python and without running anything the file asks for.
//
// Layout (PyTorch >= 1.6, "zipfile serialization"): a ZIP archive whose entries lie in one
// directory `<archive>/` (torch names it after the file): `data.pkl`, a pickle of the saved
// object; `data/<key>`, the bytes of storage <key> (elements little-endian, one after another);
// `version`, and in newer versions `byteorder` ("little" or "big") and others, which are ignored.
// The pickle refers to a storage by a persistent id ('storage', torch.<T>Storage, key, location,
// numel) and builds each tensor with torch._utils._rebuild_tensor_v2(storage, storage_offset,
// size, stride, requires_grad, backward_hooks[, metadata]).
//
// What is accepted:
//   - ZIP: entries STORED (method 0, as torch writes them), with or without data descriptors,
//     ZIP64 (end-of-central-directory locator and record, ZIP64 extra fields in the central
//     directory and the local headers), one disk, no archive comment beyond the 64 KiB the format
//     allows. The central directory is found from the end of the file, and every offset and size
//     in it and in each local header used is checked against the file before anything is read
//     at it. data.pkl's CRC-32 is checked; storages' are not (a tensor may read part of one).
//   - Pickle (protocols 2 to 5): the opcodes Python's pickler emits for a dict of tensors
//     (PROTO, FRAME, MARK, STOP, EMPTY_DICT/LIST/TUPLE, TUPLE/TUPLE1/2/3, SETITEM(S), APPEND(S),
//     BINUNICODE, SHORT_BINUNICODE, BININT/BININT1/BININT2, LONG1 up to 64 bits, BINFLOAT,
//     NEWTRUE/NEWFALSE, NONE, BINPUT/LONG_BINPUT/MEMOIZE, BINGET/LONG_BINGET, GLOBAL,
//     STACK_GLOBAL, BINPERSID, REDUCE, BUILD), and only these globals:
//     collections.OrderedDict (called with no arguments), torch._utils._rebuild_tensor_v2,
//     torch._utils._rebuild_parameter (a saved nn.Parameter: its tensor is taken), and the
//     storage types torch.{Double,Float,Half,BFloat16,Long}Storage (F64, F32, F16, BF16, I64) as
//     persistent-id tags. BUILD is accepted on a dict only (the `_metadata` attribute
//     state_dict() attaches), and its state is discarded.
//   - The pickled object: a dict or OrderedDict of string -> tensor. A tensor may be a view into a
//     storage at any storage_offset and may share its storage with other tensors; it must be
//     contiguous and row-major (the strides of its sizes; extents of 1 and empty tensors may have
//     any stride, as torch's is_contiguous says), and lie inside its storage, whose entry must
//     hold exactly numel × element size bytes.
// Everything else is a retnet::FormatError naming the file, the entry, the byte of data.pkl or the
// tensor, and what was found: another global (os.system, builtins.eval, ...) before it is called,
// any other opcode, compressed or encrypted entries, big-endian storages, the legacy (pre-1.6)
// format, non-contiguous tensors, storages too short for their tensors, missing entries,
// duplicate names, and truncation anywhere.
//
// Hostile files cost bounded work: open() reads the end of the file (at most 64 KiB + 22 bytes),
// the central directory (at most kMaxPthDirectoryBytes), the local headers of the entries used
// and data.pkl (at most kMaxPthPickleBytes), and nothing else; tensors are read on demand, piece
// by piece (TensorFile). The unpickler runs in time linear in data.pkl, never recurses, and caps
// its stack (kMaxPthPickleStack values, as many MARKs), memo (kMaxPthPickleMemo entries), the
// values it creates (kMaxPthPickleValues objects and container items) and tensor ranks
// (kMaxPthTensorRank), so its memory is bounded whatever the pickle says.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "retnet/errors.hpp"
#include "retnet/io/dtype.hpp"
#include "retnet/io/tensor_file.hpp"

namespace retnet::io {

/// The largest data.pkl read (a state dict's pickle is ~150 bytes per tensor).
inline constexpr std::size_t kMaxPthPickleBytes = std::size_t(64) << 20;
/// The largest ZIP central directory read (~100 bytes per entry).
inline constexpr std::size_t kMaxPthDirectoryBytes = std::size_t(64) << 20;
/// The most values on the unpickler's stack, and the most open MARKs.
inline constexpr std::size_t kMaxPthPickleStack = std::size_t(1) << 20;
/// The most memo entries.
inline constexpr std::size_t kMaxPthPickleMemo = std::size_t(1) << 20;
/// The most objects (strings, containers, storages, tensors) and container items one pickle may
/// create: about 20 per tensor, so a state dict of 200k tensors fits.
inline constexpr std::size_t kMaxPthPickleValues = std::size_t(1) << 22;
/// The highest tensor rank accepted.
inline constexpr std::size_t kMaxPthTensorRank = 64;

namespace detail {

/// CRC-32 (ISO-HDLC, as ZIP uses it) of `size` bytes.
inline std::uint32_t crc32(const unsigned char* data, std::size_t size) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> entries{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int bit = 0; bit < 8; ++bit) c = (c & 1u) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      entries[i] = c;
    }
    return entries;
  }();
  std::uint32_t crc = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

/// A storage as one persistent id in data.pkl declares it.
struct PickledStorage {
  std::string key;  ///< the entry `<archive>/data/<key>` holds its bytes
  Dtype dtype = Dtype::F32;
  std::int64_t numel = 0;  ///< elements, as declared
};

/// A tensor as data.pkl builds it: `_rebuild_tensor_v2`'s arguments, not yet checked against
/// the storage (the name is known only once the tensor is found in the dict).
struct PickledTensor {
  std::size_t storage = 0;  ///< index into PickledStateDict::storages
  std::int64_t offset = 0;  ///< storage_offset, in elements
  std::vector<std::int64_t> size, stride;
};

/// What data.pkl holds: the dict's entries in the pickle's order, each a name and the index of
/// its tensor (several names may share one).
struct PickledStateDict {
  std::vector<PickledStorage> storages;  ///< one per persistent id (a key may repeat)
  std::vector<PickledTensor> tensors;    ///< every tensor the pickle built
  std::vector<std::pair<std::string, std::size_t>> entries;
};

/// A restricted unpickler: runs the opcodes a pickled dict of tensors needs, on a small value
/// model (no Python objects), and refuses everything else. Errors are FormatError
/// "<where> at byte <n>: <what>".
class PthUnpickler {
 public:
  PthUnpickler(const unsigned char* data, std::size_t size, std::string where)
      : data_(data), size_(size), where_(std::move(where)) {}

  PickledStateDict run() {
    for (;;) {
      if (pos_ >= size_) fail("the pickle ends without STOP");
      opStart_ = pos_;
      const unsigned char op = data_[pos_++];
      switch (op) {
        case 0x80: {  // PROTO
          const unsigned version = bytes(1)[0];
          if (version > 5) fail("pickle protocol ", version, " is newer than 5");
          break;
        }
        case 0x95: {  // FRAME: a length prefix for buffering; the opcodes inside run as usual
          const std::uint64_t length = loadLittleEndian<std::uint64_t>(bytes(8));
          if (length > size_ - pos_) fail("FRAME of ", length, " bytes runs past the pickle");
          break;
        }
        case '(':  // MARK
          if (marks_.size() >= kMaxPthPickleStack) fail("more than ", kMaxPthPickleStack, " MARKs");
          marks_.push_back(stack_.size());
          break;
        case '.':  // STOP
          return finish();
        case '}':  // EMPTY_DICT
          push(newSequence(Kind::kDict, {}));
          break;
        case ']':  // EMPTY_LIST
          push(newSequence(Kind::kList, {}));
          break;
        case ')':  // EMPTY_TUPLE
          push(newSequence(Kind::kTuple, {}));
          break;
        case 't':  // TUPLE
          push(newSequence(Kind::kTuple, popToMark("TUPLE")));
          break;
        case 0x85:  // TUPLE1
        case 0x86:  // TUPLE2
        case 0x87:  // TUPLE3
          push(newSequence(Kind::kTuple, popCount(op - 0x84u, "TUPLE1/2/3")));
          break;
        case 'X':  // BINUNICODE
          push(newString(static_cast<std::size_t>(loadLittleEndian<std::uint32_t>(bytes(4)))));
          break;
        case 0x8C:  // SHORT_BINUNICODE
          push(newString(bytes(1)[0]));
          break;
        case 'J':  // BININT: signed 32 bits
          push(integer(static_cast<std::int32_t>(loadLittleEndian<std::uint32_t>(bytes(4)))));
          break;
        case 'K':  // BININT1
          push(integer(bytes(1)[0]));
          break;
        case 'M':  // BININT2
          push(integer(loadLittleEndian<std::uint16_t>(bytes(2))));
          break;
        case 0x8A:  // LONG1: n bytes of little-endian two's complement
          push(integer(long1()));
          break;
        case 'G': {  // BINFLOAT: big-endian binary64
          const unsigned char* b = bytes(8);
          std::uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | b[i];
          Value value{Kind::kFloat};
          value.real = bitCast<double>(bits);
          push(value);
          break;
        }
        case 0x88:  // NEWTRUE
        case 0x89:  // NEWFALSE
          push(Value{Kind::kBool, op == 0x88 ? 1 : 0});
          break;
        case 'N':  // NONE
          push(Value{Kind::kNone});
          break;
        case 'c': {  // GLOBAL: "module\nname\n"
          const std::string module = line();
          push(global(module, line()));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          const Value name = pop("STACK_GLOBAL");
          const Value module = pop("STACK_GLOBAL");
          if (module.kind != Kind::kString || name.kind != Kind::kString) {
            fail("STACK_GLOBAL needs two strings, got ", kindName(module.kind), " and ",
                 kindName(name.kind));
          }
          push(global(text(module), text(name)));
          break;
        }
        case 'Q':  // BINPERSID
          push(persistentLoad(pop("BINPERSID")));
          break;
        case 'R': {  // REDUCE
          const Value args = pop("REDUCE");
          push(reduce(pop("REDUCE"), args));
          break;
        }
        case 'b': {  // BUILD: only a dict's attributes (state_dict()'s _metadata), discarded
          (void)pop("BUILD");
          const Value& target = top("BUILD");
          if (target.kind != Kind::kDict) {
            fail("BUILD sets the state of a ", kindName(target.kind),
                 "; only a dict's attributes are accepted");
          }
          break;
        }
        case 's': {  // SETITEM
          const Value value = pop("SETITEM");
          const Value key = pop("SETITEM");
          addItems(Kind::kDict, "SETITEM", {key, value});
          break;
        }
        case 'u': {  // SETITEMS
          std::vector<Value> items = popToMark("SETITEMS");
          if (items.size() % 2 != 0)
            fail("SETITEMS with an odd number (", items.size(), ") of values");
          addItems(Kind::kDict, "SETITEMS", std::move(items));
          break;
        }
        case 'a': {  // APPEND
          const Value value = pop("APPEND");
          addItems(Kind::kList, "APPEND", {value});
          break;
        }
        case 'e':  // APPENDS
          addItems(Kind::kList, "APPENDS", popToMark("APPENDS"));
          break;
        case 'q':  // BINPUT
          memoPut(bytes(1)[0]);
          break;
        case 'r':  // LONG_BINPUT
          memoPut(loadLittleEndian<std::uint32_t>(bytes(4)));
          break;
        case 0x94:  // MEMOIZE
          memoPut(memo_.size());
          break;
        case 'h':  // BINGET
          memoGet(bytes(1)[0]);
          break;
        case 'j':  // LONG_BINGET
          memoGet(loadLittleEndian<std::uint32_t>(bytes(4)));
          break;
        default:
          fail("unsupported pickle opcode 0x", hexByte(op),
               op >= 0x20 && op < 0x7F ? std::string(" '") + static_cast<char>(op) + "'" : "",
               " (a pickled dict of tensors does not use it)");
      }
    }
  }

 private:
  enum class Kind : std::uint8_t {
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kTuple,
    kList,
    kDict,
    kGlobal,
    kStorage,
    kTensor
  };
  /// The callables and types data.pkl may name.
  enum Global : std::int64_t {
    kOrderedDict,
    kRebuildTensor,
    kRebuildParameter,
    kDoubleStorage,
    kFloatStorage,
    kHalfStorage,
    kBFloat16Storage,
    kLongStorage
  };
  /// A value: inline for None, bool, int, float; else the index of its object (strings_,
  /// sequences_, result_.storages, tensors_) or, for a global, which one.
  struct Value {
    Kind kind = Kind::kNone;
    std::int64_t number = 0;
    double real = 0;
  };

  static const char* kindName(Kind kind) {
    switch (kind) {
      case Kind::kNone:
        return "None";
      case Kind::kBool:
        return "bool";
      case Kind::kInt:
        return "int";
      case Kind::kFloat:
        return "float";
      case Kind::kString:
        return "str";
      case Kind::kTuple:
        return "tuple";
      case Kind::kList:
        return "list";
      case Kind::kDict:
        return "dict";
      case Kind::kGlobal:
        return "global";
      case Kind::kStorage:
        return "storage";
      case Kind::kTensor:
        return "tensor";
    }
    return "?";
  }

  static std::string hexByte(unsigned value) {
    const char* digits = "0123456789abcdef";
    return {digits[(value >> 4) & 0xFu], digits[value & 0xFu]};
  }

  template <typename... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    throw FormatError(
        retnet::detail::concat(where_, " at byte ", opStart_, ": ", std::forward<Parts>(parts)...));
  }

  /// The next `count` bytes of the opcode's argument.
  const unsigned char* bytes(std::size_t count) {
    if (count > size_ - pos_) {
      fail("the pickle ends inside the opcode's argument (", count, " bytes needed, ", size_ - pos_,
           " left)");
    }
    const unsigned char* start = data_ + pos_;
    pos_ += count;
    return start;
  }

  /// GLOBAL's arguments: text up to a newline, at most 256 bytes.
  std::string line() {
    const std::size_t limit = std::min<std::size_t>(size_ - pos_, 257);
    const auto* end = static_cast<const unsigned char*>(std::memchr(data_ + pos_, '\n', limit));
    if (end == nullptr) fail("GLOBAL's module or name is not a line of at most 256 bytes");
    std::string result(reinterpret_cast<const char*>(data_ + pos_),
                       static_cast<std::size_t>(end - (data_ + pos_)));
    pos_ += result.size() + 1;
    return result;
  }

  std::int64_t long1() {
    const std::size_t length = bytes(1)[0];
    if (length > 8) fail("LONG1 of ", length, " bytes: integers beyond 64 bits are not accepted");
    const unsigned char* b = bytes(length);
    std::uint64_t bits = 0;
    for (std::size_t i = 0; i < length; ++i) bits |= std::uint64_t{b[i]} << (8 * i);
    if (length > 0 && length < 8 && (b[length - 1] & 0x80u) != 0) {
      bits |= ~std::uint64_t{0} << (8 * length);  // sign extension
    }
    return bitCast<std::int64_t>(bits);
  }

  static Value integer(std::int64_t number) { return Value{Kind::kInt, number}; }

  /// Counts `count` new objects or container items against kMaxPthPickleValues.
  void charge(std::size_t count) {
    if (count > kMaxPthPickleValues - created_) {
      fail("the pickle creates more than ", kMaxPthPickleValues, " objects and items");
    }
    created_ += count;
  }

  Value newString(std::size_t length) {
    const unsigned char* start = bytes(length);
    charge(1);
    strings_.emplace_back(reinterpret_cast<const char*>(start), length);
    return Value{Kind::kString, static_cast<std::int64_t>(strings_.size() - 1)};
  }

  Value newSequence(Kind kind, std::vector<Value> items) {
    charge(1 + items.size());
    sequences_.push_back(std::move(items));
    return Value{kind, static_cast<std::int64_t>(sequences_.size() - 1)};
  }

  const std::string& text(const Value& value) const {
    return strings_[static_cast<std::size_t>(value.number)];
  }
  const std::vector<Value>& items(const Value& value) const {
    return sequences_[static_cast<std::size_t>(value.number)];
  }

  void push(const Value& value) {
    if (stack_.size() >= kMaxPthPickleStack) {
      fail("more than ", kMaxPthPickleStack, " values on the stack");
    }
    stack_.push_back(value);
  }

  /// Where the values above the last MARK begin (an opcode sees only those).
  std::size_t markBase() const { return marks_.empty() ? 0 : marks_.back(); }

  const Value& top(const char* op) const {
    if (stack_.size() <= markBase()) fail(op, " needs a value on the stack, found none");
    return stack_.back();
  }

  Value pop(const char* op) {
    const Value value = top(op);
    stack_.pop_back();
    return value;
  }

  std::vector<Value> popCount(std::size_t count, const char* op) {
    if (stack_.size() - markBase() < count) {
      fail(op, " needs ", count, " values on the stack, found ", stack_.size() - markBase());
    }
    std::vector<Value> values(stack_.end() - static_cast<std::ptrdiff_t>(count), stack_.end());
    stack_.resize(stack_.size() - count);
    return values;
  }

  std::vector<Value> popToMark(const char* op) {
    if (marks_.empty()) fail(op, " without a MARK");
    const std::size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<Value> values(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return values;
  }

  /// SETITEM(S) and APPEND(S): `values` go into the dict or list on top of the stack.
  void addItems(Kind kind, const char* op, std::vector<Value> values) {
    const Value& target = top(op);
    if (target.kind != kind) fail(op, " on a ", kindName(target.kind), ", not a ", kindName(kind));
    charge(values.size());
    std::vector<Value>& container = sequences_[static_cast<std::size_t>(target.number)];
    container.insert(container.end(), values.begin(), values.end());
  }

  void memoPut(std::size_t index) {
    const Value& value = top("BINPUT/LONG_BINPUT/MEMOIZE");
    if (memo_.size() >= kMaxPthPickleMemo && memo_.count(index) == 0) {
      fail("more than ", kMaxPthPickleMemo, " memo entries");
    }
    memo_[index] = value;
  }

  void memoGet(std::size_t index) {
    const auto found = memo_.find(index);
    if (found == memo_.end()) fail("BINGET/LONG_BINGET of memo entry ", index, ", never stored");
    push(found->second);
  }

  Value global(const std::string& module, const std::string& name) {
    static const std::pair<const char*, const char*> allowed[] = {
        {"collections", "OrderedDict"},
        {"torch._utils", "_rebuild_tensor_v2"},
        {"torch._utils", "_rebuild_parameter"},
        {"torch", "DoubleStorage"},
        {"torch", "FloatStorage"},
        {"torch", "HalfStorage"},
        {"torch", "BFloat16Storage"},
        {"torch", "LongStorage"}};
    for (std::size_t i = 0; i < std::size(allowed); ++i) {
      if (module == allowed[i].first && name == allowed[i].second) {
        return Value{Kind::kGlobal, static_cast<std::int64_t>(i)};
      }
    }
    if (module == "torch" && name.size() > 7 && name.compare(name.size() - 7, 7, "Storage") == 0) {
      fail("storage type torch.", name,
           " is not supported (supported: torch.DoubleStorage, FloatStorage, HalfStorage, "
           "BFloat16Storage, LongStorage)");
    }
    fail("the pickle imports ", module, ".", name,
         ", which a state dict of tensors does not need (allowed: collections.OrderedDict, "
         "torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter, "
         "torch.{Double,Float,Half,BFloat16,Long}Storage)");
  }

  /// BINPERSID: ('storage', torch.<T>Storage, key, location, numel) -> a storage.
  Value persistentLoad(const Value& id) {
    if (id.kind != Kind::kTuple || items(id).size() != 5) {
      fail("persistent id must be a tuple ('storage', storage type, key, location, numel), got ",
           id.kind == Kind::kTuple ? std::to_string(items(id).size()) + "-tuple"
                                   : kindName(id.kind));
    }
    const std::vector<Value>& fields = items(id);
    if (fields[0].kind != Kind::kString || text(fields[0]) != "storage") {
      fail("persistent id must start with 'storage'");
    }
    if (fields[1].kind != Kind::kGlobal || fields[1].number < kDoubleStorage) {
      fail("persistent id's storage type must be a torch.<T>Storage, got ",
           kindName(fields[1].kind));
    }
    if (fields[2].kind != Kind::kString || fields[3].kind != Kind::kString) {
      fail("persistent id's key and location must be strings, got ", kindName(fields[2].kind),
           " and ", kindName(fields[3].kind));
    }
    if (fields[4].kind != Kind::kInt || fields[4].number < 0) {
      fail("persistent id's numel must be an integer >= 0, got ",
           fields[4].kind == Kind::kInt ? std::to_string(fields[4].number)
                                        : kindName(fields[4].kind));
    }
    static const Dtype dtypes[] = {Dtype::F64, Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::I64};
    charge(1);
    result_.storages.push_back(
        {text(fields[2]), dtypes[fields[1].number - kDoubleStorage], fields[4].number});
    return Value{Kind::kStorage, static_cast<std::int64_t>(result_.storages.size() - 1)};
  }

  /// A tuple of at most kMaxPthTensorRank integers: `_rebuild_tensor_v2`'s size or stride.
  std::vector<std::int64_t> integerTuple(const Value& value, const char* what) {
    if (value.kind != Kind::kTuple) {
      fail("_rebuild_tensor_v2's ", what, " must be a tuple of integers, got ",
           kindName(value.kind));
    }
    if (items(value).size() > kMaxPthTensorRank) {
      fail("_rebuild_tensor_v2's ", what, " has ", items(value).size(), " dimensions; at most ",
           kMaxPthTensorRank, " are accepted");
    }
    std::vector<std::int64_t> numbers;
    for (const Value& item : items(value)) {
      if (item.kind != Kind::kInt) {
        fail("_rebuild_tensor_v2's ", what, " must be a tuple of integers, holds a ",
             kindName(item.kind));
      }
      numbers.push_back(item.number);
    }
    return numbers;
  }

  Value reduce(const Value& callable, const Value& args) {
    if (callable.kind != Kind::kGlobal) fail("REDUCE calls a ", kindName(callable.kind));
    if (args.kind != Kind::kTuple) {
      fail("REDUCE's arguments must be a tuple, got ", kindName(args.kind));
    }
    const std::vector<Value>& arguments = items(args);
    switch (callable.number) {
      case kOrderedDict:
        if (!arguments.empty()) {
          fail("collections.OrderedDict called with ", arguments.size(),
               " arguments; only OrderedDict() is accepted");
        }
        return newSequence(Kind::kDict, {});
      case kRebuildParameter:
        if (arguments.size() != 3 || arguments[0].kind != Kind::kTensor) {
          fail("_rebuild_parameter needs (tensor, requires_grad, backward_hooks)");
        }
        return arguments[0];
      case kRebuildTensor:
        return rebuildTensor(arguments);
      default:
        fail("REDUCE calls a storage type: storages come from persistent ids only");
    }
  }

  /// _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks
  /// [, metadata]).
  Value rebuildTensor(const std::vector<Value>& arguments) {
    if (arguments.size() != 6 && arguments.size() != 7) {
      fail("_rebuild_tensor_v2 called with ", arguments.size(), " arguments, expected 6 or 7");
    }
    if (arguments[0].kind != Kind::kStorage) {
      fail("_rebuild_tensor_v2's storage must be a storage (a persistent id), got ",
           kindName(arguments[0].kind));
    }
    if (arguments[1].kind != Kind::kInt) {
      fail("_rebuild_tensor_v2's storage_offset must be an integer, got ",
           kindName(arguments[1].kind));
    }
    if (arguments[4].kind != Kind::kBool) {
      fail("_rebuild_tensor_v2's requires_grad must be a bool, got ", kindName(arguments[4].kind));
    }
    if (arguments[5].kind != Kind::kDict) {
      fail("_rebuild_tensor_v2's backward_hooks must be a dict, got ", kindName(arguments[5].kind));
    }
    if (arguments.size() == 7 && arguments[6].kind != Kind::kNone &&
        arguments[6].kind != Kind::kDict) {
      fail("_rebuild_tensor_v2's metadata must be None or a dict, got ",
           kindName(arguments[6].kind));
    }
    PickledTensor tensor;
    tensor.storage = static_cast<std::size_t>(arguments[0].number);
    tensor.offset = arguments[1].number;
    tensor.size = integerTuple(arguments[2], "size");
    tensor.stride = integerTuple(arguments[3], "stride");
    charge(1);
    tensors_.push_back(std::move(tensor));
    return Value{Kind::kTensor, static_cast<std::int64_t>(tensors_.size() - 1)};
  }

  PickledStateDict finish() {
    if (!marks_.empty()) fail("STOP with ", marks_.size(), " MARK(s) still open");
    if (stack_.size() != 1) fail("STOP with ", stack_.size(), " values on the stack, expected 1");
    if (pos_ != size_) fail(size_ - pos_, " bytes follow STOP");
    const Value& root = stack_.back();
    if (root.kind != Kind::kDict) {
      fail("the pickle holds a ", kindName(root.kind),
           ", not a dict of tensors (a state dict: torch.save(model.state_dict()))");
    }
    const std::vector<Value>& entries = items(root);
    std::unordered_set<std::string_view> seen;
    for (std::size_t i = 0; i < entries.size(); i += 2) {
      if (entries[i].kind != Kind::kString) {
        fail("the dict's key ", i / 2, " is a ", kindName(entries[i].kind), ", not a string");
      }
      const std::string& name = text(entries[i]);
      if (entries[i + 1].kind != Kind::kTensor) {
        fail("the dict's value '", name, "' is a ", kindName(entries[i + 1].kind),
             ", not a tensor (retnet reads a state dict of tensors; re-save the model's "
             "state_dict() alone)");
      }
      // Checked before the name is copied: a name repeated by BINGET costs one copy at most.
      if (!seen.insert(name).second) fail("tensor name '", name, "' appears twice in the dict");
      const auto tensor = static_cast<std::size_t>(entries[i + 1].number);
      // Each entry becomes a TensorInfo with its own shape: count them as values too.
      charge(1 + tensors_[tensor].size.size());
      result_.entries.emplace_back(name, tensor);
    }
    result_.tensors = std::move(tensors_);
    return std::move(result_);
  }

  const unsigned char* data_;
  std::size_t size_;
  std::string where_;
  std::size_t pos_ = 0, opStart_ = 0;
  std::vector<Value> stack_;
  std::vector<std::size_t> marks_;  ///< stack sizes at each open MARK
  std::unordered_map<std::size_t, Value> memo_;
  std::vector<std::string> strings_;
  std::vector<std::vector<Value>> sequences_;  ///< tuples, lists, dicts (key, value, key, ...)
  std::vector<PickledTensor> tensors_;
  std::size_t created_ = 0;  ///< objects and container items, against kMaxPthPickleValues
  PickledStateDict result_;
};

}  // namespace detail

/// A torch.save checkpoint (a state dict) whose archive directory and data.pkl were read and
/// validated; tensors are read on demand (TensorFile), from byte spans of the archive file.
/// names() lists them in the pickle's order.
class PthFile : public TensorFile {
 public:
  /// Opens the file at `path`, reads its central directory and data.pkl (tensors are read when
  /// asked for); FormatError for anything but a supported checkpoint (see the file comment).
  static PthFile open(const std::string& path) {
    auto [in, size] = openRegularFile(path, "a .pth file");
    PthFile file({}, path);
    file.openStream(std::move(in), size);
    file.parseArchive();
    return file;
  }

  /// Parses an in-memory file; `displayName` is what error messages call it.
  static PthFile fromBytes(std::vector<unsigned char> bytes, std::string displayName = "<memory>") {
    PthFile file(std::move(bytes), std::move(displayName));
    file.parseArchive();
    return file;
  }

  /// The directory that holds the archive's entries (torch.save names it after the file).
  const std::string& archiveName() const { return archive_; }

 private:
  PthFile(std::vector<unsigned char> bytes, std::string displayName)
      : TensorFile(std::move(bytes), std::move(displayName)) {}

  /// One entry of the central directory.
  struct Entry {
    std::string name;
    std::uint16_t flags = 0;
    std::uint32_t crc = 0;
    std::uint64_t size = 0;         ///< stored = uncompressed size
    std::uint64_t localOffset = 0;  ///< of its local header
  };

  static constexpr std::uint32_t kLocalHeader = 0x04034b50, kCentralHeader = 0x02014b50,
                                 kEndRecord = 0x06054b50, kZip64EndRecord = 0x06064b50,
                                 kZip64Locator = 0x07064b50;
  static constexpr std::uint32_t kSaturated32 = 0xFFFFFFFFu;
  static constexpr std::uint16_t kSaturated16 = 0xFFFFu;

  template <typename UInt>
  static UInt load(const std::vector<unsigned char>& bytes, std::size_t at) {
    return detail::loadLittleEndian<UInt>(bytes.data() + at);
  }

  template <typename... Parts>
  [[noreturn]] void failEntry(const Entry& entry, Parts&&... parts) const {
    fail("entry '", entry.name, "': ", std::forward<Parts>(parts)...);
  }

  void parseArchive() {
    const std::vector<unsigned char> magic = readRange(0, std::min<std::size_t>(fileSize_, 4));
    if (magic.size() < 4 || load<std::uint32_t>(magic, 0) != kLocalHeader) {
      if (!magic.empty() && magic[0] == 0x80) {
        fail(
            "not a ZIP archive: it starts with a pickle, torch.save's legacy format (PyTorch < 1.6 "
            "or _use_new_zipfile_serialization=False), which retnet does not read; re-save it "
            "with a newer PyTorch");
      }
      fail(
          "not a ZIP archive (no local file header \"PK\\3\\4\" at byte 0): not a torch.save "
          "checkpoint");
    }
    const Directory directory = findDirectory();
    readDirectory(directory);
    directoryOffset_ = static_cast<std::size_t>(directory.offset);

    // torch's reader takes the archive's directory from the first entry.
    const std::string& first = entries_.front().name;
    const std::size_t slash = first.find('/');
    if (slash == std::string::npos || slash == 0) {
      fail("the first entry '", first, "' is not in a directory: not a torch.save archive");
    }
    archive_ = first.substr(0, slash);
    if (const Entry* order = find(archive_ + "/byteorder")) {
      const std::vector<unsigned char> text = entryBytes(*order, 16);
      const std::string value(text.begin(), text.end());
      if (value == "big")
        fail("storages are stored big-endian (byteorder 'big'); retnet reads little-endian only");
      if (value != "little") fail("byteorder must be 'little' or 'big', got '", value, "'");
    }
    const Entry* pickle = find(archive_ + "/data.pkl");
    if (pickle == nullptr) {
      fail("no entry '", archive_, "/data.pkl': not a torch.save archive");
    }
    const std::vector<unsigned char> pickled = entryBytes(*pickle, kMaxPthPickleBytes);
    const detail::PickledStateDict dict =
        detail::PthUnpickler(pickled.data(), pickled.size(), displayName() + ": " + pickle->name)
            .run();
    for (const auto& [name, tensor] : dict.entries) {
      addPickledTensor(name, dict.tensors[tensor], dict.storages);
    }
  }

  /// Where the central directory is, as the end records say.
  struct Directory {
    std::uint64_t offset = 0, size = 0, entries = 0;
    std::uint64_t limit = 0;  ///< where the end records begin: the directory ends before
  };

  /// The central directory's place and size, from the end-of-central-directory record (and the
  /// ZIP64 one when there is a locator), checked to lie before those records.
  Directory findDirectory() const {
    constexpr std::size_t kEndSize = 22, kLocatorSize = 20;
    // The record is 22 bytes and a comment of at most 65535: search backwards for one whose
    // comment ends exactly at the end of the file.
    const std::size_t tailSize = std::min<std::size_t>(fileSize_, kEndSize + 0xFFFF);
    const std::size_t tailStart = fileSize_ - tailSize;
    const std::vector<unsigned char> tail = readRange(tailStart, tailSize);
    std::optional<std::size_t> found;
    for (std::size_t i = tailSize >= kEndSize ? tailSize - kEndSize + 1 : 0; i-- > 0;) {
      if (load<std::uint32_t>(tail, i) == kEndRecord &&
          load<std::uint16_t>(tail, i + 20) == tailSize - i - kEndSize) {
        found = i;
        break;
      }
    }
    if (!found) {
      fail("no end-of-central-directory record in the last ", tailSize,
           " bytes: the archive is truncated or not a ZIP file");
    }
    const std::size_t at = *found;
    if (load<std::uint16_t>(tail, at + 4) != 0 || load<std::uint16_t>(tail, at + 6) != 0 ||
        load<std::uint16_t>(tail, at + 8) != load<std::uint16_t>(tail, at + 10)) {
      fail("multi-disk ZIP archives are not supported");
    }
    Directory directory;
    directory.entries = load<std::uint16_t>(tail, at + 10);
    directory.size = load<std::uint32_t>(tail, at + 12);
    directory.offset = load<std::uint32_t>(tail, at + 16);
    directory.limit = tailStart + at;

    const std::size_t endAt = tailStart + at;
    if (endAt >= kLocatorSize) {
      const std::size_t locatorAt = endAt - kLocatorSize;
      const std::vector<unsigned char> locator = readRange(locatorAt, kLocatorSize);
      if (load<std::uint32_t>(locator, 0) == kZip64Locator) {
        directory = zip64Directory(directory, locator, locatorAt);
      }
    }
    if (directory.offset > directory.limit || directory.size > directory.limit - directory.offset) {
      fail("the central directory (", directory.size, " bytes at byte ", directory.offset,
           ") does not end before the end-of-central-directory record at byte ", directory.limit,
           ": the archive is truncated or corrupt");
    }
    return directory;
  }

  /// The directory as the ZIP64 end record that `locator` (at byte `locatorAt`) points to says,
  /// checked against `classic`, the classic record's fields (each the value or saturated).
  Directory zip64Directory(const Directory& classic, const std::vector<unsigned char>& locator,
                           std::size_t locatorAt) const {
    constexpr std::size_t kZip64EndSize = 56;
    const std::uint64_t recordAt = load<std::uint64_t>(locator, 8);
    if (load<std::uint32_t>(locator, 4) != 0 || load<std::uint32_t>(locator, 16) > 1) {
      fail("multi-disk ZIP archives are not supported");
    }
    if (locatorAt < kZip64EndSize || recordAt > locatorAt - kZip64EndSize) {
      fail("the ZIP64 end-of-central-directory record at byte ", recordAt,
           " does not fit before its locator at byte ", locatorAt);
    }
    const std::vector<unsigned char> record =
        readRange(static_cast<std::size_t>(recordAt), kZip64EndSize);
    if (load<std::uint32_t>(record, 0) != kZip64EndRecord) {
      fail("no ZIP64 end-of-central-directory record at byte ", recordAt,
           ", where its locator points");
    }
    const std::uint64_t recordSize = load<std::uint64_t>(record, 4);  // after these 12 bytes
    if (recordSize < kZip64EndSize - 12 || recordSize > locatorAt - recordAt - 12) {
      fail("the ZIP64 end-of-central-directory record at byte ", recordAt, " declares ", recordSize,
           " bytes, which do not fit before its locator");
    }
    if (load<std::uint32_t>(record, 16) != 0 || load<std::uint32_t>(record, 20) != 0 ||
        load<std::uint64_t>(record, 24) != load<std::uint64_t>(record, 32)) {
      fail("multi-disk ZIP archives are not supported");
    }
    Directory directory;
    directory.entries = load<std::uint64_t>(record, 32);
    directory.size = load<std::uint64_t>(record, 40);
    directory.offset = load<std::uint64_t>(record, 48);
    directory.limit = recordAt;
    if ((classic.entries != kSaturated16 && classic.entries != directory.entries) ||
        (classic.size != kSaturated32 && classic.size != directory.size) ||
        (classic.offset != kSaturated32 && classic.offset != directory.offset)) {
      fail("the end-of-central-directory record (", classic.entries, " entries, ", classic.size,
           " bytes at byte ", classic.offset, ") and the ZIP64 one (", directory.entries,
           " entries, ", directory.size, " bytes at byte ", directory.offset, ") disagree");
    }
    return directory;
  }

  /// Values of the ZIP64 extra field (id 1) in `extra` for the fields saturated in the header,
  /// in the format's order (uncompressed size, compressed size, local header offset); `fields`
  /// holds the header's values and gets the real ones.
  void resolveZip64(const std::string& name, const unsigned char* extra, std::size_t length,
                    std::array<std::uint64_t*, 3> fields) const {
    std::size_t needed = 0;
    for (const std::uint64_t* field : fields) needed += field != nullptr && *field == kSaturated32;
    if (needed == 0) return;
    for (std::size_t at = 0; at < length;) {
      if (length - at < 4) fail("entry '", name, "': malformed extra field");
      const std::uint16_t id = detail::loadLittleEndian<std::uint16_t>(extra + at);
      const std::uint16_t size = detail::loadLittleEndian<std::uint16_t>(extra + at + 2);
      if (size > length - at - 4) fail("entry '", name, "': malformed extra field");
      if (id == 1) {
        if (size < 8 * needed) {
          fail("entry '", name, "': ZIP64 extra field of ", size, " bytes, ", 8 * needed,
               " needed");
        }
        const unsigned char* value = extra + at + 4;
        for (std::uint64_t* field : fields) {
          if (field != nullptr && *field == kSaturated32) {
            *field = detail::loadLittleEndian<std::uint64_t>(value);
            value += 8;
          }
        }
        return;
      }
      at += 4 + size;
    }
    fail("entry '", name, "': sizes or offset saturated (0xFFFFFFFF) but no ZIP64 extra field");
  }

  /// Reads the central directory's entries: stored, not encrypted, each name once, each local
  /// header offset before the directory.
  void readDirectory(const Directory& directory) {
    constexpr std::size_t kHeaderSize = 46;
    if (directory.size > kMaxPthDirectoryBytes) {
      fail("central directory of ", directory.size, " bytes exceeds the limit of ",
           kMaxPthDirectoryBytes);
    }
    if (directory.entries > directory.size / kHeaderSize) {
      fail("the end-of-central-directory record declares ", directory.entries,
           " entries, more than its ", directory.size, " bytes can hold");
    }
    if (directory.entries == 0) fail("the archive has no entries");
    const std::vector<unsigned char> bytes = readRange(static_cast<std::size_t>(directory.offset),
                                                       static_cast<std::size_t>(directory.size));
    std::size_t at = 0;
    for (std::uint64_t index = 0; index < directory.entries; ++index) {
      if (bytes.size() - at < kHeaderSize || load<std::uint32_t>(bytes, at) != kCentralHeader) {
        fail("central directory entry ", index, " at byte ", directory.offset + at,
             " is missing or truncated");
      }
      const std::size_t nameLength = load<std::uint16_t>(bytes, at + 28);
      const std::size_t extraLength = load<std::uint16_t>(bytes, at + 30);
      const std::size_t commentLength = load<std::uint16_t>(bytes, at + 32);
      if (nameLength + extraLength + commentLength > bytes.size() - at - kHeaderSize) {
        fail("central directory entry ", index, " at byte ", directory.offset + at,
             " runs past the directory");
      }
      Entry entry;
      entry.name.assign(reinterpret_cast<const char*>(bytes.data() + at + kHeaderSize), nameLength);
      entry.flags = load<std::uint16_t>(bytes, at + 8);
      const std::uint16_t method = load<std::uint16_t>(bytes, at + 10);
      entry.crc = load<std::uint32_t>(bytes, at + 16);
      std::uint64_t compressed = load<std::uint32_t>(bytes, at + 20);
      entry.size = load<std::uint32_t>(bytes, at + 24);
      entry.localOffset = load<std::uint32_t>(bytes, at + 42);
      resolveZip64(entry.name, bytes.data() + at + kHeaderSize + nameLength, extraLength,
                   {&entry.size, &compressed, &entry.localOffset});
      if ((entry.flags & 0x41u) != 0) failEntry(entry, "is encrypted");
      if (method != 0) {
        failEntry(entry, "is compressed (method ", method, method == 8 ? ", deflate" : "",
                  "); torch.save stores entries uncompressed, and retnet reads only those");
      }
      if (compressed != entry.size) {
        failEntry(entry, "is stored (method 0) but its compressed size ", compressed,
                  " differs from its size ", entry.size);
      }
      if (entry.localOffset > directory.offset) {
        failEntry(entry, "local header at byte ", entry.localOffset,
                  " is beyond the central directory at byte ", directory.offset);
      }
      if (index_.count(entry.name) != 0) fail("entry '", entry.name, "' appears twice");
      index_.emplace(entry.name, entries_.size());
      entries_.push_back(std::move(entry));
      at += kHeaderSize + nameLength + extraLength + commentLength;
    }
    if (at != bytes.size()) {
      fail("the central directory has ", bytes.size() - at, " bytes after its ", directory.entries,
           " entries");
    }
  }

  const Entry* find(const std::string& name) const {
    const auto found = index_.find(name);
    return found == index_.end() ? nullptr : &entries_[found->second];
  }

  /// Where `entry`'s bytes begin, from its local header, which must agree with the central
  /// directory; its bytes must end before the central directory.
  std::size_t dataStart(const Entry& entry) const {
    constexpr std::size_t kHeaderSize = 30;
    if (directoryOffset_ - entry.localOffset < kHeaderSize) {
      failEntry(entry, "local header at byte ", entry.localOffset,
                " runs into the central directory");
    }
    const auto offset = static_cast<std::size_t>(entry.localOffset);
    const std::vector<unsigned char> header = readRange(offset, kHeaderSize);
    if (load<std::uint32_t>(header, 0) != kLocalHeader) {
      failEntry(entry, "no local header at byte ", offset);
    }
    const std::size_t nameLength = load<std::uint16_t>(header, 26);
    const std::size_t extraLength = load<std::uint16_t>(header, 28);
    if (nameLength + extraLength > directoryOffset_ - offset - kHeaderSize) {
      failEntry(entry, "local header at byte ", offset, " runs into the central directory");
    }
    const std::vector<unsigned char> rest =
        readRange(offset + kHeaderSize, nameLength + extraLength);
    if (std::string(rest.begin(), rest.begin() + static_cast<std::ptrdiff_t>(nameLength)) !=
        entry.name) {
      failEntry(entry, "its local header at byte ", offset, " names another entry");
    }
    if (load<std::uint16_t>(header, 8) != 0) {
      failEntry(entry, "is compressed in its local header (method ", load<std::uint16_t>(header, 8),
                ")");
    }
    // Without a data descriptor (flag 3) the local header repeats the CRC and sizes.
    if ((load<std::uint16_t>(header, 6) & 0x8u) == 0) {
      std::uint64_t size = load<std::uint32_t>(header, 22);
      std::uint64_t compressed = load<std::uint32_t>(header, 18);
      resolveZip64(entry.name, rest.data() + nameLength, extraLength,
                   {&size, &compressed, nullptr});
      if (load<std::uint32_t>(header, 14) != entry.crc || size != entry.size ||
          compressed != entry.size) {
        failEntry(entry, "local header (CRC ", load<std::uint32_t>(header, 14), ", ", size,
                  " bytes) disagrees with the central directory (CRC ", entry.crc, ", ", entry.size,
                  " bytes)");
      }
    }
    const std::size_t start = offset + kHeaderSize + nameLength + extraLength;
    if (entry.size > directoryOffset_ - start) {
      failEntry(entry, entry.size, " bytes at byte ", start, " run into the central directory");
    }
    return start;
  }

  /// The bytes of a small entry (at most `limit`), CRC-checked.
  std::vector<unsigned char> entryBytes(const Entry& entry, std::size_t limit) const {
    if (entry.size > limit) {
      failEntry(entry, "holds ", entry.size, " bytes, more than the limit of ", limit);
    }
    const std::size_t start = dataStart(entry);
    std::vector<unsigned char> bytes = readRange(start, static_cast<std::size_t>(entry.size));
    if (detail::crc32(bytes.data(), bytes.size()) != entry.crc) {
      failEntry(entry, "CRC-32 mismatch: the entry is corrupt");
    }
    return bytes;
  }

  /// Checks `tensor` against its storage's entry and adds it to the index as `name`.
  void addPickledTensor(const std::string& name, const detail::PickledTensor& tensor,
                        const std::vector<detail::PickledStorage>& storages) {
    if (contains(name)) fail("tensor name '", name, "' appears twice in data.pkl's dict");
    const detail::PickledStorage& storage = storages[tensor.storage];
    const std::string entryName = archive_ + "/data/" + storage.key;
    const Entry* entry = find(entryName);
    if (entry == nullptr) {
      failTensor(name, "its storage '", storage.key, "' has no entry '", entryName, "'");
    }
    const std::size_t elementSize = dtypeSize(storage.dtype);
    const auto known = storages_.find(storage.key);
    if (known == storages_.end()) {
      const auto numel = static_cast<std::uint64_t>(storage.numel);
      if (numel > entry->size / elementSize || numel * elementSize != entry->size) {
        failTensor(name, "storage '", storage.key, "' declares ", numel, " elements of ",
                   dtypeName(storage.dtype), ", but its entry holds ", entry->size, " bytes");
      }
      storages_.emplace(storage.key, StorageSpan{storage.dtype, storage.numel, dataStart(*entry)});
    } else if (known->second.dtype != storage.dtype || known->second.numel != storage.numel) {
      failTensor(name, "storage '", storage.key, "' is declared as ", storage.numel, " ",
                 dtypeName(storage.dtype), " elements here but as ", known->second.numel, " ",
                 dtypeName(known->second.dtype), " before");
    }
    const StorageSpan& span = storages_.at(storage.key);

    TensorInfo info;
    info.name = name;
    info.dtype = storage.dtype;
    info.shape.assign(tensor.size.begin(), tensor.size.end());
    const std::vector<Eigen::Index> stride(tensor.stride.begin(), tensor.stride.end());
    const auto numel = detail::checkedNumel(info.shape);
    if (!numel) {
      failTensor(name, "size ", detail::shapeString(info.shape),
                 " has a negative extent or too many elements");
    }
    if (stride.size() != info.shape.size()) {
      failTensor(name, "size ", detail::shapeString(info.shape), " and stride ",
                 detail::shapeString(stride), " differ in rank");
    }
    if (*numel != 0) {  // torch's is_contiguous: extents of 1 may have any stride
      Eigen::Index expected = 1;
      for (std::size_t axis = info.shape.size(); axis-- > 0;) {
        if (info.shape[axis] != 1 && stride[axis] != expected) {
          failTensor(name, "stride ", detail::shapeString(stride),
                     " is not the contiguous row-major stride of size ",
                     detail::shapeString(info.shape),
                     ": retnet reads contiguous tensors only (save tensor.contiguous())");
        }
        expected *= info.shape[axis];
      }
    }
    if (tensor.offset < 0 || tensor.offset > span.numel || *numel > span.numel - tensor.offset) {
      failTensor(name, "storage offset ", tensor.offset, " and ", *numel,
                 " elements do not fit in the ", span.numel, " elements of storage '", storage.key,
                 "'");
    }
    info.begin = span.start + static_cast<std::size_t>(tensor.offset) * elementSize;
    info.end = info.begin + static_cast<std::size_t>(*numel) * elementSize;
    addTensor(std::move(info));
  }

  /// A storage's entry, once checked.
  struct StorageSpan {
    Dtype dtype;
    std::int64_t numel;
    std::size_t start;  ///< file offset of its first byte
  };

  std::string archive_;
  std::size_t directoryOffset_ = 0;  ///< entries' headers and bytes lie before it
  std::vector<Entry> entries_;
  std::map<std::string, std::size_t> index_;  ///< entry name -> entries_ index
  std::map<std::string, StorageSpan> storages_;
};

}  // namespace retnet::io
