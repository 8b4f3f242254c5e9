#!/usr/bin/env bash
# The hang watchdog (train.collective_timeout_s, parallel/watchdog.h) under
# mpirun:
#   1. hang_watchdog: a rank that never joins leaves each kind of operation
#      (all-reduce over a group whose ranks are not the world's, scalar
#      all-reduce, barrier, recv, a send too big to go out eagerly) waiting;
#      the job must end with exit code 4 and a report naming the operation,
#      the group, step 2, micro-batch 1 and the global ranks waited on.
#   2. latam-train on 4 ranks (TP2 x PP2, tiny model, timeout 3 s): once it
#      trains, rank 3 gets SIGSTOP. The other ranks must report the hang
#      (each naming the other ranks of its group as peers) and the job must exit 4 within a
#      bounded time. Prints the seconds from SIGSTOP to the job's end.
#
# Usage: check-watchdog.sh MPIRUN BIN_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
MPIRUN=$1
BIN=$2
T=$(mktemp -d)
JOB=
trap 'if [ -n "$JOB" ]; then kill -9 "$JOB" 2>/dev/null || true; fi; rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
seconds_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- 1. Each operation, a peer that never comes ---------------------------
expect_hang() {  # operation, regex the report must match
  local op=$1 pattern=$2 code=0 start
  start=$(now)
  timeout 60 "$MPIRUN" --oversubscribe --bind-to none -np 3 "$BIN/hang_watchdog" "$op" 1 >"$T/out" 2>"$T/err" ||
    code=$?
  local took
  took=$(seconds_since "$start")
  [ "$code" -ne 124 ] || fail "$op: the job hung past 60 s"
  [ "$code" -eq 4 ] || { cat "$T/err" >&2; fail "$op: exit code $code, expected 4"; }
  grep -qE "^\[rank [0-9]\] hang detected: $pattern" "$T/err" || {
    cat "$T/err" >&2
    fail "$op: no report matching: $pattern"
  }
  echo "ok: $op: exit 4 after $took s (timeout 1 s)"
}
position='\(train.collective_timeout_s = 1\); step 2, micro-batch 1;'
expect_hang all_reduce "all_reduce f32\[1024\]@cpu on group reversed \((rank 2 of 3\) has not completed after 1\.[0-9] s $position waiting on global ranks 2, 1|rank 0 of 3\) has not completed after 1\.[0-9] s $position waiting on global ranks 1, 0);"
expect_hang scalar "all_reduce on group world \(rank [02] of 3\) .* $position waiting on global ranks (1, 2|0, 1);"
expect_hang barrier "barrier on group world \(rank [02] of 3\) .* $position waiting on global ranks (1, 2|0, 1);"
expect_hang recv "recv f32\[4194304\]@cpu on group world \(rank 0 of 3\) .* $position waiting on global ranks 1;"
expect_hang send "send f32\[4194304\]@cpu on group world \(rank 0 of 3\) .* $position waiting on global ranks 1;"

# --- 2. latam-train, one rank stopped --------------------------------------
"$BIN/latam-data" synthesize --out "$T/train.bin" --vocab 512 --tokens 200000 --seed 5 >/dev/null
RUN="$T/run"
args=(--config configs/quickstart.textproto --set data.tokenizer= --set model.vocab_size=512 --set model.dim=64
  --set model.n_layers=4 --set model.n_heads=4 --set model.n_kv_heads=2 --set model.ffn_dim=128
  --set data.seq_len=32 --set train.micro_batch_size=2 --set train.global_batch_size=8 --set train.steps=100000
  --set train.eval_every=0 --set train.save_every=100000 --set train.log_every=1 --set parallel.tensor=2
  --set parallel.pipeline=2 --set train.collective_timeout_s=3 --set train.run_dir="$RUN")
