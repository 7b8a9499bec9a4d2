// Exceptions thrown by retnet.
//
// Every public entry point validates what a caller can get wrong (shapes, sizes, chunk sizes,
// decay values, head counts, file contents) and throws one of these, with a message that names
// the argument, what was expected and what came. The checks are never compiled out.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace retnet {

/// A caller passed an argument that does not fit: a shape, a size, a decay, a chunk size.
class InvalidArgument : public std::invalid_argument {
 public:
  explicit InvalidArgument(const std::string& message) : std::invalid_argument(message) {}
};

/// A file (checkpoint, saved state) is malformed, truncated or contradicts what was asked of it.
class FormatError : public std::runtime_error {
 public:
  explicit FormatError(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {

/// Streams every argument into one string: `concat("expected ", 3, ", got ", 4)`.
template <typename... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream stream;
  (stream << ... << std::forward<Parts>(parts));
  return stream.str();
}

/// Throws InvalidArgument "<where>: <what> must be <expected>, got <received>" unless they match.
template <typename T, typename U>
void requireEqual(const char* where, const char* what, const T& expected, const U& received) {
  if (!(expected == received)) {
    throw InvalidArgument(concat(where, ": ", what, " must be ", expected, ", got ", received));
  }
}

/// Throws InvalidArgument "<where>: <message>" unless `condition` holds.
template <typename... Parts>
void require(bool condition, const char* where, Parts&&... message) {
  if (!condition) throw InvalidArgument(concat(where, ": ", std::forward<Parts>(message)...));
}

}  // namespace detail
}  // namespace retnet
