#!/usr/bin/env bash
# End-to-end GPU training throughput: latam-train (device cuda, bf16) against
# a PyTorch implementation of the same model (bench/torch_llama_peer.py), on
# one GPU, at the same sequence length and micro-batch.
#
#   bash bench/run_e2e_gpu.sh [RESULTS.jsonl]          (default bench/runs/e2e_gpu.jsonl)
#
# Environment (defaults in parentheses):
#   BIN          where latam-train and latam-data are (build/bin)
#   CONFIG       the model config (configs/llama3-1b.textproto)
#   SEQ          sequence lengths ("2048 4096")
#   MICRO        micro-batch: one value for every SEQ, or one per SEQ entry;
#                unset: TOKENS_PER_MICRO / seq, at least 1, i.e. 4 at 2048
#                and 2 at 4096 (the same tokens per micro-batch)
#   TOKENS_PER_MICRO (8192)
#   STEPS        steps per run, warm-up included (20)
#   WARMUP       first steps left out of the medians (5)
#   PEAK_TFLOPS  dense bf16 peak for MFU (989: H100 SXM and H200)
#   PEER_MODES   PyTorch variants, each its own process: "eager", "compile"
#                or "eager compile", or "none" for no peer (eager)
#   PEER_ARGS    extra arguments for the peer, e.g. "--gqa native" or
#                "--activation-checkpointing" (none)
#   LATAM_SET    extra latam-train overrides, space-separated key=value
#                (e.g. "train.recompute=FULL") (none)
#   PYTHON       interpreter with PyTorch (python3)
#   DATA         synthetic token shard; made with `latam-data synthesize` when
#                missing (bench/data/synthetic-<vocab>.bin, 8M tokens)
#   RUN_TIMEOUT  seconds before one run is killed (1800)
#   GPU          GPU index nvidia-smi watches (0)
#   KEEP=1       keep the run directories and logs (in /tmp/latam-e2e.*)
#   ATTENTION    latam-train's train.attention: auto, simple, wgmma or
#                wgmma_tma; the wgmma ones measure the Hopper attention
#                kernels (README, "GPU training") (auto)
#   DEVICE       latam-train's train.device: cuda (bf16), or cpu (fp32), which
#                checks this script's plumbing on a machine without a GPU
#                (cuda)
# Relative paths (RESULTS, BIN, CONFIG, DATA) are taken from the repository root.
#
# For each sequence length it
#   1. prints `latam-train --plan` for the run's config (memory_bytes_per_rank,
#      flops_per_token);
#   2. trains STEPS steps with latam-train on the synthetic shard, with
#        --set train.device=DEVICE --set train.precision=bf16 (fp32 on cpu)
#        --set train.attention=ATTENTION
#        --set data.seq_len=S --set train.micro_batch_size=M
#        --set train.global_batch_size=M (one micro-batch per step)
#        --set train.steps=STEPS --set train.log_every=1 --set train.eval_every=0
#        --set train.save_every=0 --set train.run_dir=<temporary>
#      and the data overrides: `--set` addresses list elements by index
#      (trainer/config.cc ApplyOverride), so data.train[0] and data.eval[0]
#      both point at the synthetic shard (eval_every=0 never reads it; it only
#      has to exist) and data.tokenizer is cleared. No temporary config file
#      is needed. The config must have a single train dataset (llama3-1b has);
#   3. runs the peer with the same sequence length, micro-batch and steps.
# While each process runs, nvidia-smi's memory.used for GPU $GPU is polled
# every 200 ms; the peak minus the reading before the run (the process's
# whole footprint: CUDA context, allocator caches, workspace) is reported for
# both. The peer also reports torch.cuda.max_memory_allocated().
#
# Medians over the steps after WARMUP: latam-train's from its metrics.jsonl
# (tokens_per_s, step_ms, and its own mfu when it writes one), the peer's from
# CUDA events. MFU in the table is recomputed for both as tokens/s x
# flops_per_token (of latam-train --plan, the peer uses the same formula) /
# PEAK_TFLOPS, so the two columns are comparable.
#
# Output: a Markdown table on stdout (progress and the raw lines on stderr),
# and every raw JSON line appended to RESULTS as it is made (one "env" line,
# then one line per latam-train run and per peer configuration, each with the
# same run_id).
# Exit status: 0 when every run worked (a peer "oom" line counts as worked),
# 1 when latam-train or the peer failed (the others still run; the failed
# run's stderr tail is printed), 2 on bad arguments.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
}

