#!/usr/bin/env bash
# launch/latam-run's crash restarts and the trainer's signal handling from
# its first millisecond, with the real trainer: 4 ranks (tensor 2 x
# pipeline 2) of the quickstart model on a synthetic shard.
#   - kill -9 of one rank in the middle of a run: latam-run reruns it after
#     the back-off from checkpoints/latest and it finishes with the losses
#     of an uninterrupted run, bitwise (metrics.jsonl);
#   - exit 2 (bad input) is not rerun; the restart limit is kept, and the
#     doubling back-off and each exit code are logged (a stand-in trainer);
#   - SIGTERM to latam-run, and SIGUSR1 or SIGTERM to one rank, from 0 to
#     3 s after the start: exit 3, never a death by signal;
#   - SIGTERM to mpirun itself, with a save slower than Open MPI's default
#     1 s before SIGKILL: the checkpoint is written and latam-run exits 3.
#
# Usage: tests/launch/check-latam-run-restarts.sh BIN_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(cd "$1" && pwd)
T=$(mktemp -d)
run_pid=""
cleanup() {
  if [ -n "$run_pid" ]; then kill -TERM "$run_pid" 2>/dev/null || true; wait "$run_pid" 2>/dev/null || true; fi
  rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
expect() {  # output pattern description
  grep -qE -- "$2" <<<"$1" || { echo "$1" >&2; fail "$3: no match for '$2'"; }
}
clean=(env -u SLURM_JOB_ID -u SLURM_NTASKS -u SLURM_NTASKS_PER_NODE -u SLURM_JOB_NUM_NODES -u SLURM_CPUS_PER_TASK
       -u OMP_NUM_THREADS -u OMP_WAIT_POLICY -u LATAM_MAX_RESTARTS -u OMPI_MCA_odls_base_sigkill_timeout
       LATAM_SYSFS="$T/none" LATAM_TRAIN="$BIN/latam-train")

"$BIN/latam-data" synthesize --out "$T/train.bin" --vocab 512 --tokens 200000 --seed 1 >/dev/null ||
  fail "latam-data synthesize failed"
train_args=(--config configs/quickstart.textproto --set parallel.tensor=2 --set parallel.pipeline=2
            --set data.tokenizer= --set model.vocab_size=512 --set train.eval_every=0 --set train.log_every=1
            --set train.save_every=5)
for i in 0 1 2; do
  train_args+=(--set "data.train[$i].path=$T/train.bin" --set "data.eval[$i].path=$T/train.bin")
done
# step -> the loss text of the step's last line in a run's metrics.jsonl.
losses() { sed -n 's/^{"step":\([0-9]*\),.*"loss":\([^,}]*\).*/\1 \2/p' "$1/metrics.jsonl" | sort -n -s -k1,1 |
           awk '{last[$1] = $2} END {for (s in last) print s, last[s]}' | sort -n; }
steps_logged() { sed -n 's/^{"step":\([0-9]*\),.*"loss".*/\1/p' "$1/metrics.jsonl" 2>/dev/null | wc -l; }
# rank_pid NAME K: the pid of rank K of run NAME (tagged by LATAM_TEST_RUN).
rank_pid() {
  local p environ
  for p in /proc/[0-9]*; do
    # Read whole first: `grep -q` in a pipe may close it early, and pipefail
    # would count the writer's SIGPIPE as a miss.
    environ=$(tr '\0' '\n' 2>/dev/null <"$p/environ") || continue
    grep -qx "LATAM_TEST_RUN=$T/$1" <<<"$environ" || continue
    grep -qx "OMPI_COMM_WORLD_RANK=$2" <<<"$environ" || continue
    echo "${p#/proc/}"
    return 0
  done
  return 1
}
# launch NAME LATAM_RUN_ARGS... -- TRAIN_ARGS...: latam-run with 4 ranks in
# the background on run directory $T/NAME (its own process group).
launch() {
  local name=$1
  shift
  rm -rf "${T:?}/$name"
  set -m
  local timeout=("${quick[@]}")
  [ "$name" != mpirun ] || timeout=()
  "${clean[@]}" "${timeout[@]}" LATAM_TEST_RUN="$T/$name" launch/latam-run -n 4 "$@" --set train.run_dir="$T/$name" \
    >"$T/$name.out" 2>&1 &
  run_pid=$!
  set +m
}
# finish NAME: waits (at most 120 s) for latam-run; sets $rc and $out.
finish() {
  local deadline=$((SECONDS + 120))
  while kill -0 "$run_pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { cat "$T/$1.out" >&2; fail "$1: latam-run still running after 120 s"; }
    sleep 0.1
  done
  rc=0
  wait "$run_pid" || rc=$?
  run_pid=""
  out=$(cat "$T/$1.out")
}
show() { echo "$out" | grep -v '^step ' >&2; }
# mpirun holds a rank's SIGKILL this long after its SIGTERM, and as long
# again whenever ranks exit non-zero one after the other (after a save or
# a crash): 2 s keeps the runs short; the last check runs latam-run's 10 s.
quick=(OMPI_MCA_odls_base_sigkill_timeout=2)
# No rank, and no launcher, may die of a signal: Open MPI reports it so.
no_signal_death() {  # name
  if grep -qE "exited on signal|died of signal|killed by signal|signal [0-9]+ \(" <<<"$out"; then
    show; fail "$1: a process died of a signal"
  fi
}

# 1. Exit 2 is not rerun.
launch bad --max-restarts 3 --restart-backoff 0 -- "${train_args[@]}" --set parallel.tensor=3 --set train.steps=4
finish bad
[ "$rc" -eq 2 ] || { show; fail "bad: latam-run exited $rc for a bad layout, expected 2"; }
expect "$out" "latam-train exited 2 \(bad input\); not restarting" "bad: not rerun"
grep -q "restart 1 of" <<<"$out" && { show; fail "bad: latam-run reran a run that exited 2"; }
echo "latam-run: exit 2 not rerun"

# 2. The limit and the back-off, with a stand-in trainer that fails each
# time another way: killed by SIGKILL (137), a hang (4), an error (1).
cat >"$T/failing-train" <<EOF
#!/usr/bin/env bash
n=\$(cat "$T/attempts" 2>/dev/null || echo 0)
echo \$((n + 1)) >"$T/attempts"
case \$n in 0) kill -KILL \$\$ ;; 1) exit 4 ;; *) exit 1 ;; esac
EOF
chmod +x "$T/failing-train"
start_s=$SECONDS
out=$("${clean[@]}" "${quick[@]}" LATAM_TRAIN="$T/failing-train" launch/latam-run --max-restarts 2 --restart-backoff 1 -- x 2>&1) &&
  rc=0 || rc=$?
