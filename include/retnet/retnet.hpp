// retnet: the layers of "Retentive Network: A Successor to Transformer for Large Language
// Models" (Sun et al., 2023) as header-only C++17 on Eigen.
//
// This umbrella needs only Eigen. The checkpoint and state-file readers (retnet/io/*.hpp) also
// need nlohmann/json and are included on their own.
#pragma once

#include "retnet/activation.hpp"            // IWYU pragma: export
#include "retnet/bf16_gemm.hpp"             // IWYU pragma: export
#include "retnet/block.hpp"                 // IWYU pragma: export
#include "retnet/errors.hpp"                // IWYU pragma: export
#include "retnet/form.hpp"                  // IWYU pragma: export
#include "retnet/generation.hpp"            // IWYU pragma: export
#include "retnet/model.hpp"                 // IWYU pragma: export
#include "retnet/model_state.hpp"           // IWYU pragma: export
#include "retnet/multiscale_retention.hpp"  // IWYU pragma: export
#include "retnet/retention.hpp"             // IWYU pragma: export
#include "retnet/rotary.hpp"                // IWYU pragma: export
#include "retnet/rwkv4.hpp"                 // IWYU pragma: export
#include "retnet/rwkv4_state.hpp"           // IWYU pragma: export
#include "retnet/sampling.hpp"              // IWYU pragma: export
#include "retnet/sequence_layer.hpp"        // IWYU pragma: export
#include "retnet/stages/decay.hpp"          // IWYU pragma: export
#include "retnet/stages/elementwise.hpp"    // IWYU pragma: export
#include "retnet/stages/embedding.hpp"      // IWYU pragma: export
#include "retnet/stages/ffn.hpp"            // IWYU pragma: export
#include "retnet/stages/group_norm.hpp"     // IWYU pragma: export
#include "retnet/stages/linear.hpp"         // IWYU pragma: export
#include "retnet/stages/loss.hpp"           // IWYU pragma: export
#include "retnet/stages/norms.hpp"          // IWYU pragma: export
#include "retnet/stages/retention.hpp"      // IWYU pragma: export
#include "retnet/stages/token_shift.hpp"    // IWYU pragma: export
#include "retnet/stages/wkv.hpp"            // IWYU pragma: export
#include "retnet/state.hpp"                 // IWYU pragma: export
#include "retnet/tensor.hpp"                // IWYU pragma: export
#include "retnet/threads.hpp"               // IWYU pragma: export
