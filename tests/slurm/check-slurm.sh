#!/usr/bin/env bash
# Runs launch/slurm/latam-cpu.sbatch on a real, private, one-node Slurm
# cluster started on this machine: munged with its own key and socket,
# slurmctld and slurmd with a generated slurm.conf whose state, spool, log
# and pid files all live in a temporary directory and whose ports are free
# ones. The job trains the quickstart layout (4 ranks: tensor 2 x pipeline 2)
# for 20 steps on synthetic data through launch/latam-run and `srun
# --mpi=pmix`; the test checks its exit code, its log and its metrics. A
# second job checks preemption with the real trainer, both ways: SIGUSR1 to
# the batch script (the ranks save and exit 3, the script requeues the job)
# and `scontrol requeue` (SIGTERM, the ranks save, Slurm requeues); each
# requeued run must resume from the step saved before it, and the job must
# complete with every step logged and checkpoints/latest at the last step.
#
# Needs root (munged and slurmd run as root here) and the Debian packages
# slurmctld, slurmd, slurm-client, munge and libpmix-dev (Slurm's PMIx
# plugin loads libpmix.so); installs what is missing. Exits 77 (skipped)
# when they cannot be installed or the daemons cannot start here.
#
# Usage: tests/slurm/check-slurm.sh BIN_DIR   (the directory of latam-train and latam-data)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
BIN=${1:?usage: check-slurm.sh BIN_DIR}
BIN=$(cd "$BIN" && pwd) || exit 1
REPO=$(pwd)

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }

if [ ! -x "$BIN/latam-train" ] || [ ! -x "$BIN/latam-data" ]; then fail "no latam-train/latam-data in $BIN"; fi
[ "$(id -u)" -eq 0 ] || skip "needs root to run munged and slurmd"
./launch/install-deps.sh slurmctld slurmd slurm-client munge libpmix-dev >/dev/null 2>&1 ||
  skip "cannot install slurmctld slurmd slurm-client munge libpmix-dev"
for tool in munged munge unmunge slurmctld slurmd sbatch sinfo squeue scontrol scancel srun; do
  command -v "$tool" >/dev/null || skip "$tool not found after installing the Slurm packages"
done

# Nothing of an enclosing Slurm job or of the user's launch settings may
# leak into the private cluster's jobs.
for v in $(compgen -e); do
  case "$v" in SLURM_* | SBATCH_* | SALLOC_* | LATAM_HOME | LATAM_CONFIG | LATAM_RUN_DIR | LATAM_RUNS_DIR) unset "$v" ;; esac
done

