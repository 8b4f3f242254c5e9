#!/usr/bin/env python3
"""PyTorch peer of `latam-train` on one GPU: the same Llama 3 model, timed end to end.

    python3 bench/torch_llama_peer.py [--config configs/llama3-1b.textproto]
        [--seq-len 2048] [--micro-batch 4] [--steps 20] [--warmup 5]
        [--compile | --mode eager|compile|both] [--activation-checkpointing]
        [--gqa expand|native] [--peak-tflops 989] [--plan-only] [--verbose]
        [--dim N --n-layers N ... to override single model fields]
        [--device cpu: a functional smoke test of the same code, no timings]

The model is read from the `model { ... }` block of a latam text-format config
(a small parser here, no protobuf needed) and built from plain torch.nn:
  - token embedding, n_layers pre-norm blocks, final RMSNorm, LM head (tied to
    the embedding when tie_embeddings is true);
  - RMSNorm computed in fp32 (x * rsqrt(mean(x^2) + eps)) times its weight;
  - rotate-half RoPE on q and k, inverse frequencies theta^(-2i/hd) with the
    Llama 3.1 rope_scaling rule when the config has one (as kernels/cpu/rope.cc);
  - grouped-query attention through F.scaled_dot_product_attention
    (is_causal=True); KV heads are expanded to the query heads (--gqa expand,
    the default: every fused SDPA backend accepts it) or passed as they are
    with enable_gqa=True (--gqa native, torch >= 2.5);
  - SwiGLU MLP down(silu(gate(x)) * up(x)); no biases anywhere;
  - initialisation normal(0, init_std), o_proj and down_proj init_std /
    sqrt(2 n_layers), norms at 1 (as latam-train).
Training setup (the usual PyTorch/torchtitan recipe): fp32 parameters, which
are the fp32 master weights, with the forward and backward under
torch.autocast(bfloat16); fp32 gradients; cross-entropy on fp32 logits;
torch.optim.AdamW(fused=True) with the config's lr, betas, eps and weight decay
(matrices only), gradient-norm clipping at the config's grad_clip, constant
learning rate (the schedule costs nothing). Inputs are random token ids from
a fixed seed, a new batch each step.

Each step is bracketed by torch.cuda.synchronize() and CUDA events, so every
step ends synchronised (its loss is read each step). Reported, one
JSON line per configuration (eager, and torch.compile'd with --compile):
median step_ms over the steps after --warmup (--steps counts the warm-up
steps too), tokens_per_s = micro_batch * seq_len / step time, mfu =
tokens_per_s * flops_per_token / (peak_tflops * 1e12), peak_mem_bytes =
torch.cuda.max_memory_allocated(). flops_per_token is the same formula as
`latam-train --plan` (see flops_per_token below). An out-of-memory
configuration prints its line with "error": "oom" instead of numbers.

Importing this module does not import torch (the FLOP and parameter formulas
can be checked without it); --plan-only prints them and needs no torch.
Exit status: 0 when every configuration ran or ran out of memory, 1 on any
other failure (including no torch or no CUDA GPU), 2 on bad arguments.
"""

import argparse
import gc
import json
import math
import os
import re
import statistics
import sys
import time

DEFAULT_CONFIG = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "llama3-1b.textproto"))

