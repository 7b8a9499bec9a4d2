// A language model: embedding [-> scale -> norm] -> N blocks -> final norm -> output projection,
// with every form, chunkwise prefill, O(1) decoding and generation. Written once for any block
// family; RetNetModel (RetNet blocks) is torchscale's RetNetDecoder, syncdoth's
// RetNetForCausalLM and FLA's RetNetForCausalLM by configuration (io/load_model.hpp), and
// Rwkv4Model (rwkv4.hpp) BlinkDL's RWKV-4 (LayerNorms with bias, ln0 as the embedding norm).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "retnet/block.hpp"
#include "retnet/generation.hpp"
#include "retnet/model_state.hpp"
#include "retnet/stages/embedding.hpp"
#include "retnet/stages/linear.hpp"
#include "retnet/stages/norms.hpp"

namespace retnet {

/// The model's own norms (the embedding norm and the final norm).
enum class ModelNorm {
  kRms,    ///< RMSNorm with weight (RetNet: torchscale, FLA, syncdoth)
  kLayer,  ///< LayerNorm with weight and bias (RWKV-4's ln0 and ln_out)
};

/// Shape of a language model whose blocks have configuration BlockConfig (which has `eps` and
/// `embedDim`, the width of the residual stream).
template <typename BlockConfig>
struct LanguageModelConfig {
  Index vocab = 0;          ///< vocabulary size
  Index layers = 0;         ///< number of blocks
  BlockConfig block;        ///< every block's shape; block.eps is also the final norm's
  double embedScale = 1.0;  ///< token embeddings are multiplied by this (torchscale: 1, or sqrt(D))
  bool tiedEmbedding = false;        ///< the output projection is the embedding table
  bool embedNorm = false;            ///< a norm (weight embedNorm, eps block.eps) after the scale
                                     ///< (syncdoth's layernorm_embedding, RWKV-4's ln0)
  ModelNorm norm = ModelNorm::kRms;  ///< kind of the embedding norm and the final norm

  void validate(const char* where) const {
    detail::require(vocab >= 1, where, "vocab must be >= 1, got ", vocab);
    detail::require(layers >= 1, where, "layers must be >= 1, got ", layers);
    detail::require(std::isfinite(embedScale), where, "embedScale must be finite, got ",
                    embedScale);
    block.validate(where);
  }
};

template <typename BlockWeights, typename Scalar>
struct LanguageModelWeights {
  LinearWeight<Scalar> embed;        ///< embed_tokens.weight (vocab, D)
  Vector<Scalar> embedNorm;          ///< layernorm_embedding.weight (D); empty unless embedNorm
  std::vector<BlockWeights> layers;  ///< layers.{i}.*
  Vector<Scalar> finalNorm;          ///< layer_norm.weight (D)
  Vector<Scalar> embedNormBias;      ///< ModelNorm::kLayer only: the norms' biases (D), else
  Vector<Scalar> finalNormBias;      ///< empty
  LinearWeight<Scalar> outputProjection;  ///< output_projection.weight (vocab, D); empty if tied
};

/// Buffers of a decoding step (not part of any state's value).
template <typename BlockScratch, typename Scalar>
struct LanguageModelScratch {
  Vector<Scalar> hidden, other;  // (batch x D) activations between blocks
  BlockScratch block;
};

/// The model skeleton. A Block is a SequenceLayer (sequence_layer.hpp) with Config, Weights,
/// State and Scratch types, a (Config, Weights) constructor, prepareState(where, batch, state)
/// and forwardRows; its State is a LayerState (model_state.hpp).
template <typename Block>
class LanguageModel {
 public:
  using Scalar = typename Block::Scalar;
  using BlockType = Block;
  using Config = LanguageModelConfig<typename Block::Config>;
  using Weights = LanguageModelWeights<typename Block::Weights, Scalar>;
  using State = LanguageModelState<typename Block::State>;
  using Scratch = LanguageModelScratch<typename Block::Scratch, Scalar>;