[ "$rc" -eq 1 ] || { echo "$out" >&2; fail "limit: latam-run exited $rc, expected the last failure's 1"; }
[ "$(cat "$T/attempts")" -eq 3 ] || { echo "$out" >&2; fail "limit: $(cat "$T/attempts") runs, expected 1 + 2 restarts"; }
expect "$out" "failed \(exit 137: a process died of signal 9\): restart 1 of 2 in 1 s" "limit: first restart"
expect "$out" "failed \(exit 4\): restart 2 of 2 in 2 s" "limit: second restart, back-off doubled"
expect "$out" "failed \(exit 1\); not restarting: 2 of 2 restarts done" "limit: no third restart"
[ $((SECONDS - start_s)) -ge 3 ] || fail "limit: the back-off of 1 + 2 s was not waited"
echo "latam-run: restart limit and back-off kept"

# 3. kill -9 of one rank mid-run: latam-run reruns it and the run ends with
# an uninterrupted run's losses, bitwise.
steps=20
launch ref --max-restarts 0 -- "${train_args[@]}" --set train.steps=$steps
finish ref
[ "$rc" -eq 0 ] || { show; fail "ref: the uninterrupted run exited $rc"; }
victim=$((RANDOM % 4))
launch crash --max-restarts 2 --restart-backoff 1 -- "${train_args[@]}" --set train.steps=$steps
deadline=$((SECONDS + 120))
while [ "$(steps_logged "$T/crash")" -lt 8 ]; do
  [ "$SECONDS" -lt "$deadline" ] && kill -0 "$run_pid" 2>/dev/null || { cat "$T/crash.out" >&2; fail "crash: no 8 steps"; }
  sleep 0.05
done
pid=$(rank_pid crash "$victim") || fail "crash: found no rank $victim"
kill -KILL "$pid"
killed_at=$(date +%s.%N)
killed_after=$(steps_logged "$T/crash")
while [ "$(grep -c 'latam-train: loaded everything' "$T/crash.out")" -lt 1 ] ||
      [ "$(steps_logged "$T/crash")" -le "$killed_after" ]; do
  [ "$SECONDS" -lt "$deadline" ] && kill -0 "$run_pid" 2>/dev/null || break
  sleep 0.05
