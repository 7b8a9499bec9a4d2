// Training, the optimiser's side: the global gradient norm and clipping by it, AdamW, and the
// learning-rate schedule (linear warm-up, then cosine decay).
//
// Everything here works on two kinds of object that the layers and the model provide:
//   - gradients, with forEach(visit(name, gradient)) (MultiScaleRetentionGradients,
//     RetNetBlockGradients, the model's): plain Eigen matrices and vectors;
//   - parameters, with forEachParameter(visit(name, Eigen::Map<RowMatrix<Scalar>>)) (the layers
//     and the model themselves): the weights in place, in the same order, names and sizes.
// A step pairs them one to one and checks that they match, so a gradient can never be applied to
// the wrong weight. Every operation is elementwise or a sum in a fixed order: the results do not
// depend on the thread count.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "retnet/detail/checks.hpp"
#include "retnet/errors.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

/// The global L2 norm of all gradients, √(Σ g²) over every element of every tensor, summed in
/// double in forEach order (torch.nn.utils.clip_grad_norm_'s total norm).
template <typename Gradients>
double gradientNorm(const Gradients& grads) {
  double sum = 0;
  grads.forEach([&](const char*, const auto& gradient) {
    const auto* data = gradient.data();
    for (Index i = 0; i < gradient.size(); ++i) {
      const double g = static_cast<double>(data[i]);
      sum += g * g;
    }
  });
  return std::sqrt(sum);
}

/// Clips by global norm as torch.nn.utils.clip_grad_norm_ does: with N the global norm, every
/// gradient is multiplied by maxNorm / (N + 1e-6) when that is below 1. Returns N (before
/// clipping). A non-finite N (an overflow or a NaN in the backward) is an InvalidArgument:
/// applying it would destroy the weights.
template <typename Gradients>
double clipGradientNorm(Gradients& grads, double maxNorm) {
  const char* where = "clipGradientNorm";
  detail::require(maxNorm > 0 && std::isfinite(maxNorm), where,
                  "maxNorm must be positive and finite, got ", maxNorm);
  const double norm = gradientNorm(grads);
  detail::require(std::isfinite(norm), where, "the gradients' global norm is not finite (", norm,
                  "): a NaN or an overflow");
  const double coefficient = maxNorm / (norm + 1e-6);
  if (coefficient < 1.0) {
    grads.forEach([&](const char*, auto& gradient) {
      using Element = std::decay_t<decltype(*gradient.data())>;
      gradient *= static_cast<Element>(coefficient);
    });
  }
  return norm;
}

/// AdamW's settings (torch.optim.AdamW's names and defaults, except the weight decay's scope).
struct AdamWOptions {
  double learningRate = 1e-3;  ///< used by step(model, grads); step(…, lr) overrides it
  double beta1 = 0.9;          ///< decay of the first moment
  double beta2 = 0.999;        ///< decay of the second moment
  double eps = 1e-8;           ///< added to √v̂
  double weightDecay = 0.01;  ///< decoupled: p ← p·(1 − lr·weightDecay) before the Adam update
  /// Whether the weight decay also applies to vector parameters (the norms' weights). false
  /// (GPT-2/nanoGPT practice): matrices only, the projections, FFN and embedding; true:
  /// every parameter, as torch.optim.AdamW over one parameter group.
  bool decayVectors = false;

  void validate(const char* where) const {
    detail::require(learningRate >= 0 && std::isfinite(learningRate), where,
                    "learningRate must be finite and >= 0, got ", learningRate);
    detail::require(beta1 >= 0 && beta1 < 1, where, "beta1 must be in [0, 1), got ", beta1);
    detail::require(beta2 >= 0 && beta2 < 1, where, "beta2 must be in [0, 1), got ", beta2);
    detail::require(eps > 0 && std::isfinite(eps), where, "eps must be positive, got ", eps);
    detail::require(weightDecay >= 0 && std::isfinite(weightDecay), where,
                    "weightDecay must be finite and >= 0, got ", weightDecay);
  }
};