# In /tmp, not $TMPDIR: the munge socket path must stay short (108 bytes).
T=$(mktemp -d /tmp/latam-slurm.XXXXXX)
chmod 755 "$T"
pids=()
holders() {  # this cluster's processes: files of $T open (daemons, slurmstepd) or its SLURM_CONF (job tasks)
  local d
  for d in /proc/[0-9]*; do
    [ "${d#/proc/}" = "$$" ] && continue
    if find "$d/fd" -maxdepth 1 -lname "$T/*" 2>/dev/null | grep -q . ||
       tr '\0' '\n' 2>/dev/null <"$d/environ" | grep -qx "SLURM_CONF=$T/slurm.conf"; then
      echo "${d#/proc/}"
    fi
  done
}
stop() {  # pids...: TERM, up to 2 s to exit, then KILL
  local p alive
  [ $# -gt 0 ] || return 0
  kill "$@" 2>/dev/null
  for _ in $(seq 10); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" -eq 1 ] || return 0
    sleep 0.2
  done
  kill -9 "$@" 2>/dev/null
}
cleanup() {
  # Jobs first: a job step's slurmstepd outlives slurmd and would wait for it
  # forever. Then the daemons, then whatever of this cluster is left.
  if [ -n "${SLURM_CONF:-}" ] && [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
    squeue -h -o %i 2>/dev/null | xargs -r scancel --quiet --full 2>/dev/null
    for _ in $(seq 40); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.25; done
  fi
  unset SLURM_CONF  # so that the commands below do not look like the cluster's processes
  stop "${pids[@]}"
  # shellcheck disable=SC2046
  stop $(holders)
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
logs() {  # what the daemons said, for a failure or a skip
  local f
  for f in "$T"/munged.log "$T"/munged.stderr "$T"/slurmctld.log "$T"/slurmd.log; do
    [ -s "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }
  done
}

# munge: a fresh key, and every file of the daemon in $T.
mkdir -m 755 "$T/munge"
mungekey --create --keyfile="$T/munge/munge.key" >/dev/null 2>&1 ||
  dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none
chmod 600 "$T/munge/munge.key"
MUNGE_SOCKET=$T/munge/munge.socket
munged --foreground --force --key-file="$T/munge/munge.key" --socket="$MUNGE_SOCKET" \
  --pid-file="$T/munge/munged.pid" --log-file="$T/munged.log" --seed-file="$T/munge/munged.seed" \
  >"$T/munged.stderr" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
if [ ! -S "$MUNGE_SOCKET" ] || ! munge --socket="$MUNGE_SOCKET" -n | unmunge --socket="$MUNGE_SOCKET" >/dev/null 2>&1; then
  logs; skip "munged does not start here"
fi

# Two free TCP ports for slurmctld and slurmd.
in_use=$( (ss -Htan 2>/dev/null || netstat -tan 2>/dev/null) | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /:[0-9]+$/) { sub(/.*:/, "", $i); print $i } }' | sort -u)
port=""
for _ in $(seq 100); do
  p=$(( 20000 + RANDOM % 20000 ))
  if ! grep -qx -e "$p" -e "$((p + 1))" <<<"$in_use"; then port=$p; break; fi
done
[ -n "$port" ] || fail "no free port pair found"

node=$(hostname -s)
cpus=$(nproc --all)
mem_mb=$(awk '/^MemTotal:/ { m = int($2 / 1024 * 0.8); print (m > 1024 ? m : 1024) }' /proc/meminfo)
mkdir -p "$T/state" "$T/spool" "$T/tmp" "$T/logs" "$T/runs" "$T/data"
export SLURM_CONF=$T/slurm.conf
cat >"$SLURM_CONF" <<EOF
# One-node test cluster of tests/slurm/check-slurm.sh.
ClusterName=latamtest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
TmpFS=$T/tmp
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in a container: track processes by process group, bind nothing.
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Direct launch of Open MPI ranks by srun goes through PMIx.
MpiDefault=pmix
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=5
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -D -i -f "$SLURM_CONF" >"$T/slurmctld.stderr" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >"$T/slurmd.stderr" 2>&1 &
pids+=($!)
state=""
for _ in $(seq 150); do
  state=$(sinfo -h -n "$node" -o %T 2>/dev/null)
  [ "$state" = idle ] && break
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { logs; skip "a Slurm daemon exited at start-up"; }; done
  sleep 0.2
done
[ "$state" = idle ] || { logs; skip "the node did not become idle (state '$state')"; }
echo "slurm: node $node idle ($cpus CPUs), ports $port/$((port + 1)), srun --mpi=list: $(srun --mpi=list 2>&1 | awk '/^[[:space:]]+[a-z]/ { printf "%s ", $1 } /specific/ { sub(/.*: */, ""); printf "(%s)", $0 }')"

"$BIN/latam-data" synthesize --out "$T/data/train.bin" --vocab 512 --tokens 300000 --seed 1 >/dev/null ||
  fail "latam-data synthesize failed"
data_args=(--set data.tokenizer=)
for i in 0 1 2; do
  data_args+=(--set "data.train[$i].path=$T/data/train.bin" --set "data.eval[$i].path=$T/data/train.bin")
done

# Polls a job until it ends (faster than `sbatch --wait`, which polls every
# few seconds); sets $state to its final state and $info to `scontrol show job`.
wait_job() {  # job_id timeout_s
  local deadline=$((SECONDS + $2)) restarts
  state=""
  while [ "$SECONDS" -lt "$deadline" ]; do
    info=$(scontrol show job "$1" 2>/dev/null)
    state=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<<"$info")
    case "$state" in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE) return ;; esac
    # A requeued job is held back until a begin time Slurm sets; start it now.
    restarts=$(sed -n 's/.*Restarts=\([0-9]*\).*/\1/p' <<<"$info")
    if [ "$state" = PENDING ] && [ "${restarts:-0}" -ge 1 ]; then
      scontrol update JobId="$1" StartTime=now >/dev/null 2>&1
    fi
    sleep 0.25
  done
  state="still $state after $2 s"
}
submit() {  # sbatch arguments...: prints the job id
  local out
  out=$(sbatch --parsable --output="$T/logs/%x-%j.out" --time=5 "$@" 2>&1) || fail "sbatch failed: $out"
  out=${out%%;*}
  [[ "$out" =~ ^[0-9]+$ ]] || fail "no job id from sbatch: $out"
  echo "$out"
}
show_job() { [ -f "$log" ] && { echo "--- job output"; cat "$log"; }; logs; }

# The training job, submitted as a user would (from the checkout) with the
# binary, the run directory's parent and the log directory moved into $T.
start=$SECONDS
job=$(LATAM_TRAIN=$BIN/latam-train LATAM_RUNS_DIR=$T/runs submit launch/slurm/latam-cpu.sbatch \
  "${data_args[@]}" --set train.steps=20 --set train.eval_every=10 --set train.log_every=1) || exit 1
log=$T/logs/latam-cpu-$job.out
wait_job "$job" 120
if [ "$state" != COMPLETED ] || ! grep -q 'ExitCode=0:0' <<<"$info"; then
  grep -E 'JobState|ExitCode' <<<"$info"; show_job; fail "job $job did not complete with exit code 0 ($state)"
fi
grep -q '4 ranks (tensor 2 x pipeline 2 x data 1' "$log" ||
  { show_job; fail "the job output lacks the 4-rank layout line"; }
grep -q 'latam-run: slurm launcher, 4 ranks' "$log" || { show_job; fail "latam-run did not take the Slurm path"; }
metrics=$T/runs/latam-cpu-$job/metrics.jsonl
[ -f "$metrics" ] || { show_job; fail "no $metrics"; }
value() { sed -E "s/.*\"$1\":([0-9.e+-]+).*/\1/"; }
train_lines=$(grep '"loss"' "$metrics")
[ "$(grep -c . <<<"$train_lines")" -eq 20 ] || { show_job; fail "expected 20 training lines in $metrics"; }
first=$(head -n 1 <<<"$train_lines" | value loss)
last=$(tail -n 1 <<<"$train_lines" | value loss)
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 0.5) }' ||
  { show_job; fail "training loss did not fall: $first -> $last"; }
