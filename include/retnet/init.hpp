// Initial weights for training a RetNet from scratch: torchscale's initialisation, drawn from a
// seeded generator that gives the same values on every platform and standard library.
//
//   q, k, v, g projections   xavier_uniform, gain 2^-2.5   (torchscale's MultiScaleRetention)
//   out projection           xavier_uniform, gain 2^-1
//   FFN fc1, gate, fc2       U(−1/√in, 1/√in)              (nn.Linear's default)
//   embedding, head          N(0, 1/D)                      (fairseq's embedding, RetNetDecoder's
//                                                            output projection)
//   norm weights             1 (the head norm's too, with FLA's semantics: its g_norm weight)
//
// xavier_uniform with gain a draws from U(−b, b), b = a·√(6 / (in + out)).
#pragma once

#include <cmath>
#include <cstdint>

#include "retnet/model.hpp"
#include "retnet/sampling.hpp"

namespace retnet {

namespace detail {

/// One stream per (seed, tensor) of SplitMix64 (sampling.hpp), whose output is fully specified
/// (std::normal_distribution's is implementation-defined).
class InitRandom {
 public:
  InitRandom(std::uint64_t seed, std::uint64_t stream)
      : random_(seed * 0x9E3779B97F4A7C15ull + stream * 0xD1B54A32D192ED03ull + 1) {}

  double uniform() { return random_.uniform(); }  ///< [0, 1)
  /// Standard normal (Box–Muller, one value per call).
  double normal() {
    constexpr double kTwoPi = 6.28318530717958647692;
    const double u = 1.0 - random_.uniform();  // (0, 1]
    return std::sqrt(-2.0 * std::log(u)) * std::cos(kTwoPi * random_.uniform());
  }

 private:
  SplitMix64 random_;
};

template <typename Scalar>
RowMatrix<Scalar> uniformMatrix(Index rows, Index cols, double bound, InitRandom random) {
  RowMatrix<Scalar> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i)
    m.data()[i] = static_cast<Scalar>(bound * (2.0 * random.uniform() - 1.0));
  return m;
}

template <typename Scalar>
RowMatrix<Scalar> normalMatrix(Index rows, Index cols, double std, InitRandom random) {
  RowMatrix<Scalar> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(std * random.normal());
  return m;
}

/// xavier_uniform_ of an (out x in) weight with `gain`.
template <typename Scalar>
RowMatrix<Scalar> xavierUniform(Index out, Index in, double gain, InitRandom random) {
  const double bound = gain * std::sqrt(6.0 / static_cast<double>(in + out));
  return uniformMatrix<Scalar>(out, in, bound, random);
}

}  // namespace detail

/// Fresh weights of a RetNet model of `config` (torchscale's initialisation, header comment), the
/// same for the same (config, seed) everywhere. With config.embedNorm an embedding norm of ones;
/// with FLA's semantics (RetentionNormalization::kNone) a head-norm weight of ones, as FLA's
/// layer has.
template <typename Scalar>
RetNetModelWeights<Scalar> initialRetNetWeights(const RetNetModelConfig& config,
                                                std::uint64_t seed) {
  config.validate("initialRetNetWeights");
  const RetNetBlockConfig& b = config.block;
  const MultiScaleRetentionConfig r = b.retention();
  const Index D = b.embedDim, F = b.ffnDim, V = b.valueDim, dk = r.keyDim();
  const Index kv = r.keyValueHeads(), dv = r.headValueDim();
  const double qkvg = std::pow(2.0, -2.5), out = 0.5;
  const double embedStd = 1.0 / std::sqrt(static_cast<double>(D));
  std::uint64_t stream = 0;
  const auto next = [&] { return detail::InitRandom(seed, stream++); };

  RetNetModelWeights<Scalar> w;
  w.embed = detail::normalMatrix<Scalar>(config.vocab, D, embedStd, next());
  if (config.embedNorm) w.embedNorm = Vector<Scalar>::Ones(D);
  for (Index l = 0; l < config.layers; ++l) {
    RetNetBlockWeights<Scalar> layer;
    layer.retention.q = detail::xavierUniform<Scalar>(b.heads * dk, D, qkvg, next());
    layer.retention.k = detail::xavierUniform<Scalar>(kv * dk, D, qkvg, next());
    layer.retention.v = detail::xavierUniform<Scalar>(kv * dv, D, qkvg, next());
    layer.retention.g = detail::xavierUniform<Scalar>(V, D, qkvg, next());
    layer.retention.out = detail::xavierUniform<Scalar>(D, V, out, next());
    if (b.normalization == RetentionNormalization::kNone)
      layer.retention.headNorm = Vector<Scalar>::Ones(dv);
    layer.retentionNorm = Vector<Scalar>::Ones(D);
    const double fcIn = 1.0 / std::sqrt(static_cast<double>(D));
    layer.fc1 = detail::uniformMatrix<Scalar>(F, D, fcIn, next());
    layer.gate = detail::uniformMatrix<Scalar>(F, D, fcIn, next());
    layer.fc2 =
        detail::uniformMatrix<Scalar>(D, F, 1.0 / std::sqrt(static_cast<double>(F)), next());
    layer.finalNorm = Vector<Scalar>::Ones(D);
    w.layers.push_back(std::move(layer));
  }
  w.finalNorm = Vector<Scalar>::Ones(D);
  if (!config.tiedEmbedding)
    w.outputProjection = detail::normalMatrix<Scalar>(config.vocab, D, embedStd, next());
  return w;
}

}  // namespace retnet