  /// The model, its dense weights (projections, embedding, head) stored as `storage`
  /// (linear_weight.hpp).
  LanguageModel(const Config& config, const Weights& weights,
                WeightType storage = WeightType::kFull)
      : LanguageModel(config, Weights(weights), storage) {}

  /// From weights that are no longer needed: each layer's are released once its block is built
  /// (and stored as `storage`), so loading holds little more than the model (io/load_model.hpp).
  LanguageModel(const Config& config, Weights&& weights, WeightType storage = WeightType::kFull)
      : config_(checkedConfig(config)) {
    const Index D = config.block.embedDim;
    const char* where = "RetNetModel";
    detail::requireShape(where, weights.embed, config.vocab, D, "embed");
    detail::require(static_cast<Index>(weights.layers.size()) == config.layers, "RetNetModel",
                    "expected weights for ", config.layers, " layers, got ", weights.layers.size());
    detail::requireLength(where, weights.finalNorm, D, "finalNorm");
    const bool biased = config.norm == ModelNorm::kLayer;
    requireOptional(where, weights.finalNormBias, biased, "finalNormBias",
                    "config.norm is not ModelNorm::kLayer");
    requireOptional(where, weights.embedNorm, config.embedNorm, "embedNorm",
                    "config.embedNorm is false");
    requireOptional(where, weights.embedNormBias, config.embedNorm && biased, "embedNormBias",
                    "the embedding norm is not a LayerNorm");
    if (!config.tiedEmbedding)
      detail::requireShape(where, weights.outputProjection, config.vocab, D, "outputProjection");
    embed_ = std::move(weights.embed);
    embedNorm_ = std::move(weights.embedNorm);
    embedNormBias_ = std::move(weights.embedNormBias);
    blocks_.reserve(weights.layers.size());
    for (auto& layer : weights.layers) {
      blocks_.emplace_back(config.block, layer);
      layer = typename Block::Weights{};
      blocks_.back().forEachWeight(
          [storage](LinearWeight<Scalar>& w) { convertWeight(w, storage); });
    }
    finalNorm_ = std::move(weights.finalNorm);
    finalNormBias_ = std::move(weights.finalNormBias);
    if (!config.tiedEmbedding) outputProjection_ = std::move(weights.outputProjection);
    convertWeight(embed_, storage);
    convertWeight(outputProjection_, storage);
  }

  /// Calls visit(weight) for every dense weight: each block's, the embedding, the output
  /// projection (empty when tied).
  template <typename Visit>
  void forEachWeight(Visit&& visit) {
    for (Block& block : blocks_) block.forEachWeight(visit);
    visit(embed_);
    visit(outputProjection_);
  }
  template <typename Visit>
  void forEachWeight(Visit&& visit) const {
    for (const Block& block : blocks_) block.forEachWeight(visit);
    visit(embed_);
    visit(outputProjection_);
  }

  /// Stores every dense weight as `type` (rounding once from full precision; see
  /// LinearWeight::converted). Norms, decays and mixes stay in Scalar.
  void convertWeights(WeightType type) {
    forEachWeight([type](LinearWeight<Scalar>& w) { convertWeight(w, type); });
  }

  /// Bytes of the dense weights as stored: what a decoding step streams (the norms and other
  /// vectors are a small fraction on top).
  std::size_t storedWeightBytes() const {
    std::size_t bytes = 0;
    forEachWeight([&](const LinearWeight<Scalar>& w) { bytes += w.storedBytes(); });
    return bytes;
  }

  const Config& config() const { return config_; }
  const std::vector<Block>& blocks() const { return blocks_; }

  /// The input of the first block (B, T, D): embedding, scale and embedding norm. With blocks()
  /// this gives every layer's hidden state.
  Tensor3<Scalar> embedding(const TokenMatrix& tokens) const {
    const char* where = "RetNetModel::embedding";
    detail::require(tokens.size() >= 1, where, "tokens must be non-empty");
    for (Index i = 0; i < tokens.size(); ++i) checkToken(where, tokens.data()[i]);
    Tensor3<Scalar> x(tokens.rows(), tokens.cols(), config_.block.embedDim);
    embed(tokens.data(),
          Eigen::Map<RowMatrix<Scalar>>(x.data(), tokens.size(), config_.block.embedDim));
    return x;
  }

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

