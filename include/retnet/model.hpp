// A language model: embedding [-> scale -> norm] -> N blocks -> final norm -> output projection,
// with every form, chunkwise prefill, O(1) decoding and generation. Written once for any block
// family; RetNetModel (RetNet blocks) is torchscale's RetNetDecoder, syncdoth's
// RetNetForCausalLM and FLA's RetNetForCausalLM by configuration (io/load_model.hpp), and
// Rwkv4Model (rwkv4.hpp) BlinkDL's RWKV-4 (LayerNorms with bias, ln0 as the embedding norm).
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "retnet/block.hpp"
#include "retnet/detail/named_set.hpp"
#include "retnet/generation.hpp"
#include "retnet/model_state.hpp"
#include "retnet/stages/embedding.hpp"
#include "retnet/stages/linear.hpp"
#include "retnet/stages/loss.hpp"
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

/// Gradients of a loss with respect to the parameters of LanguageModelWeights, in the same layout,
/// as plain matrices: what LanguageModel::backward accumulates into. forEach names each field by
/// its checkpoint name (torchscale's state_dict names).
template <typename BlockGradients, typename Scalar>
struct LanguageModelGradients
    : detail::GradientSet<LanguageModelGradients<BlockGradients, Scalar>> {
  RowMatrix<Scalar> embed;             ///< d embed_tokens.weight (vocab, D); the tied head's too
  Vector<Scalar> embedNorm;            ///< d layernorm_embedding.weight (D); empty without one
  std::vector<BlockGradients> layers;  ///< d layers.{i}.*
  Vector<Scalar> finalNorm;            ///< d layer_norm.weight (D)
  RowMatrix<Scalar> outputProjection;  ///< d output_projection.weight (vocab, D); empty if tied

 private:
  friend struct detail::GradientSet<LanguageModelGradients<BlockGradients, Scalar>>;

  /// visit(name, gradient) for each field (const or not): "embed_tokens.weight",
  /// "layernorm_embedding.weight" (if present), "layers.{i}." + the block's names
  /// (e.g. RetNetBlockGradients::forEach), "layer_norm.weight", "output_projection.weight" (if
  /// present: not when the head is tied to the embedding).
  template <typename Self, typename Visit>
  static void forEachOf(Self& self, Visit& visit) {
    visit("embed_tokens.weight", self.embed);
    if (self.embedNorm.size() != 0) visit("layernorm_embedding.weight", self.embedNorm);
    for (std::size_t i = 0; i < self.layers.size(); ++i) {
      const std::string prefix = "layers." + std::to_string(i) + ".";
      self.layers[i].forEach(
          [&](const char* name, auto& gradient) { visit((prefix + name).c_str(), gradient); });
    }
    visit("layer_norm.weight", self.finalNorm);
    if (self.outputProjection.size() != 0) visit("output_projection.weight", self.outputProjection);
  }
};

namespace detail {
/// Block::Gradients, or void for a block without a backward (RWKV-4): a LanguageModel of such
/// blocks has no training entry points to call.
template <typename Block, typename = void>
struct BlockGradientsOf {
  using type = void;
};
template <typename Block>
struct BlockGradientsOf<Block, std::void_t<typename Block::Gradients>> {
  using type = typename Block::Gradients;
};
}  // namespace detail

/// Buffers of a decoding step or a prefill (not part of any state's value).
template <typename BlockScratch, typename Scalar>
struct LanguageModelScratch {
  Vector<Scalar> hidden, other;  // (rows x D) activations between blocks
  BlockScratch block;
};

/// The model skeleton. A Block is a SequenceLayer (sequence_layer.hpp) with Config, Weights,
/// State and Scratch types, a (Config, Weights) constructor, prepareState(where, batch, state)
/// and forwardRows; its State is a LayerState (model_state.hpp).
template <typename Block>
class LanguageModel : public detail::ParameterSet<LanguageModel<Block>> {
 public:
  using Scalar = typename Block::Scalar;
  using BlockType = Block;
  using Config = LanguageModelConfig<typename Block::Config>;
  using Weights = LanguageModelWeights<typename Block::Weights, Scalar>;
  using State = LanguageModelState<typename Block::State>;
  using Scratch = LanguageModelScratch<typename Block::Scratch, Scalar>;
  /// What backward() accumulates into (for blocks that have a backward, as RetNetBlock).
  using Gradients = LanguageModelGradients<typename detail::BlockGradientsOf<Block>::type, Scalar>;

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

