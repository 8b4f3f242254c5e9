#!/usr/bin/env bash
# A GPU's first minutes in one command: proves or disproves the CUDA path on
# an H100 or H200 within a time budget, writing every result as soon as it
# exists, so that a run cut short still returns what it measured.
#
# Usage: bench/gpu_first_run.sh OUT_DIR [--budget-s N] [--bundle DIR] [--only STEP,...] [--limit STEP=S]...
#        bench/gpu_first_run.sh OUT_DIR --emulated BUILD_DIR [--budget-s N] [--only ...] [--limit ...]
#
# The steps, in priority order, with their time limits (a step starts only
# when the budget left covers its minimum; it gets the smaller of its limit
# and what is left, and past that it is killed and reported "cut"):
#   device      20 s  nvidia-smi, then the device as the CUDA runtime sees it
#                     (compute capability, multiprocessors, L2)
#   cuda_tests 150 s  every CUDA test (latam_cuda_tests: each kernel against
#                     the CPU, the Hopper wgmma/TMA attention included, the
#                     model on the GPU against the CPU model)
#   attention   90 s  the attention table: the mma.sync flash kernels, the
#                     Hopper forwards and backward, the simple kernel, and
#                     PyTorch's SDPA; causal and full, head dims 64 and 128,
#                     T 2k and 8k, grouped-query rows (bench/run_gpu_bench.sh)
#   e2e        120 s  llama3-1b end to end (seq 2048, micro-batch 4, 12
#                     steps) against the PyTorch peer: tokens/s, MFU, peak
#                     memory (bench/run_e2e_gpu.sh)
#   kernels     60 s  the other kernels against PyTorch (GEMMs, norms,
#                     SwiGLU, RoPE, cross-entropy, AdamW; --quick shapes)
#   sanitize   400 s  compute-sanitizer memcheck, racecheck and synccheck on
#                     the CUDA tests of the shared-memory kernels
#                     (tests/cuda/sanitize.sh); in practice, what is left
# The default budget is 420 s. --limit STEP=S changes one step's limit;
# --only runs the named steps alone.
#
# Where it runs: a machine with a GPU driver, the CUDA 13 runtime and
# cuBLASLt, python3 and (for the peers) PyTorch; no MPI, protobuf or BLAS
# needed. bench/gpu_bundle.sh makes, on a build machine, the folder
# gpu-bundle/ with the binaries and the libraries they need; this script
# uses --bundle DIR, else ./gpu-bundle when it exists, else build/bin and
# the system's libraries.
#
# --emulated BUILD_DIR runs the same steps on the emulated GPU of a build
# without one (no CUDA needed), with toy sizes: the emulated CUDA tests (a
# few), bench_cuda_kernels_emulated --tiny, latam-train on the CPU device
# with bench/configs/cpu-7m.textproto, no sanitizers. It checks this script,
# not the GPU: ./tests/run.sh runs it (tests/bench/check-gpu-first-run.sh).
#
# OUT_DIR receives (at most 8 files, nothing in sub-folders):
#   summary.md       the steps (status, seconds, reason) and each step's
#                    tables, rewritten after every step
#   steps.jsonl      one line per step: step, status (ok, failed, cut,
#                    skipped), reason, seconds, limit_s
#   log.txt          everything the steps printed
#   device.jsonl     nvidia-smi's and the CUDA runtime's view of the device
#   cuda_tests.json  gtest's report of the CUDA tests
#   attention.jsonl, e2e.jsonl, kernels.jsonl
#                    the benchmarks' raw lines, appended as they come
# Exits 0 when every step that ran was ok, 1 otherwise, 2 on bad arguments.
set -uo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
STEPS=(device cuda_tests attention e2e kernels sanitize)
declare -A MIN_S=([device]=5 [cuda_tests]=30 [attention]=30 [e2e]=45 [kernels]=20 [sanitize]=30)
declare -A LIMIT_S=([device]=20 [cuda_tests]=150 [attention]=90 [e2e]=120 [kernels]=60 [sanitize]=400)
# The few emulated CUDA tests --emulated runs.
EMULATED_TEST_FILTER='CudaRmsNormTest.*:CudaRopeTest.*:CudaFlashAttentionTest.NonCausalMatchesDoubleReference'