  /// Consumes a prompt chunkwise (or in `form`: syncdoth's generate prefills in parallel) and
  /// returns the logits of its last position (B x vocab): the O(T) start of generation. The
  /// state continues from where it was (empty: position 0).
  RowMatrix<Scalar> prefill(const TokenMatrix& tokens, State& state, Index chunkSize = 64,
                            Form form = Form::kChunkwise) const {
    const char* where = "RetNetModel::prefill";
    detail::requireChunkSize(where, chunkSize);
    prepare(where, tokens, state);
    const Index batch = tokens.rows(), time = tokens.cols();
    RowMatrix<Scalar> hidden = runBlocks(form, tokens, chunkSize, state);
    RowMatrix<Scalar> last(batch, config_.block.embedDim);
    for (Index b = 0; b < batch; ++b) last.row(b) = hidden.row(b * time + time - 1);
    RowMatrix<Scalar> logits(batch, config_.vocab);
    project(last, logits);
    return logits;
  }

  /// One decoding step: `tokens` holds one id per batch item; writes logits (B x vocab). O(1) in
  /// the position, and allocation-free once `logits`, the state and `scratch` have their sizes.
  void decode(const std::vector<std::int64_t>& tokens, State& state, RowMatrix<Scalar>& logits,
              Scratch& scratch) const {
    const char* where = "RetNetModel::decode";
    const auto batch = static_cast<Index>(tokens.size());
    detail::require(batch >= 1, where, "tokens must hold one id per batch item, got none");
    prepareState(where, batch, state);
    for (Index b = 0; b < batch; ++b) checkToken(where, tokens[static_cast<std::size_t>(b)]);
    const Index D = config_.block.embedDim;
    Scalar* in = detail::bufferView(scratch.hidden, batch, D).data();  // (batch x D)
    Scalar* out = detail::bufferView(scratch.other, batch, D).data();
    embed(tokens.data(), Eigen::Map<RowMatrix<Scalar>>(in, batch, D));
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      blocks_[l].forwardRows(Form::kRecurrent, in, batch, 1, 0, state.layers[l], out,
                             scratch.block);
      std::swap(in, out);
    }
    if (logits.rows() != batch || logits.cols() != config_.vocab)
      logits.resize(batch, config_.vocab);
    Eigen::Map<RowMatrix<Scalar>> hidden(in, batch, D);
    project(hidden, logits);
  }
  /// The same with a scratch kept per thread and model type.
  void decode(const std::vector<std::int64_t>& tokens, State& state,
              RowMatrix<Scalar>& logits) const {
    thread_local Scratch scratch;
    decode(tokens, state, logits, scratch);
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
  /// where each sequence ended (as `finalState`). Ended sequences leave the batch: each decoding
  /// step runs only the sequences still generating.
  std::vector<std::vector<std::int64_t>> continueGeneration(
      State& state, const std::vector<std::vector<std::int64_t>>& next,
      const GenerationOptions& options, State* finalState = nullptr) const {
    return retnet::continueGeneration(*this, state, next, options, finalState);
  }

 private:
  /// w stored as `type`; nothing (not even a copy) when it already is.
  static void convertWeight(LinearWeight<Scalar>& w, WeightType type) {
    if (w.type() != type) w = w.converted(type);
  }

  static Config checkedConfig(const Config& config) {
    config.validate("RetNetModel");
    return config;
  }

  void checkToken(const char* where, std::int64_t token) const {
    detail::require(token >= 0 && token < config_.vocab, where, "token ids must be in [0, ",
                    config_.vocab, "), got ", token);
  }

  /// Sizes an empty state (every layer) for `batch` sequences, or checks a non-empty one.
  void prepareState(const char* where, Index batch, State& state) const {
    if (state.layers.empty()) state.layers.resize(blocks_.size());
    detail::requireEqual(where, "state layers", config_.layers,
                         static_cast<Index>(state.layers.size()));
    for (std::size_t l = 0; l < blocks_.size(); ++l)
      blocks_[l].prepareState(where, batch, state.layers[l]);
  }

  void prepare(const char* where, const TokenMatrix& tokens, State& state) const {
    detail::require(tokens.rows() >= 1 && tokens.cols() >= 1, where,
                    "tokens must be non-empty (batch, time >= 1), got (", tokens.rows(), ", ",
                    tokens.cols(), ")");
    for (Index i = 0; i < tokens.size(); ++i) checkToken(where, tokens.data()[i]);
    prepareState(where, tokens.rows(), state);
  }

  /// A weight of length D when `needed`, else none.
  void requireOptional(const char* where, const Vector<Scalar>& weight, bool needed,
                       const char* name, const char* whyNot) const {
    if (needed) {
      detail::requireLength(where, weight, config_.block.embedDim, name);
      return;
    }
    detail::require(weight.size() == 0, where, "the weight ", name, " was given but ", whyNot);
  }

  /// The model's norm (config.norm) of the rows of x, in place.   x (rows x D)
  void normalize(MatrixRef<Scalar> x, const Vector<Scalar>& weight,
                 const Vector<Scalar>& bias) const {
    if (config_.norm == ModelNorm::kLayer) {
      stages::layerNorm(x, weight.data(), bias.data(), config_.block.eps, x);
    } else {
      stages::rmsNorm(x, weight.data(), config_.block.eps, x);
    }
  }

  /// x = E[token]·s, then the embedding norm if configured.   x (tokens x D)
  void embed(const std::int64_t* tokens, MatrixRef<Scalar> x) const {
    stages::embed<Scalar>(tokens, embed_, config_.embedScale, x);
    if (config_.embedNorm) normalize(x, embedNorm_, embedNormBias_);
  }

  /// Embeds the tokens and runs every block: hidden states (B·T x D) before the final norm.
  RowMatrix<Scalar> runBlocks(Form form, const TokenMatrix& tokens, Index chunkSize,
                              State& state) const {
    const Index rows = tokens.size(), D = config_.block.embedDim;
    RowMatrix<Scalar> x(rows, D), y(rows, D);
    embed(tokens.data(), x);
    Scratch scratch;
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      blocks_[l].forwardRows(form, x.data(), tokens.rows(), tokens.cols(), chunkSize,
                             state.layers[l], y.data(), scratch.block);
      x.swap(y);
    }
    return x;
  }

