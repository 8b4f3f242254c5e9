#!/usr/bin/env bash
# Our CUDA kernels against PyTorch on one GPU: runs bench_cuda_kernels and
# bench/torch_peer.py on the same shapes, writes their raw JSON lines to
# RAW_JSONL and prints a Markdown table (ours vs torch: ms, TFLOP/s or GB/s,
# and the speed ratio torch_ms / ours_ms, above 1 when ours is faster) on
# stdout. Progress and the raw lines go to stderr.
#
#   bash bench/run_gpu_bench.sh RAW_JSONL [--quick | --tiny] [--seqs T,T,...] [--filter SUBSTRING]
#                               [--sdpa-backends]
#
# --quick, --seqs and --filter go to both programs (--filter may be
# repeated: a row must then contain every substring); --sdpa-backends (torch
# only) also times each SDPA backend alone (extra "torch-flash", ...
# columns). --tiny (ours only, no peer) runs toy shapes: for checking this
# script on the emulated GPU (BENCH_CUDA_KERNELS=build/bin/
# bench_cuda_kernels_emulated), where the numbers mean nothing.
#
# Attention rows (attention_fwd, attention_bwd, attention_fwd_bwd; shapes
# ending in "causal" or "full"): "ours" is the tensor-core kernel
# (latam-flash) against torch's scaled_dot_product_attention, so the ratio
# column is flash vs torch; where the simple causal kernel (impl
# "ours-simple") was timed too, the "simple" columns show it and
# simple_ms / ours_ms, the flash kernel's gain over it. On an H100 or H200
# "ours-wgmma" and "ours-wgmma-tma" columns add the Hopper (wgmma) forward
# kernels, checked against the mma.sync forward. Then a second table lists the attention rows
# alone, in TFLOP/s. bench/attention.sh runs just the attention part.
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
  echo "usage: bash bench/run_gpu_bench.sh RAW_JSONL [--quick | --tiny] [--seqs T,T,...] [--filter SUBSTRING]" \
    "[--sdpa-backends]" >&2
}

