#!/usr/bin/env bash
# Turns the Latin American sample corpus into what the quickstart config
# reads: builds the corpus (launch/get-sample-corpus.sh) if missing, trains a
# byte-level BPE tokenizer on its training splits, and encodes every split
# into token shards. The tokenizer reserves Llama 3's special tokens
# (train-tokenizer's default), chat ones included, so the same
# tokenizer.json also serves `latam-data encode-chat`.
#
# Usage: launch/prepare-sample-data.sh [CORPUS_DIR [OUT_DIR [VOCAB_SIZE]]]
#   CORPUS_DIR  default data/sample       ({es,pt,indigenous}/{train,eval}.jsonl)
#   OUT_DIR     default data/quickstart   (tokenizer.json, <group>-<split>.bin)
#   VOCAB_SIZE  default 4096
# Needs build/bin/latam-data (LATAM_BUILD_DIR overrides build/). Outputs that
# already exist are kept; delete OUT_DIR to rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."

CORPUS=${1:-data/sample}
OUT=${2:-data/quickstart}
VOCAB=${3:-4096}
DATA_BIN=${LATAM_BUILD_DIR:-build}/bin/latam-data

launch/get-sample-corpus.sh "$CORPUS"
mkdir -p "$OUT"

groups=()
for g in es pt indigenous; do
  [ -f "$CORPUS/$g/train.jsonl" ] && groups+=("$g")
done

if [ ! -f "$OUT/tokenizer.json" ]; then
  train_files=()
  for g in "${groups[@]}"; do train_files+=("$CORPUS/$g/train.jsonl"); done
  "$DATA_BIN" train-tokenizer --out "$OUT/tokenizer.json" --vocab-size "$VOCAB" "${train_files[@]}"
fi
for g in "${groups[@]}"; do
  for split in train eval; do
    [ -f "$OUT/$g-$split.bin" ] ||
      "$DATA_BIN" encode --tokenizer "$OUT/tokenizer.json" --out "$OUT/$g-$split.bin" "$CORPUS/$g/$split.jsonl"
  done
done
"$DATA_BIN" inspect "$OUT/es-train.bin" --tokenizer "$OUT/tokenizer.json" | cut -c1-600
