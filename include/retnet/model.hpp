// The RetNet language model: torchscale's RetNetDecoder (embedding, N RetNet blocks, final
// RMSNorm, output projection), with chunkwise prefill, O(1) decoding and generation.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "retnet/block.hpp"
#include "retnet/sampling.hpp"

namespace retnet {

/// Token ids, row-major (batch, time).
using TokenMatrix = Eigen::Matrix<std::int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct RetNetModelConfig {
  Index vocab = 0;          ///< vocabulary size
  Index layers = 0;         ///< number of RetNet blocks
  RetNetBlockConfig block;  ///< every block's shape
  double embedScale = 1.0;  ///< token embeddings are multiplied by this (torchscale: 1, or sqrt(D))
  bool tiedEmbedding = false;  ///< the output projection is the embedding table

  void validate(const char* where) const {
    detail::require(vocab >= 1, where, "vocab must be >= 1, got ", vocab);
    detail::require(layers >= 1, where, "layers must be >= 1, got ", layers);
    detail::require(std::isfinite(embedScale), where, "embedScale must be finite, got ",
                    embedScale);
    block.validate(where);
  }
};

template <typename Scalar>
struct RetNetModelWeights {
  RowMatrix<Scalar> embed;                         ///< embed_tokens.weight (vocab, D)
  std::vector<RetNetBlockWeights<Scalar>> layers;  ///< layers.{i}.*
  Vector<Scalar> finalNorm;                        ///< layer_norm.weight (D)
  RowMatrix<Scalar> outputProjection;  ///< output_projection.weight (vocab, D); empty if tied
};

/// The state of a whole model: one retention state per layer, all at the same positions. Its
/// size depends on the batch and the model, never on the sequence length.
template <typename Scalar>
class RetNetModelState {
 public:
  std::vector<MultiScaleRetentionState<Scalar>> layers;

  bool empty() const { return layers.empty() || layers.front().empty(); }
  Index batch() const { return empty() ? 0 : layers.front().batch(); }
  /// Positions of batch item b (tokens consumed).
  Index position(Index b) const {
    detail::require(!empty(), "RetNetModelState::position", "the state is empty");
    return layers.front().position(b);
  }
  Index bytes() const {
    Index total = 0;
    for (const auto& layer : layers) total += layer.bytes();
    return total;
  }
  void clear() { layers.clear(); }

  /// Scratch for decoding steps; not part of the value (a copy starts empty).
  struct Workspace {
    Vector<Scalar> hidden, other;  // (batch x D) activations between layers
  };
  Workspace& workspace() const { return workspace_.get(); }

 private:
  detail::Scratch<Workspace> workspace_;
};

struct GenerationOptions {
  Index maxNewTokens = 32;               ///< tokens generated per prompt at most
  SamplingOptions sampling;              ///< greedy by default
  std::uint64_t seed = 0;                ///< same seed, same prompts: same tokens
  std::vector<std::int64_t> stopTokens;  ///< generation of a sequence ends after one of these
  Index chunkSize = 64;                  ///< prefill chunk
  /// Called for every generated token: (sequence index, token id).
  std::function<void(Index, std::int64_t)> onToken;
};

template <typename Scalar>
class RetNetModel {
 public:
  using Config = RetNetModelConfig;
  using Weights = RetNetModelWeights<Scalar>;
  using State = RetNetModelState<Scalar>;

