// How many threads retnet's loops use: OpenMP's setting, when the consumer compiles with it.
//
// Work is split into fixed items (batch x heads, fixed row and column blocks), each computed by one
// thread, so no result depends on the thread count (detail/parallel_for.hpp).
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

namespace retnet {

/// Number of threads retnet's loops use: OpenMP's current setting, or 1 without OpenMP.
inline int numThreads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Sets the thread count for retnet's loops (and every other OpenMP region of the process).
/// Without OpenMP this is a no-op: the library is then single-threaded.
inline void setNumThreads(int threads) {
#ifdef _OPENMP
  if (threads >= 1) omp_set_num_threads(threads);
#else
  (void)threads;
#endif
}

}  // namespace retnet
