#!/usr/bin/env bash
# Builds retnet (Release, clang++, OpenMP, warnings as errors) and runs every test. This is the
# README's test command; CI runs it too. BUILD_DIR picks the build directory (default: build).
set -euo pipefail
cd "$(dirname "$0")/.."
build="${BUILD_DIR:-build}"
scripts/install-deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ -DRETNET_WERROR=ON \
  -DRETNET_OPENMP=ON
cmake --build "$build" -j"$(nproc)"
ctest --test-dir "$build" --output-on-failure -j"$(nproc)"
