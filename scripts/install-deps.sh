#!/usr/bin/env bash
# Installs, from Debian's archive, whatever retnet's build, tests, benchmarks and examples need
# and this machine lacks. Safe to run again: it installs nothing that is already there.
set -euo pipefail

# libclang-rt-14-dev holds clang's sanitizer and libFuzzer runtimes: clang only recommends it, and
# recommends are not installed here. libopenblas-dev and libdnnl-dev (oneDNN) are only for the
# optional RETNET_BLAS and RETNET_ONEDNN builds (scripts/run-blas-tests.sh, CI); the core needs
# nothing but Eigen. ocl-icd-opencl-dev only because Debian's dnnl-config.cmake (oneDNN built with
# its OpenCL GPU runtime) does find_package(OpenCL REQUIRED); libdnnl-dev merely recommends it.
packages=(cmake make g++ clang libclang-rt-14-dev libomp-dev clang-format libeigen3-dev libgtest-dev
          libbenchmark-dev nlohmann-json3-dev libpcre2-dev libsentencepiece-dev
          libutf8proc-dev pkg-config libopenblas-dev libdnnl-dev
          ocl-icd-opencl-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