  RetNetModel(const Config& config, const Weights& weights) : config_(checkedConfig(config)) {
    const Index D = config.block.embedDim;
    detail::require(weights.embed.rows() == config.vocab && weights.embed.cols() == D,
                    "RetNetModel", "embed must be (", config.vocab, ", ", D, "), got (",
                    weights.embed.rows(), ", ", weights.embed.cols(), ")");
    detail::require(static_cast<Index>(weights.layers.size()) == config.layers, "RetNetModel",
                    "expected weights for ", config.layers, " layers, got ", weights.layers.size());
    detail::require(weights.finalNorm.size() == D, "RetNetModel", "finalNorm must have ", D,
                    " entries, got ", weights.finalNorm.size());
    if (!config.tiedEmbedding) {
      detail::require(
          weights.outputProjection.rows() == config.vocab && weights.outputProjection.cols() == D,
          "RetNetModel", "outputProjection must be (", config.vocab, ", ", D, "), got (",
          weights.outputProjection.rows(), ", ", weights.outputProjection.cols(), ")");
    }
    embed_ = weights.embed;
    for (const auto& layer : weights.layers) blocks_.emplace_back(config.block, layer);
    finalNorm_ = weights.finalNorm;
    if (!config.tiedEmbedding) outputProjection_ = weights.outputProjection;
  }

  const Config& config() const { return config_; }
  const std::vector<RetNetBlock<Scalar>>& blocks() const { return blocks_; }

  /// Logits (B, T, vocab) of every position, every layer in the parallel form.
  Tensor3<Scalar> forwardParallel(const TokenMatrix& tokens) const {
    State state;
    return forwardParallel(tokens, state);
  }
  Tensor3<Scalar> forwardParallel(const TokenMatrix& tokens, State& state) const {
    return forward("RetNetModel::forwardParallel", Form::kParallel, tokens, 0, state);
  }

  /// Logits (B, T, vocab), every layer chunkwise (any T; the last chunk may be shorter, which
  /// gives the rows of torchscale's zero-padding to a multiple of the chunk).
  Tensor3<Scalar> forwardChunkwise(const TokenMatrix& tokens, Index chunkSize) const {
    State state;
    return forwardChunkwise(tokens, chunkSize, state);
  }
  Tensor3<Scalar> forwardChunkwise(const TokenMatrix& tokens, Index chunkSize, State& state) const {
    detail::requireChunkSize("RetNetModel::forwardChunkwise", chunkSize);
    return forward("RetNetModel::forwardChunkwise", Form::kChunkwise, tokens, chunkSize, state);
  }

  /// Logits (B, T, vocab), token by token (torchscale's incremental decoding).
  Tensor3<Scalar> forwardRecurrent(const TokenMatrix& tokens) const {
    State state;
    return forwardRecurrent(tokens, state);
  }
  Tensor3<Scalar> forwardRecurrent(const TokenMatrix& tokens, State& state) const {
    return forward("RetNetModel::forwardRecurrent", Form::kRecurrent, tokens, 0, state);
  }

  /// Consumes a prompt chunkwise and returns the logits of its last position (B x vocab): the
  /// O(T) start of generation. The state continues from where it was (empty: position 0).
  RowMatrix<Scalar> prefill(const TokenMatrix& tokens, State& state, Index chunkSize = 64) const {
    const char* where = "RetNetModel::prefill";
    detail::requireChunkSize(where, chunkSize);
    prepare(where, tokens, state);
    const Index batch = tokens.rows(), time = tokens.cols();
    RowMatrix<Scalar> hidden = runLayers(Form::kChunkwise, tokens, chunkSize, state);
    RowMatrix<Scalar> last(batch, config_.block.embedDim);
    for (Index b = 0; b < batch; ++b) last.row(b) = hidden.row(b * time + time - 1);
    RowMatrix<Scalar> logits(batch, config_.vocab);
    project(last, logits);
    return logits;
  }

