// Stage: the softmax cross-entropy of a language model's logits against integer targets (the
// training loss; PyTorch's F.cross_entropy with reduction="mean" and an ignore_index), and its
// gradient.
//
// Each row is made stable by subtracting its maximum before the exponentials. The loss is summed
// in double over fixed blocks of rows (detail::sumOverRowBlocks), so no bit depends on the thread
// count.
#pragma once

#include <cmath>
#include <cstdint>

#include "retnet/detail/checks.hpp"
#include "retnet/detail/parallel_for.hpp"
#include "retnet/detail/row_sums.hpp"
#include "retnet/errors.hpp"
#include "retnet/tensor.hpp"

namespace retnet {

namespace detail {
/// Checks every target (in [0, vocab) or equal to ignoreIndex) and returns how many count.
inline Index countTargets(const char* where, const std::int64_t* targets, Index rows, Index vocab,
                          std::int64_t ignoreIndex) {
  require(targets != nullptr || rows == 0, where, "the targets pointer is null");
  Index count = 0;
  for (Index r = 0; r < rows; ++r) {
    if (targets[r] == ignoreIndex) continue;
    require(targets[r] >= 0 && targets[r] < vocab, where, "targets must be in [0, ", vocab,
            ") or the ignore index ", ignoreIndex, ", got ", targets[r], " at row ", r);
    ++count;
  }
  return count;
}
}  // namespace detail

namespace stages {

/// PyTorch's default ignore_index.
inline constexpr std::int64_t kIgnoreIndex = -100;

/// The mean cross-entropy over the rows whose target is not `ignoreIndex`:
///   L = (1/N) Σ_{r : t_r ≠ ignore} [ logsumexp_v z_rv − z_{r,t_r} ],   N = #{r : t_r ≠ ignore}
/// (natural log). With no counted row (N = 0) the loss is 0 (PyTorch returns NaN, 0/0).
///   logits z (rows x vocab), vocab >= 1; targets (rows), each in [0, vocab) or ignoreIndex
template <typename Scalar>
double crossEntropy(detail::NoDeduce<ConstMatrixRef<Scalar>> logits, const std::int64_t* targets,
                    std::int64_t ignoreIndex = kIgnoreIndex) {
  const char* where = "stages::crossEntropy";
  detail::require(logits.cols() >= 1, where, "the vocabulary must be non-empty");
  const Index count =
      detail::countTargets(where, targets, logits.rows(), logits.cols(), ignoreIndex);
  if (count == 0) return 0.0;
  const auto sum = detail::sumOverRowBlocks<double>(
      logits.rows(), 1, [&](Index begin, Index rows, auto partial) {
        for (Index r = begin; r < begin + rows; ++r) {
          if (targets[r] == ignoreIndex) continue;
          const Scalar max = logits.row(r).maxCoeff();
          const Scalar total = (logits.row(r).array() - max).exp().sum();
          partial(0) += static_cast<double>(max) + std::log(static_cast<double>(total)) -
                        static_cast<double>(logits(r, static_cast<Index>(targets[r])));
        }
      });
  return sum(0) / static_cast<double>(count);
}

/// crossEntropy() and its gradient: returns L and writes
///   dz_r = (softmax(z_r) − onehot(t_r)) / N  for the counted rows,  dz_r = 0  for ignored ones
/// (all zero when N = 0).
///   logits z (rows x vocab); targets (rows); dLogits (rows x vocab), written; it may be logits
///   itself (in place), not overlap it otherwise. The targets are checked before anything is
///   written.
template <typename Scalar>
double crossEntropyBackward(detail::NoDeduce<ConstMatrixRef<Scalar>> logits,
                            const std::int64_t* targets, std::int64_t ignoreIndex,
                            detail::NoDeduce<MatrixRef<Scalar>> dLogits) {
  const char* where = "stages::crossEntropyBackward";
  detail::require(logits.cols() >= 1, where, "the vocabulary must be non-empty");
  detail::requireShape(where, dLogits, logits.rows(), logits.cols(), "dLogits (logits' shape)");
  const Index count =
      detail::countTargets(where, targets, logits.rows(), logits.cols(), ignoreIndex);
  const Scalar inverseCount = count == 0 ? Scalar(0) : Scalar(1) / static_cast<Scalar>(count);
  const auto sum = detail::sumOverRowBlocks<double>(
      logits.rows(), 1, [&](Index begin, Index rows, auto partial) {
        for (Index r = begin; r < begin + rows; ++r) {
          if (targets[r] == ignoreIndex) {
            dLogits.row(r).setZero();
            continue;
          }
          const auto target = static_cast<Index>(targets[r]);
          const Scalar max = logits.row(r).maxCoeff();
          const Scalar chosen = logits(r, target);  // read before an in-place write
          dLogits.row(r).array() = (logits.row(r).array() - max).exp();
          const Scalar total = dLogits.row(r).sum();
          partial(0) += static_cast<double>(max) + std::log(static_cast<double>(total)) -
                        static_cast<double>(chosen);
          dLogits.row(r) *= inverseCount / total;
          dLogits(r, target) -= inverseCount;
        }
      });
  return count == 0 ? 0.0 : sum(0) / static_cast<double>(count);
}

}  // namespace stages
}  // namespace retnet
