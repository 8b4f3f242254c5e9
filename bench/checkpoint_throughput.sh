#!/usr/bin/env bash
# Checkpoint save and load speed of latam-train on this machine.
#
#   bench/checkpoint_throughput.sh [RANKS]
#
# Trains an 88M-parameter model (dim 768, 12 layers, 12 heads, 4 KV heads,
# FFN 2048, vocab 8192) for 2 steps with RANKS ranks (default 4, tensor 2 x
# pipeline 2), saving after each step, and reports what metrics.jsonl says
# about the saves: bytes (parameters + Adam moments, all ranks), the slowest
# rank's background write time and bytes/s, and the training pause (the
# snapshot to host memory). Then it loads the checkpoint under tensor 1 x
# pipeline 1 x data RANKS and reports rank 0's read time. Prints one JSON
# object.
set -euo pipefail
cd "$(dirname "$0")/.."

RANKS=${1:-4}
BIN=${BIN:-build/bin}
if [ ! -x "$BIN/latam-train" ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build --target latam-train latam-data
fi
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
mkdir -p bench/data
[ -f bench/data/synthetic-8192.bin ] ||
  "$BIN/latam-data" synthesize --out bench/data/synthetic-8192.bin --vocab 8192 --tokens 1000000 --seed 7 >/dev/null

RUN_DIR=$(mktemp -d /tmp/latam-ckpt-bench.XXXXXX)
trap 'rm -rf "$RUN_DIR"' EXIT
model=(--set model.dim=768 --set model.n_layers=12 --set model.n_heads=12 --set model.n_kv_heads=4
  --set model.ffn_dim=2048 --set data.seq_len=128 --set train.micro_batch_size=2 --set train.global_batch_size=8
  --set train.steps=2 --set train.save_every=1 --set train.eval_every=0 --set train.keep_checkpoints=2)
mpirun -np "$RANKS" --oversubscribe --bind-to none "$BIN/latam-train" --config bench/configs/cpu-7m.textproto \
  "${model[@]}" --set parallel.tensor=2 --set parallel.pipeline=$((RANKS / 2)) --set train.run_dir="$RUN_DIR/save" \
  >"$RUN_DIR/save.log"
start=$(date +%s.%N)
mpirun -np "$RANKS" --oversubscribe --bind-to none "$BIN/latam-train" --config bench/configs/cpu-7m.textproto \
  "${model[@]}" --set parallel.tensor=1 --set parallel.pipeline=1 --set train.run_dir="$RUN_DIR/load" \
  --resume "$RUN_DIR/save/checkpoints" >"$RUN_DIR/load.log"
end=$(date +%s.%N)

value() { sed -E "s/.*\"$1\":([0-9.e+-]+).*/\1/"; }
last=$(grep '"checkpoint/bytes"' "$RUN_DIR/save/metrics.jsonl" | tail -n 1)
read_line=$(grep 'rank 0 read' "$RUN_DIR/load.log")
printf '{"ranks": %d, "checkpoint_bytes": %s, "write_s": %s, "write_bytes_per_s": %s, "snapshot_ms": %s, ' \
  "$RANKS" "$(value 'checkpoint\/bytes' <<<"$last")" "$(value 'checkpoint\/write_s' <<<"$last")" \
  "$(value 'checkpoint\/bytes_per_s' <<<"$last")" "$(value 'checkpoint\/snapshot_ms' <<<"$last")"
printf '"load_layout": "tensor 1 x pipeline 1 x data %d", "rank0_read": "%s", "load_job_s": %.2f}\n' \
  "$RANKS" "$(sed 's/latam-train: rank 0 //' <<<"$read_line")" "$(echo "$end - $start" | bc)"
