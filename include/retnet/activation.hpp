// The activations RetNet uses: swish (SiLU) for the retention gate, gelu or swish in the FFN.
#pragma once

#include <string>

#include "retnet/errors.hpp"

namespace retnet {

enum class Activation {
  kSwish,  ///< z · sigmoid(z)
  kGelu,   ///< exact gelu, 0.5 · z · (1 + erf(z / √2))
};

/// torchscale's name of an activation ("swish", "gelu").
inline const char* activationName(Activation a) {
  return a == Activation::kSwish ? "swish" : "gelu";
}

/// Parses torchscale's activation names; "silu" is accepted for swish.
inline Activation parseActivation(const std::string& name) {
  if (name == "swish" || name == "silu") return Activation::kSwish;
  if (name == "gelu") return Activation::kGelu;
  throw InvalidArgument("activation must be \"swish\" or \"gelu\", got \"" + name + "\"");
}

}  // namespace retnet