  /// One decoding step: `tokens` holds one id per batch item; writes logits (B x vocab). O(1) in
  /// the position, and allocation-free once `logits` and the state's buffers have their sizes.
  void decode(const std::vector<std::int64_t>& tokens, State& state,
              RowMatrix<Scalar>& logits) const {
    const char* where = "RetNetModel::decode";
    const auto batch = static_cast<Index>(tokens.size());
    detail::require(batch >= 1, where, "tokens must hold one id per batch item, got none");
    prepareState(where, batch, state);
    for (Index b = 0; b < batch; ++b) checkToken(where, tokens[static_cast<std::size_t>(b)]);
    const Index D = config_.block.embedDim;
    auto& ws = state.workspace();
    Scalar* in = detail::bufferView(ws.hidden, batch, D).data();  // (batch x D)
    Scalar* out = detail::bufferView(ws.other, batch, D).data();
    for (Index b = 0; b < batch; ++b) {
      Eigen::Map<RowMatrix<Scalar>>(in, batch, D).row(b) =
          embed_.row(tokens[static_cast<std::size_t>(b)]) * static_cast<Scalar>(config_.embedScale);
    }
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      blocks_[l].forwardRows(Form::kRecurrent, in, batch, 1, 0, state.layers[l], out);
      std::swap(in, out);
    }
    if (logits.rows() != batch || logits.cols() != config_.vocab)
      logits.resize(batch, config_.vocab);
    Eigen::Map<RowMatrix<Scalar>> hidden(in, batch, D);
    project(hidden, logits);
  }
  RowMatrix<Scalar> decode(const std::vector<std::int64_t>& tokens, State& state) const {
    RowMatrix<Scalar> logits;
    decode(tokens, state, logits);
    return logits;
  }

  /// Generates up to options.maxNewTokens tokens after each prompt. Prompts may differ in
  /// length: each is prefilled chunkwise on its own, then all decode together, each at its own
  /// position. The token at position p is drawn with randomness that depends only on (seed, p),
  /// so a sequence's tokens depend only on the seed and its own tokens: not on the other prompts
  /// of the batch, and not on whether the run was paused and resumed from a saved state. (For
  /// several different samples of one prompt, generate with several seeds.)
  /// A sequence ends with a stop token or after maxNewTokens; the result holds the generated
  /// tokens only.
  ///
  /// If `finalState` is given, it receives each sequence's state when it ended: everything
  /// consumed except its last generated token, which has not been fed yet. To continue, pass
  /// that token (and whatever follows) to continueGeneration().
  std::vector<std::vector<std::int64_t>> generate(
      const std::vector<std::vector<std::int64_t>>& prompts, const GenerationOptions& options,
      State* finalState = nullptr) const {
    State state;
    return continueGeneration(state, prompts, options, finalState);
  }

  /// Feeds next[i] to sequence i of `state` (chunkwise, each at its own position; an empty state
  /// starts every sequence at position 0), then generates as generate() does. `state` is left
  /// after the last decoding step.
  std::vector<std::vector<std::int64_t>> continueGeneration(
      State& state, const std::vector<std::vector<std::int64_t>>& next,
      const GenerationOptions& options, State* finalState = nullptr) const {
    const char* where = "RetNetModel::generate";
    options.sampling.validate(where);
    detail::require(options.maxNewTokens >= 0, where, "maxNewTokens must be >= 0, got ",
                    options.maxNewTokens);
    detail::requireChunkSize(where, options.chunkSize);
    const auto batch = static_cast<Index>(next.size());
    detail::require(batch >= 1, where, "at least one sequence is needed");
    detail::require(state.empty() || state.batch() == batch, where, "the state holds ",
                    state.batch(), " sequences but ", batch, " continuations were given");
    RowMatrix<Scalar> logits(batch, config_.vocab);
    State grown;
    for (Index b = 0; b < batch; ++b) {
      const auto& tokens = next[static_cast<std::size_t>(b)];
      detail::require(!tokens.empty(), where, "sequence ", b, " has no tokens to feed");
      State single = state.empty() ? State() : extractBatchItem(state, b);
      const TokenMatrix row = TokenMatrix::Map(tokens.data(), 1, static_cast<Index>(tokens.size()));
      logits.row(b) = prefill(row, single, options.chunkSize);
      appendBatchItem(grown, single);
    }
    state = std::move(grown);
    return sampleLoop(state, logits, options, finalState);
  }

