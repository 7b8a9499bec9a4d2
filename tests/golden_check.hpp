// Checks a golden file (torchscale's format, see tests/data) in every form, whatever its
// dimensions: the layer is built from the file by torchscale's names, every size read from it.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "retnet/io/checkpoint.hpp"
#include "test_util.hpp"

namespace retnet::testing {

// Same form, same precision as the golden data: an independent float64 implementation matches
// to ~7e-15, and mistakes in torchscale's per-form factors show up only through the group-norm
// eps at 1e-6…1e-4 relative, so 1e-9 catches them with margin for rounding
// (docs/semantics/torchscale.md §4).
// In float32, torchscale itself is within 3.3e-6 of the golden data; 1e-4 leaves room for
// rounding in our different (but equally stable) summation orders.
template <typename Scalar>
constexpr double goldenTolerance() {
  return std::is_same_v<Scalar, double> ? 1e-9 : 1e-4;
}

inline const char* goldenOutputName(Form form) {
  return form == Form::kParallel    ? "out_parallel"
         : form == Form::kChunkwise ? "out_chunkwise"
                                    : "out_recurrent";
}

template <typename Scalar, typename Layer>
void checkLayerForms(const io::SafetensorsFile& file, const Layer& layer) {
  const auto x = file.readTensor<Scalar, 3>("x");
  const auto chunk = static_cast<Index>(std::stol(file.metadataValue("chunk_size").value_or("0")));
  for (const Form form : {Form::kParallel, Form::kChunkwise, Form::kRecurrent}) {
    typename Layer::State state;
    const Tensor3<Scalar> y = layer.forward(form, x, chunk, state);
    const double error = normwiseError(y, file.readFlat<double>(goldenOutputName(form)));
    std::printf("%s %s %s: normwise error %.2e\n", file.displayName().c_str(), formName(form),
                std::is_same_v<Scalar, double> ? "double" : "float", error);
    EXPECT_LE(error, goldenTolerance<Scalar>()) << file.displayName() << " " << formName(form);
    for (Index b = 0; b < x.dimension(0); ++b) EXPECT_EQ(state.position(b), x.dimension(1));
  }
}

/// Builds the layer a golden file describes (metadata `kind`: msr or layer) and checks it.
template <typename Scalar>
void checkGoldenLayerFile(const io::SafetensorsFile& file) {
  const std::string kind = file.metadataValue("kind").value_or("");
  if (kind == "msr") {
    checkLayerForms<Scalar>(file, io::loadMultiScaleRetention<Scalar>(file));
  } else if (kind == "layer") {
    checkLayerForms<Scalar>(file, io::loadRetNetBlock<Scalar>(file));
  } else {
    ADD_FAILURE() << file.displayName() << ": not a layer file (kind '" << kind << "')";
  }
}

}  // namespace retnet::testing