# The model block of configs/llama3-1b.textproto, used when the config file
# cannot be read. Fields a readable config leaves out take config.proto's
# defaults (PROTO_MODEL), as latam-train does.
FALLBACK_MODEL = {
    "vocab_size": 128256,
    "dim": 2048,
    "n_layers": 16,
    "n_heads": 32,
    "n_kv_heads": 8,
    "ffn_dim": 8192,
    "rope_theta": 500000.0,
    "rope_scaling": [{"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192}],
    "norm_eps": 1e-5,
    "max_seq_len": 131072,
    "tie_embeddings": True,
}
REQUIRED_MODEL = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim")
PROTO_MODEL = {"rope_theta": 500000.0, "norm_eps": 1e-5, "max_seq_len": 8192, "tie_embeddings": False,
               "init_std": 0.02}
PROTO_OPTIMIZER = {"lr": 3e-4, "weight_decay": 0.1, "grad_clip": 1.0, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8}
PROTO_ROPE_SCALING = {"factor": 0.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192}

# ---------------------------------------------------------------------------
# Text-format config reading (no protobuf dependency).

_TOKEN = re.compile(r'#[^\n]*|"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|[{}:;,]|[^\s{}:;,#"\']+')


def _scalar(token):
    if token[:1] in "\"'":
        return token[1:-1]
    if token in ("true", "True"):
        return True
    if token in ("false", "False"):
        return False
    try:
        return int(token)
    except ValueError:
        pass
    try:
        return float(token)
    except ValueError:
        return token  # an enum name


def parse_textproto(text):
    """Parses protobuf text format into dicts.

    A scalar field maps to its value (the last one wins); a message field maps
    to a list of dicts, one per occurrence (`train { ... } train { ... }`).
    Enough for latam configs: no `<...>` delimiters, no repeated scalars.
    """
    root = {}
    stack = [root]
    tokens = [t for t in _TOKEN.findall(text) if not t.startswith("#") and t not in (";", ",")]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok == "}":
            if len(stack) == 1:
                raise ValueError("unbalanced '}' in config")
            stack.pop()
            continue
        if tok in ("{", ":"):
            raise ValueError(f"unexpected '{tok}' in config")
        has_colon = i < len(tokens) and tokens[i] == ":"
        if has_colon:
            i += 1
        if i >= len(tokens):
            raise ValueError(f"field '{tok}' has no value")
        if tokens[i] == "{":
            i += 1
            child = {}
            stack[-1].setdefault(tok, [])
            if not isinstance(stack[-1][tok], list):
                raise ValueError(f"field '{tok}' is both a scalar and a message")
            stack[-1][tok].append(child)
            stack.append(child)
        else:
            if not has_colon:
                raise ValueError(f"field '{tok}' needs ':' before its value")
            stack[-1][tok] = _scalar(tokens[i])
            i += 1
    if len(stack) != 1:
        raise ValueError("unbalanced '{' in config")
    return root


def read_config(path):
    """(model dict, optimizer dict) from a latam config, with defaults filled in."""
    with open(path) as f:
        parsed = parse_textproto(f.read())
    model_blocks = parsed.get("model", [])
    model = dict(model_blocks[-1]) if model_blocks else {}
    opt_blocks = parsed.get("optimizer", [])
    optimizer = dict(PROTO_OPTIMIZER)
    if opt_blocks:
        optimizer.update(opt_blocks[-1])
    return model, optimizer


def model_shape(model_fields):
    """The model's shape as a flat dict (the fields of model/parameters.h
    ModelShape) from a parsed model block; absent optional fields take
    config.proto's defaults, an absent rope_scaling means plain RoPE."""
    missing = [k for k in REQUIRED_MODEL if k not in model_fields]
    if missing:
        raise ValueError("model." + ", model.".join(missing) + " missing from the config")
    m = dict(PROTO_MODEL)
    m.update({k: v for k, v in model_fields.items() if k != "rope_scaling"})
    scaling = dict(PROTO_ROPE_SCALING)
    blocks = model_fields.get("rope_scaling") or []
    if isinstance(blocks, dict):
        blocks = [blocks]
    for block in blocks:
        scaling.update(block)
    s = {
        "vocab": int(m["vocab_size"]),
        "dim": int(m["dim"]),
        "n_layers": int(m["n_layers"]),
        "n_heads": int(m["n_heads"]),
        "n_kv_heads": int(m["n_kv_heads"]),
        "ffn_dim": int(m["ffn_dim"]),
        "rope_theta": float(m["rope_theta"]),
        "norm_eps": float(m["norm_eps"]),
        "max_seq_len": int(m["max_seq_len"]),
        "tie_embeddings": bool(m["tie_embeddings"]),
        "init_std": float(m["init_std"]),
        "rope_scaling": {
            "factor": float(scaling["factor"]),
            "low_freq_factor": float(scaling["low_freq_factor"]),
            "high_freq_factor": float(scaling["high_freq_factor"]),
            "original_max_position": float(scaling["original_max_position_embeddings"]),
        },
    }
    if s["n_heads"] <= 0 or s["dim"] % s["n_heads"] != 0:
        raise ValueError(f"dim {s['dim']} must divide by n_heads {s['n_heads']}")
    if s["n_kv_heads"] <= 0 or s["n_heads"] % s["n_kv_heads"] != 0:
        raise ValueError(f"n_heads {s['n_heads']} must divide by n_kv_heads {s['n_kv_heads']}")
    s["head_dim"] = s["dim"] // s["n_heads"]
    if s["head_dim"] % 2 != 0:
        raise ValueError(f"head dimension {s['head_dim']} must be even for RoPE")
    return s


# ---------------------------------------------------------------------------
# Sizes and FLOPs: pure functions, the formulas of model/parameters.cc and
# trainer/plan.cc.


def qkv_dim(s):
    return (s["n_heads"] + 2 * s["n_kv_heads"]) * s["head_dim"]


def attn_dim(s):
    return s["n_heads"] * s["head_dim"]


def parameter_count(s):
    """Total parameters (ModelShape::ParameterCount): per layer two norms, q/k/v,
    o, gate/up/down; the embedding (and an untied LM head); the final norm."""
    per_layer = 2 * s["dim"] + qkv_dim(s) * s["dim"] + s["dim"] * attn_dim(s) + 3 * s["ffn_dim"] * s["dim"]
    return s["vocab"] * s["dim"] * (1 if s["tie_embeddings"] else 2) + s["n_layers"] * per_layer + s["dim"]


def matmul_parameters(s):
    """Parameters that take part in a matmul per token (plan.cc MatmulParameters):
    q/k/v, o and gate/up/down of every layer plus the LM head, which is counted
    even when tied to the embedding (the embedding lookup itself is no matmul)."""
    per_layer = qkv_dim(s) * s["dim"] + s["dim"] * attn_dim(s) + 3 * s["ffn_dim"] * s["dim"]
    return s["n_layers"] * per_layer + s["vocab"] * s["dim"]


def flops_per_token(s, seq_len):
    """Training FLOPs per token, exactly as `latam-train --plan` computes them:

        6 * matmul_parameters + 6 * n_layers * seq_len * (n_heads * head_dim)

    6 = 2 FLOPs per multiply-add x (1 forward + 2 backward matmuls). The
    attention term is QK^T and PV: 2 matmuls x 2 FLOPs x seq_len keys x
    n_heads * head_dim per query token, halved for the causal mask, times 3 for
    forward + backward. No norms, RoPE, softmax or optimizer FLOPs. Returns a
    float, as plan.cc does (double arithmetic).
    """
    return 6.0 * float(matmul_parameters(s)) + 6.0 * float(s["n_layers"]) * float(seq_len) * float(attn_dim(s))


def rope_inverse_frequencies(theta, head_dim, scaling):
    """inv_freq[i] = theta^(-2i/hd), i < hd/2, then the Llama 3.1 rescaling
    (kernels/cpu/rope.cc): wavelengths above original/low_freq_factor are
    divided by factor, those below original/high_freq_factor are kept, the band
    in between is interpolated. factor <= 0 disables the rescaling."""
    half = head_dim // 2
    inv = [theta ** (-2.0 * i / head_dim) for i in range(half)]
    factor = scaling.get("factor", 0.0)
    if factor > 0.0:
        orig = scaling["original_max_position"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        low_freq_wavelen = orig / low
        high_freq_wavelen = orig / high
        for i, f in enumerate(inv):
            wavelen = 2.0 * math.pi / f
            if wavelen > low_freq_wavelen:
                inv[i] = f / factor
            elif wavelen >= high_freq_wavelen:
                smooth = (orig / wavelen - low) / (high - low)
                inv[i] = (1.0 - smooth) * f / factor + smooth * f
    return inv


# ---------------------------------------------------------------------------
# The model (needs torch; classes are made once torch is imported).


def make_model_class(torch):
    import torch.utils.checkpoint  # noqa: F401 - not always loaded by `import torch`

    nn = torch.nn
    F = torch.nn.functional

    class RMSNorm(nn.Module):
        def __init__(self, dim, eps):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            xf = x.float()
            y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * y.to(x.dtype)

    def rotate(x, cos, sin):
        # x [B, heads, T, hd]; cos, sin [T, hd] (each half repeated): rotate-half RoPE.
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)

    class Attention(nn.Module):
        def __init__(self, s, gqa_native):
            super().__init__()
            self.n_heads, self.n_kv_heads, self.head_dim = s["n_heads"], s["n_kv_heads"], s["head_dim"]
            self.gqa_native = gqa_native
            self.q_proj = nn.Linear(s["dim"], self.n_heads * self.head_dim, bias=False)
            self.k_proj = nn.Linear(s["dim"], self.n_kv_heads * self.head_dim, bias=False)
            self.v_proj = nn.Linear(s["dim"], self.n_kv_heads * self.head_dim, bias=False)
            self.o_proj = nn.Linear(self.n_heads * self.head_dim, s["dim"], bias=False)

        def forward(self, x, cos, sin):
            b, t, _ = x.shape
            h, hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
            q = self.q_proj(x).view(b, t, h, hd).transpose(1, 2)
            k = self.k_proj(x).view(b, t, hkv, hd).transpose(1, 2)
            v = self.v_proj(x).view(b, t, hkv, hd).transpose(1, 2)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            if hkv != h and self.gqa_native:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                if hkv != h:
                    # Query head j reads KV head j // (h / hkv), as repeat_interleave.
                    rep = h // hkv
                    k = k[:, :, None].expand(b, hkv, rep, t, hd).reshape(b, h, t, hd)
                    v = v[:, :, None].expand(b, hkv, rep, t, hd).reshape(b, h, t, hd)
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.o_proj(out.transpose(1, 2).reshape(b, t, h * hd))

    class MLP(nn.Module):
        def __init__(self, s):
            super().__init__()
            self.gate_proj = nn.Linear(s["dim"], s["ffn_dim"], bias=False)
            self.up_proj = nn.Linear(s["dim"], s["ffn_dim"], bias=False)
            self.down_proj = nn.Linear(s["ffn_dim"], s["dim"], bias=False)

        def forward(self, x):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    class Block(nn.Module):
        def __init__(self, s, gqa_native):
            super().__init__()
            self.input_layernorm = RMSNorm(s["dim"], s["norm_eps"])
            self.self_attn = Attention(s, gqa_native)
            self.post_attention_layernorm = RMSNorm(s["dim"], s["norm_eps"])
            self.mlp = MLP(s)

        def forward(self, x, cos, sin):
            x = x + self.self_attn(self.input_layernorm(x), cos, sin)
            return x + self.mlp(self.post_attention_layernorm(x))

    class Llama(nn.Module):
        def __init__(self, s, seq_len, gqa_native, checkpointing):
            super().__init__()
            self.vocab = s["vocab"]
            self.checkpointing = checkpointing
            self.embed_tokens = nn.Embedding(s["vocab"], s["dim"])
            self.layers = nn.ModuleList(Block(s, gqa_native) for _ in range(s["n_layers"]))
            self.norm = RMSNorm(s["dim"], s["norm_eps"])
            self.lm_head = nn.Linear(s["dim"], s["vocab"], bias=False)
            if s["tie_embeddings"]:
                self.lm_head.weight = self.embed_tokens.weight
            inv = torch.tensor(rope_inverse_frequencies(s["rope_theta"], s["head_dim"], s["rope_scaling"]),
                               dtype=torch.float64)
            angles = torch.arange(seq_len, dtype=torch.float64)[:, None] * inv[None, :]
            angles = torch.cat((angles, angles), dim=-1)
            self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
            self.register_buffer("rope_sin", angles.sin().float(), persistent=False)
            self.reset_parameters(s)

        @torch.no_grad()
        def reset_parameters(self, s):
            std = s["init_std"]
            out_std = std / math.sqrt(2.0 * s["n_layers"])
            self.embed_tokens.weight.normal_(0.0, std)
            if self.lm_head.weight is not self.embed_tokens.weight:
                self.lm_head.weight.normal_(0.0, std)
            for layer in self.layers:
                for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                            layer.mlp.gate_proj, layer.mlp.up_proj):
                    lin.weight.normal_(0.0, std)
                layer.self_attn.o_proj.weight.normal_(0.0, out_std)
                layer.mlp.down_proj.weight.normal_(0.0, out_std)

        def forward(self, ids, targets):
            t = ids.shape[1]
            cos, sin = self.rope_cos[:t], self.rope_sin[:t]
            x = self.embed_tokens(ids)
            for layer in self.layers:
                if self.checkpointing and self.training:
                    x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False)
                else:
                    x = layer(x, cos, sin)
            logits = self.lm_head(self.norm(x))
            return F.cross_entropy(logits.reshape(-1, self.vocab).float(), targets.reshape(-1))

    return Llama