 private:
  static Config checkedConfig(const Config& config) {
    config.validate("RetNetModel");
    return config;
  }

  void checkToken(const char* where, std::int64_t token) const {
    detail::require(token >= 0 && token < config_.vocab, where, "token ids must be in [0, ",
                    config_.vocab, "), got ", token);
  }

  void prepareState(const char* where, Index batch, State& state) const {
    const RetNetBlockConfig& c = config_.block;
    if (state.layers.empty()) state.layers.resize(blocks_.size());
    detail::requireEqual(where, "state layers", config_.layers,
                         static_cast<Index>(state.layers.size()));
    for (auto& layer : state.layers) {
      if (layer.empty()) {
        layer.reset(batch, c.heads, c.embedDim / c.heads, c.valueDim / c.heads);
        continue;
      }
      detail::requireEqual(where, "batch size (the state's)", layer.batch(), batch);
      detail::requireEqual(where, "state heads", c.heads, layer.heads());
      detail::requireEqual(where, "state key dim", c.embedDim / c.heads, layer.keyDim());
      detail::requireEqual(where, "state value dim", c.valueDim / c.heads, layer.valueDim());
    }
  }

  void prepare(const char* where, const TokenMatrix& tokens, State& state) const {
    detail::require(tokens.rows() >= 1 && tokens.cols() >= 1, where,
                    "tokens must be non-empty (batch, time >= 1), got (", tokens.rows(), ", ",
                    tokens.cols(), ")");
    for (Index i = 0; i < tokens.size(); ++i) checkToken(where, tokens.data()[i]);
    prepareState(where, tokens.rows(), state);
  }