usage() {
  sed -n '2,/^set -uo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' >&2
}
die() {
  echo "gpu_first_run: error: $*" >&2
  exit 2
}

# ---------------------------------------------------------------------------
# The steps. Each runs in a process of its own (this script with --run-step),
# under `timeout`, with the context in LATAM_FR_* variables; it appends its
# output to the log, writes its raw results to OUT, its section of the
# summary to WORK/NAME.md and a one-line reason to WORK/NAME.reason. Exit 0:
# ok; 77: skipped; anything else: failed.

# "ok", or why the PyTorch peers cannot run ("no torch", "torch sees no GPU");
# asked once per run.
torch_state() {
  local f=$LATAM_FR_WORK/torch
  if [[ ! -s $f ]]; then
    if ! python3 -c 'import torch' >/dev/null 2>&1; then
      echo "no torch" >"$f"
    elif ! python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
      echo "torch sees no GPU" >"$f"
    else
      echo ok >"$f"
    fi
  fi
  cat "$f"
}

reason() { echo "$*" >"$LATAM_FR_WORK/$LATAM_FR_STEP.reason"; }
section() { cat >>"$LATAM_FR_WORK/$LATAM_FR_STEP.md"; }

step_device() {
  local out=$LATAM_FR_OUT/device.jsonl notes=()
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm,power.limit,temperature.gpu \
      --format=csv,noheader | python3 "$LATAM_FR_HELPER" smi >>"$out"
  else
    notes+=("no nvidia-smi")
  fi
  # The runtime's view: bench_cuda_kernels prints its device line first; a
  # filter no row matches makes it print nothing else.
  "$LATAM_FR_BENCH" --filter 'no row has this name' | grep '"device"' >>"$out"
  local torch
  torch=$(torch_state)
  [[ $torch == ok ]] || notes+=("PyTorch peers will be skipped: $torch")
  python3 "$LATAM_FR_HELPER" device-section "$out" | section
  local joined
  printf -v joined '%s; ' "${notes[@]}"
  joined=${joined%; }
  if ! grep -q '"impl": "ours"' "$out"; then
    reason "the CUDA runtime sees no GPU${joined:+; $joined}"
    return 1
  fi
  reason "$joined"
}

step_cuda_tests() {
  local report=$LATAM_FR_OUT/cuda_tests.json filter=()
  [[ -z $LATAM_FR_TEST_FILTER ]] || filter=(--gtest_filter="$LATAM_FR_TEST_FILTER")
  rm -f "$report"
  local rc=0
  "$LATAM_FR_TESTS" "${filter[@]}" --gtest_output="json:$report" || rc=$?
  if [[ ! -s $report ]]; then
    reason "$(basename "$LATAM_FR_TESTS") exited $rc without a report"
    return 1
  fi
  python3 "$LATAM_FR_HELPER" gtest "$report" "$LATAM_FR_WORK/cuda_tests.reason" | section
  return "$rc"
}

# bench/run_gpu_bench.sh into OUT/NAME.jsonl; its tables are the section.
bench_step() {
  local raw=$LATAM_FR_OUT/$LATAM_FR_STEP.jsonl torch peer rc=0
  torch=$(torch_state)
  peer="torch peer skipped: $torch"
  [[ $torch != ok ]] || peer="against PyTorch"
  # A --tiny run has no peer; the tables then show "-" for torch.
  BENCH_CUDA_KERNELS=$LATAM_FR_BENCH bash "$ROOT/bench/run_gpu_bench.sh" "$raw" "$@" >"$LATAM_FR_WORK/table.md" ||
    rc=$?
  {
    echo "\`bench/run_gpu_bench.sh $*\` ($peer)"
    echo
    cat "$LATAM_FR_WORK/table.md"
  } | section
  local rows
  rows=$(grep -c '"kernel"' "$raw" 2>/dev/null)
  rows=${rows:-0}
  if [[ $rc -ne 0 ]]; then
    reason "run_gpu_bench.sh exited $rc after $rows rows; $peer"
    return 1
  fi
  reason "$rows rows; $peer"
  [[ $rows -gt 0 ]]
}

