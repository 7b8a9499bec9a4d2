// What the example tools share: their exit codes, usage errors, number parsing, and main's
// error reporting (one line on stderr and a non-zero exit, never a crash).
#pragma once

#include <algorithm>
#include <cstdio>
#include <exception>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace retnet_examples {

constexpr int kUsageError = 2;  ///< bad arguments
constexpr int kRunError = 1;    ///< a file or the computation failed

/// A bad command line; the message "help" asks for the usage text.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// `text` as a Number (integer or floating point), all of it; UsageError naming `flag` if not.
template <typename Number>
Number parseNumber(const std::string& flag, const std::string& text) {
  std::size_t used = 0;
  Number value{};
  try {
    if constexpr (std::is_floating_point_v<Number>) {
      value = static_cast<Number>(std::stod(text, &used));
    } else {
      value = static_cast<Number>(std::stoll(text, &used));
    }
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size())
    throw UsageError(flag + " expects a number, got \"" + text + "\"");
  return value;
}

/// The flags of a command line: "--flag value" for each of `valued`, the bare `switches`
/// (present or not). --help or -h is UsageError("help"); an unknown flag, a missing value or a
/// flag given twice is a UsageError saying so.
struct Flags {
  std::map<std::string, std::string> values;
  std::map<std::string, bool> switches;

  Flags(int argc, char** argv, const std::vector<std::string>& valued,
        const std::vector<std::string>& switchNames) {
    for (const std::string& name : switchNames) switches[name] = false;
    for (int i = 1; i < argc; ++i) {
      const std::string flag = argv[i];
      if (flag == "--help" || flag == "-h") throw UsageError("help");
      if (switches.count(flag)) {
        if (switches[flag]) throw UsageError(flag + " given twice");
        switches[flag] = true;
        continue;
      }
      if (std::find(valued.begin(), valued.end(), flag) == valued.end())
        throw UsageError("unknown argument \"" + flag + "\"");
      if (i + 1 >= argc) throw UsageError(flag + " needs a value");
      if (values.count(flag)) throw UsageError(flag + " given twice");
      values[flag] = argv[++i];
    }
  }
};

/// main() of a tool: arguments = parse(), then run(arguments)'s exit code. --help (UsageError
/// "help") prints `usage`; a UsageError prints "<tool>: error: <what> (see --help)" and exits
/// with kUsageError; any other exception "<tool>: error: <what>" on one line, kRunError.
template <typename Parse, typename Run>
int runTool(const char* tool, const char* usage, Parse&& parse, Run&& run) {
  decltype(parse()) arguments;
  try {
    arguments = parse();
  } catch (const UsageError& error) {
    if (std::string(error.what()) == "help") {
      std::printf("%s\n", usage);
      return 0;
    }
    std::fprintf(stderr, "%s: error: %s (see --help)\n", tool, error.what());
    return kUsageError;
  }
  try {
    return run(arguments);
  } catch (const std::exception& error) {
    std::string message = error.what();
    for (char& ch : message)
      if (ch == '\n') ch = ' ';
    std::fprintf(stderr, "%s: error: %s\n", tool, message.c_str());
    return kRunError;
  }
}

}  // namespace retnet_examples
