#!/usr/bin/env bash
# Runs the CUDA kernel tests under compute-sanitizer on a GPU machine:
# memcheck (out-of-bounds and misaligned accesses, leaks) over every CUDA
# test, racecheck and synccheck (shared-memory hazards, barriers) over the
# kernels that use shared memory.
#
#   tests/cuda/sanitize.sh [--shared-only] [BIN_DIR]     (default build/bin)
#
# --shared-only runs memcheck too on the shared-memory kernels' tests alone
# (memcheck over the whole suite takes many minutes; bench/gpu_first_run.sh
# passes it).
#
# Exits non-zero if a tool reports an error. Without a GPU the tests skip,
# so the run says nothing: it exits 77 (ctest's skip code) instead.
set -euo pipefail
SHARED_ONLY=0
if [ "${1:-}" = --shared-only ]; then
  SHARED_ONLY=1
  shift
fi
BIN=${1:-build/bin}
SANITIZER=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
if [ ! -x "$SANITIZER" ]; then
  echo "sanitize.sh: compute-sanitizer not found (set COMPUTE_SANITIZER)" >&2
  exit 2
fi
if ! "$BIN/latam_cuda_tests" --gtest_list_tests >/dev/null 2>&1; then
  echo "sanitize.sh: $BIN/latam_cuda_tests does not run" >&2
  exit 2
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "sanitize.sh: no GPU visible; nothing to check" >&2
  exit 77
fi
# Shared-memory kernels: attention (both), RMSNorm / fused norm partials,
# the embedding sort, cross-entropy and gradient-norm block reductions.
SHARED='*Attention*:*Rms*:*Norm*:*Embedding*:*CrossEntropy*:*GradSumOfSquares*'
status=0
run() {
  echo "== compute-sanitizer $*" >&2
  "$SANITIZER" --error-exitcode 1 --target-processes all "$@" || status=1
}
MEMCHECK_FILTER=()
if [ "$SHARED_ONLY" -eq 1 ]; then MEMCHECK_FILTER=(--gtest_filter="$SHARED"); fi
run --tool memcheck --leak-check full "$BIN/latam_cuda_tests" "${MEMCHECK_FILTER[@]}"
run --tool racecheck --racecheck-report all "$BIN/latam_cuda_tests" --gtest_filter="$SHARED"
run --tool synccheck "$BIN/latam_cuda_tests" --gtest_filter="$SHARED"
exit "$status"
