#!/usr/bin/env bash
# Our CUDA kernels against PyTorch on one GPU: runs bench_cuda_kernels and
# bench/torch_peer.py on the same shapes, writes their raw JSON lines to
# RAW_JSONL and prints a Markdown table (ours vs torch: ms, TFLOP/s or GB/s,
# and the speed ratio torch_ms / ours_ms, above 1 when ours is faster) on
# stdout. Progress and the raw lines go to stderr.
#
#   bash bench/run_gpu_bench.sh RAW_JSONL [--quick] [--filter SUBSTRING] [--sdpa-backends]
#
# --quick and --filter go to both programs; --sdpa-backends (torch only) also
# times each SDPA backend alone (extra "torch-flash", ... columns).
#
# On a GPU machine that lacks MPI or the project's other build dependencies
# (only CUDA and, for the peer, PyTorch are needed there):
#
#   1. On a build machine, in a build configured with LATAM_CUDA=ON (no GPU
#      needed):
#        cmake --build build --target bench_cuda_kernels
#        mkdir -p build-gpubench && cp build/bin/bench_cuda_kernels build-gpubench/
#      build-gpubench/ is ignored by git (/build*/ in .gitignore); copy it
#      with the checkout. The binary needs libcudart.so.13 and
#      libcublasLt.so.13 from the GPU machine's CUDA.
#   2. On the GPU machine:
#        bash bench/run_gpu_bench.sh bench.jsonl | tee bench.md
#      The full run takes a few minutes; --quick well under one.
#
# The binary is looked for in $BENCH_CUDA_KERNELS, build-gpubench/ and
# build/bin/. If none of them starts there (a missing or too new system
# library), it is compiled there from the sources with nvcc and g++ into
# /tmp/latam-bench-build (a minute or two on 16 cores) and that one is used.
set -uo pipefail

usage() {
  echo "usage: bash bench/run_gpu_bench.sh RAW_JSONL [--quick] [--filter SUBSTRING] [--sdpa-backends]" >&2
}

if [[ $# -lt 1 || $1 == -* ]]; then
  usage
  exit 2
fi
raw=$1
shift
common=()
torch_extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) common+=(--quick) ;;
    --filter)
      if [[ $# -lt 2 ]]; then usage; exit 2; fi
      common+=(--filter "$2")
      shift
      ;;
    --sdpa-backends) torch_extra+=(--sdpa-backends) ;;
    *) usage; exit 2 ;;
  esac
  shift
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1
mkdir -p "$(dirname "$raw")"
: >"$raw"

# Compiles bench_cuda_kernels and the CUDA kernels it calls with nvcc and g++
# (no CMake, MPI or oneDNN needed); prints the binary's path.
build_here() {
  local cuda=${CUDA_HOME:-/usr/local/cuda}
  local nvcc
  nvcc=$(command -v nvcc || echo "$cuda/bin/nvcc")
  local out=/tmp/latam-bench-build
  mkdir -p "$out"
  echo "run_gpu_bench: compiling bench_cuda_kernels with $nvcc into $out" >&2
  local pids=() cu
  for cu in device rmsnorm rope swiglu cross_entropy attention fused_norm optimizer; do
    "$nvcc" -O3 -std=c++17 --expt-relaxed-constexpr -DLATAM_HAVE_CUDA=1 -I"$root" \
      -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90 \
      -c "kernels/cuda/$cu.cu" -o "$out/$cu.o" >&2 &
    pids+=($!)
  done
  local failed=0 pid
  for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
  done
  if [[ $failed -ne 0 ]]; then
    echo "run_gpu_bench: nvcc failed" >&2
    return 1
  fi
  "${CXX:-g++}" -O2 -std=c++20 -fopenmp -DLATAM_HAVE_CUDA=1 -I"$root" -I"$cuda/include" \
    bench/bench_cuda_kernels.cc kernels/check.cc kernels/tensor.cc kernels/arena.cc kernels/cpu/rope.cc \
    kernels/cuda/gemm.cc "$out"/*.o -L"$cuda/lib64" -lcudart -lcublasLt -o "$out/bench_cuda_kernels" >&2 || return 1
  echo "$out/bench_cuda_kernels"
}

# The machine's CUDA runtime and cuBLASLt, wherever the loader's cache omits them.
export LD_LIBRARY_PATH="${CUDA_HOME:-/usr/local/cuda}/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

bin=""
for candidate in "${BENCH_CUDA_KERNELS:-}" build-gpubench/bench_cuda_kernels build/bin/bench_cuda_kernels; do
  if [[ -n $candidate && -x $candidate ]]; then
    if "$candidate" --help >/dev/null 2>&1; then
      bin=$candidate
      break
    fi
    echo "run_gpu_bench: $candidate does not start here:" >&2
    "$candidate" --help 2>&1 | head -3 >&2
  fi
done
if [[ -z $bin ]]; then
  bin=$(build_here) || bin=""
fi

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv >&2 || true
fi

status=0
if [[ -n $bin ]]; then
  echo "run_gpu_bench: $bin ${common[*]}" >&2
  "$bin" "${common[@]}" | tee -a "$raw" >&2 || status=1
else
  echo "run_gpu_bench: no bench_cuda_kernels binary could be found or built" >&2
  status=1
fi
echo "run_gpu_bench: python3 bench/torch_peer.py ${common[*]} ${torch_extra[*]}" >&2
PYTHONUNBUFFERED=1 python3 bench/torch_peer.py "${common[@]}" "${torch_extra[@]}" | tee -a "$raw" >&2 || status=1

python3 - "$raw" <<'EOF' || status=1
import json
import sys

rows, devices, order = {}, [], []
with open(sys.argv[1]) as f:
    for line in f:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "kernel" not in r:
            devices.append(r)
            continue
        key = (r["kernel"], r["shape"])
        if key not in rows:
            rows[key] = {}
            order.append(key)
        rows[key][r["impl"]] = r

for d in devices:
    print(f"- {d.get('impl')}: " + ", ".join(f"{k}={v}" for k, v in d.items() if k != "impl"))
print()
extra = sorted({i for v in rows.values() for i in v if i not in ("ours", "torch")})


def rate(r):
    if r is None:
        return "-"
    if "tflops" in r:
        return f"{r['tflops']:.1f} TFLOP/s"
    if "gbps" in r:
        return f"{r['gbps']:.0f} GB/s"
    return "-"


def ms(r):
    return "-" if r is None else f"{r['ms']:.3f}"


header = ["kernel", "shape", "dtype", "ours ms", "ours rate", "torch ms", "torch rate", "torch_ms/ours_ms"]
header += [f"{i} rate" for i in extra]
print("| " + " | ".join(header) + " |")
print("|" + "|".join(["---"] * len(header)) + "|")
for key in order:
    impls = rows[key]
    ours, torch = impls.get("ours"), impls.get("torch")
    ratio = "-"
    if ours and torch and ours["ms"] > 0 and torch["ms"] > 0:
        ratio = f"{torch['ms'] / ours['ms']:.2f}"
    dtype = (ours or torch or {}).get("dtype", "")
    cells = [key[0], key[1], dtype, ms(ours), rate(ours), ms(torch), rate(torch), ratio]
    cells += [rate(impls.get(i)) for i in extra]
    print("| " + " | ".join(cells) + " |")
EOF
exit "$status"
