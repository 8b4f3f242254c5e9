#!/usr/bin/env bash
# Turns the Latin American sample corpus into what the quickstart config
# reads: builds the corpus (launch/get-sample-corpus.sh) if missing, trains a
# byte-level BPE tokenizer on its training splits, encodes every split
# into token shards, and builds latam-eval's regional tasks from the held-out
# (eval) splits only: regional-tasks.jsonl, per language a perplexity task
# and a multiple-choice task (pick a passage's true continuation among
# continuations of other held-out passages); see `latam-data eval-tasks`.
# The tokenizer reserves Llama 3's special tokens (train-tokenizer's
# default), chat ones included, so the same tokenizer.json also serves
# `latam-data encode-chat`.
#
# Usage: launch/prepare-sample-data.sh [CORPUS_DIR [OUT_DIR [VOCAB_SIZE]]]
#   CORPUS_DIR  default data/sample       ({es,pt,indigenous}/{train,eval}.jsonl)
#   OUT_DIR     default data/quickstart   (tokenizer.json, <group>-<split>.bin,
#                                          regional-tasks.jsonl)
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
if [ ! -f "$OUT/regional-tasks.jsonl" ]; then
  held_out=()
  for g in "${groups[@]}"; do
    [ -f "$CORPUS/$g/eval.jsonl" ] && held_out+=("$g=$CORPUS/$g/eval.jsonl")
  done
  "$DATA_BIN" eval-tasks --out "$OUT/regional-tasks.jsonl" --items 32 "${held_out[@]}"
fi
"$DATA_BIN" inspect "$OUT/es-train.bin" --tokenizer "$OUT/tokenizer.json" | cut -c1-600