/// AdamW (Loshchilov & Hutter; torch.optim.AdamW's update, step by step): at step t (from 1),
/// for each parameter p with gradient g,
///
///   p ← p·(1 − lr·λ)                          (decoupled weight decay; see decayVectors)
///   m ← β1·m + (1 − β1)·g,   v ← β2·v + (1 − β2)·g²
///   p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
///
/// The moments are kept per parameter name in Scalar (float32 moments for a float model, as
/// PyTorch keeps them in the parameter's dtype). They are created on the first step from the
/// parameters' names and sizes; every later step must see the same ones.
template <typename Scalar>
class AdamW {
 public:
  /// One parameter's moments, flattened (row-major), and its shape.
  struct Moments {
    std::string name;
    Index rows = 0, cols = 0;
    Vector<Scalar> m, v;  ///< exp_avg, exp_avg_sq (rows·cols)
  };

  explicit AdamW(const AdamWOptions& options = {}) : options_(options) {
    options_.validate("AdamW");
  }
  /// Resumes from a saved state: `steps` taken, and the moments of every parameter, in the
  /// parameters' order (io/training_checkpoint.hpp reads them from a file).
  AdamW(const AdamWOptions& options, std::int64_t steps, std::vector<Moments> moments)
      : AdamW(options) {
    detail::require(steps >= 0, "AdamW", "steps must be >= 0, got ", steps);
    detail::require(steps == 0 || !moments.empty(), "AdamW", "a state after ", steps,
                    " steps needs the moments of its parameters");
    for (const Moments& moment : moments) {
      const Index size = moment.rows * moment.cols;
      detail::require(moment.rows >= 0 && moment.cols >= 0 && moment.m.size() == size &&
                          moment.v.size() == size,
                      "AdamW", "the moments of '", moment.name, "' must hold ", moment.rows, " x ",
                      moment.cols, " values each, got ", moment.m.size(), " and ", moment.v.size());
    }
    steps_ = steps;
    moments_ = std::move(moments);
  }

  const AdamWOptions& options() const { return options_; }
  std::int64_t steps() const { return steps_; }  ///< steps taken
  const std::vector<Moments>& moments() const { return moments_; }

  /// One step at options().learningRate.
  template <typename Parameters, typename Gradients>
  void step(Parameters& parameters, const Gradients& grads) {
    step(parameters, grads, options_.learningRate);
  }

  /// One step at `learningRate` (a schedule's value): updates every parameter of `parameters`
  /// (anything with forEachParameter: a layer, a block, a model) from its gradient in `grads`
  /// (the matching gradients struct). InvalidArgument, before any parameter changes, if names,
  /// order or sizes differ from the gradients' or from the earlier steps'.
  template <typename Parameters, typename Gradients>
  void step(Parameters& parameters, const Gradients& grads, double learningRate) {
    const char* where = "AdamW::step";
    detail::require(learningRate >= 0 && std::isfinite(learningRate), where,
                    "learningRate must be finite and >= 0, got ", learningRate);
    // Pair parameters and gradients by position, checking names and sizes, before any change.
    std::vector<Pair> pairs;
    grads.forEach([&](const char* name, const auto& gradient) {
      static_assert(std::is_same_v<std::decay_t<decltype(*gradient.data())>, Scalar>,
                    "AdamW<Scalar>: the gradients must hold Scalar");
      pairs.push_back({name, nullptr, gradient.data(), gradient.size(), 0, 0});
    });
    std::size_t count = 0;
    parameters.forEachParameter([&](const char* name, auto parameter) {
      detail::require(count < pairs.size(), where, "the parameters go on after the gradients end (",
                      pairs.size(), " gradients), at '", name, "'");
      Pair& pair = pairs[count++];
      detail::require(pair.name == name, where, "parameter ", count - 1, " is '", name,
                      "' but gradient ", count - 1, " is '", pair.name, "'");
      detail::require(parameter.size() == pair.size, where, "parameter '", name, "' has ",
                      parameter.size(), " values, its gradient ", pair.size);
      pair.parameter = parameter.data();
      pair.rows = parameter.rows();
      pair.cols = parameter.cols();
    });
    detail::require(count == pairs.size(), where, "there are ", pairs.size(),
                    " gradients but only ", count, " parameters");
    if (moments_.empty()) {
      for (const Pair& pair : pairs)
        moments_.push_back({pair.name, pair.rows, pair.cols, Vector<Scalar>::Zero(pair.size),
                            Vector<Scalar>::Zero(pair.size)});
    }
    detail::require(moments_.size() == pairs.size(), where, "the optimiser holds moments of ",
                    moments_.size(), " parameters, the model has ", pairs.size());
    for (std::size_t i = 0; i < pairs.size(); ++i) {
      const Moments& moment = moments_[i];
      detail::require(moment.name == pairs[i].name && moment.m.size() == pairs[i].size, where,
                      "the optimiser's parameter ", i, " is '", moment.name, "' (", moment.m.size(),
                      " values), the model's '", pairs[i].name, "' (", pairs[i].size, ")");
    }

    ++steps_;
    const double t = static_cast<double>(steps_);
    const auto beta1 = static_cast<Scalar>(options_.beta1);
    const auto beta2 = static_cast<Scalar>(options_.beta2);
    const auto stepSize = static_cast<Scalar>(learningRate / (1.0 - std::pow(options_.beta1, t)));
    const auto correction2 = static_cast<Scalar>(std::sqrt(1.0 - std::pow(options_.beta2, t)));
    const auto eps = static_cast<Scalar>(options_.eps);
    const auto shrink = static_cast<Scalar>(1.0 - learningRate * options_.weightDecay);
    for (std::size_t i = 0; i < pairs.size(); ++i) {
      const Pair& pair = pairs[i];
      using Array = Eigen::Array<Scalar, Eigen::Dynamic, 1>;
      Eigen::Map<Array> p(pair.parameter, pair.size);
      const Eigen::Map<const Array> g(pair.gradient, pair.size);
      auto m = moments_[i].m.array();
      auto v = moments_[i].v.array();
      const bool vector = pair.rows == 1 || pair.cols == 1;
      if (options_.weightDecay != 0 && (options_.decayVectors || !vector)) p *= shrink;
      m = beta1 * m + (Scalar(1) - beta1) * g;
      v = beta2 * v + (Scalar(1) - beta2) * g.square();
      p -= stepSize * m / (v.sqrt() / correction2 + eps);
    }
  }

