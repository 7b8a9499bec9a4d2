// Naive double-precision single-head retention, written straight from the formula
//
//   o_t = Σ_{s<=t} γ^(t-s) (q_t·k_s) v_s  +  γ^(t+1) q_t S0
//
// (S0 the state before the first position). Deliberately loop-by-loop and independent of the
// library's kernels: it is the oracle the fast forms are tested against.
#pragma once

#include <cmath>
#include <vector>

namespace retnet::reference {

struct NaiveRetentionResult {
  std::vector<double> out;         // (B, T, dv)
  std::vector<double> finalState;  // (B, dk, dv)
};

/// q, k: (B, T, dk), v: (B, T, dv) row-major; initialState (B, dk, dv) or empty for zeros.
inline NaiveRetentionResult naiveRetention(const std::vector<double>& q,
                                           const std::vector<double>& k,
                                           const std::vector<double>& v, long B, long T, long dk,
                                           long dv, double gamma,
                                           const std::vector<double>& initialState = {}) {
  NaiveRetentionResult r{std::vector<double>(static_cast<size_t>(B * T * dv), 0.0),
                         std::vector<double>(static_cast<size_t>(B * dk * dv), 0.0)};
  const auto at = [](long i) { return static_cast<size_t>(i); };
  for (long b = 0; b < B; ++b) {
    for (long t = 0; t < T; ++t) {
      for (long s = 0; s <= t; ++s) {
        double dot = 0;
        for (long a = 0; a < dk; ++a)
          dot += q[at((b * T + t) * dk + a)] * k[at((b * T + s) * dk + a)];
        const double w = std::pow(gamma, static_cast<double>(t - s)) * dot;
        for (long c = 0; c < dv; ++c)
          r.out[at((b * T + t) * dv + c)] += w * v[at((b * T + s) * dv + c)];
      }
      if (!initialState.empty()) {
        const double decay = std::pow(gamma, static_cast<double>(t + 1));
        for (long c = 0; c < dv; ++c) {
          double acc = 0;
          for (long a = 0; a < dk; ++a)
            acc += q[at((b * T + t) * dk + a)] * initialState[at((b * dk + a) * dv + c)];
          r.out[at((b * T + t) * dv + c)] += decay * acc;
        }
      }
    }
    // S_T = γ^T S0 + Σ_s γ^(T-1-s) k_sᵀ v_s
    for (long a = 0; a < dk; ++a) {
      for (long c = 0; c < dv; ++c) {
        double acc = initialState.empty() ? 0.0
                                          : std::pow(gamma, static_cast<double>(T)) *
                                                initialState[at((b * dk + a) * dv + c)];
        for (long s = 0; s < T; ++s)
          acc += std::pow(gamma, static_cast<double>(T - 1 - s)) * k[at((b * T + s) * dk + a)] *
                 v[at((b * T + s) * dv + c)];
        r.finalState[at((b * dk + a) * dv + c)] = acc;
      }
    }
  }
  return r;
}

/// One output row o_t for batch item b, for spot checks on sequences too long for the full
/// O(T²) reference: O(t · (dk + dv)).
inline std::vector<double> naiveRetentionRow(const std::vector<double>& q,
                                             const std::vector<double>& k,
                                             const std::vector<double>& v, long T, long dk, long dv,
                                             double gamma, long b, long t) {
  std::vector<double> o(static_cast<size_t>(dv), 0.0);
  const auto at = [](long i) { return static_cast<size_t>(i); };
  for (long s = 0; s <= t; ++s) {
    double dot = 0;
    for (long a = 0; a < dk; ++a) dot += q[at((b * T + t) * dk + a)] * k[at((b * T + s) * dk + a)];
    const double w = std::pow(gamma, static_cast<double>(t - s)) * dot;
    for (long c = 0; c < dv; ++c) o[at(c)] += w * v[at((b * T + s) * dv + c)];
  }
  return o;
}

}  // namespace retnet::reference
