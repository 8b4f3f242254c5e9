#!/usr/bin/env bash
# Builds the project (CUDA sources too when nvcc exists, with or without a
# GPU) and runs every test with ctest. Extra arguments go to ctest, e.g.
#   ./tests/run.sh -L unit        only the unit label
#   ./tests/run.sh -R Attention   tests whose name matches
# Exits non-zero on any build or test failure, and ends by printing how long
# its three parts took (packages, build, tests). It shares build/ with
# ./launch/quickstart.sh, so running both builds once. LATAM_WERROR=ON (what
# CI sets) turns compiler warnings into errors.
set -euo pipefail
cd "$(dirname "$0")/.."

t0=$SECONDS
./launch/install-deps.sh --tests
t_packages=$((SECONDS - t0))

t0=$SECONDS
BUILD_DIR=${BUILD_DIR:-build}
JOBS=$(nproc)
werror=()
if [ -n "${LATAM_WERROR:-}" ]; then werror=(-DLATAM_WERROR="$LATAM_WERROR"); fi
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "${werror[@]}"
cmake --build "$BUILD_DIR" -j "$JOBS"
t_build=$((SECONDS - t0))

# Open MPI refuses to run as root without these; tests launch ranks with mpirun.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
t0=$SECONDS
status=0
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" "$@" || status=$?
echo "run.sh: packages ${t_packages} s, build ${t_build} s, tests $((SECONDS - t0)) s"
exit "$status"
