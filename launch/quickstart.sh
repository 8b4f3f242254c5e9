#!/usr/bin/env bash
# Quickstart: installs what is missing, builds Release into build/, generates
# a learnable token stream, and trains the `quickstart` model on this
# machine's CPUs. Extra arguments go to latam-train (e.g. --set train.steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."

./launch/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target latam-train latam-data

DATA=data/quickstart
mkdir -p "$DATA"
# Until the tokenizer and sample corpus land, the quickstart trains on a
# generated Markov-chain stream whose bigram entropy (printed here) is the
# loss a perfect model reaches.
[ -f "$DATA/train.bin" ] || build/bin/latam-data synthesize --out "$DATA/train.bin" --vocab 512 --tokens 2000000 --seed 1
[ -f "$DATA/eval.bin" ] || build/bin/latam-data synthesize --out "$DATA/eval.bin" --vocab 512 --tokens 100000 --seed 1

if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
RUN_DIR=runs/quickstart-$(date +%Y%m%d-%H%M%S)
# --bind-to none: the trainer sizes its own OpenMP team to the node's cores.
mpirun -np 1 --bind-to none build/bin/latam-train --config configs/quickstart.textproto \
  --set train.run_dir="$RUN_DIR" "$@"
echo "quickstart: metrics in $RUN_DIR/metrics.jsonl (TensorBoard: tensorboard --logdir $RUN_DIR)"