  /// Embeds the tokens and runs every block: hidden states (B·T x D) before the final norm.
  RowMatrix<Scalar> runLayers(Form form, const TokenMatrix& tokens, Index chunkSize,
                              State& state) const {
    const Index rows = tokens.size(), D = config_.block.embedDim;
    RowMatrix<Scalar> x(rows, D), y(rows, D);
    const auto scale = static_cast<Scalar>(config_.embedScale);
    for (Index r = 0; r < rows; ++r) x.row(r) = embed_.row(tokens.data()[r]) * scale;
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      blocks_[l].forwardRows(form, x.data(), tokens.rows(), tokens.cols(), chunkSize,
                             state.layers[l], y.data());
      x.swap(y);
    }
    return x;
  }

  /// logits = RMSNorm(hidden; w_final) · Wᵀ, W the output projection (or the tied embedding).
  template <typename Hidden, typename Logits>
  void project(Hidden& hidden, Logits& logits) const {
    detail::rmsNormRows(hidden, config_.block.eps, &finalNorm_);
    detail::linear(hidden, config_.tiedEmbedding ? embed_ : outputProjection_, logits);
  }

  Tensor3<Scalar> forward(const char* where, Form form, const TokenMatrix& tokens, Index chunkSize,
                          State& state) const {
    prepare(where, tokens, state);
    RowMatrix<Scalar> hidden = runLayers(form, tokens, chunkSize, state);
    Tensor3<Scalar> logits(tokens.rows(), tokens.cols(), config_.vocab);
    Eigen::Map<RowMatrix<Scalar>> out(logits.data(), tokens.size(), config_.vocab);
    project(hidden, out);
    return logits;
  }

  /// Samples and decodes until every sequence has ended; `logits` (B x vocab) are those of the
  /// last consumed position of each sequence.
  std::vector<std::vector<std::int64_t>> sampleLoop(State& state, RowMatrix<Scalar>& logits,
                                                    const GenerationOptions& options,
                                                    State* finalState) const {
    const Index batch = state.batch();
    std::vector<std::vector<std::int64_t>> generated(static_cast<std::size_t>(batch));
    std::vector<bool> done(static_cast<std::size_t>(batch), false);
    std::vector<std::int64_t> next(static_cast<std::size_t>(batch), 0);
    std::vector<Index> scratch;
    if (finalState != nullptr) *finalState = state;
    for (Index step = 0; step < options.maxNewTokens; ++step) {
      bool anyActive = false;
      for (Index b = 0; b < batch; ++b) {
        const auto i = static_cast<std::size_t>(b);
        if (done[i]) continue;  // a finished sequence feeds its last token again, ignored
        SplitMix64 draw(drawSeed(options.seed, state.position(b)));
        next[i] = sampleToken(logits.row(b).transpose(), options.sampling, draw, scratch);
        generated[i].push_back(next[i]);
        if (options.onToken) options.onToken(b, next[i]);
        const bool stop = std::find(options.stopTokens.begin(), options.stopTokens.end(),
                                    next[i]) != options.stopTokens.end();
        done[i] = stop || static_cast<Index>(generated[i].size()) >= options.maxNewTokens;
        // Its state now holds everything but the token just drawn: that is where it resumes.
        if (done[i] && finalState != nullptr) copyBatchItem(state, *finalState, b);
        anyActive = anyActive || !done[i];
      }
      if (!anyActive) break;
      decode(next, state, logits);
    }
    return generated;
  }

  /// The random stream of one draw: a function of (seed, position) only.
  static std::uint64_t drawSeed(std::uint64_t seed, Index position) {
    return SplitMix64(SplitMix64(seed).next() ^ static_cast<std::uint64_t>(position)).next();
  }

  /// Batch item b of `state` as a state of its own.
  static State extractBatchItem(const State& state, Index b) {
    State single;
    for (const auto& layer : state.layers) {
      MultiScaleRetentionState<Scalar> item(1, layer.heads(), layer.keyDim(), layer.valueDim());
      const Index perItem = layer.heads() * layer.keyDim() * layer.valueDim();
      std::copy(layer.values().data() + b * perItem, layer.values().data() + (b + 1) * perItem,
                item.values().data());
      item.setPosition(0, layer.position(b));
      single.layers.push_back(std::move(item));
    }
    return single;
  }

  /// Copies batch item b (every layer's S and position) from `from` to `to`.
  static void copyBatchItem(const State& from, State& to, Index b) {
    for (std::size_t l = 0; l < from.layers.size(); ++l) {
      const auto& source = from.layers[l];
      auto& target = to.layers[l];
      const Index perItem = source.heads() * source.keyDim() * source.valueDim();
      std::copy(source.values().data() + b * perItem, source.values().data() + (b + 1) * perItem,
                target.values().data() + b * perItem);
      target.setPosition(b, source.position(b));
    }
  }

  /// Appends the single batch item of `single` to `state` (each layer; positions kept).
  static void appendBatchItem(State& state, const State& single) {
    if (state.layers.empty()) {
      state.layers = single.layers;
      return;
    }
    for (std::size_t l = 0; l < state.layers.size(); ++l) {
      const auto& from = single.layers[l];
      auto& to = state.layers[l];
      MultiScaleRetentionState<Scalar> grown(to.batch() + 1, to.heads(), to.keyDim(),
                                             to.valueDim());
      const Index perItem = to.heads() * to.keyDim() * to.valueDim();
      std::copy(to.values().data(), to.values().data() + to.values().size(), grown.values().data());
      std::copy(from.values().data(), from.values().data() + perItem,
                grown.values().data() + to.batch() * perItem);
      for (Index b = 0; b < to.batch(); ++b) grown.setPosition(b, to.position(b));
      grown.setPosition(to.batch(), from.position(0));
      to = std::move(grown);
    }
  }

  Config config_;
  RowMatrix<Scalar> embed_;
  std::vector<RetNetBlock<Scalar>> blocks_;
  Vector<Scalar> finalNorm_;
  RowMatrix<Scalar> outputProjection_;
};

}  // namespace retnet
