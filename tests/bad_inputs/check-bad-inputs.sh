#!/usr/bin/env bash
# Bad inputs to latam-train, latam-data, latam-generate and latam-eval: each case must
# exit 2 (bad input) with a message naming the culprit (the config field,
# file or flag), within 30 s, without an abort or a core dump, and without
# allocating in proportion to the bad number: its peak resident memory may
# exceed the binary's own start-up footprint (measured first) by at most
# 200 MB. Where the binaries link no CUDA library, each case also runs under
# `ulimit -v` of 2 GB (CUDA's libraries reserve far more address space than
# they use, so there the resident-memory bound alone applies).
#
# The cases are one table: a name, a grep -E pattern the output must match,
# and the command (run by bash, with $B the bin dir and $T a scratch dir
# holding a synthetic shard, a tiny config, a one-step checkpoint and
# malformed tokenizers). Prints "bad inputs: N cases, N exit 2 naming the
# culprit" and exits 1 on any failure.
#
# Usage: tests/bad_inputs/check-bad-inputs.sh BIN_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 1 ] || { echo "usage: $0 BIN_DIR" >&2; exit 2; }
B=$(cd "$1" && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export B T

# A component longer than NAME_MAX (255 bytes).
LONG=$(printf 'n%.0s' $(seq 300))
export LONG

# --- fixtures ------------------------------------------------------------
"$B/latam-data" synthesize --out "$T/train.bin" --vocab 256 --tokens 20000 --seed 1 >/dev/null
mkdir -p "$T/dir" "$T/no-shards"
printf 'la casa es grande y la casa es bonita\n%.0s' $(seq 50) >"$T/corpus.txt"
"$B/latam-data" train-tokenizer --out "$T/tok.json" --vocab-size 280 --special '<|end_of_text|>' \
  "$T/corpus.txt" 2>/dev/null
cat >"$T/tiny.textproto" <<EOF
model { vocab_size: 512 dim: 32 n_layers: 2 n_heads: 2 n_kv_heads: 1 ffn_dim: 64 max_seq_len: 64 }
optimizer { lr: 1e-3 min_lr: 1e-4 }
data {
  seq_len: 32
  train { name: "t" path: "$T/train.bin" weight: 1 }
  eval { name: "t" path: "$T/train.bin" }
}
train { steps: 1 micro_batch_size: 2 global_batch_size: 2 run_dir: "$T/run" save_every: 1 eval_samples: 2 }
EOF
"$B/latam-train" --config "$T/tiny.textproto" >/dev/null 2>"$T/train.err" ||
  { cat "$T/train.err" >&2; echo "FAIL: the one-step training run for the checkpoint" >&2; exit 1; }

# Malformed tokenizers: the ids are checked before anything else.
tokenizer() {  # NAME VOCAB [ADDED_TOKENS]
  printf '{"model": {"type": "BPE", "vocab": {%s}, "merges": []}, "added_tokens": [%s],
           "pre_tokenizer": {"type": "ByteLevel"}}\n' "$2" "${3:-}" >"$T/$1.json"
}
tokenizer neg-id '"a": 0, "b": -1'
tokenizer float-id '"a": 0, "b": 1e8'
tokenizer huge-id '"a": 0, "b": 100000000'
tokenizer wrap-id '"a": 0, "b": 4294967296'
tokenizer dup-id '"a": 0, "b": 0'
tokenizer sparse-id '"a": 0, "b": 1, "c": 5000'
tokenizer added-neg-id '"a": 0' '{"id": -5, "content": "<pad>"}'
tokenizer string-id '"a": 0, "b": "1"'

# latam-eval task files, each bad on its line 2 (line 1 is fine).
evaltasks() {  # NAME LINE2
  printf '{"task": "p", "text": "la casa es grande"}\n%s\n' "$2" >"$T/$1.jsonl"
}
printf '{"task": "p", "text": "la casa es grande"}\n' >"$T/good.jsonl"
evaltasks malformed '{"task": "p", "text": "la casa"'
evaltasks no-task '{"text": "la casa"}'
evaltasks answer-range '{"task": "m", "context": "la", "choices": [" casa", " es"], "answer": 2}'
evaltasks no-choices '{"task": "m", "context": "la", "choices": [], "answer": 0}'
evaltasks mixed '{"task": "p", "context": "la", "choices": [" casa"], "answer": 0}'
evaltasks empty-text '{"task": "q", "text": ""}'
evaltasks one-token '{"task": "q", "text": "l"}'

