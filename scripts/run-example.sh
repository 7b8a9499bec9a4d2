#!/usr/bin/env bash
# Builds and runs the main example (examples/quickstart.cpp) with the speed settings we measured
# best here: clang++, Release, -march=native. This is the README's first command.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${BUILD_DIR:-build-example}"
scripts/install-deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ -DRETNET_NATIVE=ON \
  -DRETNET_BUILD_TESTS=OFF -DRETNET_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target quickstart
"$build/examples/quickstart"
