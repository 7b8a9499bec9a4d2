// retnet: the layers of "Retentive Network: A Successor to Transformer for Large Language
// Models" (Sun et al., 2023) as header-only C++17 on Eigen.
#pragma once

#include "retnet/detail/parallel_for.hpp"  // IWYU pragma: export (numThreads, setNumThreads)
#include "retnet/errors.hpp"               // IWYU pragma: export
#include "retnet/retention.hpp"            // IWYU pragma: export
#include "retnet/state.hpp"                // IWYU pragma: export
#include "retnet/tensor.hpp"               // IWYU pragma: export
