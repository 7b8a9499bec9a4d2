// Stage: per-head decay schedules γ_h of multi-scale retention.
#pragma once

#include <cmath>
#include <vector>

#include "retnet/detail/checks.hpp"
#include "retnet/tensor.hpp"

namespace retnet::stages {

/// γ_h = 1 − 2^(−5−h): the paper's decay of head h (§2.2), torchscale's and FLA's.
inline double retnetDecay(Index head) { return 1.0 - std::ldexp(1.0, -5 - static_cast<int>(head)); }

/// retnetDecay(h) for h = 0 … heads−1.
inline std::vector<double> retnetDecays(Index heads) {
  std::vector<double> gammas;
  for (Index h = 0; h < heads; ++h) gammas.push_back(retnetDecay(h));
  return gammas;
}

/// Checks a caller's schedule: one γ per head, each finite and in [0, 1].
inline void checkDecays(const char* where, const std::vector<double>& gammas, Index heads) {
  detail::require(static_cast<Index>(gammas.size()) == heads, where,
                  "expected one decay per head (", heads, "), got ", gammas.size());
  for (double gamma : gammas) detail::requireDecay(where, gamma);
}

}  // namespace retnet::stages
