#!/usr/bin/env bash
# latam-eval under data parallelism: on a one-step checkpoint (saved with
# TP=2, so loading also crosses layouts) and a task file with perplexity
# texts longer than the model's context and multiple-choice items, the JSON
# lines are the same bytes without mpirun and under mpirun with 1, 2 and 3
# ranks (item values are summed with one non-zero contributor each, so the
# totals are exact: trainer/eval_main.cc). OMP_NUM_THREADS=1 keeps every
# rank's kernels the same whatever the rank count. Also checks the output's
# shape: one line per task, in order of first appearance, with the numbers
# in range. Last, `latam-data eval-tasks` (the regional tasks of the
# quickstart) on two small held-out files: the same bytes twice, the tasks
# and item counts expected, and a file latam-eval scores.
#
# Usage: tests/eval/check-eval-ranks.sh MPIRUN BIN_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 2 ] || { echo "usage: $0 MPIRUN BIN_DIR" >&2; exit 2; }
MPIRUN=$1
B=$(cd "$2" && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=1

fail() { echo "FAIL: $*" >&2; exit 1; }

"$B/latam-data" synthesize --out "$T/train.bin" --vocab 300 --tokens 20000 --seed 3 >/dev/null
printf 'la casa es grande y la casa es bonita; o livro é azul e a casa é grande\n%.0s' $(seq 40) >"$T/corpus.txt"
"$B/latam-data" train-tokenizer --out "$T/tok.json" --vocab-size 300 "$T/corpus.txt" 2>/dev/null
cat >"$T/tiny.textproto" <<CFG
model { vocab_size: 320 dim: 32 n_layers: 2 n_heads: 2 n_kv_heads: 2 ffn_dim: 64 max_seq_len: 16 }
parallel { tensor: 2 }
optimizer { lr: 1e-3 min_lr: 1e-4 }
data {
  tokenizer: "$T/tok.json"
  seq_len: 16
  train { name: "t" path: "$T/train.bin" weight: 1 }
}
train { steps: 1 micro_batch_size: 2 global_batch_size: 2 run_dir: "$T/run" save_every: 1 }
CFG
"$MPIRUN" --oversubscribe --bind-to none -np 2 "$B/latam-train" --config "$T/tiny.textproto" >/dev/null 2>"$T/train.err" ||
  { cat "$T/train.err" >&2; fail "the one-step training run"; }

cat >"$T/tasks.jsonl" <<'TASKS'
{"task": "es", "text": "la casa es grande y la casa es bonita, la casa es grande y la casa es bonita"}
{"task": "mc", "context": "la casa es", "choices": [" grande", " azul", " bonita y grande"], "answer": 0}
{"task": "es", "text": "la casa"}
{"task": "mc", "context": "o livro é ", "choices": ["azul", "grande"], "answer": 1}

{"task": "pt", "text": "o livro é azul e a casa é grande, o livro é azul e a casa é grande, o livro é azul"}
{"task": "mc", "context": "la casa es grande y la casa es bonita; o livro é azul e a casa", "choices": [" é", " es"], "answer": 0}
{"task": "es", "text": "bonita y grande"}
TASKS

"$B/latam-eval" --checkpoint "$T/run" --tasks "$T/tasks.jsonl" >"$T/single.out" 2>"$T/single.err" ||
  { cat "$T/single.err" >&2; fail "latam-eval without mpirun"; }
cat "$T/single.out"
[ "$(wc -l <"$T/single.out")" = 3 ] || fail "expected 3 lines (tasks es, mc, pt)"
sed -n 1p "$T/single.out" | grep -qE '^\{"task":"es","n":3,"perplexity":[0-9.e+]+,"tokens":[0-9]+\}$' ||
  fail "line 1 is not the es perplexity line"
sed -n 2p "$T/single.out" | grep -qE '^\{"task":"mc","n":3,"accuracy":[0-9.e-]+,"accuracy_norm":[0-9.e-]+\}$' ||
  fail "line 2 is not the mc accuracy line"
# Three items: each accuracy is a multiple of 1/3 in [0, 1].
for key in accuracy accuracy_norm; do
  a=$(sed -n 2p "$T/single.out" | sed -E "s/.*\"$key\":([0-9.e-]+).*/\1/")
  awk -v a="$a" 'BEGIN { k = a * 3; exit !(a >= 0 && a <= 1 && (k - int(k + 0.5))^2 < 1e-18) }' ||
    fail "$key $a is not a multiple of 1/3 in [0, 1]"
done
sed -n 3p "$T/single.out" | grep -qE '^\{"task":"pt","n":1,"perplexity":[0-9.e+]+,"tokens":[0-9]+\}$' ||
  fail "line 3 is not the pt perplexity line"
# A one-step model is near uniform: perplexity within a factor of 2 of the vocabulary.
ppl=$(sed -n 1p "$T/single.out" | sed -E 's/.*"perplexity":([0-9.e+]+).*/\1/')
awk -v p="$ppl" 'BEGIN { exit !(p > 160 && p < 640) }' || fail "perplexity $ppl is not near the vocabulary size 320"

for np in 1 2 3; do
  "$MPIRUN" --oversubscribe --bind-to none -np "$np" "$B/latam-eval" --checkpoint "$T/run" --tasks "$T/tasks.jsonl" \
    >"$T/np$np.out" 2>"$T/np$np.err" || { cat "$T/np$np.err" >&2; fail "latam-eval with $np ranks"; }
  cmp -s "$T/single.out" "$T/np$np.out" || { diff "$T/single.out" "$T/np$np.out" >&2; fail "$np ranks differ"; }
done
echo "eval ranks: the same JSON lines without mpirun and with 1, 2 and 3 ranks"

# Held-out files (short documents: the model's context is 16 tokens): 6
# Spanish documents long enough for a context and a continuation, 1 too
# short for one, and 3 Portuguese documents.
for i in 1 2 3 4 5 6; do
  printf '{"text": "%s la casa es grande y la casa es bonita y grande %s"}\n' "$i" "$i"
done >"$T/es-eval.jsonl"
echo '{"text": "corto"}' >>"$T/es-eval.jsonl"
for i in 1 2 3; do
  printf '{"text": "%s o livro é azul e a casa é grande e azul %s"}\n' "$i" "$i"
done >"$T/pt-eval.jsonl"
"$B/latam-data" eval-tasks --out "$T/regional.jsonl" --items 5 es="$T/es-eval.jsonl" pt="$T/pt-eval.jsonl" 2>/dev/null
"$B/latam-data" eval-tasks --out "$T/regional2.jsonl" --items 5 es="$T/es-eval.jsonl" pt="$T/pt-eval.jsonl" 2>/dev/null
cmp -s "$T/regional.jsonl" "$T/regional2.jsonl" || fail "eval-tasks is not deterministic"
count() { grep -c "\"task\":\"$1\"" "$T/regional.jsonl" || true; }
[ "$(count es/perplexity)" = 5 ] || fail "es/perplexity should have 5 items (--items 5)"
[ "$(count es/continuation)" = 5 ] || fail "es/continuation should have 5 items"
[ "$(count pt/perplexity)" = 3 ] || fail "pt/perplexity should have 3 items"
[ "$(count pt/continuation)" = 3 ] || fail "pt/continuation should have 3 items (3 choices each)"
# The true choice's index rotates: item k answers k mod 4 (es) and k mod 3 (pt).
[ "$(grep -o '"answer":[0-9]*' "$T/regional.jsonl" | tr -d '"answer:' | tr '\n' ' ')" = "0 1 2 3 0 0 1 2 " ] ||
  fail "answers are not the rotating index"
"$B/latam-eval" --checkpoint "$T/run" --tasks "$T/regional.jsonl" >"$T/regional.out" 2>"$T/regional.err" ||
  { cat "$T/regional.err" >&2; fail "latam-eval on the eval-tasks file"; }
[ "$(cut -d, -f1 "$T/regional.out" | tr '\n' ' ')" = \
  '{"task":"es/perplexity" {"task":"es/continuation" {"task":"pt/perplexity" {"task":"pt/continuation" ' ] ||
  fail "unexpected tasks from eval-tasks: $(cat "$T/regional.out")"
echo "eval-tasks: deterministic, 4 tasks, rotating answers, scored by latam-eval"