step_attention() {
  if [[ $LATAM_FR_MODE == emulated ]]; then
    bench_step --tiny --filter attention_
  else
    bench_step --filter attention_ --seqs 2048,8192
  fi
}

step_kernels() {
  if [[ $LATAM_FR_MODE == emulated ]]; then
    bench_step --tiny
  else
    bench_step --quick
  fi
}

step_e2e() {
  local torch peer_modes=eager note rc=0
  torch=$(torch_state)
  note="against PyTorch eager"
  if [[ $torch != ok ]]; then
    peer_modes=none
    note="torch peer skipped: $torch"
  fi
  local env=(BIN="$LATAM_FR_BIN" PEER_MODES="$peer_modes" RUN_TIMEOUT="$LATAM_FR_LIMIT"
    DATA="$LATAM_FR_WORK/synthetic.bin")
  if [[ $LATAM_FR_MODE == emulated ]]; then
    # The emulated GPU cannot run latam-train: the CPU device checks the
    # plumbing (plan, data, metrics, table) with a toy model.
    env+=(DEVICE=cpu CONFIG=bench/configs/cpu-7m.textproto SEQ=64 MICRO=2 STEPS=3 WARMUP=1)
    note="on the CPU device (the emulated GPU runs no latam-train); $note"
  else
    env+=(DEVICE=cuda CONFIG=configs/llama3-1b.textproto SEQ=2048 MICRO=4 STEPS=12 WARMUP=4)
  fi
  (cd "$ROOT" && env "${env[@]}" bash bench/run_e2e_gpu.sh "$LATAM_FR_OUT/e2e.jsonl") >"$LATAM_FR_WORK/table.md" ||
    rc=$?
  {
    echo "\`bench/run_e2e_gpu.sh\` ($note)"
    echo
    cat "$LATAM_FR_WORK/table.md"
  } | section
  if [[ $rc -ne 0 ]]; then
    reason "run_e2e_gpu.sh exited $rc; $note"
    return 1
  fi
  reason "$note"
}

step_sanitize() {
  if [[ $LATAM_FR_MODE == emulated ]]; then
    reason "compute-sanitizer needs a real GPU"
    return 77
  fi
  local rc=0
  "$ROOT/tests/cuda/sanitize.sh" --shared-only "$(dirname "$LATAM_FR_TESTS")" || rc=$?
  case $rc in
    0) reason "memcheck, racecheck and synccheck found nothing" ;;
    77) reason "no GPU visible" ;;
    2) reason "compute-sanitizer or the CUDA tests could not run (see the log)" ;;
    *) reason "compute-sanitizer reported errors (see the log)" ;;
  esac
  section <"$LATAM_FR_WORK/sanitize.reason"
  return "$rc"
}

if [[ ${1:-} == --run-step ]]; then
  LATAM_FR_STEP=$2
  "step_$2"
  exit $?
fi

