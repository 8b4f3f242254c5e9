#!/usr/bin/env bash
# Compiles the tensor-core attention kernels for sm_90a with `ptxas -v` and
# fails if ptxas reports what would cost them speed on a GPU, so that a
# change that makes them spill or serialise is caught on machines without
# one:
#   - spill stores or loads, or a stack frame (local memory);
#   - "Potential Performance Loss" (C7510-C7515: wgmma serialised, for
#     example because registers of an in-flight wgmma are written);
#   - setmaxnreg ignored (C7508).
# Prints each kernel's registers, barriers and shared memory.
#
#   tests/cuda/ptxas_check.sh NVCC SOURCE_DIR
set -uo pipefail
NVCC=${1:?usage: ptxas_check.sh NVCC SOURCE_DIR}
ROOT=${2:?usage: ptxas_check.sh NVCC SOURCE_DIR}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

status=0
for cu in flash_attention flash_attention_backward; do
  log="$out/$cu.log"
  if ! "$NVCC" -O3 -DNDEBUG -std=c++17 --expt-relaxed-constexpr -DLATAM_HAVE_CUDA=1 -I"$ROOT" \
    -gencode=arch=compute_90a,code=sm_90a -Xptxas -v -c "$ROOT/kernels/cuda/$cu.cu" -o "$out/$cu.o" >"$log" 2>&1; then
    cat "$log" >&2
    echo "ptxas_check: $cu.cu does not compile" >&2
    exit 1
  fi
  python3 - "$log" "$cu" <<'EOF' || status=1
import re
import sys

log, name = sys.argv[1], sys.argv[2]
bad = []
kernel = None
for line in open(log):
    m = re.search(r"Compiling entry function '(\w+)'", line)
    if m:
        kernel = m.group(1)
        short = re.search(r"flash\d+(\w+?)ILi(\d+)", kernel)
        kernel = f"{short.group(1)}<{short.group(2)}>" if short else kernel
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and any(int(v) for v in m.groups()):
        bad.append(f"{kernel}: {line.strip()}")
    m = re.search(r"Used (\d+) registers, used (\d+) barriers(?:, (\d+) bytes smem)?", line)
    if m:
        print(f"{name}: {kernel}: {m.group(1)} registers, {m.group(2)} barriers")
    if "Potential Performance Loss" in line or "C7508" in line:
        bad.append(line.strip())
for b in bad:
    print(f"ptxas_check: {name}: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
done
exit "$status"
