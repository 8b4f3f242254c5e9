#!/usr/bin/env bash
# A world size that is not tensor x pipeline x data, or a model that does not
# divide over the layout, must stop latam-train with exit code 2 and the
# reason, on every rank, before any allocation or communication (no hang).
#
# Usage: check-bad-layout.sh MPIRUN BIN_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
MPIRUN=$1
BIN=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

expect_exit_2() {  # ranks, expected message, latam-train arguments...
  local ranks=$1 expected=$2
  shift 2
  local code=0
  timeout 60 "$MPIRUN" --oversubscribe --bind-to none -np "$ranks" "$BIN/latam-train" \
    --config configs/quickstart.textproto "$@" >"$T/out" 2>"$T/err" || code=$?
  [ "$code" -ne 124 ] || fail "latam-train hung with $ranks ranks ($*)"
  [ "$code" -eq 2 ] || { cat "$T/err" >&2; fail "exit code $code, expected 2, with $ranks ranks ($*)"; }
  grep -qF "$expected" "$T/err" || { cat "$T/err" >&2; fail "stderr lacks: $expected"; }
  # The message comes once, from rank 0, not once per rank.
  [ "$(grep -cF "$expected" "$T/err")" -eq 1 ] || fail "message printed more than once"
  echo "ok: $ranks ranks, $*: $expected"
}

expect_exit_2 3 "world size 3 != tensor (2) x pipeline (2) x data (derived)" \
  --set parallel.tensor=2 --set parallel.pipeline=2
expect_exit_2 4 "world size 4 != tensor (2) x pipeline (1) x data (3)" \
  --set parallel.tensor=2 --set parallel.pipeline=1 --set parallel.data=3
expect_exit_2 3 "model.n_heads: 4 is not divisible by parallel.tensor = 3" --set parallel.tensor=3
expect_exit_2 2 "parallel.zero_stage: must be 0, 1 or 2 (got 3)" --set parallel.zero_stage=3
expect_exit_2 3 "model.n_layers: 4 is not divisible by parallel.pipeline x parallel.virtual_stages = 3" \
  --set parallel.pipeline=3
expect_exit_2 2 "model.vocab_size: 4095 is not divisible by parallel.tensor = 2" \
  --set parallel.tensor=2 --set model.vocab_size=4095
expect_exit_2 2 "interleaved pipelining (parallel.virtual_stages > 1) needs a multiple of parallel.pipeline = 2" \
  --set parallel.tensor=1 --set parallel.pipeline=2 --set parallel.virtual_stages=2 --set train.global_batch_size=24 \
  --set train.micro_batch_size=8
# Uneven pipeline stages (parallel.first_stage_layers / last_stage_layers):
# each rule names the field.
expect_exit_2 2 "parallel.first_stage_layers: must be >= 0 (got -1)" \
  --set parallel.tensor=1 --set parallel.first_stage_layers=-1
expect_exit_2 1 "parallel.last_stage_layers: needs parallel.pipeline > 1 (got 1)" \
  --set parallel.tensor=1 --set parallel.pipeline=1 --set parallel.last_stage_layers=2
expect_exit_2 4 "parallel.first_stage_layers: 3 + parallel.last_stage_layers 2 leave 3 layers for 2 middle stages (not divisible)" \
  --set parallel.tensor=1 --set parallel.pipeline=4 --set model.n_layers=8 --set parallel.first_stage_layers=3 \
  --set parallel.last_stage_layers=2
expect_exit_2 2 "parallel.first_stage_layers: 3 + parallel.last_stage_layers 2 add up to 5, not model.n_layers = 4" \
  --set parallel.tensor=1 --set parallel.first_stage_layers=3 --set parallel.last_stage_layers=2
expect_exit_2 3 "parallel.last_stage_layers: 3 leaves 1 layer for 2 other stages (each needs at least parallel.virtual_stages = 1" \
  --set parallel.tensor=1 --set parallel.pipeline=3 --set parallel.last_stage_layers=3
expect_exit_2 2 "parallel.first_stage_layers: 3 is not divisible by parallel.virtual_stages = 2" \
  --set parallel.tensor=1 --set parallel.virtual_stages=2 --set model.n_layers=8 --set parallel.first_stage_layers=3
