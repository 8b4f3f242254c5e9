#!/usr/bin/env bash
# CPU training throughput and communication volume per parallel layout.
#
#   bench/parallel_throughput.sh [RANKS] [STEPS]
#
# Trains the 7M-parameter benchmark model (bench/configs/cpu-7m.textproto,
# global batch 32 x 256 tokens, micro-batches of 8) with RANKS ranks (default
# 4) in every layout of tensor x pipeline x data that RANKS allows, through
# launch/latam-run, and prints one JSON line per layout: median tokens/s over
# the steps after the first two, and the bytes rank 0 moved per step in its
# tensor-, pipeline- and data-parallel groups (metrics comm_bytes/*).
set -euo pipefail
cd "$(dirname "$0")/.."

RANKS=${1:-4}
STEPS=${2:-12}
BIN=${BIN:-build/bin}
CONFIG=bench/configs/cpu-7m.textproto

mkdir -p bench/data
[ -f bench/data/synthetic-8192.bin ] ||
  "$BIN/latam-data" synthesize --out bench/data/synthetic-8192.bin --vocab 8192 --tokens 1000000 --seed 7 >/dev/null

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
field() { sed -E "s/.*\"$1\":([0-9.e+-]+).*/\1/"; }

run() {  # tensor pipeline data zero
  local t=$1 p=$2 d=$3 z=$4 dir
  dir=$(mktemp -d /tmp/latam-parallel.XXXXXX)
  LATAM_TRAIN=$BIN/latam-train launch/latam-run -n $((t * p * d)) -- --config "$CONFIG" \
    --set parallel.tensor="$t" --set parallel.pipeline="$p" --set parallel.zero_stage="$z" \
    --set train.global_batch_size=32 --set train.micro_batch_size=8 --set train.steps="$STEPS" \
    --set train.log_every=1 --set train.run_dir="$dir" >/dev/null 2>"$dir/stderr" ||
    { cat "$dir/stderr" >&2; rm -rf "$dir"; return 1; }
  local lines
  lines=$(grep '"tokens_per_s"' "$dir/metrics.jsonl" | tail -n +3)
  printf '{"ranks": %d, "tensor": %d, "pipeline": %d, "data": %d, "zero_stage": %d, "tokens_per_s": %.0f, ' \
    $((t * p * d)) "$t" "$p" "$d" "$z" "$(field tokens_per_s <<<"$lines" | median)"
  printf '"comm_mb_per_step": {"tp": %.1f, "pp": %.1f, "dp": %.1f}}\n' \
    "$(field 'comm_bytes\/tp' <<<"$lines" | median | awk '{ print $1 / 1e6 }')" \
    "$(field 'comm_bytes\/pp' <<<"$lines" | median | awk '{ print $1 / 1e6 }')" \
    "$(field 'comm_bytes\/dp' <<<"$lines" | median | awk '{ print $1 / 1e6 }')"
  rm -rf "$dir"
}

run 1 1 1 0
for t in 1 2 4 8; do
  for p in 1 2 4 8; do
    [ $((RANKS % (t * p))) -eq 0 ] || continue
    d=$((RANKS / (t * p)))
    # The 7M model has 8 heads, 4 layers and 32 samples per step.
    [ "$t" -le 8 ] && [ "$p" -le 4 ] && [ $((32 % (8 * d))) -eq 0 ] || continue
    run "$t" "$p" "$d" 0
    [ "$d" -gt 1 ] && run "$t" "$p" "$d" 1
  done
done