evals=$(grep -c '"eval_loss"' "$metrics")
[ "$evals" -eq 2 ] || { show_job; fail "expected eval lines at steps 10 and 20, found $evals"; }
echo "slurm: job $job trained 4 ranks in $((SECONDS - start)) s from submission, loss $first -> $last, $evals evals"

# Preemption, both ways Slurm does it, on one job of the real trainer
# (tensor 2 x pipeline 2, a checkpoint only when preempted and at the end):
# 1. SIGUSR1 to the batch script only, as `--signal=B:USR1@...` sends it
#    before the time limit (here `scancel --signal=USR1 --batch`): the script
#    passes it through latam-run and srun to the ranks, which save and exit
#    3; the script requeues the job, and the requeued job resumes from the
#    checkpoint in the same run directory.
# 2. `scontrol requeue` on the resumed job: Slurm sends SIGTERM to the job's
#    processes; the ranks save and exit 3, the script does not requeue (Slurm
#    does), and the job resumes again and runs to its last step.
# Submitted from outside the checkout, so that the script finds the checkout
# through `scontrol show job`.
steps=30
start=$SECONDS
job=$(cd "$T" && LATAM_TRAIN=$BIN/latam-train LATAM_RUNS_DIR=$T/runs submit "$REPO/launch/slurm/latam-cpu.sbatch" \
  "${data_args[@]}" --set model.vocab_size=512 --set train.eval_every=0 --set train.log_every=1 \
  --set train.steps=$steps --set train.save_every=1000) || exit 1
log=$T/logs/latam-cpu-$job.out
run_dir=$T/runs/latam-cpu-$job
metric_steps() { sed -n 's/^{"step":\([0-9]*\),.*"loss".*/\1/p' "$run_dir/metrics.jsonl" 2>/dev/null; }
wait_steps() {  # n timeout_s: until metrics.jsonl has a training line for step n or later
  local deadline=$((SECONDS + $2)) last
  while :; do
    last=$(metric_steps | sort -n | tail -n 1)
    [ "${last:-0}" -lt "$1" ] || return 0
    [ "$SECONDS" -lt "$deadline" ] || { show_job; fail "job $job did not reach step $1 in $2 s"; }
    info=$(scontrol show job "$job" 2>/dev/null)
    case "$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<<"$info")" in
      COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) show_job; fail "job $job ended before step $1" ;;
    esac
    restarts=$(sed -n 's/.*Restarts=\([0-9]*\).*/\1/p' <<<"$info")
    if grep -q 'JobState=PENDING' <<<"$info" && [ "${restarts:-0}" -ge 1 ]; then
      scontrol update JobId="$job" StartTime=now >/dev/null 2>&1
    fi
    sleep 0.2
  done
}
# Steps of the checkpoints the trainer saved when preempted, in order, from
# the pre-emption lines of metrics.jsonl: the job's output is not evidence,
# since Slurm may stop forwarding it once it cancels a job step (on
# `scontrol requeue` srun "forces job termination" while the ranks still
# write their last lines).
preemptions() { sed -n 's/^{"step":\([0-9]*\),"preempted_by_signal":\([0-9]*\).*/\1 \2/p' "$run_dir/metrics.jsonl" 2>/dev/null; }
saved_steps() { preemptions | cut -d' ' -f1; }

