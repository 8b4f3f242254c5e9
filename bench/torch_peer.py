#!/usr/bin/env python3
"""PyTorch peer of bench/bench_cuda_kernels: the same shapes, same JSON lines.

    python3 bench/torch_peer.py [--quick] [--seqs T,T,...] [--filter SUBSTRING]
                                [--reps N] [--warmup N] [--sdpa-backends]

Times, on the same GPU and with the same row names ("kernel", "shape") as
bench_cuda_kernels, so that bench/run_gpu_bench.sh can join the two:
  - bf16 GEMMs with torch.matmul: y = x W^T, dx = dy W, dW = dy^T x (dW in
    f32 when this torch's mm takes out_dtype, else bf16: see "dtype");
  - bf16 attention with torch.nn.functional.scaled_dot_product_attention on
    [B, T, H, d] tensors viewed as [B, H, T, d], B T = 16k, H d = 2048, T from
    512 to 16k, head dims 64 and 128, is_causal=True (shape "... causal") and
    False ("... full"), plus grouped-query shapes (enable_gqa): the forward
    alone ("attention_fwd"), forward+backward ("attention_fwd_bwd") and
    backward = forward+backward - forward ("attention_bwd", of the medians).
Attention FLOPs follow the FlashAttention papers: forward 4 B T^2 H d, halved
when causal; backward 2.5x the forward; forward+backward 3.5x. Each row is
the median of `reps` back-to-back calls bracketed by CUDA events, after
`warmup` calls.

--seqs sets the attention sequence lengths (grouped-query rows keep those of
2k and 8k), as bench_cuda_kernels' option of that name does.
--sdpa-backends also times each SDPA backend alone (impl "torch-flash",
"torch-cudnn", "torch-efficient"); the plain "torch" rows use torch's choice.
Without torch or a CUDA GPU it prints why on stderr and exits 0.
"""

import argparse
import json
import statistics
import sys

GEMM_TOKENS = 8192
ATTENTION_TOKENS = 16384
ATTENTION_WIDTH = 2048

MODELS = [
    # name, dim, ffn, heads, kv_heads, vocab
    ("llama3-1b", 2048, 8192, 32, 8, 128256),
    ("llama3-8b", 4096, 14336, 32, 8, 128256),
]


def wanted(args, kernel, shape):
    row = f"{kernel} {shape}"
    return all(f in row for f in args.filter)


def emit(impl, kernel, shape, dtype, ms, flops, reps):
    row = {"impl": impl, "kernel": kernel, "shape": shape, "dtype": dtype, "ms": round(ms, 4)}
    if flops > 0 and ms > 0:
        row["tflops"] = round(flops / (ms * 1e-3) / 1e12, 1)
    row["reps"] = reps
    print(json.dumps(row), flush=True)


def median_ms(torch, fn, args):
    for _ in range(args.warmup):
        fn()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(args.reps + 1)]
    events[0].record()
    for i in range(args.reps):
        fn()
        events[i + 1].record()
    events[-1].synchronize()
    return statistics.median(events[i].elapsed_time(events[i + 1]) for i in range(args.reps))


def mm_f32_out(torch):
    """Returns a bf16 x bf16 -> f32 matmul if this torch has one, else None."""
    a = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    try:
        out = torch.mm(a, a, out_dtype=torch.float32)
        if out.dtype == torch.float32:
            return lambda x, y: torch.mm(x, y, out_dtype=torch.float32)
    except (TypeError, RuntimeError):
        pass
    return None


def bench_gemms(torch, args):
    mm32 = mm_f32_out(torch)
    models = MODELS[:1] if args.quick else MODELS
    for name, dim, ffn, heads, kv_heads, vocab in models:
        hd = dim // heads
        linears = [
            ("qkv", dim, (heads + 2 * kv_heads) * hd),
            ("o", heads * hd, dim),
            ("gate_up", dim, 2 * ffn),
            ("down", ffn, dim),
            ("lm_head", dim, vocab),
        ]
        for lname, n_in, n_out in linears:
            shape = f"{name} {lname} T={GEMM_TOKENS} in={n_in} out={n_out}"
            want = {k: wanted(args, k, shape) for k in ("gemm_fwd", "gemm_bwd_input", "gemm_bwd_weight")}
            if not any(want.values()):
                continue
            t = GEMM_TOKENS
            x = torch.randn(t, n_in, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n_out, n_in, device="cuda", dtype=torch.bfloat16) * 0.02
            dy = torch.randn(t, n_out, device="cuda", dtype=torch.bfloat16)
            flops = 2.0 * t * n_in * n_out
            if want["gemm_fwd"]:
                ms = median_ms(torch, lambda: torch.matmul(x, w.t()), args)
                emit("torch", "gemm_fwd", shape, "bf16", ms, flops, args.reps)
            if want["gemm_bwd_input"]:
                ms = median_ms(torch, lambda: torch.matmul(dy, w), args)
                emit("torch", "gemm_bwd_input", shape, "bf16", ms, flops, args.reps)
            if want["gemm_bwd_weight"]:
                if mm32 is not None:
                    ms = median_ms(torch, lambda: mm32(dy.t(), x), args)
                    dtype = "bf16->f32"
                else:
                    ms = median_ms(torch, lambda: torch.matmul(dy.t(), x), args)
                    dtype = "bf16"
                emit("torch", "gemm_bwd_weight", shape, dtype, ms, flops, args.reps)
            del x, w, dy
            torch.cuda.empty_cache()