TRAIN="\$B/latam-train --config \$T/tiny.textproto"
GEN="\$B/latam-generate --checkpoint \$T/run --tokenizer \$T/tok.json --prompt casa"
EVAL="\$B/latam-eval --checkpoint \$T/run --tokenizer \$T/tok.json"

# --- the table: name | pattern | command ---------------------------------
cases=(
  # Path components over 255 bytes, in every path field of the config.
  "long data.tokenizer|data\.tokenizer: .*File name too long|$TRAIN --set data.tokenizer=/tmp/\$LONG/t.json"
  "long data.train path|data\.train\[0\]\.path: .*File name too long|$TRAIN --set data.train[0].path=/tmp/\$LONG"
  "long data.eval path|data\.eval\[0\]\.path: .*File name too long|$TRAIN --set data.eval[0].path=\$T/\$LONG/x.bin"
  "long train.run_dir|train\.run_dir: .*File name too long|$TRAIN --set train.run_dir=\$T/\$LONG"
  "long train.init_from|train\.init_from: .*File name too long|$TRAIN --set train.init_from=\$T/\$LONG"
  "long path under --plan|model\.n_layers|$TRAIN --plan --set data.document_mask=true --set data.train[0].path=\$T/\$LONG --set model.n_layers=4096"
  "long --config|\$LONG.*File name too long|\$B/latam-train --config \$T/\$LONG.textproto"
  "long corpus path|File name too long|\$B/latam-data encode --tokenizer \$T/tok.json --out \$T/o.bin \$T/\$LONG"
  "long --checkpoint|checkpoint .*: no such directory|\$B/latam-generate --checkpoint \$T/\$LONG --prompt x"
  # Directories where files belong.
  "tokenizer is a directory (train)|data\.tokenizer: .*/dir is a directory|$TRAIN --set data.tokenizer=\$T/dir"
  "shard directory without shards|no-shards: directory has no \*\.bin|$TRAIN --set data.train[0].path=\$T/no-shards"
  "config is a directory|/dir: is a directory|\$B/latam-train --config \$T/dir"
  "run_dir is a file|train\.run_dir: .*train\.bin exists and is not a directory|$TRAIN --set train.run_dir=\$T/train.bin"
  "encode a directory|/dir: is a directory|\$B/latam-data encode --tokenizer \$T/tok.json --out \$T/o.bin \$T/dir"
  "encode with a tokenizer directory|/dir: is a directory|\$B/latam-data encode --tokenizer \$T/dir --out \$T/o.bin \$T/corpus.txt"
  "encode --out a directory|--out .*/dir: is a directory|\$B/latam-data encode --tokenizer \$T/tok.json --out \$T/dir \$T/corpus.txt"
  "inspect a directory|/dir: is a directory|\$B/latam-data inspect \$T/dir"
  "generate with a tokenizer directory|/dir: is a directory|\$B/latam-generate --checkpoint \$T/run --tokenizer \$T/dir --prompt x"
  # Token ids in tokenizer.json.
  "negative token id|neg-id\.json: model\.vocab: token 'b' has id -1|\$B/latam-data tokenize --tokenizer \$T/neg-id.json </dev/null"
  "fractional token id|float-id\.json: model\.vocab: token 'b' .*not an integer|\$B/latam-data tokenize --tokenizer \$T/float-id.json </dev/null"
  "token id 1e8|huge-id\.json: model\.vocab: token 'b' has id 100000000, outside|\$B/latam-data tokenize --tokenizer \$T/huge-id.json </dev/null"
  "token id 2^32|wrap-id\.json: model\.vocab: token 'b' has id 4294967296, outside|\$B/latam-data tokenize --tokenizer \$T/wrap-id.json </dev/null"
  "duplicate token id|dup-id\.json: model\.vocab: token '.' has id 0, already the id of|\$B/latam-data tokenize --tokenizer \$T/dup-id.json </dev/null"
  "sparse token ids|sparse-id\.json: token id 5000 \(of 'c'\) is not below twice|\$B/latam-data tokenize --tokenizer \$T/sparse-id.json </dev/null"
  "negative added token id|added-neg-id\.json: added_tokens: token '<pad>' has id -5|\$B/latam-data tokenize --tokenizer \$T/added-neg-id.json </dev/null"
  "string token id|string-id\.json: model\.vocab: token 'b' .*not an integer|\$B/latam-data tokenize --tokenizer \$T/string-id.json </dev/null"
  "training with a bad tokenizer|huge-id\.json: model\.vocab: token 'b'|$TRAIN --set data.tokenizer=\$T/huge-id.json"
  "detokenize an id outside the vocabulary|'99999' is not a token id of|echo 99999 | \$B/latam-data detokenize --tokenizer \$T/tok.json"
  # --plan with sizes that would need gigabytes of tables.
  "plan with 2^31 layers|model\.n_layers: 2147483647 exceeds the limit|$TRAIN --plan --set model.n_layers=2147483647"
  "plan with 10^8 micro-batches|train\.global_batch_size: gives 50000000 micro-batches|$TRAIN --plan --set train.global_batch_size=100000000"
  "plan with a huge dim|model\.dim: 2147483646 exceeds the limit|$TRAIN --plan --set model.dim=2147483646"
  "plan with 2^31 data ranks|parallel: tensor x context x pipeline x data|$TRAIN --plan --set parallel.data=2147483647"
  "plan with huge micro-batches|train\.micro_batch_size: .* exceed the limit|$TRAIN --plan --set train.micro_batch_size=1000000 --set train.global_batch_size=1000000"
  # latam-generate's numbers.
  "max-new-tokens 1e9|--max-new-tokens 1000000000: .*max_seq_len of 64; at most [0-9]+ new tokens|$GEN --max-new-tokens 1000000000"
  "max-new-tokens past max_seq_len|--max-new-tokens 100: .*max_seq_len of 64|$GEN --max-new-tokens 100"
  "max-new-tokens 1e12|--max-new-tokens 1e12: not an integer|$GEN --max-new-tokens 1e12"
  "max-new-tokens 2^63|--max-new-tokens 9223372036854775808: must be in|$GEN --max-new-tokens 9223372036854775808"
  "negative max-new-tokens|--max-new-tokens -3: must be in|$GEN --max-new-tokens -3"
  "min above max new tokens|--min-new-tokens 9: more than --max-new-tokens 4|$GEN --max-new-tokens 4 --min-new-tokens 9"
  "temperature inf|--temperature inf: must be a finite number|$GEN --temperature inf"
  "temperature nan|--temperature nan: must be a finite number|$GEN --temperature nan"
  "negative temperature|--temperature -0.5: must be >= 0|$GEN --temperature -0.5"
  "temperature with trailing text|--temperature 0.7x: not a number|$GEN --temperature 0.7x"
  "top-p above 1|--top-p 1.5: must be in \(0, 1\]|$GEN --top-p 1.5"
  "top-p 0|--top-p 0: must be in \(0, 1\]|$GEN --top-p 0"
  "negative seed|--seed -1: not an unsigned integer|$GEN --seed -1"
  "fractional seed|--seed 1.5: not an unsigned integer|$GEN --seed 1.5"
  "seed past 2^64|--seed 18446744073709551616: must be below 2\^64|$GEN --seed 18446744073709551616"
  # latam-eval's task files name FILE:LINE; its checkpoint errors are latam-generate's.
  "eval malformed JSON|malformed\.jsonl:2: malformed JSON|$EVAL --tasks \$T/malformed.jsonl"
  "eval missing task|no-task\.jsonl:2: missing field .task.|$EVAL --tasks \$T/no-task.jsonl"
  "eval answer out of range|answer-range\.jsonl:2: answer 2 is outside \[0, 2\)|$EVAL --tasks \$T/answer-range.jsonl"
  "eval empty choices|no-choices\.jsonl:2: field .choices. is empty|$EVAL --tasks \$T/no-choices.jsonl"
  "eval task mixing kinds|mixed\.jsonl:2: task .p. mixes kinds|$EVAL --tasks \$T/mixed.jsonl"
  "eval empty text|empty-text\.jsonl:2: field .text. is empty|$EVAL --tasks \$T/empty-text.jsonl"
  "eval one-token text|one-token\.jsonl:2: text tokenizes to 1 token|$EVAL --tasks \$T/one-token.jsonl"
  "eval tasks a directory|--tasks .*/dir: is a directory|$EVAL --tasks \$T/dir"
  "eval missing checkpoint|checkpoint .*: no such directory|\$B/latam-eval --checkpoint \$T/\$LONG --tasks \$T/good.jsonl"
  "eval checkpoint without tokenizer|has no tokenizer\.json; pass --tokenizer|\$B/latam-eval --checkpoint \$T/run --tasks \$T/one-token.jsonl"
  "eval on cuda|--device cuda: latam-eval runs on the CPU only|$EVAL --tasks \$T/one-token.jsonl --device cuda"
  # Kinds covered elsewhere, for breadth.
  "zero steps|train\.steps: must be > 0|$TRAIN --set train.steps=0"
  "infinite learning rate|optimizer\.lr: must be a finite number|$TRAIN --set optimizer.lr=inf"
  "missing shard|data\.train\[0\]\.path: no such file: /nonexistent/x\.bin|$TRAIN --set data.train[0].path=/nonexistent/x.bin"
  "wrong world size|world size 1 != tensor \(2\)|$TRAIN --set parallel.tensor=2 --set parallel.data=1"
  "unknown enum value|train\.device: 'tpu' is not one of|$TRAIN --set train.device=tpu"
  "unknown config field|has no field bogus|$TRAIN --set train.bogus=1"
  "truncated shard|is not a token shard|head -c 20 \$T/train.bin >\$T/short.bin && \$B/latam-data inspect \$T/short.bin"
  "synthesize token count past 2^63|--tokens: '99999999999999999999' is not a 64-bit integer|\$B/latam-data synthesize --out \$T/s.bin --vocab 10 --tokens 99999999999999999999"
)

