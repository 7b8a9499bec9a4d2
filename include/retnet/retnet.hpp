// retnet: the layers of "Retentive Network: A Successor to Transformer for Large Language
// Models" (Sun et al., 2023) as header-only C++17 on Eigen.
//
// This umbrella needs only Eigen. The checkpoint and state-file readers (retnet/io/*.hpp) also
// need nlohmann/json and are included on their own.
#pragma once

#include "retnet/activation.hpp"            // IWYU pragma: export
#include "retnet/block.hpp"                 // IWYU pragma: export
#include "retnet/detail/parallel_for.hpp"   // IWYU pragma: export (numThreads, setNumThreads)
#include "retnet/errors.hpp"                // IWYU pragma: export
#include "retnet/form.hpp"                  // IWYU pragma: export
#include "retnet/model.hpp"                 // IWYU pragma: export
#include "retnet/multiscale_retention.hpp"  // IWYU pragma: export
#include "retnet/retention.hpp"             // IWYU pragma: export
#include "retnet/rotary.hpp"                // IWYU pragma: export
#include "retnet/sampling.hpp"              // IWYU pragma: export
#include "retnet/state.hpp"                 // IWYU pragma: export
#include "retnet/tensor.hpp"                // IWYU pragma: export
