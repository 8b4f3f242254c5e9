#!/usr/bin/env bash
# Builds the project (CUDA sources too when nvcc exists, with or without a
# GPU) and runs every test with ctest. Extra arguments go to ctest, e.g.
#   ./tests/run.sh -L unit        only the unit label
#   ./tests/run.sh -R Attention   tests whose name matches
# Exits non-zero on any build or test failure.
set -euo pipefail
cd "$(dirname "$0")/.."

./launch/install-deps.sh

BUILD_DIR=${BUILD_DIR:-build}
JOBS=$(nproc)
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLATAM_WERROR=ON
cmake --build "$BUILD_DIR" -j "$JOBS"

# Open MPI refuses to run as root without these; tests launch ranks with mpirun.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" "$@"