for i in 0 1 2; do args+=(--set "data.train[$i].path=$T/train.bin" --set "data.eval[$i].path=$T/train.bin"); done
"$MPIRUN" --oversubscribe --bind-to none -np 4 "$BIN/latam-train" "${args[@]}" >"$T/out" 2>"$T/err" &
JOB=$!
# Wait for training to run (three logged steps), then stop world rank 3.
for _ in $(seq 600); do
  [ -f "$RUN/metrics.jsonl" ] && [ "$(wc -l <"$RUN/metrics.jsonl")" -ge 3 ] && break
  kill -0 "$JOB" 2>/dev/null || { cat "$T/err" >&2; fail "latam-train ended before training"; }
  sleep 0.1
done
[ -f "$RUN/metrics.jsonl" ] && [ "$(wc -l <"$RUN/metrics.jsonl")" -ge 3 ] || fail "latam-train logged no steps in 60 s"
victim=
for pid in $(pgrep -f "latam-train.*$RUN"); do
  if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=3"; then victim=$pid; fi
done
[ -n "$victim" ] || fail "no latam-train process of world rank 3"
kill -STOP "$victim"
stopped=$(now)
code=0
for _ in $(seq 600); do
  kill -0 "$JOB" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$JOB" 2>/dev/null; then
  kill -CONT "$victim" 2>/dev/null || true
  fail "the job still runs 60 s after rank 3 stopped"
fi
wait "$JOB" || code=$?
JOB=
took=$(seconds_since "$stopped")
[ "$code" -eq 4 ] || { cat "$T/err" >&2; fail "latam-train exit code $code, expected 4"; }
reports=$(grep -E '^\[rank [0-2]\] hang detected: ' "$T/err" || true)
[ -n "$reports" ] || { cat "$T/err" >&2; fail "no hang report"; }
echo "$reports"
# Every report is complete: operation, group, timeout, step (one the run had
# reached), micro-batch, and as peers the other global ranks of the group it
# names (TP groups {0,1} {2,3}, pipeline groups {0,2} {1,3}). Which ranks
# report is a race: the first report ends the job, and it may come from a
# rank that waits on a waiting rank (rank 0 on its pipeline partner 2) rather
# than on rank 3 itself; rank 3, continued by mpirun's teardown, may report
# too (its own operation is then past the timeout), so it is left out.
last_step=$(wc -l <"$RUN/metrics.jsonl")
while IFS= read -r line; do
  [[ "$line" =~ ^\[rank\ ([0-2])\]\ hang\ detected:\ (all_reduce|reduce_scatter|all_gather|broadcast|send|recv|barrier)(\ [a-z0-9]+\[[0-9,\ ]*\]@cpu)?\ on\ group\ (world|tp|pp|dp|replicas|model_parallel|kv)\ \(rank\ [0-9]\ of\ [0-9]\)\ has\ not\ completed\ after\ [0-9.]+\ s\ \(train.collective_timeout_s\ =\ 3\)\;\ step\ ([0-9]+),\ micro-batch\ ([0-9]+|none)\;\ waiting\ on\ global\ ranks\ ([0-9,\ ]+)\;\ ending\ the\ job\ with\ exit\ code\ 4$ ]] ||
    fail "malformed report: $line"
  rank=${BASH_REMATCH[1]} group=${BASH_REMATCH[4]} step=${BASH_REMATCH[5]} peers=${BASH_REMATCH[7]}
  [ "$step" -ge "$last_step" ] && [ "$step" -le $((last_step + 1)) ] ||
    fail "report at step $step, the run had logged $last_step steps: $line"
  case $group in
    tp) expected=$((rank ^ 1)) ;;
    pp) expected=$(((rank + 2) % 4)) ;;
    world) expected=$(for r in 0 1 2 3; do [ "$r" -eq "$rank" ] || printf '%s\n' "$r"; done | paste -sd, | sed 's/,/, /g') ;;
    *) fail "a report on group $group, which has one rank in this layout: $line" ;;
  esac
  [ "$peers" = "$expected" ] || fail "rank $rank on group $group waits on $peers, expected $expected: $line"
done <<<"$reports"
awk -v t="$took" 'BEGIN { exit !(t < 30) }' || fail "the job took $took s to end after rank 3 stopped (timeout 3 s)"
echo "ok: latam-train TP2 x PP2, rank 3 stopped: exit 4, $took s from SIGSTOP to the job's end (timeout 3 s)"