# ---------------------------------------------------------------------------
# Arguments and context.
[[ $# -ge 1 && $1 != -* ]] || {
  usage
  exit 2
}
OUT=$1
shift
budget=420
bundle=""
emulated_build=""
only=""
declare -A limit_override=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --budget-s) budget=${2:-}; shift ;;
    --bundle) bundle=${2:-}; shift ;;
    --emulated) emulated_build=${2:-}; shift ;;
    --only) only=${2:-}; shift ;;
    --limit)
      [[ ${2:-} =~ ^([a-z_]+)=([0-9]+)$ ]] || die "--limit takes STEP=SECONDS (got '${2:-}')"
      [[ -n ${LIMIT_S[${BASH_REMATCH[1]}]:-} ]] || die "--limit: no step '${BASH_REMATCH[1]}' (steps: ${STEPS[*]})"
      limit_override[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[[ $budget =~ ^[0-9]+$ && $budget -gt 0 ]] || die "--budget-s takes a positive number of seconds (got '$budget')"
for s in ${only//,/ }; do
  [[ -n ${LIMIT_S[$s]:-} ]] || die "--only: no step '$s' (steps: ${STEPS[*]})"
done
command -v python3 >/dev/null 2>&1 || die "python3 is needed (for the JSON and the summary)"
command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) is needed"

t_start=$SECONDS
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/{summary.md,steps.jsonl,log.txt,device.jsonl,cuda_tests.json,attention.jsonl,e2e.jsonl,kernels.jsonl}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/latam-first-run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

if [[ -n $emulated_build ]]; then
  [[ -n $bundle ]] && die "--emulated and --bundle exclude each other"
  BIN=$(cd "$emulated_build/bin" 2>/dev/null && pwd) || die "--emulated: no $emulated_build/bin"
  MODE=emulated
  TESTS=$BIN/latam_cuda_emulated_tests
  BENCH=$BIN/bench_cuda_kernels_emulated
  TEST_FILTER=$EMULATED_TEST_FILTER
else
  MODE=gpu
  [[ -n $bundle || ! -f $ROOT/gpu-bundle/env.sh ]] || bundle=$ROOT/gpu-bundle
  if [[ -n $bundle ]]; then
    [[ -f $bundle/env.sh ]] || die "--bundle: no $bundle/env.sh (make one with bench/gpu_bundle.sh)"
    # shellcheck disable=SC1091  # made by bench/gpu_bundle.sh
    source "$bundle/env.sh" || die "sourcing $bundle/env.sh failed"
    BIN=$(cd "$bundle/bin" && pwd)
  else
    BIN=$ROOT/build/bin
  fi
  TESTS=$BIN/latam_cuda_tests
  BENCH=$BIN/bench_cuda_kernels
  TEST_FILTER=""
fi
for b in "$TESTS" "$BENCH"; do
  [[ -x $b ]] || die "no $b (build it, or make a bundle with bench/gpu_bundle.sh)"
done

# Formats the device lines, the gtest report and the summary.
HELPER=$ROOT/bench/first_run_report.py

export LATAM_FR_OUT=$OUT LATAM_FR_WORK=$WORK LATAM_FR_MODE=$MODE LATAM_FR_BIN=$BIN LATAM_FR_TESTS=$TESTS
export LATAM_FR_BENCH=$BENCH LATAM_FR_TEST_FILTER=$TEST_FILTER LATAM_FR_HELPER=$HELPER
export PYTHONUNBUFFERED=1

echo "gpu_first_run: $MODE, budget $budget s, binaries in $BIN, results in $OUT" | tee -a "$OUT/log.txt"
status=0
for step in "${STEPS[@]}"; do
  if [[ -n $only && ",$only," != *",$step,"* ]]; then continue; fi
  left=$((budget - (SECONDS - t_start)))
  limit=${limit_override[$step]:-${LIMIT_S[$step]}}
  ((limit <= left)) || limit=$left
  t0=$SECONDS
  if ((left < MIN_S[$step])); then
    result=skipped
    why="budget: $left s left, the step needs at least ${MIN_S[$step]} s"
  else
    echo "== $step (limit $limit s) ==" | tee -a "$OUT/log.txt"
    rc=0
    LATAM_FR_LIMIT=$limit timeout --kill-after=10 "$limit" bash "$SELF" --run-step "$step" >>"$OUT/log.txt" 2>&1 ||
      rc=$?
    why=$(cat "$WORK/$step.reason" 2>/dev/null)
    case $rc in
      0) result=ok ;;
      77) result=skipped ;;
      124 | 137)
        result=cut
        why="over its $limit s limit, stopped${why:+; $why}"
        ;;
      *) result=failed ;;
    esac
    [[ $result == ok || $result == skipped ]] || status=1
  fi
  took=$((SECONDS - t0))
  python3 "$HELPER" step-line "$step" "$result" "$why" "$took" "$limit" >>"$OUT/steps.jsonl"
  python3 "$HELPER" summary "$OUT" "$WORK" "$MODE" "$budget" "$((SECONDS - t_start))"
  echo "gpu_first_run: $step: $result ($took s)${why:+: $why}" | tee -a "$OUT/log.txt"
done
echo "gpu_first_run: done in $((SECONDS - t_start)) s; $OUT/summary.md"
exit "$status"
