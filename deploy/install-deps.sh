#!/usr/bin/env bash
# Installs every system package accel-serve needs to build, run and test.
# The single list of packages: the README commands, CI and the container
# build all call this. Idempotent: packages already present are skipped.
#   deploy/install-deps.sh           build + test dependencies
#   deploy/install-deps.sh --runtime only what the server needs to run
set -euo pipefail

runtime_pkgs=(
  libgrpc++1.51 libprotobuf32 libopenblas0-pthread libprometheus-cpp-core1.0 libtcmalloc-minimal4
  ca-certificates
)
build_pkgs=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  prometheus-cpp-dev nlohmann-json3-dev libopenblas-dev libgoogle-perftools-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-grpcio python3-protobuf python3-numpy python3-pytest
  prometheus clang-format python3-matplotlib
)

pkgs=("${build_pkgs[@]}")
[ "${1:-}" = "--runtime" ] && pkgs=("${runtime_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