if [[ $# -gt 1 || ${1:-} == -* ]]; then
  usage
  exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

RESULTS=${1:-bench/runs/e2e_gpu.jsonl}
BIN=${BIN:-build/bin}
CONFIG=${CONFIG:-configs/llama3-1b.textproto}
SEQ=${SEQ:-2048 4096}
MICRO=${MICRO:-}
TOKENS_PER_MICRO=${TOKENS_PER_MICRO:-8192}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
PEER_MODES=${PEER_MODES:-eager}
PEER_ARGS=${PEER_ARGS:-}
LATAM_SET=${LATAM_SET:-}
PYTHON=${PYTHON:-python3}
RUN_TIMEOUT=${RUN_TIMEOUT:-1800}
GPU=${GPU:-0}
KEEP=${KEEP:-0}
DEVICE=${DEVICE:-cuda}
ATTENTION=${ATTENTION:-auto}

die() {
  echo "run_e2e_gpu: $*" >&2
  exit 2
}
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

[[ -f $CONFIG ]] || die "no config $CONFIG"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON to an interpreter with PyTorch)"
for v in STEPS WARMUP TOKENS_PER_MICRO RUN_TIMEOUT GPU; do
  is_uint "${!v}" || die "$v must be a non-negative integer (got '${!v}')"
done
((STEPS > WARMUP)) || die "STEPS ($STEPS) must exceed WARMUP ($WARMUP)"
[[ $PEAK_TFLOPS =~ ^[0-9]+([.][0-9]+)?$ ]] || die "PEAK_TFLOPS must be a number (got '$PEAK_TFLOPS')"
case $DEVICE in
  cuda) precision=bf16 ;;
  cpu) precision=fp32 ;;
  *) die "DEVICE takes cuda or cpu (got '$DEVICE')" ;;
esac
case $ATTENTION in
  auto | simple | wgmma | wgmma_tma) ;;
  *) die "ATTENTION takes auto, simple, wgmma or wgmma_tma (got '$ATTENTION')" ;;
esac