  // forEachParameter(visit(name, parameter)), const or not: detail::ParameterSet, over
  // forEachParameterOf (below).

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
    RowMatrix<Scalar> logits;
    Scratch scratch;
    prefill(tokens, state, logits, scratch, chunkSize, form);
    return logits;
  }
  /// The same into `logits` (resized to B x vocab if its shape differs) with the caller's
  /// scratch (the one decode() takes): a loop of prompts keeps its buffers, and once they have
  /// their sizes a call allocates nothing beyond what Eigen's products take for packing.
  void prefill(const TokenMatrix& tokens, State& state, RowMatrix<Scalar>& logits, Scratch& scratch,
               Index chunkSize = 64, Form form = Form::kChunkwise) const {
    const char* where = "RetNetModel::prefill";
    detail::requireChunkSize(where, chunkSize);
    prepare(where, tokens, state);
    const Index batch = tokens.rows(), time = tokens.cols(), D = config_.block.embedDim;
    const auto hidden = runBlocks(form, tokens, chunkSize, state, scratch);
    auto last = detail::bufferView(scratch.other, batch, D);  // free once the blocks have run
    for (Index b = 0; b < batch; ++b) last.row(b) = hidden.row(b * time + time - 1);
    if (logits.rows() != batch || logits.cols() != config_.vocab)
      logits.resize(batch, config_.vocab);
    project(last, logits);
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

  // -------------------------------------------------------------------------------------------
  // Training (parallel and chunkwise forms, full-precision weights, RMSNorm model norms), for
  // blocks with a backward (RetNetBlock): forwardTraining is the forward keeping a TrainingCache,
  // backward runs the stages' and the blocks' backwards in reverse order and accumulates
  // Gradients (torchscale's autograd gradients to rounding: tests/test_model_backward.cpp).

  /// What backward() needs from forwardTraining(), kept by the caller between the two. Every
  /// sequence starts at position 0 (a zero state per layer, in `state`). Each block's cache keeps
  /// that block's input (the hidden state below it) and its activations; the model keeps the
  /// rest. The blocks run their forwards and backwards one at a time in one shared workspace
  /// (Block::TrainingWorkspace), so the memory of a step is the blocks' caches plus one block's
  /// working buffers. Buffers only grow; one cache serves one backward at a time.
  struct TrainingCache {
    Index batch = 0, time = 0, width = 0;  // time 0: nothing cached yet; width: the model's D
    TokenMatrix tokens;                    // (batch, time) the input ids
    Vector<Scalar> embedded;               // (rows x D) E[token]·s, before the embedding norm
    Vector<Scalar> hidden, other;          // (rows x D) between blocks; hidden ends as h
    Vector<Scalar> normed;                 // (rows x D) z = RMSNorm(h; w_final), the head's input
    RowMatrix<Scalar> logits;              // (rows x vocab) z · Wᵀ
    std::vector<typename Block::TrainingCache> blocks;  // one per block
    State state;                                        // the states the forward left

    struct Workspace {
      Vector<Scalar> dHidden;     // (rows x D) dL/dz, then dL/dh, then each block's dL/dx
      RowMatrix<Scalar> dLogits;  // (rows x vocab) backwardCrossEntropy's
      typename Block::TrainingWorkspace block;  // every block's, one block at a time
    };
    mutable Workspace workspace;
  };

  /// Zero gradients shaped for this model's parameters.
  Gradients zeroGradients() const {
    const Index D = config_.block.embedDim;
    Gradients grads;
    grads.embed.setZero(config_.vocab, D);
    if (config_.embedNorm) grads.embedNorm.setZero(D);
    grads.layers.reserve(blocks_.size());
    for (const Block& block : blocks_) grads.layers.push_back(block.zeroGradients());
    grads.finalNorm.setZero(D);
    if (!config_.tiedEmbedding) grads.outputProjection.setZero(config_.vocab, D);
    return grads;
  }

  /// The forward for training, from position 0: the logits (batch·time x vocab, row b·T + t),
  /// the same bits as forwardParallel / forwardChunkwise (whose shorter last chunk gives the
  /// gradients of torchscale's zero padding too), kept in `cache` for backward(). The reference
  /// stays valid until the cache is used again.
  const RowMatrix<Scalar>& forwardTraining(Form form, const TokenMatrix& tokens, Index chunkSize,
                                           TrainingCache& cache) const {
    const char* where = "RetNetModel::forwardTraining";
    requireTrainable(where, form);
    if (form == Form::kChunkwise) detail::requireChunkSize(where, chunkSize);
    cache.time = 0;  // invalid until the forward has run
    cache.state.clear();
    prepare(where, tokens, cache.state);  // checks the ids; zero states at position 0
    const Index batch = tokens.rows(), time = tokens.cols(), rows = tokens.size();
    const Index D = config_.block.embedDim;
    const Index chunk = form == Form::kChunkwise ? chunkSize : 0;
    cache.tokens = tokens;
    cache.blocks.resize(blocks_.size());

    // x = E[token]·s, then RMSNorm(x; w_emb) if configured
    auto embedded = detail::bufferView(cache.embedded, rows, D);
    auto x = detail::bufferView(cache.hidden, rows, D);
    stages::embed<Scalar>(tokens.data(), embed_, config_.embedScale, embedded);
    if (config_.embedNorm) {
      stages::rmsNorm(embedded, embedNorm_.data(), config_.block.eps, x);
    } else {
      x = embedded;
    }

    // h = block_{N-1}(… block_0(x)), each block keeping its cache
    detail::bufferView(cache.other, rows, D);
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      const Eigen::Map<const RowMatrix<Scalar>> in(cache.hidden.data(), rows, D);
      Eigen::Map<RowMatrix<Scalar>> out(cache.other.data(), rows, D);
      blocks_[l].forwardTraining(form, in, batch, time, chunk, cache.state.layers[l], out,
                                 cache.blocks[l], cache.workspace.block);
      cache.hidden.swap(cache.other);
    }

    // logits = z · Wᵀ,  z = RMSNorm(h; w_final), W the output projection (or the tied embedding)
    const Eigen::Map<const RowMatrix<Scalar>> h(cache.hidden.data(), rows, D);
    auto z = detail::bufferView(cache.normed, rows, D);
    stages::rmsNorm(h, finalNorm_.data(), config_.block.eps, z);
    if (cache.logits.rows() != rows || cache.logits.cols() != config_.vocab)
      cache.logits.resize(rows, config_.vocab);
    stages::linear(z, head(), cache.logits);
    cache.batch = batch;
    cache.time = time;
    cache.width = D;
    return cache.logits;
  }

  /// The backward of forwardTraining() for the loss L whose gradient with respect to the logits
  /// is dLogits (batch·time x vocab): adds dL/dW of every parameter to `grads` (an empty one is
  /// sized and zeroed first; else its shapes must be this model's). The model's checks and
  /// every block's cache and gradient shapes come before any write. A
  /// repeated call with the same shapes reuses the cache's workspace and allocates nothing of its
  /// own (the norms' backwards still allocate their small row-block partials,
  /// detail::sumOverRowBlocks). The stages of the forward in reverse order:
  void backward(const TrainingCache& cache, ConstMatrixRef<Scalar> dLogits,
                Gradients& grads) const {
    const char* where = "RetNetModel::backward";
    checkBackward(where, cache, grads);
    const Index rows = cache.batch * cache.time, D = config_.block.embedDim;
    detail::requireShape(where, dLogits, rows, config_.vocab, "dLogits (batch·time x vocab)");
    const ConstMap z(cache.normed.data(), rows, D);
    const ConstMap h(cache.hidden.data(), rows, D);
    const ConstMap embedded(cache.embedded.data(), rows, D);
    auto dH = detail::bufferView(cache.workspace.dHidden, rows, D);

    // logits = z·Wᵀ:  dz = dLogits·W,  dW += dLogitsᵀ·z  (tied: W = E, so dE gets this part too)
    stages::linearBackward<Scalar>(z, head(), dLogits, dH,
                                   config_.tiedEmbedding ? grads.embed : grads.outputProjection);

    // z = RMSNorm(h; w_final):  dh = RMSNorm'(dz)
    stages::rmsNormBackward<Scalar>(h, finalNorm_.data(), config_.block.eps, dH, dH,
                                    grads.finalNorm.data());

    // h = block_{N-1}(… block_0(x)):  dx = block_0'(… block_{N-1}'(dh)), in place
    for (std::size_t l = blocks_.size(); l-- > 0;)
      blocks_[l].backward(cache.blocks[l], dH, dH, grads.layers[l], cache.workspace.block);

    // x = RMSNorm(e; w_emb) if configured:  de = RMSNorm'(dx)
    if (config_.embedNorm)
      stages::rmsNormBackward<Scalar>(embedded, embedNorm_.data(), config_.block.eps, dH, dH,
                                      grads.embedNorm.data());

    // e = E[token]·s:  dE[token] += s·de  (a scatter-add: repeated tokens accumulate)
    stages::embedBackward<Scalar>(cache.tokens.data(), dH, config_.embedScale, grads.embed);
  }

  /// The mean cross-entropy of the cached logits against `targets` (batch, time) over the
  /// positions whose target is not `ignoreIndex` (stages::crossEntropy; PyTorch's
  /// F.cross_entropy), and backward() of its gradient. Returns the loss.
  double backwardCrossEntropy(const TrainingCache& cache, const TokenMatrix& targets,
                              Gradients& grads,
                              std::int64_t ignoreIndex = stages::kIgnoreIndex) const {
    const char* where = "RetNetModel::backwardCrossEntropy";
    checkBackward(where, cache, grads);
    detail::requireShape(where, targets, cache.batch, cache.time, "targets (batch, time)");
    RowMatrix<Scalar>& dLogits = cache.workspace.dLogits;
    if (dLogits.rows() != cache.logits.rows() || dLogits.cols() != cache.logits.cols())
      dLogits.resize(cache.logits.rows(), cache.logits.cols());
    const double loss =
        stages::crossEntropyBackward<Scalar>(cache.logits, targets.data(), ignoreIndex, dLogits);
    backward(cache, dLogits, grads);
    return loss;
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

  /// Embeds the tokens and runs every block in `scratch` (one block scratch for all): the
  /// hidden states (B·T x D) before the final norm, a view of scratch.hidden.
  Eigen::Map<RowMatrix<Scalar>> runBlocks(Form form, const TokenMatrix& tokens, Index chunkSize,
                                          State& state, Scratch& scratch) const {
    const Index rows = tokens.size(), D = config_.block.embedDim;
    embed(tokens.data(), detail::bufferView(scratch.hidden, rows, D));
    detail::bufferView(scratch.other, rows, D);  // sized for the blocks' outputs
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      blocks_[l].forwardRows(form, scratch.hidden.data(), tokens.rows(), tokens.cols(), chunkSize,
                             state.layers[l], scratch.other.data(), scratch.block);
      scratch.hidden.swap(scratch.other);
    }
    return Eigen::Map<RowMatrix<Scalar>>(scratch.hidden.data(), rows, D);
  }

  /// logits = Norm(hidden; w_final) · Wᵀ, W the output projection (or the tied embedding).
  void project(MatrixRef<Scalar> hidden, MatrixRef<Scalar> logits) const {
    normalize(hidden, finalNorm_, finalNormBias_);
    stages::linear(hidden, config_.tiedEmbedding ? embed_ : outputProjection_, logits);
  }

  Tensor3<Scalar> forward(const char* where, Form form, const TokenMatrix& tokens, Index chunkSize,
                          State& state) const {
    prepare(where, tokens, state);
    Scratch scratch;
    auto hidden = runBlocks(form, tokens, chunkSize, state, scratch);
    Tensor3<Scalar> logits(tokens.rows(), tokens.cols(), config_.vocab);
    project(hidden, Eigen::Map<RowMatrix<Scalar>>(logits.data(), tokens.size(), config_.vocab));
    return logits;
  }

  using ConstMap = Eigen::Map<const RowMatrix<Scalar>>;

  /// The output projection: its own weight, or the embedding table when tied.
  const LinearWeight<Scalar>& head() const {
    return config_.tiedEmbedding ? embed_ : outputProjection_;
  }

  /// Training: the parallel or chunkwise form, RMSNorm model norms, full-precision weights.
  void requireTrainable(const char* where, Form form) const {
    detail::require(form != Form::kRecurrent, where,
                    "the recurrent form has no backward; train with the parallel or chunkwise "
                    "form");
    detail::require(config_.norm == ModelNorm::kRms, where,
                    "only RMSNorm model norms can be trained, got LayerNorm (ModelNorm::kLayer)");
    forEachWeight([&](const LinearWeight<Scalar>& weight) {
      detail::require(weight.empty() || weight.type() == WeightType::kFull, where,
                      "the weights must be full precision to be trained, got ",
                      weightTypeName(weight.type()));
    });
  }

  /// backward()'s checks of the cache and of every gradient's shape, before any write; sizes
  /// empty gradients.
  void checkBackward(const char* where, const TrainingCache& cache, Gradients& grads) const {
    const Index D = config_.block.embedDim, rows = cache.batch * cache.time;
    detail::require(cache.time >= 1 && cache.batch >= 1, where,
                    "the cache holds no forwardTraining call");
    detail::require(cache.width == D && cache.blocks.size() == blocks_.size() &&
                        cache.tokens.rows() == cache.batch && cache.tokens.cols() == cache.time &&
                        cache.logits.rows() == rows && cache.logits.cols() == config_.vocab &&
                        cache.embedded.size() >= rows * D && cache.hidden.size() >= rows * D &&
                        cache.normed.size() >= rows * D,
                    where, "the cache was not filled by this model's forwardTraining");
    const bool empty = grads.embed.size() == 0 && grads.embedNorm.size() == 0 &&
                       grads.layers.empty() && grads.finalNorm.size() == 0 &&
                       grads.outputProjection.size() == 0;
    if (empty) grads = zeroGradients();
    detail::requireShape(where, grads.embed, config_.vocab, D, "grads.embed (embed's shape)");
    detail::requireLength(where, grads.embedNorm, config_.embedNorm ? D : 0,
                          "grads.embedNorm (D with an embedding norm, else 0)");
    detail::requireEqual(where, "grads.layers (one per block)", config_.layers,
                         static_cast<Index>(grads.layers.size()));
    detail::requireLength(where, grads.finalNorm, D, "grads.finalNorm (D)");
    detail::requireShape(where, grads.outputProjection, config_.tiedEmbedding ? 0 : config_.vocab,
                         config_.tiedEmbedding ? 0 : D,
                         "grads.outputProjection (outputProjection's shape; empty when tied)");
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      const std::string layer = std::string(where) + " (layer " + std::to_string(l) + ")";
      const typename Block::TrainingCache& block = cache.blocks[l];
      detail::require(block.batch == cache.batch && block.time == cache.time, layer.c_str(),
                      "the cache was not filled by this model's forwardTraining");
      blocks_[l].checkCache(layer.c_str(), block);
      blocks_[l].sizeOrCheckGradients(layer.c_str(), grads.layers[l]);
    }
  }

  friend struct detail::ParameterSet<LanguageModel<Block>>;

  /// Calls visit(name, parameter) for each trainable parameter, in the order and with the names
  /// and shapes of Gradients::forEach: "embed_tokens.weight", ("layernorm_embedding.weight"),
  /// "layers.{i}." + the block's names, "layer_norm.weight", ("output_projection.weight" unless
  /// tied). `parameter` is an Eigen::Map of the weight in place (a vector weight as one column),
  /// writable through a non-const model (an optimiser's step). Full-precision weights and
  /// ModelNorm::kRms only (what training supports).
  template <typename Self, typename Visit>
  static void forEachParameterOf(Self& self, Visit& visit) {
    using Map = detail::ParameterMap<Self, Scalar>;
    detail::require(
        self.config_.norm == ModelNorm::kRms, "RetNetModel::forEachParameter",
        "the model's norms must be RMSNorms (ModelNorm::kRms): LayerNorm biases are not "
        "trainable parameters here");
    auto& embed = detail::fullMatrix(self.embed_);
    visit("embed_tokens.weight", Map(embed.data(), embed.rows(), embed.cols()));
    if (self.embedNorm_.size() != 0)
      visit("layernorm_embedding.weight", Map(self.embedNorm_.data(), self.embedNorm_.size(), 1));
    for (std::size_t l = 0; l < self.blocks_.size(); ++l) {
      const std::string prefix = "layers." + std::to_string(l) + ".";
      self.blocks_[l].forEachParameter(
          [&](const char* name, Map parameter) { visit((prefix + name).c_str(), parameter); });
    }
    visit("layer_norm.weight", Map(self.finalNorm_.data(), self.finalNorm_.size(), 1));
    if (!self.config_.tiedEmbedding) {
      auto& head = detail::fullMatrix(self.outputProjection_);
      visit("output_projection.weight", Map(head.data(), head.rows(), head.cols()));
    }
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
