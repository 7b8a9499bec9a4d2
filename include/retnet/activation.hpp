// The activations of the layers: swish (SiLU) for the retention gate, gelu or swish in RetNet's
// FFN; RWKV-4's sigmoid (receptance) and squared ReLU (channel mixing).
#pragma once

#include <string>

#include "retnet/errors.hpp"

namespace retnet {

enum class Activation {
  kSwish,        ///< z · sigmoid(z)
  kGelu,         ///< exact gelu, 0.5 · z · (1 + erf(z / √2))
  kSigmoid,      ///< σ(z) = 1 / (1 + e^(−z))
  kReluSquared,  ///< max(z, 0)²
};

/// torchscale's name of an activation ("swish", "gelu"; "sigmoid", "relu_squared").
inline const char* activationName(Activation a) {
  switch (a) {
    case Activation::kSwish:
      return "swish";
    case Activation::kGelu:
      return "gelu";
    case Activation::kSigmoid:
      return "sigmoid";
    default:
      return "relu_squared";
  }
}

/// Parses torchscale's activation names (its FFN and gate functions); "silu" is accepted for
/// swish.
inline Activation parseActivation(const std::string& name) {
  if (name == "swish" || name == "silu") return Activation::kSwish;
  if (name == "gelu") return Activation::kGelu;
  throw InvalidArgument("activation must be \"swish\" or \"gelu\", got \"" + name + "\"");
}

}  // namespace retnet