def attention_cases(quick, seqs=None):
    """(seq, head_dim, kv_heads or 0 for as many as query heads, causal), in
    bench_cuda_kernels' order; `seqs` replaces the default sequence lengths."""
    default_seqs = [2048, 8192] if quick else [512, 1024, 2048, 4096, 8192, 16384]
    gqa_seqs = [] if quick else [2048, 8192]
    if seqs:
        gqa_seqs = [t for t in gqa_seqs if t in seqs]
    else:
        seqs = default_seqs
    head_dims = (128,) if quick else (64, 128)
    cases = [(t, hd, 0, causal) for causal in (True, False) for hd in head_dims for t in seqs]
    # grouped-query attention, 4 query heads per KV head (llama3)
    cases += [(t, hd, ATTENTION_WIDTH // hd // 4, causal)
              for causal in (True, False) for hd in head_dims for t in gqa_seqs]
    return cases


def parse_seqs(text):
    """'2048,8192' -> [2048, 8192] (argparse type)."""
    try:
        seqs = [int(x) for x in text.split(",")]
    except ValueError:
        seqs = []
    if not seqs or min(seqs) <= 0:
        raise argparse.ArgumentTypeError(f"takes positive integers separated by commas, not {text!r}")
    return seqs


def sdpa_backends(torch):
    """(impl name, context factory) for each SDPA backend to time alone."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return []
    out = []
    for impl, attr in (("torch-flash", "FLASH_ATTENTION"), ("torch-cudnn", "CUDNN_ATTENTION"),
                       ("torch-efficient", "EFFICIENT_ATTENTION")):
        backend = getattr(SDPBackend, attr, None)
        if backend is not None:
            out.append((impl, lambda b=backend: sdpa_kernel([b])))
    return out


def bench_attention(torch, args):
    import contextlib

    sdpa = torch.nn.functional.scaled_dot_product_attention
    variants = [("torch", contextlib.nullcontext)]
    if args.sdpa_backends:
        variants += sdpa_backends(torch)
    for seq, hd, kv, causal in attention_cases(args.quick, args.seqs):
        b, h = max(1, ATTENTION_TOKENS // seq), ATTENTION_WIDTH // hd
        hkv = kv if kv else h
        shape = f"B={b} T={seq} H={h} Hkv={hkv} d={hd} {'causal' if causal else 'full'}"
        want_fwd, want_bwd = wanted(args, "attention_fwd", shape), wanted(args, "attention_bwd", shape)
        want_fwd_bwd = wanted(args, "attention_fwd_bwd", shape)
        if not want_fwd and not want_bwd and not want_fwd_bwd:
            continue
        # Token-major [B, T, heads, d] as in our fused QKV rows, viewed [B, heads, T, d].
        def make(heads):
            return (torch.randn(b, seq, heads, hd, device="cuda", dtype=torch.bfloat16)
                    .transpose(1, 2).requires_grad_(True))
        q, k, v = make(h), make(hkv), make(hkv)
        dout = torch.randn(b, seq, h, hd, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        extra = {"enable_gqa": True} if hkv != h else {}
        fwd_flops = 4.0 * b * seq * seq * h * hd / (2.0 if causal else 1.0)

        def forward():
            with torch.no_grad():
                return sdpa(q, k, v, is_causal=causal, **extra)

        def forward_backward():
            out = sdpa(q, k, v, is_causal=causal, **extra)
            return torch.autograd.grad(out, (q, k, v), dout)

        for impl, context in variants:
            try:
                with context():
                    fwd_ms = median_ms(torch, forward, args) if want_fwd or want_bwd else 0.0
                    total_ms = median_ms(torch, forward_backward, args) if want_bwd or want_fwd_bwd else 0.0
            except (RuntimeError, TypeError) as err:
                print(f"torch_peer: {impl} {shape}: {str(err).splitlines()[0] if str(err) else err!r}",
                      file=sys.stderr)
                torch.cuda.empty_cache()
                continue
            if want_fwd:
                emit(impl, "attention_fwd", shape, "bf16", fwd_ms, fwd_flops, args.reps)
            if want_bwd:
                emit(impl, "attention_bwd", shape, "bf16", total_ms - fwd_ms, 2.5 * fwd_flops, args.reps)
            if want_fwd_bwd:
                emit(impl, "attention_fwd_bwd", shape, "bf16", total_ms, 3.5 * fwd_flops, args.reps)
        del q, k, v, dout
        torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    parser.add_argument("--seqs", type=parse_seqs, default=None, help="attention sequence lengths, e.g. 2048,8192")
    parser.add_argument("--filter", action="append", default=[],
                        help="keep rows whose 'kernel shape' contains this (repeatable: all of them)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per row (20; 5 with --quick)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument("--sdpa-backends", action="store_true", help="also time each SDPA backend alone")
    args = parser.parse_args()
    if args.reps is None:
        args.reps = 5 if args.quick else 20
    args.reps = max(1, args.reps)
    args.warmup = max(0, args.warmup)

    try:
        import torch
    except ImportError:
        print("torch_peer: PyTorch is not installed, nothing to benchmark", file=sys.stderr)
        return 0
    if not torch.cuda.is_available():
        print("torch_peer: no CUDA GPU visible to PyTorch, nothing to benchmark", file=sys.stderr)
        return 0

    # Sum bf16 products in fp32 throughout, as our cuBLASLt GEMMs do.
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    props = torch.cuda.get_device_properties(0)
    print(json.dumps({"impl": "torch", "device": props.name, "torch": torch.__version__,
                      "cuda": torch.version.cuda, "sms": props.multi_processor_count,
                      "quick": args.quick}), flush=True)
    torch.manual_seed(0)
    bench_gemms(torch, args)
    bench_attention(torch, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
