#!/usr/bin/env bash
# The attention part of bench/run_gpu_bench.sh alone: our tensor-core kernel
# (latam-flash) and the simple causal kernel (latam-simple) against PyTorch's
# scaled_dot_product_attention on the same GPU in the same run, bf16,
# B T = 16k, H d = 2048, T 512 to 16k, head dims 64 and 128, causal and not,
# plus grouped-query shapes; forward, backward and forward+backward in
# TFLOP/s (FlashAttention convention). Markdown tables on stdout, the raw
# JSON lines in RAW_JSONL (default bench/runs/attention.jsonl, ignored by
# git), progress on stderr.
#
#   bash bench/attention.sh [RAW_JSONL] [--quick] [--filter SUBSTRING]... [--sdpa-backends]
#
# --filter narrows further within the attention rows, e.g. --filter full
# (non-causal), --filter "d=128", --filter "T=16384", --filter attention_fwd.
# --quick: T 2k and 8k, head dim 128, causal and full, 5 repetitions.
# See bench/run_gpu_bench.sh for where the binary comes from.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
raw="$here/runs/attention.jsonl"
if [[ $# -gt 0 && $1 != -* ]]; then
  raw=$1
  shift
fi
exec bash "$here/run_gpu_bench.sh" "$raw" --filter attention_ "$@"
