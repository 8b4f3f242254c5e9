#!/usr/bin/env bash
# launch/latam-run picks the launcher and environment from where it runs:
# checked with --dry-run against fake Slurm variables and a fake /sys.
# Given BIN_DIR (the directory of latam-train and latam-data), it also runs
# the real trainer with 2 ranks on synthetic data and checks the restart
# loop: SIGUSR1 to latam-run makes the ranks save and exit 3 and latam-run
# rerun them (--resume auto) up to LATAM_MAX_RESTARTS times, while SIGTERM,
# SIGINT or a second signal stop it after the save, without a restart.
#
# Usage: tests/launch/check-latam-run.sh [BIN_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=""
if [ $# -ge 1 ]; then BIN=$(cd "$1" && pwd); fi
T=$(mktemp -d)
run_pid=""
cleanup() {
  if [ -n "$run_pid" ]; then kill -TERM "$run_pid" 2>/dev/null || true; fi
  rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
expect() {  # output pattern description
  grep -qE -- "$2" <<<"$1" || { echo "$1" >&2; fail "$3: no match for '$2'"; }
}
cores=$(nproc --all)
clean=(env -u SLURM_JOB_ID -u SLURM_NTASKS -u SLURM_NTASKS_PER_NODE -u SLURM_JOB_NUM_NODES -u SLURM_CPUS_PER_TASK
       -u OMP_NUM_THREADS -u OMP_WAIT_POLICY -u LATAM_MAX_RESTARTS LATAM_SYSFS="$T/none")

out=$("${clean[@]}" launch/latam-run -n $((cores * 2)) --dry-run -- --config c.textproto 2>&1)
expect "$out" "mpirun launcher, $((cores * 2)) ranks" "plain launcher"
expect "$out" "^OMP_NUM_THREADS=1$" "threads per rank when oversubscribed"
expect "$out" "^OMP_WAIT_POLICY=PASSIVE$" "passive waiting when oversubscribed"
expect "$out" "command: .*mpirun -np $((cores * 2)) --bind-to none --oversubscribe .*latam-train --config c.textproto" \
  "mpirun command"
expect "$out" "up to 3 restarts" "default restarts outside Slurm"
expect "$out" "^OMPI_MCA_odls_base_sigkill_timeout=10$" "time mpirun gives the ranks after SIGTERM"
out=$("${clean[@]}" LATAM_MAX_RESTARTS=7 launch/latam-run --max-restarts 2 --restart-backoff 1 --dry-run -- x 2>&1)
expect "$out" "up to 2 restarts" "--max-restarts overrides LATAM_MAX_RESTARTS"

out=$("${clean[@]}" launch/latam-run -n 1 --dry-run -- --plan 2>&1)
expect "$out" "^OMP_NUM_THREADS=$cores$" "one rank gets every core"
grep -q OMP_WAIT_POLICY <<<"$out" && fail "no passive waiting without oversubscription"
out=$("${clean[@]}" LATAM_MAX_RESTARTS=7 launch/latam-run --dry-run -- --plan 2>&1)
expect "$out" "up to 7 restarts" "LATAM_MAX_RESTARTS"

out=$("${clean[@]}" SLURM_JOB_ID=42 SLURM_NTASKS=16 SLURM_JOB_NUM_NODES=2 SLURM_NTASKS_PER_NODE='8(x2)' \
      SLURM_CPUS_PER_TASK=12 launch/latam-run --dry-run -- --config c 2>&1)
expect "$out" "slurm launcher, 16 ranks \(8 per node, 12 threads each\)" "slurm layout"
expect "$out" "command: srun --mpi=pmix --kill-on-bad-exit=1 .*latam-train --config c" "srun command"
expect "$out" "up to 0 restarts" "no restarts inside Slurm (the job is requeued instead)"
out=$("${clean[@]}" SLURM_JOB_ID=42 SLURM_NTASKS=4 LATAM_SRUN_MPI=pmix_v4 launch/latam-run --dry-run -- x 2>&1)
expect "$out" "srun --mpi=pmix_v4" "srun plugin override"

# EFA: by device name, and by driver for names like rdmap0s31.
mkdir -p "$T/sys1/class/infiniband/efa_0" "$T/sys2/class/infiniband/rdmap0s31/device" "$T/sys2/drivers/efa" \
  "$T/sys3/class/infiniband/mlx5_0/device" "$T/sys3/drivers/mlx5_core"
ln -s "$T/sys2/drivers/efa" "$T/sys2/class/infiniband/rdmap0s31/device/driver"
ln -s "$T/sys3/drivers/mlx5_core" "$T/sys3/class/infiniband/mlx5_0/device/driver"
for sys in sys1 sys2; do
  out=$("${clean[@]}" LATAM_SYSFS="$T/$sys" launch/latam-run --dry-run -- x 2>&1)
  expect "$out" "network efa" "EFA detected ($sys)"
  expect "$out" "^FI_PROVIDER=efa$" "libfabric provider ($sys)"
  expect "$out" "^FI_EFA_USE_DEVICE_RDMA=1$" "GPUDirect RDMA ($sys)"
done
out=$("${clean[@]}" LATAM_SYSFS="$T/sys3" launch/latam-run --dry-run -- x 2>&1)
expect "$out" "network default" "InfiniBand without EFA"

# Bad input: exit 2.
code=0
"${clean[@]}" launch/latam-run -n zero --dry-run -- x >/dev/null 2>&1 || code=$?
[ "$code" -eq 2 ] || fail "-n zero gave exit $code"
code=0
"${clean[@]}" SLURM_JOB_ID=1 SLURM_NTASKS=4 launch/latam-run -n 8 --dry-run -- x >/dev/null 2>&1 || code=$?
[ "$code" -eq 2 ] || fail "-n 8 in a 4-task allocation gave exit $code"
code=0
"${clean[@]}" LATAM_MAX_RESTARTS=many launch/latam-run --dry-run -- x >/dev/null 2>&1 || code=$?
[ "$code" -eq 2 ] || fail "LATAM_MAX_RESTARTS=many gave exit $code"
for bad in "--max-restarts -1" "--restart-backoff 0.5" "--max-restarts"; do
  code=0
  # shellcheck disable=SC2086  # the flag and its value
  "${clean[@]}" launch/latam-run $bad --dry-run -- x >/dev/null 2>&1 || code=$?
  [ "$code" -eq 2 ] || fail "$bad gave exit $code"
done
echo "latam-run: environment checks passed"

if [ -z "$BIN" ]; then
  echo "latam-run: no BIN_DIR given, restart checks skipped"
  exit 0
fi
if [ ! -x "$BIN/latam-train" ] || [ ! -x "$BIN/latam-data" ]; then fail "no latam-train/latam-data in $BIN"; fi

# mpirun holds the ranks' SIGKILL this long after their SIGTERM, and as long
# again when they exit 3 one after the other: 2 s keeps these runs short
# (check-latam-run-restarts.sh runs the default).
clean+=(OMPI_MCA_odls_base_sigkill_timeout=2)

# The restart loop with the real trainer: the quickstart model on a
# synthetic shard, 2 data-parallel ranks (about 0.1-0.2 s a step on 2 cores).
"$BIN/latam-data" synthesize --out "$T/train.bin" --vocab 512 --tokens 200000 --seed 1 >/dev/null ||
  fail "latam-data synthesize failed"
steps=40
train_args=(--config configs/quickstart.textproto --set parallel.tensor=1 --set parallel.pipeline=1
            --set data.tokenizer= --set model.vocab_size=512 --set train.eval_every=0 --set train.log_every=1
            --set "train.steps=$steps" --set train.save_every=1000)
for i in 0 1 2; do
  train_args+=(--set "data.train[$i].path=$T/train.bin" --set "data.eval[$i].path=$T/train.bin")
done
metric_steps() {  # run_dir: the training steps in metrics.jsonl, one a line
  sed -n 's/^{"step":\([0-9]*\),.*"loss".*/\1/p' "$1/metrics.jsonl" 2>/dev/null
}
# start NAME SIGNAL...: runs latam-run in the background on run directory
# $T/NAME, sends each SIGNAL (a name, or `pause` for 0.05 s) once the run
# has logged 3 steps, and waits for latam-run to exit (at most 80 s); sets
# $rc and $out (its output). latam-run gets its own process group (set -m):
# a background command of a script without job control ignores SIGINT.
start() {
  local name=$1 dir=$T/$1 deadline s
  shift
  rm -rf "$dir"
  set -m
  "${clean[@]}" LATAM_TRAIN="$BIN/latam-train" LATAM_MAX_RESTARTS="$restarts" \
    launch/latam-run -n 2 -- "${train_args[@]}" --set train.run_dir="$dir" >"$T/$name.out" 2>&1 &
  run_pid=$!
  set +m
  deadline=$((SECONDS + 80))
  while [ "$(metric_steps "$dir" | wc -l)" -lt 3 ] && kill -0 "$run_pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { cat "$T/$name.out" >&2; fail "$name: no 3 steps logged in 80 s"; }
    sleep 0.05
  done
  for s in "$@"; do
    if [ "$s" = pause ]; then sleep 0.05; else kill -"$s" "$run_pid" 2>/dev/null || true; fi
  done
  while kill -0 "$run_pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { cat "$T/$name.out" >&2; fail "$name: latam-run still running after 80 s"; }
    sleep 0.1
  done
  rc=0
  wait "$run_pid" || rc=$?
  run_pid=""
  out=$(cat "$T/$name.out")
}
show() { echo "$out" | grep -v '^step ' >&2; }

# SIGUSR1: save, exit 3, one restart that resumes and finishes.
start_s=$SECONDS
restarts=1
start restart USR1
[ "$rc" -eq 0 ] || { show; fail "restart: latam-run exited $rc, expected 0 after one restart"; }
expect "$out" "latam-run: SIGUSR1: asking the trainer to save a checkpoint and exit, then restart" "restart: signal caught"
expect "$out" "latam-train: preempted: stopped by signal 10 after step [0-9]+" "restart: trainer preempted by SIGUSR1"
saved=$(sed -n 's/.*stopped by signal 10 after step \([0-9]*\).*/\1/p' <<<"$out" | head -n 1)
[ "$saved" -lt "$steps" ] || { show; fail "restart: the signal came after the last step"; }
expect "$out" "restart 1 of 1 with --resume auto" "restart: latam-run restarted"
expect "$out" "latam-train: loaded everything from $T/restart/checkpoints/step_$(printf %08d "$saved") \(step $saved," \
  "restart: the second run resumed from the saved step"
[ "$(grep -c 'latam-train: preempted' <<<"$out")" -eq 1 ] || { show; fail "restart: expected exactly one preemption"; }
# The second run's first step is the one after the checkpoint.
first=$(sed -n '/restart 1 of 1/,$ s/^step *\([0-9]*\)\/.*/\1/p' <<<"$out" | head -n 1)
[ "$first" = $((saved + 1)) ] || { show; fail "restart: the second run started at step '$first', not $((saved + 1))"; }
logged=$(metric_steps "$T/restart" | sort -n | uniq)
if [ "$(wc -l <<<"$logged")" -ne "$steps" ] || [ "$(tail -n 1 <<<"$logged")" -ne "$steps" ]; then
  show; fail "restart: metrics.jsonl lacks some of steps 1..$steps"
fi
[ "$(cat "$T/restart/checkpoints/latest")" = "step_$(printf %08d "$steps")" ] ||
  { show; fail "restart: checkpoints/latest is not the last step"; }
echo "latam-run: SIGUSR1 after step $saved, restart resumed at step $first and finished step $steps in $((SECONDS - start_s)) s"

# SIGTERM is a stop request: save, exit 3, no restart.
start_s=$SECONDS
restarts=3
start stop TERM
[ "$rc" -eq 3 ] || { show; fail "stop: latam-run exited $rc after SIGTERM, expected 3"; }
expect "$out" "SIGTERM: asking the trainer to save a checkpoint and exit, then stop" "stop: signal caught"
expect "$out" "not restarting: stop requested" "stop: no restart"
grep -q "restart 1 of" <<<"$out" && { show; fail "stop: latam-run restarted after SIGTERM"; }
saved=$(sed -n 's/.*stopped by signal 10 after step \([0-9]*\).*/\1/p' <<<"$out" | head -n 1)
if [ -z "$saved" ] || [ "$(cat "$T/stop/checkpoints/latest")" != "step_$(printf %08d "$saved")" ]; then
  show; fail "stop: no checkpoint of the step the trainer stopped after"
fi
echo "latam-run: SIGTERM saved step $saved and stopped with exit 3 in $((SECONDS - start_s)) s"

# No restarts left: SIGUSR1 saves and stops with exit 3.
start_s=$SECONDS
restarts=0
start limit USR1
[ "$rc" -eq 3 ] || { show; fail "limit: latam-run exited $rc with LATAM_MAX_RESTARTS=0, expected 3"; }
expect "$out" "not restarting: 0 of 0 restarts done" "limit: no restart"
echo "latam-run: with LATAM_MAX_RESTARTS=0, SIGUSR1 stopped the run with exit 3 in $((SECONDS - start_s)) s"
restarts=3

# Ctrl-C (SIGINT) stops too.
start_s=$SECONDS
start interrupt INT
[ "$rc" -eq 3 ] || { show; fail "interrupt: latam-run exited $rc after SIGINT, expected 3"; }
expect "$out" "SIGINT: asking the trainer to save a checkpoint and exit, then stop" "interrupt: signal caught"
grep -q "restart 1 of" <<<"$out" && { show; fail "interrupt: latam-run restarted after SIGINT"; }
echo "latam-run: SIGINT stopped the run with exit 3 in $((SECONDS - start_s)) s"

# A second signal in the same run turns a restart into a stop.
start_s=$SECONDS
start twice USR1 pause USR1
[ "$rc" -eq 3 ] || { show; fail "twice: latam-run exited $rc after two SIGUSR1, expected 3"; }
expect "$out" "not restarting: stop requested" "twice: no restart"
grep -q "restart 1 of" <<<"$out" && { show; fail "twice: latam-run restarted after a second signal"; }
echo "latam-run: a second SIGUSR1 stopped the run with exit 3 in $((SECONDS - start_s)) s"
echo "latam-run: all checks passed"
