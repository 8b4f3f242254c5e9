#!/usr/bin/env bash
# Static checks of the cluster launch files, which cannot run here: the
# sbatch scripts parse as bash and launch through launch/latam-run, the p5
# script sets the EFA variables, and launch/aws/parallelcluster.yaml is YAML
# with the settings the 70B layout depends on (Slurm, p5.48xlarge, EFA with
# GPUDirect RDMA, a placement group, FSx for Lustre). Installs python3-yaml
# when missing; exits 77 (skipped) when it cannot.
#
# Usage: tests/aws/check-aws-config.sh
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

fail() { echo "FAIL: $*" >&2; exit 1; }

scripts=(launch/slurm/latam-cpu.sbatch launch/slurm/latam-gpu.sbatch launch/aws/latam-p5.sbatch)
for s in "${scripts[@]}" launch/latam-run; do
  [ -f "$s" ] || fail "$s is missing"
  bash -n "$s" || fail "$s has a bash syntax error"
done
for s in "${scripts[@]}"; do
  [ -x "$s" ] || fail "$s is not executable"
  grep -q '^"$LATAM_HOME/launch/latam-run" --max-restarts "${LATAM_MAX_RESTARTS:-3}" --restart-backoff' "$s" ||
    fail "$s does not launch through launch/latam-run with crash restarts"
  grep -q '^  -- --config "$CONFIG" --set train.run_dir="$RUN_DIR" "$@" &$' "$s" ||
    fail "$s does not pass latam-run the config, the run directory and its arguments"
  grep -q '^#SBATCH --requeue' "$s" || fail "$s lacks #SBATCH --requeue"
  grep -q '^#SBATCH --signal=B:USR1@' "$s" || fail "$s lacks the USR1 signal before the time limit"
  grep -q 'scontrol requeue' "$s" || fail "$s does not requeue on exit code 3"
done
for s in launch/slurm/latam-gpu.sbatch launch/aws/latam-p5.sbatch; do
  grep -q '^#SBATCH --gpus-per-node=8' "$s" && grep -q '^#SBATCH --ntasks-per-node=8' "$s" ||
    fail "$s does not run one rank per GPU on 8-GPU nodes"
done
grep -q 'CONFIG=${LATAM_CONFIG:-configs/latam-gpt-70b.textproto}' launch/slurm/latam-gpu.sbatch ||
  fail "launch/slurm/latam-gpu.sbatch does not default to the 70B config"
grep -q 'CONFIG=${LATAM_CONFIG:-configs/latam-gpt-70b-p5.textproto}' launch/aws/latam-p5.sbatch ||
  fail "launch/aws/latam-p5.sbatch does not default to the 70B p5 config"
for v in FI_PROVIDER=efa FI_EFA_USE_DEVICE_RDMA=1 FI_EFA_FORK_SAFE=1 NCCL_SOCKET_IFNAME ofi-nccl 'fi_info -p efa'; do
  grep -q -- "$v" launch/aws/latam-p5.sbatch || fail "launch/aws/latam-p5.sbatch does not mention $v"
done
grep -q 'NCCL_SOCKET_IFNAME' launch/slurm/latam-gpu.sbatch && grep -q 'NCCL_IB_HCA' launch/slurm/latam-gpu.sbatch ||
  fail "launch/slurm/latam-gpu.sbatch lacks the NCCL network placeholders"
grep -q '/fsx' launch/aws/latam-p5.sbatch || fail "launch/aws/latam-p5.sbatch does not put the runs on /fsx"

if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  ./launch/install-deps.sh python3 python3-yaml >/dev/null 2>&1 && python3 -c 'import yaml' >/dev/null 2>&1 ||
    { echo "SKIP: python3-yaml is missing and cannot be installed here (bash checks passed)"; exit 77; }
fi

python3 - launch/aws/parallelcluster.yaml <<'EOF' || fail "launch/aws/parallelcluster.yaml: see above"
import sys
import yaml

path = sys.argv[1]
try:
    with open(path) as f:
        c = yaml.safe_load(f)
except yaml.YAMLError as e:
    sys.exit(f"{path}: not valid YAML: {e}")

problems = []


def get(node, *keys):
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def expect(cond, what):
    if not cond:
        problems.append(what)


for key in ("Region", "Image", "HeadNode", "Scheduling", "SharedStorage"):
    expect(key in (c or {}), f"missing top-level key {key}")
expect(get(c, "Image", "Os") is not None, "Image.Os is not set")
expect(get(c, "HeadNode", "InstanceType") is not None, "HeadNode.InstanceType is not set")
expect(get(c, "HeadNode", "Networking", "SubnetId") is not None, "HeadNode.Networking.SubnetId is not set")
expect(get(c, "HeadNode", "Ssh", "KeyName") is not None, "HeadNode.Ssh.KeyName is not set")
expect(get(c, "Scheduling", "Scheduler") == "slurm", "Scheduling.Scheduler is not slurm")

queues = get(c, "Scheduling", "SlurmQueues") or []
expect(isinstance(queues, list) and queues, "Scheduling.SlurmQueues is empty")
p5 = [(q, r) for q in queues for r in (q.get("ComputeResources") or [])
      if r.get("InstanceType") == "p5.48xlarge"]
expect(p5, "no compute resource with InstanceType p5.48xlarge")
for q, r in p5:
    where = f"queue {q.get('Name')} / {r.get('Name')}"
    expect(get(r, "Efa", "Enabled") is True, f"{where}: Efa.Enabled is not true")
    expect(get(r, "Efa", "GpuDirectRdma") is True, f"{where}: Efa.GpuDirectRdma is not true")
    expect(isinstance(r.get("MinCount"), int) and isinstance(r.get("MaxCount"), int)
           and 0 <= r["MinCount"] <= r["MaxCount"], f"{where}: MinCount/MaxCount are not 0 <= Min <= Max")
    expect(get(q, "Networking", "PlacementGroup", "Enabled") is True
           or get(r, "Networking", "PlacementGroup", "Enabled") is True,
           f"{where}: no placement group enabled")
    expect(get(q, "Networking", "SubnetIds"), f"{where}: Networking.SubnetIds is not set")
    expect(q.get("Name") == "gpu", f"{where}: latam-p5.sbatch submits to partition gpu, the queue is {q.get('Name')}")

names = [q.get("Name") for q in queues]
expect(len(names) == len(set(names)), f"queue names repeat: {names}")

fsx = [s for s in (c.get("SharedStorage") or []) if s.get("StorageType") == "FsxLustre"]
expect(fsx, "no SharedStorage with StorageType FsxLustre")
for s in fsx:
    expect(s.get("MountDir") == "/fsx", f"FSx for Lustre is mounted at {s.get('MountDir')}, not /fsx")
    expect(get(s, "FsxLustreSettings", "StorageCapacity") is not None, "FsxLustreSettings.StorageCapacity is not set")

if problems:
    for p in problems:
        print(f"{path}: {p}", file=sys.stderr)
    sys.exit(1)
print(f"{path}: slurm, {len(queues)} queues, p5.48xlarge x {p5[0][1]['MaxCount']} with EFA + GPUDirect RDMA, "
      f"placement group, FSx for Lustre at /fsx")
EOF
echo "PASS: 4 launch scripts parse and launch through latam-run; parallelcluster.yaml has the required settings"
