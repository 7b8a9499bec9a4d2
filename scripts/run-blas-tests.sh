#!/usr/bin/env bash
# Builds the numerical tests with the two optional backends and runs them (Release, g++ by
# default, OpenMP, warnings as errors):
#   -DRETNET_BLAS=ON: Eigen's matrix products in OpenBLAS through EIGEN_USE_BLAS. Checked by the
#     retention forms, the stages, the layers and their forms against torchscale's golden layers,
#     the model against its golden decoders, the layers' backward against torchscale's gradients,
#     and the bitwise thread-count independence (LayerThreads). The BLAS runs one thread per
#     call, as docs/performance.md asks: retnet's own threads split the work.
#   -DRETNET_ONEDNN=ON: BF16 weights' prefill products as oneDNN BF16 GEMMs. Checked by
#     test_bf16_gemm (the stated bound, threads, a model) and test_lowp_weights (the golden models
#     in every weight type). Without AVX-512 oneDNN has no BF16 matmul and the GEMM's cases skip,
#     saying so; where it is not the default (an Intel CPU without AMX), test_bf16_gemm forces it
#     on.
# (The other golden and oracle tests run the same products through the same stages: the default
# builds cover them, and leaving them out keeps CI's time on a slower 2-core machine well inside
# its limit.)
# CI's one g++ build is this one (the others are clang's): CXX picks another compiler.
# Usage: [CXX=clang++] scripts/run-blas-tests.sh [BUILD_DIR]   (default: build-blas)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-blas}"
scripts/install-deps.sh
tests=(test_retention test_stages test_layers test_model test_layer_backward test_bf16_gemm
       test_lowp_weights)
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="${CXX:-g++}" \
  -DRETNET_WERROR=ON -DRETNET_OPENMP=ON -DRETNET_BLAS=ON -DBLA_VENDOR=OpenBLAS -DRETNET_ONEDNN=ON \
  -DRETNET_BUILD_BENCHMARKS=OFF -DRETNET_BUILD_EXAMPLES=OFF
cmake --build "$build" -j"$(nproc)" --target "${tests[@]}"
# The products must really be the BLAS's: the binaries import sgemm_. (grep reads all of nm's
# output, not -q: under pipefail an early exit would fail the pipeline with nm's SIGPIPE.)
nm -D --undefined-only "$build/tests/test_layers" | grep -w sgemm_ >/dev/null ||
  { echo "run-blas-tests: test_layers does not call sgemm_: EIGEN_USE_BLAS did not take" >&2; exit 1; }
# And the BF16 GEMM oneDNN's: test_bf16_gemm imports its matmul.
nm -D --undefined-only "$build/tests/test_bf16_gemm" | grep -w dnnl_primitive_execute >/dev/null ||
  { echo "run-blas-tests: test_bf16_gemm does not call oneDNN: RETNET_ONEDNN did not take" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=1
passed=0
for t in "${tests[@]}"; do
  "$build/tests/$t" --gtest_brief=1
  passed=$((passed + 1))
done
echo "run-blas-tests: ${passed} test binaries passed with RETNET_BLAS (OpenBLAS) and RETNET_ONEDNN"