wait_steps 3 120
scancel --signal=USR1 --batch "$job" || fail "scancel --signal=USR1 --batch $job failed"
deadline=$((SECONDS + 60))
until [ -n "$(saved_steps)" ]; do
  [ "$SECONDS" -lt "$deadline" ] || { show_job; fail "job $job: no preemption after SIGUSR1"; }
  sleep 0.2
done
first=$(saved_steps | head -n 1)
wait_steps $((first + 3)) 120
scontrol requeue "$job" || fail "scontrol requeue $job failed"
wait_job "$job" 180
if [ "$state" != COMPLETED ] || ! grep -q 'ExitCode=0:0' <<<"$info"; then
  grep -E 'JobState|ExitCode|Restarts' <<<"$info"; show_job; fail "preempted job $job did not complete with exit code 0 ($state)"
fi
grep -q 'Restarts=2' <<<"$info" || { grep Restarts <<<"$info"; show_job; fail "job $job was not restarted twice"; }
[ "$(saved_steps | wc -l)" -eq 2 ] || { show_job; fail "expected two preemptions of job $job"; }
second=$(saved_steps | tail -n 1)
ckpt() { printf '%s/checkpoints/step_%08d' "$run_dir" "$1"; }
[ "$(preemptions | head -n 1)" = "$first 10" ] || { show_job; fail "the first preemption was not by SIGUSR1"; }
grep -q "stopped by signal 10 after step $first " "$log" || { show_job; fail "the first preemption's message is missing"; }
# The ranks get SIGTERM from Slurm and SIGUSR1 from latam-run; either may be the one they name.
[[ "$(preemptions | tail -n 1)" =~ ^$second\ (10|15)$ ]] || { show_job; fail "no second preemption"; }
grep -q "SIGUSR1 (time limit near or preemption)" "$log" || { show_job; fail "the batch script did not catch SIGUSR1"; }
grep -q "SIGTERM (job cancelled, requeued or preempted by Slurm)" "$log" ||
  { show_job; fail "the batch script did not catch the SIGTERM of scontrol requeue"; }
[ "$(grep -c "requeueing job $job" "$log")" -eq 1 ] ||
  { show_job; fail "expected the script to requeue job $job once (after SIGUSR1, not after SIGTERM)"; }
grep -q "latam-train: loaded everything from $(ckpt "$first") (step $first," "$log" ||
  { show_job; fail "the first requeued run did not resume from step $first"; }
grep -q "latam-train: loaded everything from $(ckpt "$second") (step $second," "$log" ||
  { show_job; fail "the second requeued run did not resume from step $second"; }
grep -q "restart 2," "$log" || { show_job; fail "no third run (restart 2) in the job output"; }
logged=$(metric_steps | sort -n | uniq)
if [ "$(wc -l <<<"$logged")" -ne "$steps" ] || [ "$(tail -n 1 <<<"$logged")" -ne "$steps" ]; then
  show_job; fail "metrics.jsonl of job $job lacks some of steps 1..$steps"
fi
[ "$(cat "$run_dir/checkpoints/latest" 2>/dev/null)" = "$(basename "$(ckpt "$steps")")" ] ||
  { show_job; fail "checkpoints/latest of job $job is not step $steps"; }
grep -q "checkout $REPO," "$log" || { show_job; fail "the job submitted from $T did not find the checkout $REPO"; }
echo "slurm: job $job saved at step $first on SIGUSR1 (script requeued it) and at step $second on scontrol requeue" \
  "(SIGTERM, Slurm requeued it), resumed both times and finished step $steps in $((SECONDS - start)) s"
echo "PASS"