read -r -a seqs <<<"$SEQ"
read -r -a micros <<<"$MICRO"
read -r -a peer_modes <<<"$PEER_MODES"
if [[ $PEER_MODES == none ]]; then peer_modes=(); fi
read -r -a peer_args <<<"$PEER_ARGS"
read -r -a latam_sets <<<"$LATAM_SET"
((${#seqs[@]} > 0)) || die "SEQ is empty"
if ((${#micros[@]} > 1 && ${#micros[@]} != ${#seqs[@]})); then
  die "MICRO has ${#micros[@]} values for ${#seqs[@]} sequence lengths"
fi
for s in "${seqs[@]}" "${micros[@]}"; do
  if ! is_uint "$s" || ((s == 0)); then
    die "SEQ and MICRO take positive integers (got '$s')"
  fi
done
for m in "${peer_modes[@]}"; do
  [[ $m == eager || $m == compile ]] || die "PEER_MODES takes eager and/or compile (got '$m')"
done

vocab=$(sed -n 's/^[[:space:]]*vocab_size:[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$CONFIG" | head -n 1)
[[ -n $vocab ]] || die "cannot read model.vocab_size from $CONFIG"
DATA=${DATA:-bench/data/synthetic-$vocab.bin}

work=$(mktemp -d /tmp/latam-e2e.XXXXXX)
smi_pid=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [[ -n $smi_pid ]]; then
    kill "$smi_pid" 2>/dev/null || true
    wait "$smi_pid" 2>/dev/null || true
  fi
  if [[ $KEEP == 1 ]]; then
    echo "run_e2e_gpu: kept $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

# The machine's CUDA runtime, wherever the loader's cache omits it.
export LD_LIBRARY_PATH="${CUDA_HOME:-/usr/local/cuda}/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
# The helper below imports bench/bench_jsonl.py.
export PYTHONPATH="$root/bench${PYTHONPATH:+:$PYTHONPATH}"

run_id=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$(dirname "$RESULTS")"
rows=$work/rows.jsonl
: >"$rows"
status=0

have_smi=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -i "$GPU" >/dev/null 2>&1; then
  have_smi=1
  nvidia-smi -i "$GPU" --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv >&2 || true
else
  echo "run_e2e_gpu: nvidia-smi not usable; no process memory figures" >&2
fi

timeout_cmd=()
if command -v timeout >/dev/null 2>&1; then
  timeout_cmd=(timeout --kill-after=30 "$RUN_TIMEOUT")
fi

# JSON munging, the table and the medians, in one helper (no jq needed).
helper=$work/helper.py
cat >"$helper" <<'PYEOF'
import json
import statistics
import sys

from bench_jsonl import read_jsonl


def smi_peak(path, baseline):
    """(peak MiB minus baseline) in bytes from an nvidia-smi memory.used log, or None."""
    values = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    values.append(float(line.strip()))
                except ValueError:
                    pass
    except OSError:
        pass
    if not values:
        return None, None
    peak = max(values)
    base = float(baseline) if baseline not in ("", None) else 0.0
    return int(peak * 2**20), int(max(0.0, peak - base) * 2**20)


def plan_fields(path):
    plans = read_jsonl(path)
    return plans[0] if plans else {}


def cmd_env(a):
    keys = ["run_id", "date", "host", "gpu", "driver", "config", "steps", "warmup", "peak_tflops", "peer_modes",
            "peer_args", "latam_set", "data"]
    row = {"impl": "env"}
    row.update(dict(zip(keys, a)))
    for k in ("steps", "warmup"):
        row[k] = int(row[k])
    row["peak_tflops"] = float(row["peak_tflops"])
    print(json.dumps(row))


def cmd_latam(a):
    (run_id, seq, micro, warmup, peak, rc, metrics, plan, smi, baseline, stderr) = a
    seq, micro, warmup, peak, rc = int(seq), int(micro), int(warmup), float(peak), int(rc)
    p = plan_fields(plan)
    row = {"impl": "latam-train", "run_id": run_id, "seq_len": seq, "micro_batch": micro, "rc": rc}
    if p:
        row["params"] = p.get("parameters")
        row["flops_per_token"] = p.get("flops_per_token")
        row["plan_memory_bytes_per_rank"] = p.get("memory_bytes_per_rank")
        row["plan_memory_breakdown"] = p.get("memory_breakdown")
        row["precision"] = p.get("precision")
        row["attention"] = p.get("attention")
    train = [r for r in read_jsonl(metrics) if "tokens_per_s" in r and "step" in r]
    train.sort(key=lambda r: r["step"])
    measured = train[warmup:]
    if measured:
        tps = statistics.median(r["tokens_per_s"] for r in measured)
        row["tokens_per_s"] = round(tps, 1)
        row["step_ms"] = round(statistics.median(r["step_ms"] for r in measured if "step_ms" in r), 3) \
            if any("step_ms" in r for r in measured) else None
        if row.get("flops_per_token"):
            row["tflops"] = round(tps * row["flops_per_token"] / 1e12, 3)
            row["mfu"] = round(tps * row["flops_per_token"] / (peak * 1e12), 4)
        reported = [r["mfu"] for r in measured if isinstance(r.get("mfu"), (int, float))]
        if reported:
            row["mfu_reported"] = round(statistics.median(reported), 4)
        row["steps_measured"] = len(measured)
        row["first_step_ms"] = train[0].get("step_ms")
        losses = [r["loss"] for r in train if "loss" in r]
        if losses:
            row["loss_first"], row["loss_last"] = losses[0], losses[-1]
    row["steps_logged"] = len(train)
    raw, net = smi_peak(smi, baseline)
    if raw is not None:
        row["smi_peak_bytes"], row["smi_process_peak_bytes"] = raw, net
    if rc != 0:
        row["error"] = "timeout" if rc in (124, 137) else f"exit {rc}"
        try:
            with open(stderr, errors="replace") as f:
                row["stderr_tail"] = "".join(f.readlines()[-5:])[-1000:]
        except OSError:
            pass
    elif not measured:
        row["error"] = f"only {len(train)} training lines in metrics.jsonl (need more than {warmup})"
    print(json.dumps(row))


def cmd_peer(a):
    (run_id, seq, micro, mode, rc, out, plan, smi, baseline) = a
    rows = [r for r in read_jsonl(out) if str(r.get("impl", "")).startswith("pytorch-")]
    if not rows:
        rows = [{"impl": f"pytorch-{mode}", "seq_len": int(seq), "micro_batch": int(micro),
                 "error": "timeout" if int(rc) in (124, 137) else f"exit {rc}, no result line"}]
    p = plan_fields(plan)
    raw, net = smi_peak(smi, baseline)
    for r in rows:
        r["run_id"] = run_id
        r["rc"] = int(rc)
        if raw is not None:
            r["smi_peak_bytes"], r["smi_process_peak_bytes"] = raw, net
        if p.get("flops_per_token") is not None and r.get("flops_per_token") is not None \
                and p["flops_per_token"] != r["flops_per_token"]:
            print(f"run_e2e_gpu: flops_per_token differs: plan {p['flops_per_token']} peer {r['flops_per_token']}",
                  file=sys.stderr)
        print(json.dumps(r))


def gib(v):
    return "-" if not isinstance(v, (int, float)) else f"{v / 2**30:.1f}"


def cmd_table(a):
    rows = read_jsonl(a[0])
    for r in rows:
        if r.get("impl") == "env":
            print(f"- run {r.get('run_id')}: {r.get('gpu')} (driver {r.get('driver')}), {r.get('config')}, "
                  f"{r.get('steps')} steps, medians after {r.get('warmup')}, MFU against "
                  f"{r.get('peak_tflops'):g} TFLOP/s; peer {r.get('peer_modes')} {r.get('peer_args') or ''}".rstrip())
    print("- peak memory: nvidia-smi memory.used during the run minus before it (the whole process); "
          "torch alloc: torch.cuda.max_memory_allocated(); plan: latam-train --plan memory_bytes_per_rank")
    print()
    header = ["impl", "seq", "micro-batch", "tokens/s", "step ms", "MFU", "peak memory GiB", "torch alloc GiB",
              "plan estimate GiB", "speed latam/pytorch"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    latam = {(r["seq_len"], r["micro_batch"]): r for r in rows if r.get("impl") == "latam-train"}
    plan = {k: r.get("plan_memory_bytes_per_rank") for k, r in latam.items()}
    flops = {k: r.get("flops_per_token") for k, r in latam.items()}
    for r in rows:
        impl = r.get("impl", "")
        if impl not in ("latam-train",) and not impl.startswith("pytorch-"):
            continue
        key = (r.get("seq_len"), r.get("micro_batch"))
        tps = r.get("tokens_per_s")
        fpt = flops.get(key) or r.get("flops_per_token")
        mfu = "-"
        if isinstance(tps, (int, float)) and fpt:
            mfu = f"{100.0 * tps * fpt / (float(a[1]) * 1e12):.1f}%"
        ratio = "-"
        base = latam.get(key, {}).get("tokens_per_s")
        if impl != "latam-train" and isinstance(tps, (int, float)) and tps > 0 and isinstance(base, (int, float)):
            ratio = f"{base / tps:.2f}"
        err = r.get("error")
        cells = [impl, str(r.get("seq_len", "-")), str(r.get("micro_batch", "-")),
                 (f"{tps:,.0f}" if isinstance(tps, (int, float)) else "-") + (f" ({err})" if err else ""),
                 f"{r['step_ms']:.1f}" if isinstance(r.get("step_ms"), (int, float)) else "-",
                 mfu, gib(r.get("smi_process_peak_bytes")),
                 gib(r.get("peak_mem_bytes")) if impl.startswith("pytorch-") else "-",
                 gib(plan.get(key)) if impl == "latam-train" else "-", ratio]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    {"env": cmd_env, "latam": cmd_latam, "peer": cmd_peer, "table": cmd_table}[sys.argv[1]](sys.argv[2:])
PYEOF

# Starts polling GPU memory into $1 (when nvidia-smi works); stop_smi ends it.
start_smi() {
  : >"$1"
  if [[ $have_smi == 1 ]]; then
    nvidia-smi -i "$GPU" --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$1" 2>/dev/null &
    smi_pid=$!
  fi
}
stop_smi() {
  if [[ -n $smi_pid ]]; then
    kill "$smi_pid" 2>/dev/null || true
    wait "$smi_pid" 2>/dev/null || true
    smi_pid=""
  fi
}
smi_now() {
  if [[ $have_smi == 1 ]]; then
    nvidia-smi -i "$GPU" --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n 1 | tr -dc '0-9.'
  fi
}
emit() {  # appends the helper's line(s) to the run's rows and to RESULTS, and echoes them on stderr
  local line
  while IFS= read -r line; do
    printf '%s\n' "$line" >>"$rows"
    printf '%s\n' "$line" >>"$RESULTS"
    printf 'run_e2e_gpu: %s\n' "$line" >&2
  done
}

gpu_name=unknown driver=unknown
if [[ $have_smi == 1 ]]; then
  gpu_name=$(nvidia-smi -i "$GPU" --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1) || gpu_name=unknown
  driver=$(nvidia-smi -i "$GPU" --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1) || driver=unknown
fi
"$PYTHON" "$helper" env "$run_id" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(hostname)" "$gpu_name" "$driver" "$CONFIG" \
  "$STEPS" "$WARMUP" "$PEAK_TFLOPS" "$PEER_MODES" "$PEER_ARGS" "$LATAM_SET" "$DATA" | emit || status=1

# The synthetic shard, with the config's vocabulary.
latam_ok=1
if [[ ! -x $BIN/latam-train ]]; then
  echo "run_e2e_gpu: no $BIN/latam-train (build it, or set BIN); running the peer only" >&2
  latam_ok=0
elif [[ ! -f $DATA ]]; then
  if [[ -x $BIN/latam-data ]]; then
    mkdir -p "$(dirname "$DATA")"
    echo "run_e2e_gpu: writing $DATA (vocab $vocab)" >&2
    if ! "$BIN/latam-data" synthesize --out "$DATA" --vocab "$vocab" --tokens 8000000 --seed 7 >&2; then
      echo "run_e2e_gpu: latam-data synthesize failed; running the peer only" >&2
      latam_ok=0
    fi
  else
    echo "run_e2e_gpu: no $DATA and no $BIN/latam-data to make it; running the peer only" >&2
    latam_ok=0
  fi
fi
if [[ $latam_ok == 0 ]]; then
  status=1
fi

for i in "${!seqs[@]}"; do
  seq=${seqs[$i]}
  if ((${#micros[@]} == 0)); then
    micro=$((TOKENS_PER_MICRO / seq))
    ((micro >= 1)) || micro=1
  elif ((${#micros[@]} == 1)); then
    micro=${micros[0]}
  else
    micro=${micros[$i]}
  fi
  tag=seq$seq-mb$micro
  run_dir=$work/run-$tag
  overrides=(
    --set "train.device=$DEVICE" --set "train.precision=$precision" --set "train.attention=$ATTENTION"
    --set "data.seq_len=$seq" --set "train.micro_batch_size=$micro" --set "train.global_batch_size=$micro"
    --set "train.steps=$STEPS" --set train.log_every=1 --set train.eval_every=0 --set train.save_every=0
    --set "train.run_dir=$run_dir"
    --set data.tokenizer=
    --set "data.train[0].name=synthetic" --set "data.train[0].path=$DATA" --set "data.train[0].weight=1"
    --set "data.eval[0].name=synthetic" --set "data.eval[0].path=$DATA"
  )
  for kv in "${latam_sets[@]}"; do
    overrides+=(--set "$kv")
  done

  plan=$work/plan-$tag.json
  : >"$plan"
  if [[ -x $BIN/latam-train ]]; then
    if "$BIN/latam-train" --config "$CONFIG" "${overrides[@]}" --plan >"$plan" 2>"$work/plan-$tag.err"; then
      echo "run_e2e_gpu: plan seq $seq micro $micro: $(cat "$plan")" >&2
    else
      echo "run_e2e_gpu: latam-train --plan failed for seq $seq micro $micro:" >&2
      tail -n 5 "$work/plan-$tag.err" >&2 || true
      : >"$plan"
    fi
  fi

  if [[ $latam_ok == 1 ]]; then
    echo "run_e2e_gpu: latam-train seq $seq micro $micro, $STEPS steps" >&2
    baseline=$(smi_now || true)
    start_smi "$work/smi-latam-$tag.log"
    rc=0
    "${timeout_cmd[@]}" "$BIN/latam-train" --config "$CONFIG" "${overrides[@]}" --resume none \
      >"$work/latam-$tag.out" 2>"$work/latam-$tag.err" || rc=$?
    stop_smi
    if [[ $rc -ne 0 ]]; then
      status=1
      echo "run_e2e_gpu: latam-train failed (exit $rc) for seq $seq micro $micro; stderr tail:" >&2
      tail -n 20 "$work/latam-$tag.err" >&2 || true
    fi
    "$PYTHON" "$helper" latam "$run_id" "$seq" "$micro" "$WARMUP" "$PEAK_TFLOPS" "$rc" "$run_dir/metrics.jsonl" \
      "$plan" "$work/smi-latam-$tag.log" "$baseline" "$work/latam-$tag.err" | emit || status=1
  fi

  for mode in "${peer_modes[@]}"; do
    echo "run_e2e_gpu: torch_llama_peer $mode seq $seq micro $micro, $STEPS steps" >&2
    baseline=$(smi_now || true)
    start_smi "$work/smi-peer-$mode-$tag.log"
    rc=0
    "${timeout_cmd[@]}" "$PYTHON" bench/torch_llama_peer.py --config "$CONFIG" --seq-len "$seq" --micro-batch "$micro" \
      --steps "$STEPS" --warmup "$WARMUP" --peak-tflops "$PEAK_TFLOPS" --mode "$mode" "${peer_args[@]}" \
      >"$work/peer-$mode-$tag.out" 2>"$work/peer-$mode-$tag.err" || rc=$?
    stop_smi
    if [[ $rc -ne 0 ]]; then
      status=1
      echo "run_e2e_gpu: torch_llama_peer $mode failed (exit $rc) for seq $seq micro $micro; stderr tail:" >&2
      tail -n 20 "$work/peer-$mode-$tag.err" >&2 || true
    fi
    "$PYTHON" "$helper" peer "$run_id" "$seq" "$micro" "$mode" "$rc" "$work/peer-$mode-$tag.out" "$plan" \
      "$work/smi-peer-$mode-$tag.log" "$baseline" | emit || status=1
  done
done

echo "run_e2e_gpu: appended $(wc -l <"$rows") lines to $RESULTS" >&2
"$PYTHON" "$helper" table "$rows" "$PEAK_TFLOPS" || status=1
exit "$status"