  /// logits = Norm(hidden; w_final) · Wᵀ, W the output projection (or the tied embedding).
  void project(MatrixRef<Scalar> hidden, MatrixRef<Scalar> logits) const {
    normalize(hidden, finalNorm_, finalNormBias_);
    stages::linear(hidden, config_.tiedEmbedding ? embed_ : outputProjection_, logits);
  }

  Tensor3<Scalar> forward(const char* where, Form form, const TokenMatrix& tokens, Index chunkSize,
                          State& state) const {
    prepare(where, tokens, state);
    RowMatrix<Scalar> hidden = runBlocks(form, tokens, chunkSize, state);
    Tensor3<Scalar> logits(tokens.rows(), tokens.cols(), config_.vocab);
    project(hidden, Eigen::Map<RowMatrix<Scalar>>(logits.data(), tokens.size(), config_.vocab));
    return logits;
  }

  Config config_;
  LinearWeight<Scalar> embed_;  // (vocab, D): the lookup table, and the head when tied
  Vector<Scalar> embedNorm_, embedNormBias_;  // (D) or empty
  std::vector<Block> blocks_;
  Vector<Scalar> finalNorm_, finalNormBias_;  // (D); the bias empty unless ModelNorm::kLayer
  LinearWeight<Scalar> outputProjection_;     // (vocab, D); empty when tied
};

/// torchscale's RetNetDecoder.
using RetNetModelConfig = LanguageModelConfig<RetNetBlockConfig>;
template <typename Scalar>
using RetNetModelWeights = LanguageModelWeights<RetNetBlockWeights<Scalar>, Scalar>;
template <typename Scalar>
using RetNetModel = LanguageModel<RetNetBlock<Scalar>>;

}  // namespace retnet