if [[ $# -lt 1 || $1 == -* ]]; then
  usage
  exit 2
fi
raw=$1
shift
common=()
torch_extra=()
tiny=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) common+=(--quick) ;;
    --tiny) tiny=1 ;;
    --seqs)
      if [[ $# -lt 2 ]]; then usage; exit 2; fi
      common+=(--seqs "$2")
      shift
      ;;
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
  for cu in device rmsnorm rope swiglu cross_entropy attention flash_attention flash_attention_backward fused_norm \
    optimizer; do
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
    bench/bench_cuda_kernels.cc core/check.cc core/tensor.cc core/arena.cc kernels/cpu/rope.cc \
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
ours_extra=()
if [[ $tiny -eq 1 ]]; then ours_extra=(--tiny); fi
if [[ -n $bin ]]; then
  echo "run_gpu_bench: $bin ${ours_extra[*]} ${common[*]}" >&2
  "$bin" "${ours_extra[@]}" "${common[@]}" | tee -a "$raw" >&2 || status=1
else
  echo "run_gpu_bench: no bench_cuda_kernels binary could be found or built" >&2
  status=1
fi
if [[ $tiny -eq 1 ]]; then
  echo "run_gpu_bench: --tiny: no PyTorch peer (its shapes are the real ones)" >&2
else
  echo "run_gpu_bench: python3 bench/torch_peer.py ${common[*]} ${torch_extra[*]}" >&2
  PYTHONUNBUFFERED=1 python3 bench/torch_peer.py "${common[@]}" "${torch_extra[@]}" | tee -a "$raw" >&2 || status=1
fi

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


def ratio(slow, fast):
    """slow ms / fast ms: above 1 when `fast` is faster."""
    if slow and fast and slow["ms"] > 0 and fast["ms"] > 0:
        return f"{slow['ms'] / fast['ms']:.2f}"
    return "-"


simple = "ours-simple"
has_simple = any(simple in v for v in rows.values())
extra = [i for i in extra if i != simple]
header = ["kernel", "shape", "dtype", "ours ms", "ours rate", "torch ms", "torch rate", "torch_ms/ours_ms"]
if has_simple:
    header += ["simple ms", "simple rate", "simple_ms/ours_ms"]
header += [f"{i} rate" for i in extra]
print("| " + " | ".join(header) + " |")
print("|" + "|".join(["---"] * len(header)) + "|")
for key in order:
    impls = rows[key]
    ours, torch = impls.get("ours"), impls.get("torch")
    dtype = (ours or torch or impls.get(simple) or {}).get("dtype", "")
    cells = [key[0], key[1], dtype, ms(ours), rate(ours), ms(torch), rate(torch), ratio(torch, ours)]
    if has_simple:
        s = impls.get(simple)
        cells += [ms(s), rate(s), ratio(s, ours)]
    cells += [rate(impls.get(i)) for i in extra]
    print("| " + " | ".join(cells) + " |")

# Attention alone, TFLOP/s (FlashAttention convention: forward 4 B T^2 H d,
# halved when causal; backward 2.5x; forward+backward 3.5x), one line per
# (shape, pass): flash vs torch, and the simple kernel where it ran.
attention = [k for k in order if k[0].startswith("attention_")]
if attention:
    def tflops(r):
        return "-" if r is None or "tflops" not in r else f"{r['tflops']:.1f}"

    def shape_fields(shape):
        f = dict(p.split("=", 1) for p in shape.split() if "=" in p)
        return f, ("causal" if shape.endswith("causal") else "full")

    print()
    print("Attention, bf16, TFLOP/s (forward 4 B T^2 H d, halved when causal; backward 2.5x; fwd+bwd 3.5x)")
    print()
    head = ["pass", "mask", "d", "T", "B", "H", "Hkv", "latam-flash", "torch", "flash/torch", "latam-simple",
            "flash/simple"]
    head += [i for i in extra]
    wgmma_impls = [i for i in extra if i.startswith("ours-wgmma")]
    head += [f"{i[len('ours-'):]}/torch" for i in wgmma_impls]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * len(head)) + "|")
    passes = {"attention_fwd": "fwd", "attention_bwd": "bwd", "attention_fwd_bwd": "fwd+bwd"}
    def sort_key(k):
        f, mask = shape_fields(k[1])
        return (list(passes).index(k[0]) if k[0] in passes else 9, mask != "causal", f.get("Hkv") != f.get("H"),
                int(f.get("d", 0)), int(f.get("T", 0)))
    warnings = []
    for key in sorted(attention, key=sort_key):
        impls = rows[key]
        f, mask = shape_fields(key[1])
        flash, torch, s = impls.get("ours"), impls.get("torch"), impls.get(simple)
        cells = [passes.get(key[0], key[0]), mask, f.get("d", "?"), f.get("T", "?"), f.get("B", "?"),
                 f.get("H", "?"), f.get("Hkv", "?"), tflops(flash), tflops(torch), ratio(torch, flash), tflops(s),
                 ratio(s, flash)]
        cells += [tflops(impls.get(i)) for i in extra]
        cells += [ratio(torch, impls.get(i)) for i in wgmma_impls]
        print("| " + " | ".join(cells) + " |")
        if flash and flash.get("agrees_with_simple") is False:
            warnings.append(f"{key[1]}: max|d out| {flash.get('out_max_abs_diff_vs_simple')} "
                            f"(max|out| {flash.get('out_max_abs_simple')}), "
                            f"max|d lse| {flash.get('lse_max_abs_diff_vs_simple')}, "
                            f"{flash.get('nonfinite_vs_simple')} non-finite")
    checked = [k for k in attention if rows[k].get("ours", {}).get("agrees_with_simple") is not None]
    print()
    if warnings:
        print("WARNING: the flash forward differs from the simple kernel's on " + "; ".join(warnings))
    elif checked:
        print(f"The flash forward agrees with the simple kernel's on all {len(checked)} causal shapes checked.")
    # The Hopper (wgmma) kernels against the mma.sync ones, every shape.
    for impl in wgmma_impls:
        wg = [(k, rows[k][impl]) for k in attention if rows[k].get(impl, {}).get("agrees_with_mma") is not None]
        bad = [f"{k[0]} {k[1]}: " + (
                   f"max|d dqkv| {r.get('dqkv_max_abs_diff_vs_mma')} (max|dqkv| {r.get('dqkv_max_abs_mma')})"
                   if k[0] == "attention_bwd" else
                   f"max|d out| {r.get('out_max_abs_diff_vs_mma')} (max|out| {r.get('out_max_abs_mma')}), "
                   f"max|d lse| {r.get('lse_max_abs_diff_vs_mma')}") + f", {r.get('nonfinite_vs_mma')} non-finite"
               for k, r in wg if r["agrees_with_mma"] is False]
        if bad:
            print(f"WARNING: {impl} differs from the mma.sync kernels on " + "; ".join(bad))
        elif wg:
            print(f"{impl} agrees with the mma.sync kernels on all {len(wg)} rows checked.")
EOF
exit "$status"
