// A Transformer decoder layer with a KV cache: the baseline the RetNet decode step is measured
// against. Written with the same care for speed as retnet's recurrent step and with the same
// shapes, so the only difference left is softmax attention over a growing cache versus
// retention over a fixed-size state:
//
//   h = x + Wout · concat_h( softmax(K_h q_h / sqrt(dk)) V_h )    q, k rotated (rotary), pre-norm
//   y = h + fc2( act(fc1 z) ⊙ gate z ),  z = RMSNorm(h)
//
// q and k are (D, D), v is (V, D) and out (D, V) (retnet's sizes, minus its output gate g), the
// FFN is retnet's GLU FFN, and the RMS norms, activations and rotary embedding are retnet's own
// code. The projections are one stacked GEMV; the cache is preallocated and contiguous per head
// ((maxLength, dk) keys and (maxLength, dv) values), so attention is two matrix-vector products
// over it (written as row loops, which stream the cache at full bandwidth); heads run in
// parallel like retnet's (b, h) tasks when OpenMP is on.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>

#include "retnet/activation.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/errors.hpp"
#include "retnet/rotary.hpp"
#include "retnet/stages/elementwise.hpp"
#include "retnet/stages/linear.hpp"
#include "retnet/stages/norms.hpp"
#include "retnet/tensor.hpp"

namespace retnet_bench {

struct TransformerConfig {
  retnet::Index embedDim = 0;  // D
  retnet::Index valueDim = 0;  // V (concatenated value heads)
  retnet::Index heads = 0;     // H
  retnet::Index ffnDim = 0;    // F
  double eps = 1e-6;
  retnet::Activation activation = retnet::Activation::kGelu;

  retnet::Index keyDim() const { return embedDim / heads; }
  retnet::Index headValueDim() const { return valueDim / heads; }
};

/// Weights in PyTorch's (out, in) layout, no biases.
struct TransformerWeights {
  retnet::RowMatrix<float> q, k;    // (D, D)
  retnet::RowMatrix<float> v;       // (V, D)
  retnet::RowMatrix<float> out;     // (D, V)
  retnet::Vector<float> attnNorm;   // (D)
  retnet::RowMatrix<float> fc1;     // (F, D)
  retnet::RowMatrix<float> gate;    // (F, D)
  retnet::RowMatrix<float> fc2;     // (D, F)
  retnet::Vector<float> finalNorm;  // (D)
};

/// One decoder layer for batch 1, decoding one token at a time into a preallocated KV cache.
class TransformerLayer {
 public:
  using Index = retnet::Index;
  using Matrix = retnet::RowMatrix<float>;
  using VectorF = retnet::Vector<float>;
  using Linear = retnet::LinearWeight<float>;

  TransformerLayer(const TransformerConfig& config, const TransformerWeights& w, Index maxLength)
      : config_(config), rotary_(config.keyDim()), maxLength_(maxLength) {
    const Index D = config.embedDim, V = config.valueDim, F = config.ffnDim;
    retnet::detail::require(D % config.heads == 0 && V % config.heads == 0, "TransformerLayer",
                            "heads must divide D and V");
    const Linear scaledQ = Matrix(w.q * (1.0f / std::sqrt(static_cast<float>(config.keyDim()))));
    const Linear k = w.k, v = w.v, fc1 = w.fc1, gate = w.gate;
    inputWeights_ = Linear::stacked({&scaledQ, &k, &v});  // q / sqrt(dk), k, v: one GEMV
    outputWeights_ = Linear(w.out);
    attnNorm_ = w.attnNorm;
    ffnInput_ = Linear::stacked({&fc1, &gate});
    ffnOutput_ = Linear(w.fc2);
    finalNorm_ = w.finalNorm;

    keys_.resize(config.heads * maxLength * config.keyDim());
    values_.resize(config.heads * maxLength * config.headValueDim());
    scores_.resize(config.heads * maxLength);
    projections_.resize(2 * D + V);
    attended_.resize(V);
    normed_.resize(D);
    residual_.resize(D);
    hidden_.resize(2 * F);
    cosines_.resize(rotary_.pairs());
    sines_.resize(rotary_.pairs());
  }

  const TransformerConfig& config() const { return config_; }
  Index length() const { return length_; }
  Index maxLength() const { return maxLength_; }

  /// Sets the number of cached positions (the cache keeps whatever it holds).
  void setLength(Index length) {
    retnet::detail::require(length >= 0 && length <= maxLength_, "TransformerLayer::setLength",
                            "length out of range");
    length_ = length;
  }

  /// Keys (per head, dk each) and values (dv each) of one position, for filling the cache.
  float* keyRow(Index head, Index position) {
    return keys_.data() + (head * maxLength_ + position) * config_.keyDim();
  }
  float* valueRow(Index head, Index position) {
    return values_.data() + (head * maxLength_ + position) * config_.headValueDim();
  }

