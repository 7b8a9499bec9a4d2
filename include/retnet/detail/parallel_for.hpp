// Optional OpenMP parallelism over independent work items (batch x heads).
//
// Each item is computed by exactly one thread with single-threaded GEMMs inside, so results are
// bitwise identical for any thread count. Without OpenMP (the default for consumers) the loop
// runs serially; `-fopenmp` on the consumer's side is what turns it on.
#pragma once

#include <Eigen/Core>

#include "retnet/threads.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace retnet {

namespace detail {

/// Calls body(i, thread) for i in [0, count); `thread` indexes per-thread scratch space.
/// With OpenMP the region opens even for one item, so that Eigen products inside the body see
/// a parallel region and stay single-threaded: results never depend on the thread count.
template <typename Body>
void parallelFor(Eigen::Index count, Body&& body) {
#ifdef _OPENMP
  if (omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (Eigen::Index i = 0; i < count; ++i) body(i, omp_get_thread_num());
    return;
  }
#endif
  for (Eigen::Index i = 0; i < count; ++i) body(i, 0);
}

/// Rows per task of element-wise work spread over threads (norms, activations, rotary).
inline constexpr Eigen::Index kElementwiseRows = 32;

/// Calls body(begin, count) over [0, rows) in blocks of kElementwiseRows rows, in parallel. Each
/// row is computed by one thread whatever the thread count, so results do not depend on it. A
/// single block (a decoding step) runs on the calling thread: opening a parallel region would
/// cost more than the work, and element-wise bodies run no Eigen products that the region would
/// have to keep single-threaded.
template <typename Body>
void forRowBlocks(Eigen::Index rows, Body&& body) {
  if (rows <= kElementwiseRows) {
    if (rows > 0) body(Eigen::Index{0}, rows);
    return;
  }
  parallelFor((rows + kElementwiseRows - 1) / kElementwiseRows, [&](Eigen::Index block, int) {
    const Eigen::Index begin = block * kElementwiseRows;
    body(begin, rows - begin < kElementwiseRows ? rows - begin : kElementwiseRows);
  });
}

/// Upper bound on the `thread` argument parallelFor passes, for sizing per-thread scratch.
inline int maxThreadSlots() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace detail
}  // namespace retnet