# --- the bounds ----------------------------------------------------------
with_cuda=0
if ldd "$B/latam-train" 2>/dev/null | grep -qE 'libcuda|libcudart|libcublas'; then with_cuda=1; fi
# GNU time (package "time") measures the peak; without it only the
# address-space limit (when there is one) bounds the memory.
measure=()
if [ -x /usr/bin/time ]; then measure=(/usr/bin/time -f '%M' -o "$T/rss"); fi
baseline_kb=0
if [ ${#measure[@]} -gt 0 ]; then
  for bin in latam-train latam-data latam-generate latam-eval; do
    "${measure[@]}" "$B/$bin" >/dev/null 2>&1 || true
    rss=$(tail -n 1 "$T/rss")
    if [ "$rss" -gt "$baseline_kb" ]; then baseline_kb=$rss; fi
  done
  bound="peak memory bound $((baseline_kb + 200 * 1024)) kB"
else
  bound="peak memory not measured: no /usr/bin/time"
fi
limit_kb=$((baseline_kb + 200 * 1024))

run_case() {  # COMMAND: runs it bounded, leaving its output, exit code and peak RSS (kB) in $T
  rm -f "$T/rss"
  (
    if [ "$with_cuda" = 0 ]; then ulimit -v $((2 * 1024 * 1024)); fi
    ulimit -c 0
    exec timeout 30 "${measure[@]}" bash -c "$1"
  ) >"$T/out" 2>&1 && echo 0 >"$T/rc" || echo $? >"$T/rc"
}

n=0
passed=0
for c in "${cases[@]}"; do
  name=${c%%|*}
  rest=${c#*|}
  pattern=${rest%%|*}
  command=${rest#*|}
  pattern=$(eval "printf '%s' \"$pattern\"")  # expands $T and $LONG in the pattern
  n=$((n + 1))
  run_case "$command"
  rc=$(cat "$T/rc")
  rss=$(tail -n 1 "$T/rss" 2>/dev/null || echo 0)
  [[ "$rss" =~ ^[0-9]+$ ]] || rss=0
  problem=""
  if [ "$rc" != 2 ]; then
    problem="exit $rc, not 2"
  elif ! grep -qE -- "$pattern" "$T/out"; then
    problem="the message does not match '$pattern'"
  elif grep -qE 'terminate called|Aborted|core dumped|FATAL|Segmentation' "$T/out"; then
    problem="aborted"
  elif [ ${#measure[@]} -gt 0 ] && [ "$rss" -gt "$limit_kb" ]; then
    problem="peak memory ${rss} kB over the bound of ${limit_kb} kB"
  fi
  if [ -n "$problem" ]; then
    echo "FAIL: $name: $problem" >&2
    echo "  command: $command" >&2
    sed 's/^/  | /' "$T/out" | cut -c1-400 >&2
  else
    passed=$((passed + 1))
  fi
done
echo "bad inputs: $n cases, $passed exit 2 naming the culprit ($bound)"
[ "$passed" = "$n" ]