# ---------------------------------------------------------------------------
# Benchmark.


def is_oom(torch, err):
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(err, oom_type):
        return True
    return "out of memory" in str(err).lower()


def make_optimizer(torch, model, opt):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": opt["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"lr": opt["lr"], "betas": (opt["beta1"], opt["beta2"]), "eps": opt["eps"]}
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs), "adamw-fused"
    except (TypeError, RuntimeError, ValueError):
        return torch.optim.AdamW(groups, foreach=True, **kwargs), "adamw-foreach"


def clip_grads(torch, params, max_norm):
    if max_norm <= 0:
        return
    try:
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    except TypeError:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def native_gqa_works(torch, device):
    """Whether this torch's SDPA takes enable_gqa (torch >= 2.5)."""
    try:
        q = torch.zeros(1, 4, 16, 64, device=device, dtype=torch.bfloat16)
        kv = torch.zeros(1, 2, 16, 64, device=device, dtype=torch.bfloat16)
        torch.nn.functional.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
        return True
    except (TypeError, RuntimeError):
        return False


def run_config(torch, args, s, opt, mode, gqa_native, row):
    """Builds, trains and times one configuration; fills `row`."""
    cuda = args.device == "cuda"
    Llama = make_model_class(torch)
    torch.manual_seed(args.seed)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    device = torch.device(args.device)
    if hasattr(device, "__enter__"):  # torch >= 2.0: build and initialise in place on the GPU
        with device:
            model = Llama(s, args.seq_len, gqa_native, args.activation_checkpointing)
    else:
        model = Llama(s, args.seq_len, gqa_native, args.activation_checkpointing).to(device)
    model.train()
    params = list(model.parameters())
    row["params"] = sum(p.numel() for p in params)
    optimizer, row["optimizer"] = make_optimizer(torch, model, opt)
    step_model = torch.compile(model) if mode == "compile" else model

    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    data = torch.randint(0, s["vocab"], (args.steps, args.micro_batch, args.seq_len + 1),
                         device=device, generator=gen)

    def train_step(i):
        inputs, targets = data[i, :, :-1].contiguous(), data[i, :, 1:].contiguous()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = step_model(inputs, targets)
        loss.backward()
        clip_grads(torch, params, opt["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    step_times, wall_ms, losses = [], [], []
    if cuda:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
    for i in range(args.steps):
        sync()
        t0 = time.perf_counter()
        if cuda:
            start.record()
        loss = train_step(i)
        if cuda:
            end.record()
        sync()
        wall_ms.append((time.perf_counter() - t0) * 1e3)
        step_times.append(start.elapsed_time(end) if cuda else wall_ms[-1])
        losses.append(float(loss))
        if args.verbose:
            print(f"torch_llama_peer: {row['impl']} step {i + 1}/{args.steps} loss {losses[-1]:.4f} "
                  f"{step_times[-1]:.1f} ms", file=sys.stderr, flush=True)

    measured = step_times[args.warmup:]
    step_ms = statistics.median(measured)
    tokens_per_s = args.micro_batch * args.seq_len / (step_ms / 1e3)
    row.update({
        "tokens_per_s": round(tokens_per_s, 1),
        "step_ms": round(step_ms, 3),
        "wall_step_ms": round(statistics.median(wall_ms[args.warmup:]), 3),
        "step_ms_min": round(min(measured), 3),
        "step_ms_max": round(max(measured), 3),
        "first_step_ms": round(step_times[0], 1),
        "tflops": round(tokens_per_s * row["flops_per_token"] / 1e12, 3),
        "mfu": round(tokens_per_s * row["flops_per_token"] / (args.peak_tflops * 1e12), 4),
        "steps_measured": len(measured),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
    })
    if cuda:
        row["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated())
        row["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved())


def base_row(args, s, mode, gqa_native, env):
    return {
        "impl": f"pytorch-{mode}",
        "seq_len": args.seq_len,
        "micro_batch": args.micro_batch,
        "model": (f"dim {s['dim']}, {s['n_layers']} layers, {s['n_heads']}/{s['n_kv_heads']} heads, "
                  f"ffn {s['ffn_dim']}, vocab {s['vocab']}" + (", tied" if s["tie_embeddings"] else "")),
        "params_formula": parameter_count(s),
        "flops_per_token": flops_per_token(s, args.seq_len),
        "peak_tflops": args.peak_tflops,
        "precision": "fp32 master params, bf16 autocast",
        "attention": "sdpa causal, gqa " + ("native (enable_gqa)" if gqa_native else "expanded kv"),
        "activation_checkpointing": bool(args.activation_checkpointing),
        "steps": args.steps,
        "warmup": args.warmup,
        **env,
    }


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="latam text-format config with the model block")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=4, help="sequences per step (4 x 2048 fits 80 GB)")
    p.add_argument("--steps", type=int, default=20, help="steps in all, warm-up included")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the medians")
    p.add_argument("--mode", choices=("eager", "compile", "both"), default=None,
                   help="eager (default), torch.compile, or both one after the other")
    p.add_argument("--compile", action="store_true", help="same as --mode both")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each block in the backward (torch.utils.checkpoint)")
    p.add_argument("--gqa", choices=("expand", "native"), default="expand",
                   help="expand KV heads before SDPA, or SDPA enable_gqa=True")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="dense bf16 peak for MFU (989: H100/H200 SXM)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plan-only", action="store_true",
                   help="print the shape, parameter count and flops_per_token, no torch needed")
    p.add_argument("--verbose", action="store_true", help="per-step lines on stderr")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu runs the same code as a functional smoke test (bf16 CPU autocast, wall-clock "
                        "timing, no memory figures); its numbers mean nothing")
    for field, kind in (("vocab_size", int), ("dim", int), ("n_layers", int), ("n_heads", int),
                        ("n_kv_heads", int), ("ffn_dim", int), ("rope_theta", float), ("norm_eps", float)):
        p.add_argument("--" + field.replace("_", "-"), dest=field, type=kind, default=None,
                       help=f"override model.{field} of the config")
    p.add_argument("--tie-embeddings", dest="tie_embeddings", choices=("true", "false"), default=None,
                   help="override model.tie_embeddings")
    args = p.parse_args(argv)
    if args.mode is None:
        args.mode = "both" if args.compile else "eager"
    elif args.compile and args.mode != "both":
        p.error("--compile means --mode both")
    if args.seq_len <= 0 or args.micro_batch <= 0:
        p.error("--seq-len and --micro-batch must be > 0")
    if args.warmup < 0 or args.steps <= args.warmup:
        p.error("--steps must exceed --warmup (>= 0)")
    return args


def load_shape(args):
    source = args.config
    try:
        fields, opt = read_config(args.config)
    except (OSError, ValueError) as err:
        print(f"torch_llama_peer: cannot read {args.config} ({err}); using llama3-1b's model fields",
              file=sys.stderr)
        fields, opt, source = dict(FALLBACK_MODEL), dict(PROTO_OPTIMIZER), "builtin llama3-1b"
    for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "rope_theta", "norm_eps"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.tie_embeddings is not None:
        fields["tie_embeddings"] = args.tie_embeddings == "true"
    return model_shape(fields), opt, source


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        s, opt, source = load_shape(args)
    except ValueError as err:
        print(f"torch_llama_peer: {err}", file=sys.stderr)
        return 2
    if args.seq_len > s["max_seq_len"]:
        print(f"torch_llama_peer: --seq-len {args.seq_len} exceeds model.max_seq_len {s['max_seq_len']}",
              file=sys.stderr)
        return 2
    if args.plan_only:
        print(json.dumps({"impl": "pytorch-plan", "config": source, "seq_len": args.seq_len,
                          "parameters": parameter_count(s), "matmul_parameters": matmul_parameters(s),
                          "flops_per_token": flops_per_token(s, args.seq_len), "shape": s}), flush=True)
        return 0

    modes = {"eager": ["eager"], "compile": ["compile"], "both": ["eager", "compile"]}[args.mode]
    try:
        import torch
    except ImportError:
        for mode in modes:
            print(json.dumps({"impl": f"pytorch-{mode}", "seq_len": args.seq_len, "micro_batch": args.micro_batch,
                              "error": "no-torch"}), flush=True)
        print("torch_llama_peer: PyTorch is not installed", file=sys.stderr)
        return 1
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        for mode in modes:
            print(json.dumps({"impl": f"pytorch-{mode}", "seq_len": args.seq_len, "micro_batch": args.micro_batch,
                              "error": "no-cuda"}), flush=True)
        print("torch_llama_peer: no CUDA GPU visible to PyTorch", file=sys.stderr)
        return 1

    gqa_native = args.gqa == "native" and s["n_kv_heads"] != s["n_heads"]
    if gqa_native and not native_gqa_works(torch, args.device):
        print("torch_llama_peer: this torch's SDPA has no enable_gqa; expanding KV heads instead", file=sys.stderr)
        gqa_native = False
    env = {"device": torch.cuda.get_device_properties(0).name if cuda else "cpu (smoke test)",
           "torch": torch.__version__, "cuda": torch.version.cuda, "config": source}

    status = 0
    for mode in modes:
        row = base_row(args, s, mode, gqa_native, env)
        failure = None
        try:
            run_config(torch, args, s, opt, mode, gqa_native, row)
        except Exception as err:  # noqa: BLE001 - every failure becomes a JSON line
            text = str(err).strip()
            first = text.splitlines()[0] if text else repr(err)
            failure = ("oom" if is_oom(torch, err) else "exception", f"{type(err).__name__}: {first}"[:500])
        if failure is not None:
            # Out of the except block the traceback, and with it the model and
            # its activations, is released.
            gc.collect()
            row["error"], row["message"] = failure
            if cuda:
                row["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated())
            if failure[0] != "oom":
                status = 1
            print(f"torch_llama_peer: {row['impl']} seq {args.seq_len} x {args.micro_batch}: {failure[1]}",
                  file=sys.stderr)
        print(json.dumps(row), flush=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return status


if __name__ == "__main__":
    sys.exit(main())
