// Generation for any LanguageModel: prompts prefilled chunkwise, then decoded together with
// seeded sampling, streaming, stop tokens and the final states of every sequence.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "retnet/detail/checks.hpp"
#include "retnet/form.hpp"
#include "retnet/sampling.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

/// Token ids, row-major (batch, time).
using TokenMatrix = Eigen::Matrix<std::int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct GenerationOptions {
  Index maxNewTokens = 32;               ///< tokens generated per prompt at most
  SamplingOptions sampling;              ///< greedy by default
  std::uint64_t seed = 0;                ///< same seed, same prompts: same tokens
  std::vector<std::int64_t> stopTokens;  ///< generation of a sequence ends after one of these
  Index chunkSize = 64;                  ///< prefill chunk
  Form prefillForm = Form::kChunkwise;   ///< how prompts are consumed (syncdoth: kParallel)
  /// Called for every generated token: (sequence index, token id).
  std::function<void(Index, std::int64_t)> onToken;
};

/// The random stream of one draw: a function of (seed, position) only.
inline std::uint64_t drawSeed(std::uint64_t seed, Index position) {
  return SplitMix64(SplitMix64(seed).next() ^ static_cast<std::uint64_t>(position)).next();
}

/// Feeds next[i] to sequence i of `state` (chunkwise, each at its own position; an empty state
/// starts every sequence at position 0), then samples and decodes until every sequence has
/// ended: see LanguageModel::continueGeneration. The Model provides config().vocab,
/// prefill(tokens, state, chunk) and decode(tokens, state, logits, scratch).
template <typename Model>
std::vector<std::vector<std::int64_t>> continueGeneration(
    const Model& model, typename Model::State& state,
    const std::vector<std::vector<std::int64_t>>& next, const GenerationOptions& options,
    typename Model::State* finalState = nullptr) {
  using State = typename Model::State;
  using Scalar = typename Model::Scalar;
  const char* where = "RetNetModel::generate";
  options.sampling.validate(where);
  detail::require(options.maxNewTokens >= 0, where, "maxNewTokens must be >= 0, got ",
                  options.maxNewTokens);
  detail::requireChunkSize(where, options.chunkSize);
  const auto batch = static_cast<Index>(next.size());
  detail::require(batch >= 1, where, "at least one sequence is needed");
  detail::require(state.empty() || state.batch() == batch, where, "the state holds ", state.batch(),
                  " sequences but ", batch, " continuations were given");

  // Prefill: each sequence on its own (prompts differ in length and position).
  RowMatrix<Scalar> logits(batch, model.config().vocab);
  State grown;
  for (Index b = 0; b < batch; ++b) {
    const auto& tokens = next[static_cast<std::size_t>(b)];
    detail::require(!tokens.empty(), where, "sequence ", b, " has no tokens to feed");
    State single = state.empty() ? State() : state.item(b);
    const TokenMatrix row = TokenMatrix::Map(tokens.data(), 1, static_cast<Index>(tokens.size()));
    logits.row(b) = model.prefill(row, single, options.chunkSize, options.prefillForm);
    grown.append(single);
  }
  state = std::move(grown);

  // Sample and decode until every sequence has ended; `logits` are those of the last consumed
  // position of each sequence.
  std::vector<std::vector<std::int64_t>> generated(static_cast<std::size_t>(batch));
  std::vector<bool> done(static_cast<std::size_t>(batch), false);
  std::vector<std::int64_t> tokens(static_cast<std::size_t>(batch), 0);
  std::vector<Index> sampleScratch;
  typename Model::Scratch scratch;
  if (finalState != nullptr) *finalState = state;
  for (Index step = 0; step < options.maxNewTokens; ++step) {
    bool anyActive = false;
    for (Index b = 0; b < batch; ++b) {
      const auto i = static_cast<std::size_t>(b);
      if (done[i]) continue;  // a finished sequence feeds its last token again, ignored
      SplitMix64 draw(drawSeed(options.seed, state.position(b)));
      tokens[i] = sampleToken(logits.row(b).transpose(), options.sampling, draw, sampleScratch);
      generated[i].push_back(tokens[i]);
      if (options.onToken) options.onToken(b, tokens[i]);
      const bool stop = std::find(options.stopTokens.begin(), options.stopTokens.end(),
                                  tokens[i]) != options.stopTokens.end();
      done[i] = stop || static_cast<Index>(generated[i].size()) >= options.maxNewTokens;
      // Its state now holds everything but the token just drawn: that is where it resumes.
      if (done[i] && finalState != nullptr) finalState->setItem(b, state, b);
      anyActive = anyActive || !done[i];
    }
    if (!anyActive) break;
    model.decode(tokens, state, logits, scratch);
  }
  return generated;
}

}  // namespace retnet
