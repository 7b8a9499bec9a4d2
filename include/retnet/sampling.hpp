// Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus) sampling
// with a seeded, platform-independent random stream.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "retnet/errors.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

struct SamplingOptions {
  double temperature = 0.0;  ///< 0 picks the most likely token (greedy); > 0 samples
  Index topK = 0;            ///< keep only the k most likely tokens (0: all)
  double topP = 1.0;         ///< keep the smallest set whose probability reaches topP (1: all)

  void validate(const char* where) const {
    detail::require(std::isfinite(temperature) && temperature >= 0, where,
                    "temperature must be finite and >= 0, got ", temperature);
    detail::require(topK >= 0, where, "topK must be >= 0, got ", topK);
    detail::require(topP > 0 && topP <= 1, where, "topP must be in (0, 1], got ", topP);
  }
};

/// SplitMix64: a tiny generator whose stream is the same on every platform and standard library
/// (std::uniform_real_distribution is not), so a seed reproduces the same tokens anywhere.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  std::uint64_t state_;
};

/// Picks a token id from `logits` (one row of vocabulary scores).
///
/// Greedy (temperature 0) returns the first index of the maximum. Otherwise the candidates are
/// the topK largest logits (ties broken by lower index), then the shortest prefix of them, in
/// order of decreasing probability, whose softmax(logits / temperature) mass reaches topP; one
/// is drawn with probability proportional to its mass. `scratch` avoids allocation per call.
template <typename Derived>
Index sampleToken(const Eigen::MatrixBase<Derived>& logits, const SamplingOptions& options,
                  SplitMix64& rng, std::vector<Index>& scratch) {
  const Index vocab = logits.size();
  detail::require(vocab >= 1, "sampleToken", "logits must have at least one entry");
  Index best = 0;
  for (Index i = 1; i < vocab; ++i) {
    if (logits(i) > logits(best)) best = i;
  }
  if (options.temperature == 0 || options.topK == 1) return best;

  // Candidates in order of decreasing logit; a stable order makes ties deterministic.
  scratch.resize(static_cast<std::size_t>(vocab));
  std::iota(scratch.begin(), scratch.end(), Index{0});
  const Index keep = options.topK > 0 ? std::min(options.topK, vocab) : vocab;
  const auto byLogit = [&](Index a, Index b) {
    return logits(a) > logits(b) || (logits(a) == logits(b) && a < b);
  };
  std::partial_sort(scratch.begin(), scratch.begin() + keep, scratch.end(), byLogit);

  // Unnormalised probabilities exp((l - max) / T), accumulated until the top-p mass is reached.
  const double maxLogit = static_cast<double>(logits(best));
  double total = 0;
  for (Index i = 0; i < keep; ++i) {
    total +=
        std::exp((static_cast<double>(logits(scratch[static_cast<std::size_t>(i)])) - maxLogit) /
                 options.temperature);
  }
  Index count = keep;
  double mass = total;
  if (options.topP < 1) {
    double cumulative = 0;
    for (Index i = 0; i < keep; ++i) {
      cumulative +=
          std::exp((static_cast<double>(logits(scratch[static_cast<std::size_t>(i)])) - maxLogit) /
                   options.temperature);
      if (cumulative >= options.topP * total) {
        count = i + 1;
        mass = cumulative;
        break;
      }
    }
  }
  double target = rng.uniform() * mass;
  for (Index i = 0; i < count; ++i) {
    const Index token = scratch[static_cast<std::size_t>(i)];
    target -= std::exp((static_cast<double>(logits(token)) - maxLogit) / options.temperature);
    if (target < 0) return token;
  }
  return scratch[static_cast<std::size_t>(count - 1)];  // rounding left a sliver of mass
}

}  // namespace retnet
