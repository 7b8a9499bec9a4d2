// Reading the small JSON files of a Hugging Face model directory (config.json,
// model.safetensors.index.json): bounded in size and nesting, duplicate keys refused, and typed
// accessors whose errors name the file, the key, what was expected and what came.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "retnet/errors.hpp"
#include "retnet/io/safetensors_reader.hpp"
#include "retnet/tensor.hpp"

namespace retnet::io {

/// The largest config.json the loader reads (real ones are about 1 KB).
inline constexpr std::uintmax_t kMaxConfigBytes = std::uintmax_t(1) << 20;
/// The largest model.safetensors.index.json the loader reads (about 100 bytes per tensor).
inline constexpr std::uintmax_t kMaxIndexBytes = std::uintmax_t(64) << 20;

/// The largest size a configuration may give (a width, a count of heads, layers or tokens): 2^24,
/// far above any real model, and small enough that products of two sizes cannot overflow and
/// nothing sized by one is allocated before the weights' shapes confirm it.
inline constexpr Index kMaxConfigInteger = Index(1) << 24;

/// A parsed JSON object and the name of the file it came from.
class JsonFile {
 public:
  /// Parses `text`; `name` is what messages call it.
  static JsonFile parse(const std::string& text, std::string name) {
    nlohmann::json root;
    detail::HeaderBuilder builder(root, kMaxHeaderDepth);
    if (!nlohmann::json::sax_parse(text, &builder)) {
      throw FormatError(retnet::detail::concat(name, ": ", builder.error()));
    }
    if (!root.is_object()) {
      throw FormatError(
          retnet::detail::concat(name, ": expected a JSON object, got ", root.type_name()));
    }
    return JsonFile(std::move(root), std::move(name));
  }

  /// Reads and parses the file at `path`, refusing one longer than `maxBytes` before reading it.
  static JsonFile read(const std::string& path, std::uintmax_t maxBytes) {
    std::error_code error;
    if (!std::filesystem::is_regular_file(path, error)) {
      throw FormatError(retnet::detail::concat(path, ": not found or not a regular file"));
    }
    const std::uintmax_t size = std::filesystem::file_size(path, error);
    if (error || size > maxBytes) {
      throw FormatError(retnet::detail::concat(path, ": ", size, " bytes, more than the ", maxBytes,
                                               " this reader accepts"));
    }
    std::ifstream in(path, std::ios::binary);
    std::string text(static_cast<std::size_t>(size), '\0');
    in.read(text.data(), static_cast<std::streamsize>(size));
    // One more byte must not exist: the file may have grown since its size was taken.
    if (!in || in.peek() != std::char_traits<char>::eof()) {
      throw FormatError(retnet::detail::concat(path, ": cannot read ", size, " bytes"));
    }
    return parse(text, path);
  }

  const nlohmann::json& root() const { return root_; }
  const std::string& name() const { return name_; }

  bool has(const std::string& key) const { return root_.contains(key); }
  /// Absent or null.
  bool isNull(const std::string& key) const { return !has(key) || root_.at(key).is_null(); }

  template <typename... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    throw FormatError(retnet::detail::concat(name_, ": ", std::forward<Parts>(parts)...));
  }

  /// A number; nullopt if the key is absent or null.
  std::optional<double> optionalNumber(const std::string& key) const {
    if (isNull(key)) return std::nullopt;
    const nlohmann::json& value = root_.at(key);
    if (!value.is_number()) fail("key '", key, "' must be a number, got ", value.dump());
    const double number = value.get<double>();
    if (!std::isfinite(number)) fail("key '", key, "' must be finite, got ", value.dump());
    return number;
  }
  double number(const std::string& key) const {
    const auto value = optionalNumber(key);
    if (!value) fail("missing key '", key, "'");
    return *value;
  }

  /// An integer in [minimum, kMaxConfigInteger] (a float with an integral value is accepted);
  /// nullopt if absent or null.
  std::optional<Index> optionalInteger(const std::string& key, Index minimum = 1) const {
    const auto value = optionalNumber(key);
    if (!value) return std::nullopt;
    if (*value != std::floor(*value) || *value < static_cast<double>(minimum) ||
        *value > static_cast<double>(kMaxConfigInteger)) {
      fail("key '", key, "' must be an integer in [", minimum, ", ", kMaxConfigInteger, "], got ",
           root_.at(key).dump());
    }
    return static_cast<Index>(*value);
  }
  Index integer(const std::string& key, Index minimum = 1) const {
    const auto value = optionalInteger(key, minimum);
    if (!value) fail("missing key '", key, "'");
    return *value;
  }

  /// A boolean, or `fallback` if absent or null.
  bool boolean(const std::string& key, bool fallback) const {
    if (isNull(key)) return fallback;
    const nlohmann::json& value = root_.at(key);
    if (!value.is_boolean()) fail("key '", key, "' must be true or false, got ", value.dump());
    return value.get<bool>();
  }

  /// A string, or `fallback` if absent or null.
  std::string string(const std::string& key, const std::string& fallback) const {
    if (isNull(key)) return fallback;
    const nlohmann::json& value = root_.at(key);
    if (!value.is_string()) fail("key '", key, "' must be a string, got ", value.dump());
    return value.get<std::string>();
  }

  /// Every key not in `known`, in the file's order.
  std::vector<std::string> unknownKeys(const std::vector<std::string>& known) const {
    std::vector<std::string> unknown;
    for (auto item = root_.begin(); item != root_.end(); ++item) {
      if (std::find(known.begin(), known.end(), item.key()) == known.end())
        unknown.push_back(item.key());
    }
    return unknown;
  }

 private:
  JsonFile(nlohmann::json root, std::string name)
      : root_(std::move(root)), name_(std::move(name)) {}

  nlohmann::json root_;
  std::string name_;
};

}  // namespace retnet::io
