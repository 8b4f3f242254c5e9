#!/usr/bin/env bash
# End-to-end CPU training throughput: tokens/s and achieved GFLOP/s of
# latam-train on a config, single rank, all of this machine's cores.
#
#   bench/train_throughput.sh [CONFIG] [STEPS]
#
# Defaults to the 7M-parameter benchmark model (bench/configs/cpu-7m.textproto)
# for 30 steps, generating the synthetic token stream it reads when missing.
# Other configs must have their data in place (for configs/quickstart.textproto
# run launch/prepare-sample-data.sh first). Reports the median over steps after the first 5 (warm-up) and
# GFLOP/s = tokens/s x flops_per_token from `latam-train --plan`.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${1:-bench/configs/cpu-7m.textproto}
STEPS=${2:-30}
BIN=${BIN:-build/bin}

if [ ! -x "$BIN/latam-train" ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build --target latam-train latam-data
fi

mkdir -p bench/data
[ -f bench/data/synthetic-8192.bin ] ||
  "$BIN/latam-data" synthesize --out bench/data/synthetic-8192.bin --vocab 8192 --tokens 1000000 --seed 7 >/dev/null

RUN_DIR=$(mktemp -d /tmp/latam-bench.XXXXXX)
trap 'rm -rf "$RUN_DIR"' EXIT
FLOPS=$("$BIN/latam-train" --config "$CONFIG" --plan | sed -E 's/.*"flops_per_token":([0-9.e+]+).*/\1/')
PARAMS=$("$BIN/latam-train" --config "$CONFIG" --plan | sed -E 's/.*"parameters":([0-9]+).*/\1/')
"$BIN/latam-train" --config "$CONFIG" --set train.steps="$STEPS" --set train.log_every=1 \
  --set train.eval_every=0 --set train.run_dir="$RUN_DIR" >/dev/null

grep '"tokens_per_s"' "$RUN_DIR/metrics.jsonl" | tail -n +6 |
  sed -E 's/.*"tokens_per_s":([0-9.e+]+).*/\1/' | sort -g |
  awk -v flops="$FLOPS" -v params="$PARAMS" -v config="$CONFIG" -v threads="$(nproc)" '
    { v[NR] = $1 }
    END {
      med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      printf("{\"config\": \"%s\", \"parameters\": %d, \"cpus\": %d, \"steps_measured\": %d, ", config, params, threads, NR)
      printf("\"tokens_per_s\": %.0f, \"gflops\": %.1f, \"flops_per_token\": %.4g}\n", med, med * flops / 1e9, flops)
    }'