done
recovered_s=$(awk -v a="$killed_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
finish crash
[ "$rc" -eq 0 ] || { show; fail "crash: latam-run exited $rc after a rank was killed, expected 0 after a restart"; }
expect "$out" "failed \(exit [0-9]+[^)]*\): restart 1 of 2 in 1 s with --resume auto, from step (5|10) " "crash: restarted"
[ "$(losses "$T/crash")" = "$(losses "$T/ref")" ] || {
  diff <(losses "$T/ref") <(losses "$T/crash") >&2 || true; fail "crash: the losses differ from the uninterrupted run"; }
[ "$(losses "$T/crash" | wc -l)" -eq $steps ] || fail "crash: not every step logged"
printf 'latam-run: rank %d killed by SIGKILL after %d steps; the rerun logged its first step %.1f s later, and all %d losses match the uninterrupted run bitwise\n' \
  "$victim" "$killed_after" "$recovered_s" "$steps"

# 4. Signals from the first moment: to latam-run (SIGTERM: save and stop)
# at 0 (its traps set) to 3 s, and to one rank at 0 (as soon as the rank has blocked them in
# its launcher: the microseconds between Open MPI's exec, which unblocks
# every signal, and the launcher's first instruction cannot be covered) to
# 3 s. Each must stop the job with exit 3, never kill it.
long=(--set train.steps=100000)
for at in 0 0.5 1 2 3; do
  launch early --max-restarts 0 -- "${train_args[@]}" "${long[@]}"
  # 0 is once bash has set latam-run's traps (SigCgt has SIGTERM, bit 15):
  # the few milliseconds bash takes to start are not covered.
  until [ $((0x$(sed -n 's/^SigCgt:\t//p' "/proc/$run_pid/status" 2>/dev/null || echo 0) & 0x4000)) -ne 0 ]; do
    kill -0 "$run_pid" 2>/dev/null || break
  done
  sleep "$at"
  kill -TERM "$run_pid"
  finish early
  [ "$rc" -eq 3 ] || { show; fail "SIGTERM to latam-run at $at s: exit $rc, expected 3"; }
  no_signal_death "SIGTERM to latam-run at $at s"
done
echo "latam-run: SIGTERM to latam-run 0, 0.5, 1, 2 and 3 s after its start: exit 3 each time"
n=0
for at in 0 0.3 1 2 3; do
  n=$((n + 1))
  sig=USR1
  [ $((n % 2)) -eq 0 ] || sig=TERM
  rank=$((n % 4))
  launch early --max-restarts 0 -- "${train_args[@]}" "${long[@]}"
  t0=$SECONDS
  pid=""
  while [ -z "$pid" ]; do
    [ $((SECONDS - t0)) -lt 60 ] && kill -0 "$run_pid" 2>/dev/null || { cat "$T/early.out" >&2; fail "no rank $rank"; }
    pid=$(rank_pid early "$rank") || pid=""
    # The launcher has blocked SIGUSR1 (bit 10) and SIGTERM (bit 15).
    if [ -n "$pid" ]; then
      mask=$(sed -n 's/^SigBlk:\t//p' "/proc/$pid/status" 2>/dev/null || true)
      [ -n "$mask" ] && [ $((0x$mask & 0x4200)) -eq $((0x4200)) ] || pid=""
    fi
  done
  sleep "$at"
  kill -"$sig" "$pid"
  finish early
  [ "$rc" -eq 3 ] || { show; fail "SIG$sig to rank $rank at $at s: exit $rc, expected 3"; }
  no_signal_death "SIG$sig to rank $rank at $at s"
  expect "$out" "latam-train: preempted: stopped by signal $( [ $sig = USR1 ] && echo 10 || echo 15 )" \
    "SIG$sig to rank $rank at $at s: named"
done
echo "latam-run: SIGUSR1/SIGTERM to one rank 0, 0.3, 1, 2 and 3 s after it started: exit 3 each time"

# 5. SIGTERM to mpirun itself, with a model whose step and save together
# take longer than the 1 s Open MPI gives by default between its SIGTERM
# to the ranks and its SIGKILL. latam-run's default gives them 10 s.
big=(--set model.dim=256 --set model.n_layers=8 --set model.n_heads=8 --set model.n_kv_heads=4
     --set model.ffn_dim=1024 --set train.save_every=1000)
launch mpirun --max-restarts 0 -- "${train_args[@]}" "${big[@]}" "${long[@]}"
deadline=$((SECONDS + 120))
while [ "$(steps_logged "$T/mpirun")" -lt 2 ]; do
  [ "$SECONDS" -lt "$deadline" ] && kill -0 "$run_pid" 2>/dev/null || { cat "$T/mpirun.out" >&2; fail "mpirun: no 2 steps"; }
  sleep 0.05
done
mpirun_pid=$(pgrep -P "$run_pid" -x mpirun) || fail "mpirun: no mpirun under latam-run"
start_s=$SECONDS
kill -TERM "$mpirun_pid"
finish mpirun
[ "$rc" -eq 3 ] || { show; fail "mpirun: latam-run exited $rc after SIGTERM to mpirun, expected 3"; }
expect "$out" "rank 0 recorded exit 3" "mpirun: exit 3 learnt from the status file"
saved=$(sed -n 's/.*stopped by signal 15 after step \([0-9]*\).*/\1/p' <<<"$out" | head -n 1)
[ -n "$saved" ] && [ "$(cat "$T/mpirun/checkpoints/latest")" = "step_$(printf %08d "$saved")" ] ||
  { show; fail "mpirun: no checkpoint of the step the trainer stopped after"; }
saved_line=$(grep -m1 '^saved .*checkpoints/step_' <<<"$out" || true)
echo "latam-run: SIGTERM to mpirun: step $saved saved ($saved_line), exit 3, in $((SECONDS - start_s)) s"
echo "latam-run: all restart checks passed"
