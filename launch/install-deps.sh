#!/usr/bin/env bash
# Installs the system packages this project builds and runs with, or, given
# package names as arguments, those packages instead (the sample corpus
# script uses this for its own).
#
# Idempotent: installs only what is missing. Uses apt-get (through sudo when
# not root) on Debian/Ubuntu; on other systems it prints the packages to
# install and exits 1. The CUDA Toolkit (nvcc, cuBLAS, NCCL) is optional and
# never installed here: the build enables CUDA when it finds nvcc.
set -euo pipefail

if [ $# -gt 0 ]; then
  PACKAGES=("$@")
else
  PACKAGES=(
    cmake ninja-build g++
    libopenmpi-dev openmpi-bin
    protobuf-compiler libprotobuf-dev
    libdnnl-dev
    libgtest-dev
    nlohmann-json3-dev
    libpcre2-dev
  )
fi

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
else
  echo "install-deps: not a Debian/Ubuntu system; install the equivalents of:" >&2
  echo "  ${PACKAGES[*]}" >&2
  exit 1
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "install-deps: missing packages and no sudo; as root run:" >&2
  echo "  apt-get install -y ${missing[*]}" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
