#!/usr/bin/env bash
# Runs ./launch/quickstart.sh end to end (corpus -> tokenizer -> shards ->
# training with the es/pt/indigenous mixture) into temporary data and run
# directories, with fewer steps, and checks that the training loss and every
# language's eval loss fall. Exits 77 (skipped) when the corpus packages are
# missing and cannot be installed here.
#
# Usage: tests/quickstart/check-quickstart.sh BUILD_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:?usage: check-quickstart.sh BUILD_DIR}

fail() { echo "FAIL: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ] && ! sudo -n true >/dev/null 2>&1 &&
  ! missing=$(launch/install-deps.sh --check $(launch/get-sample-corpus.sh --print-packages)); then
  echo "SKIP: corpus packages missing (${missing#*missing }) and no root or sudo to install them"
  exit 77
fi

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
LATAM_BUILD_DIR=$BUILD LATAM_DATA_DIR=$T/data LATAM_RUNS_DIR=$T/runs ./launch/quickstart.sh \
  --set train.steps=150 --set train.eval_every=50 --set train.log_every=10 --set train.save_every=50 >"$T/log" 2>&1 ||
  { tail -n 40 "$T/log" >&2; fail "quickstart.sh exited non-zero"; }
tail -n 8 "$T/log"

metrics=$(ls "$T"/runs/*/metrics.jsonl)
value() { sed -E "s/.*\"$1\":([0-9.e+-]+).*/\1/"; }
first_loss=$(grep '"loss"' "$metrics" | head -n 1 | value loss)
last_loss=$(grep '"loss"' "$metrics" | tail -n 1 | value loss)
awk -v a="$first_loss" -v b="$last_loss" 'BEGIN { exit !(b < a - 1.5) }' ||
  fail "training loss did not fall by 1.5 nats: $first_loss -> $last_loss"
[ "$(grep -c '"eval_loss"' "$metrics")" -eq 3 ] || fail "expected evaluations at steps 50, 100, 150"
for lang in es pt indigenous; do
  first=$(grep '"eval_loss"' "$metrics" | head -n 1 | value "eval_loss\\/$lang")
  last=$(grep '"eval_loss"' "$metrics" | tail -n 1 | value "eval_loss\\/$lang")
  awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 0.2) }' ||
    fail "eval_loss/$lang did not fall: $first -> $last"
  echo "eval_loss/$lang: $first -> $last"
done
echo "quickstart: train loss $first_loss -> $last_loss"

# Checkpoints at steps 100 and 150 (the last two kept), and a continuation.
run_dir=$(dirname "$metrics")
[ "$(cat "$run_dir/checkpoints/latest")" = step_00000150 ] || fail "latest does not name step_00000150"
[ -d "$run_dir/checkpoints/step_00000100" ] && [ ! -e "$run_dir/checkpoints/step_00000050" ] ||
  fail "train.keep_checkpoints=2 should keep steps 100 and 150 only"
"$BUILD/bin/latam-ckpt" verify "$run_dir" || fail "latam-ckpt verify failed on $run_dir"
generated=$(grep '^quickstart: generated: ' "$T/log" | sed 's/^quickstart: generated: La historia de América Latina//')
[ "${#generated}" -ge 10 ] || fail "no generated continuation in the quickstart output"
echo "generated continuation: $generated"
