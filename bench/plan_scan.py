#!/usr/bin/env python3
"""Scans parallel layouts of a config with `latam-train --plan` and lists the
fastest that fit.

For a fixed world size (the config's tensor x context x pipeline x data) and
global batch, it tries every tensor size that stays inside a node, the
context-parallel sizes of --context (default: the config's), every pipeline
size whose data-parallel size divides the global batch, even and uneven
stages (the last stage one or two layers lighter, for the LM head), virtual
stages, sequence parallelism, recompute NONE / SELECTIVE / FULL and ZeRO 1
and 2, and prints the layouts with at least --min-headroom of the GPU's
memory free, fastest first (predicted tokens/s per GPU), as JSON lines.

  bench/plan_scan.py --config configs/latam-gpt-70b.textproto --gpu h200
  bench/plan_scan.py --config configs/latam-gpt-70b-p5.textproto --gpu h100 --network efa
  bench/plan_scan.py --config configs/latam-gpt-70b-32k.textproto --gpu h200 --context 1,2,4

Nothing runs on a GPU: these are the planner's predictions (trainer/plan.h,
trainer/step_time.h), as reliable as its stated assumptions.
"""
import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys


def config_value(text, key):
    m = re.search(r"^\s*" + key + r":\s*([0-9]+)", text, re.M)
    return int(m.group(1)) if m else None


def plan(binary, config, gpu, network, sets):
    cmd = [binary, "--config", config, "--plan", "--gpu", gpu, "--network", network]
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--gpu", required=True, choices=["h100", "h200"])
    ap.add_argument("--network", default="ib", choices=["ib", "efa"])
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--min-headroom", type=float, default=0.10)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--binary", default=os.path.join("build", "bin", "latam-train"))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--context", default=None, help="comma-separated parallel.context sizes to try")
    args = ap.parse_args()

    text = open(args.config).read()
    tp0, pp0 = config_value(text, "tensor") or 1, config_value(text, "pipeline") or 1
    dp0 = config_value(text, "data")
    layers = config_value(text, "n_layers")
    batch, micro = config_value(text, "global_batch_size"), config_value(text, "micro_batch_size") or 1
    if not dp0 or not layers or not batch:
        sys.exit("plan_scan: the config must set parallel.data, model.n_layers and train.global_batch_size")
    cp0 = config_value(text, "context") or 1
    world = tp0 * cp0 * pp0 * dp0
    contexts = [int(c) for c in args.context.split(",")] if args.context else [cp0]

    candidates = []
    shapes = [(tp, cp, pp) for tp in (1, 2, 4, 8) if tp <= args.gpus_per_node for cp in contexts
              for pp in range(1, min(layers, 16) + 1)]
    for tp, cp, pp in shapes:
        if world % (tp * cp * pp):
            continue
        dp = world // (tp * cp * pp)
        if batch % (dp * micro):
            continue
        per = -(-layers // pp)  # the heaviest stage's layers
        splits = [(0, 0)] if layers % pp == 0 else []
        if pp > 1:
            for lighter in (1, 2):
                last = layers - per * (pp - 1)
                if layers % pp == 0:
                    last = layers // pp - lighter
                if last >= 1:
                    splits.append((0, last))
        for first, last in sorted(set(splits)):
            for vs in (1, 2):
                if vs > 1 and (pp == 1 or last or (batch // (dp * micro)) % pp):
                    continue
                for sp in ([False, True] if tp > 1 else [False]):
                    for recompute in ("NONE", "SELECTIVE", "FULL"):
                        for zero in (1, 2):
                            sets = [f"parallel.tensor={tp}", f"parallel.context={cp}",
                                    f"parallel.pipeline={pp}", f"parallel.data={dp}",
                                    f"parallel.virtual_stages={vs}", f"parallel.first_stage_layers={first}",
                                    f"parallel.last_stage_layers={last}",
                                    f"parallel.sequence_parallel={'true' if sp else 'false'}",
                                    f"train.recompute={recompute}", f"parallel.zero_stage={zero}"]
                            candidates.append(sets)

    results = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(plan, args.binary, args.config, args.gpu, args.network, c): c for c in candidates}
        for f in concurrent.futures.as_completed(futures):
            j = f.result()
            if j is None or j.get("headroom_fraction", -1) < args.min_headroom:
                continue
            st = j["step_time"]
            results.append({"set": futures[f], "tokens_per_s_per_gpu": round(st["tokens_per_s_per_gpu"], 1),
                            "mfu": round(st["mfu"], 3), "step_s": round(st["step_s"], 2),
                            "memory_gb": round(j["memory_bytes_per_rank"] / 1e9, 1),
                            "headroom": round(j["headroom_fraction"], 3)})
    results.sort(key=lambda r: (-r["tokens_per_s_per_gpu"], -r["headroom"]))
    print(f"# {len(candidates)} layouts planned, {len(results)} fit with >= {args.min_headroom:.0%} headroom",
          file=sys.stderr)
    for r in results[:args.top]:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
