// RETNET_ASSERT: a debug-only check of an internal invariant (highway's HWY_DASSERT).
//
// Callers' mistakes are always-on checks that throw (errors.hpp, detail/checks.hpp). This macro
// is for what retnet's own code guarantees on paths that skip those checks: the stage functions
// and kernels, whose arguments the layers have already validated. It compiles to nothing under
// NDEBUG (Release), and aborts with the condition, file and line otherwise. Define
// RETNET_ENABLE_ASSERT to keep it in a Release build.
#pragma once

#include <cstdio>
#include <cstdlib>

#if !defined(NDEBUG) || defined(RETNET_ENABLE_ASSERT)
#define RETNET_ASSERT(condition)                                                         \
  do {                                                                                   \
    if (!(condition)) ::retnet::detail::assertionFailed(#condition, __FILE__, __LINE__); \
  } while (false)
#else
#define RETNET_ASSERT(condition) \
  do {                           \
  } while (false)
#endif

namespace retnet::detail {

[[noreturn]] inline void assertionFailed(const char* condition, const char* file, int line) {
  std::fprintf(stderr, "retnet: internal assertion failed: %s (%s:%d)\n", condition, file, line);
  std::abort();
}

}  // namespace retnet::detail