  /// Bytes of cache in use: length · (D + V) floats.
  double cacheBytes() const {
    return 4.0 * static_cast<double>(length_) *
           static_cast<double>(config_.embedDim + config_.valueDim);
  }
  /// Bytes of weights read by attentionStep and by layerStep.
  double attentionWeightBytes() const {
    return 4.0 *
           static_cast<double>(inputWeights_.matrix().size() + outputWeights_.matrix().size());
  }
  double layerWeightBytes() const {
    return attentionWeightBytes() +
           4.0 * static_cast<double>(ffnInput_.matrix().size() + ffnOutput_.matrix().size() +
                                     attnNorm_.size() + finalNorm_.size());
  }

  /// Attention only (the analogue of MultiScaleRetention's step): x (D) -> y (D); appends the
  /// token's k and v to the cache and attends over length() + 1 positions.
  void attentionStep(const float* x, float* y) {
    retnet::detail::require(length_ < maxLength_, "TransformerLayer", "KV cache full");
    const Index D = config_.embedDim, H = config_.heads;
    const Index dk = config_.keyDim(), dv = config_.headValueDim();
    const Index position = length_, n = length_ + 1;

    // The dense layers use retnet's own (stages::linear): the same code, threads and speed.
    const Eigen::Map<const Matrix> input(x, 1, D);
    Eigen::Map<Matrix> projections(projections_.data(), 1, projections_.size());
    retnet::stages::linear(input, inputWeights_, projections);
    rotary_.fillTable(position, cosines_.data(), sines_.data());
    rotary_.rotate(projections_.data(), H, cosines_.data(), sines_.data());      // q
    rotary_.rotate(projections_.data() + D, H, cosines_.data(), sines_.data());  // k
    for (Index h = 0; h < H; ++h) {
      std::copy_n(projections_.data() + D + h * dk, dk, keyRow(h, position));
      std::copy_n(projections_.data() + 2 * D + h * dv, dv, valueRow(h, position));
    }

    retnet::detail::parallelFor(H, [&](Index h, int) {
      const Eigen::Map<const Matrix> keys(keyRow(h, 0), n, dk);      // (n, dk)
      const Eigen::Map<const Matrix> values(valueRow(h, 0), n, dv);  // (n, dv)
      const Eigen::Map<const VectorF> query(projections_.data() + h * dk, dk);
      Eigen::Map<VectorF> scores(scores_.data() + h * maxLength_, n);
      // Both passes over the cache as plain row loops: Eigen's GEMV reaches only about half the
      // streaming bandwidth on such tall, short-row matrices (rows of 256 / 512 floats), these
      // loops reach it (see bench/README.md).
      for (Index j = 0; j < n; ++j) scores(j) = keys.row(j).dot(query.transpose());
      const float top = scores.maxCoeff();
      scores = (scores.array() - top).exp();  // stable softmax, normalised at the end
      const float total = scores.sum();
      Eigen::Map<VectorF> head(attended_.data() + h * dv, dv);
      head.setZero();
      for (Index j = 0; j < n; ++j) head += scores(j) * values.row(j).transpose();
      head *= 1.0f / total;
    });
    const Eigen::Map<const Matrix> attended(attended_.data(), 1, attended_.size());
    Eigen::Map<Matrix> output(y, 1, D);
    retnet::stages::linear(attended, outputWeights_, output);
    length_ = n;
  }

  /// The whole pre-norm layer (the analogue of RetNetBlock's step): x (D) -> y (D).
  void layerStep(const float* x, float* y) {
    const Index D = config_.embedDim, F = config_.ffnDim;
    const Eigen::Map<const VectorF> input(x, D);
    auto normed = Eigen::Map<Matrix>(normed_.data(), 1, D);
    normed = input.transpose();
    retnet::stages::rmsNorm(normed, attnNorm_.data(), config_.eps, normed);
    attentionStep(normed_.data(), residual_.data());
    residual_ += input;

    normed = residual_.transpose();
    retnet::stages::rmsNorm(normed, finalNorm_.data(), config_.eps, normed);
    Eigen::Map<Matrix> hidden(hidden_.data(), 1, hidden_.size());
    retnet::stages::linear(normed, ffnInput_, hidden);
    retnet::stages::activate<float>(hidden.leftCols(F), config_.activation);
    auto activated = hidden_.head(F);
    activated.array() *= hidden_.tail(F).array();
    const Eigen::Map<const Matrix> activatedRow(hidden_.data(), 1, F);
    Eigen::Map<Matrix> output(y, 1, D);
    retnet::stages::linear(activatedRow, ffnOutput_, output);
    output += residual_.transpose();
  }

 private:
  TransformerConfig config_;
  retnet::RotaryEmbedding<float> rotary_;
  Index maxLength_;
  Index length_ = 0;
  Linear inputWeights_;   // (2D + V, D)
  Linear outputWeights_;  // (D, V)
  VectorF attnNorm_, finalNorm_;
  Linear ffnInput_;   // (2F, D)
  Linear ffnOutput_;  // (D, F)
  VectorF keys_, values_, scores_;
  VectorF projections_, attended_, normed_, residual_, hidden_, cosines_, sines_;
};

}  // namespace retnet_bench
