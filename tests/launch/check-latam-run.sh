#!/usr/bin/env bash
# launch/latam-run picks the launcher and environment from where it runs:
# checked with --dry-run against fake Slurm variables and a fake /sys.
set -euo pipefail
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
expect() {  # output pattern description
  grep -qE -- "$2" <<<"$1" || { echo "$1" >&2; fail "$3: no match for '$2'"; }
}
cores=$(nproc --all)
clean=(env -u SLURM_JOB_ID -u SLURM_NTASKS -u SLURM_NTASKS_PER_NODE -u SLURM_JOB_NUM_NODES -u SLURM_CPUS_PER_TASK
       -u OMP_NUM_THREADS -u OMP_WAIT_POLICY LATAM_SYSFS="$T/none")

out=$("${clean[@]}" launch/latam-run -n $((cores * 2)) --dry-run -- --config c.textproto 2>&1)
expect "$out" "mpirun launcher, $((cores * 2)) ranks" "plain launcher"
expect "$out" "^OMP_NUM_THREADS=1$" "threads per rank when oversubscribed"
expect "$out" "^OMP_WAIT_POLICY=PASSIVE$" "passive waiting when oversubscribed"
expect "$out" "command: .*mpirun -np $((cores * 2)) --bind-to none --oversubscribe .*latam-train --config c.textproto" \
  "mpirun command"

out=$("${clean[@]}" launch/latam-run -n 1 --dry-run -- --plan 2>&1)
expect "$out" "^OMP_NUM_THREADS=$cores$" "one rank gets every core"
grep -q OMP_WAIT_POLICY <<<"$out" && fail "no passive waiting without oversubscription"

out=$("${clean[@]}" SLURM_JOB_ID=42 SLURM_NTASKS=16 SLURM_JOB_NUM_NODES=2 SLURM_NTASKS_PER_NODE='8(x2)' \
      SLURM_CPUS_PER_TASK=12 launch/latam-run --dry-run -- --config c 2>&1)
expect "$out" "slurm launcher, 16 ranks \(8 per node, 12 threads each\)" "slurm layout"
expect "$out" "command: srun --mpi=pmix --kill-on-bad-exit=1 .*latam-train --config c" "srun command"
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
echo "latam-run: all checks passed"
