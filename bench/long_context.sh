#!/usr/bin/env bash
# Long-context training with context parallelism on the CPU: the dim-64
# model of bench/configs/long-context.textproto at a given sequence length
# over C ranks (ring attention), on a synthetic shard of documents of a
# given mean length. Prints the loss curve and the step times.
#
#   bench/long_context.sh SEQ_LEN CONTEXT STEPS [DOC_MASK=true|false] [DOC_LEN]
#
# e.g. bench/long_context.sh 32768 2 12 false      (32k, CP 2, causal)
#      bench/long_context.sh 131072 4 8 true 4096  (128k, CP 4, documents)
# Ranks share the machine's cores (OpenMP threads = cores / ranks). The
# metrics land in runs/long-context-SEQ-cpC[-docs]/metrics.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
SEQ=${1:?sequence length}
CP=${2:?context-parallel ranks}
STEPS=${3:?steps}
DOCS=${4:-false}
DOC_LEN=${5:-4096}
BIN=${BIN:-build/bin}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

mkdir -p bench/data
shard=bench/data/long-context-$DOC_LEN.bin
[ -f "$shard" ] ||
  "$BIN/latam-data" synthesize --out "$shard" --vocab 512 --tokens 4000000 --doc-len "$DOC_LEN" --seed 11 >/dev/null
run=runs/long-context-$SEQ-cp$CP
[ "$DOCS" = true ] && run=$run-docs
rm -rf "$run"
mpirun --oversubscribe --bind-to none -np "$CP" "$BIN/latam-train" --config bench/configs/long-context.textproto \
  --set data.seq_len="$SEQ" --set parallel.context="$CP" --set train.steps="$STEPS" \
  --set data.document_mask="$DOCS" --set data.train[0].path="$shard" --set train.run_dir="$run"
python3 - "$run/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
print("step  loss    step_ms  attention_fraction")
for r in rows:
    print(f"{r['step']:4d}  {r['loss']:.4f}  {r['step_ms']:8.0f}  {r.get('attention_fraction', 1.0):.4f}")
PY
