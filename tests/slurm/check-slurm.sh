#!/usr/bin/env bash
# Runs launch/slurm/latam-cpu.sbatch on a real, private, one-node Slurm
# cluster started on this machine: munged with its own key and socket,
# slurmctld and slurmd with a generated slurm.conf whose state, spool, log
# and pid files all live in a temporary directory and whose ports are free
# ones. The job trains the quickstart layout (4 ranks: tensor 2 x pipeline 2)
# for 20 steps on synthetic data through launch/latam-run and `srun
# --mpi=pmix`; the test checks its exit code, its log and its metrics. A
# second job, with a stand-in trainer, checks preemption: SIGUSR1 to the
# batch script reaches the ranks, they exit 3, the script requeues the job
# and the requeued job runs in the same run directory.
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

[ -x "$BIN/latam-train" ] && [ -x "$BIN/latam-data" ] || fail "no latam-train/latam-data in $BIN"
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
[ -S "$MUNGE_SOCKET" ] && munge --socket="$MUNGE_SOCKET" -n | unmunge --socket="$MUNGE_SOCKET" >/dev/null 2>&1 ||
  { logs; skip "munged does not start here"; }

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
[ "$state" = COMPLETED ] && grep -q 'ExitCode=0:0' <<<"$info" ||
  { grep -E 'JobState|ExitCode' <<<"$info"; show_job; fail "job $job did not complete with exit code 0 ($state)"; }
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

# Preemption: a stand-in trainer whose ranks wait for SIGUSR1 on the job's
# first run and exit 3 on it, as the trainer will after saving, and exit 0
# at once on the requeued run. The test sends SIGUSR1 to the batch script
# only, as `--signal=B:USR1@...` does before the time limit; the script must
# forward it to the ranks through srun, requeue the job on exit code 3, and
# the requeued job must run in the same run directory. Submitted from outside
# the checkout, so that the script finds the checkout through `scontrol show job`.
cat >"$T/fake-train" <<'EOF'
#!/usr/bin/env bash
dir=""
for a in "$@"; do case "$a" in train.run_dir=*) dir=${a#train.run_dir=} ;; esac; done
rank=${SLURM_PROCID:-0}
if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then
  [ "$rank" -ne 0 ] || echo "restart ${SLURM_RESTART_COUNT} in $dir" >>"$dir/runs.txt"
  exit 0
fi
trap '[ "$rank" -ne 0 ] || echo "restart 0 in $dir: SIGUSR1" >>"$dir/runs.txt"; exit 3' USR1
touch "$dir/ready.$rank"
for _ in $(seq 600); do sleep 0.1; done
exit 0
EOF
chmod +x "$T/fake-train"
start=$SECONDS
job=$(cd "$T" && LATAM_TRAIN=$T/fake-train LATAM_RUNS_DIR=$T/runs submit "$REPO/launch/slurm/latam-cpu.sbatch") || exit 1
log=$T/logs/latam-cpu-$job.out
run_dir=$T/runs/latam-cpu-$job
for _ in $(seq 200); do
  [ "$(ls "$run_dir"/ready.* 2>/dev/null | wc -l)" -eq 4 ] && break
  sleep 0.1
done
[ "$(ls "$run_dir"/ready.* 2>/dev/null | wc -l)" -eq 4 ] || { show_job; fail "the 4 stand-in ranks of job $job did not start"; }
scancel --signal=USR1 --batch "$job" || fail "scancel --signal=USR1 --batch $job failed"
wait_job "$job" 60
[ "$state" = COMPLETED ] || { show_job; fail "preempted job $job ended $state"; }
runs=$run_dir/runs.txt
[ "$(grep -c . "$runs" 2>/dev/null)" -eq 2 ] && grep -q 'restart 0 .*SIGUSR1' "$runs" && grep -q 'restart 1' "$runs" ||
  { cat "$runs"; show_job; fail "expected a SIGUSR1 run and a requeued run of job $job in one run directory"; }
grep -q "requeueing job $job" "$log" || { show_job; fail "no requeue message in the job output"; }
grep -q "checkout $REPO," "$log" || { show_job; fail "the job submitted from $T did not find the checkout $REPO"; }
echo "slurm: job $job forwarded SIGUSR1, exited 3, was requeued and completed in its run directory in $((SECONDS - start)) s"
echo "PASS"