 private:
  struct Pair {
    std::string name;
    Scalar* parameter;
    const Scalar* gradient;
    Index size, rows, cols;
  };

  AdamWOptions options_;
  std::int64_t steps_ = 0;
  std::vector<Moments> moments_;
};

/// The learning rate at step s (from 0): linear warm-up to `peak` over `warmupSteps` steps
/// (peak·(s + 1)/warmupSteps), then a half cosine from `peak` down to `minimum` at `totalSteps`,
/// and `minimum` after that.
struct WarmupCosineSchedule {
  double peak = 1e-3;
  double minimum = 0.0;
  std::int64_t warmupSteps = 0;
  std::int64_t totalSteps = 1;

  WarmupCosineSchedule() = default;
  WarmupCosineSchedule(double peak, double minimum, std::int64_t warmupSteps,
                       std::int64_t totalSteps)
      : peak(peak), minimum(minimum), warmupSteps(warmupSteps), totalSteps(totalSteps) {
    const char* where = "WarmupCosineSchedule";
    detail::require(peak >= 0 && std::isfinite(peak), where, "peak must be finite and >= 0, got ",
                    peak);
    detail::require(minimum >= 0 && minimum <= peak, where, "minimum must be in [0, peak = ", peak,
                    "], got ", minimum);
    detail::require(warmupSteps >= 0 && totalSteps >= 1 && warmupSteps <= totalSteps, where,
                    "need 0 <= warmupSteps <= totalSteps and totalSteps >= 1, got warmupSteps ",
                    warmupSteps, ", totalSteps ", totalSteps);
  }

  double operator()(std::int64_t step) const {
    constexpr double kPi = 3.14159265358979323846;
    detail::require(step >= 0, "WarmupCosineSchedule", "step must be >= 0, got ", step);
    if (step < warmupSteps)
      return peak * static_cast<double>(step + 1) / static_cast<double>(warmupSteps);
    if (step >= totalSteps) return minimum;
    const double progress =
        static_cast<double>(step - warmupSteps) /
        static_cast<double>(std::max<std::int64_t>(totalSteps - warmupSteps, 1));
    return minimum + 0.5 * (peak - minimum) * (1.0 + std::cos(kPi * progress));
  }
};

}  // namespace retnet
