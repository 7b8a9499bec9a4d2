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
/// prefill(tokens, state, logits, scratch, chunk, form) and decode(tokens, state, logits,
/// scratch): one scratch serves every prefill and step.
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
  RowMatrix<Scalar> logits(batch, model.config().vocab), itemLogits;
  typename Model::Scratch scratch;
  State grown;
  for (Index b = 0; b < batch; ++b) {
    const auto& tokens = next[static_cast<std::size_t>(b)];
    detail::require(!tokens.empty(), where, "sequence ", b, " has no tokens to feed");
    State single = state.empty() ? State() : state.item(b);
    const TokenMatrix row = TokenMatrix::Map(tokens.data(), 1, static_cast<Index>(tokens.size()));
    model.prefill(row, single, itemLogits, scratch, options.chunkSize, options.prefillForm);
    logits.row(b) = itemLogits.row(0);
    grown.append(single);
  }
  state = std::move(grown);

  // Sample and decode until every sequence has ended. Row r of `running` (and of `logits`, those
  // of its last consumed position) is sequence active[r]; a sequence that ends leaves the batch,
  // its state copied into `state`, so each step decodes only the sequences still generating.
  std::vector<std::vector<std::int64_t>> generated(static_cast<std::size_t>(batch));
  std::vector<Index> active(static_cast<std::size_t>(batch));
  for (Index b = 0; b < batch; ++b) active[static_cast<std::size_t>(b)] = b;
  State running = state;
  std::vector<std::int64_t> tokens(static_cast<std::size_t>(batch), 0);
  std::vector<Index> sampleScratch, staying;
  for (Index step = 0; step < options.maxNewTokens && !active.empty(); ++step) {
    staying.clear();
    for (std::size_t r = 0; r < active.size(); ++r) {
      const Index b = active[r], row = static_cast<Index>(r);
      auto& out = generated[static_cast<std::size_t>(b)];
      SplitMix64 draw(drawSeed(options.seed, running.position(row)));
      tokens[r] = sampleToken(logits.row(row).transpose(), options.sampling, draw, sampleScratch);
      out.push_back(tokens[r]);
      if (options.onToken) options.onToken(b, tokens[r]);
      const bool stop = std::find(options.stopTokens.begin(), options.stopTokens.end(),
                                  tokens[r]) != options.stopTokens.end();
      if (stop || static_cast<Index>(out.size()) >= options.maxNewTokens) {
        // Its state holds everything but the token just drawn: that is where it resumes.
        state.setItem(b, running, row);
      } else {
        staying.push_back(row);
      }
    }
    if (staying.size() < active.size()) {  // drop the ended sequences from the batch
      State kept;
      std::vector<Index> keptActive;
      for (Index row : staying) {
        kept.append(running.item(row));
        tokens[keptActive.size()] = tokens[static_cast<std::size_t>(row)];
        keptActive.push_back(active[static_cast<std::size_t>(row)]);
      }
      running = std::move(kept);
      active = std::move(keptActive);
    }
    if (active.empty()) break;
    tokens.resize(active.size());
    model.decode(tokens, running, logits, scratch);
  }
  if (finalState != nullptr) *finalState = state;
  return generated;
}

}  // namespace retnet
