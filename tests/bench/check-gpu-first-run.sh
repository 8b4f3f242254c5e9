#!/usr/bin/env bash
# Keeps bench/gpu_first_run.sh from rotting while no GPU runs it: runs it
# against the emulated GPU (--emulated: the emulated CUDA tests and kernel
# benchmark at toy sizes, latam-train on the CPU device) and checks that
#   1. every step writes its results: the device lines, the gtest report,
#      the benchmark rows and tables, the end-to-end row with tokens/s, a
#      steps.jsonl line each and summary.md; the PyTorch peers say
#      "skipped: no torch" where torch is missing, and the sanitizers say they
#      need a real GPU;
#   2. a step over its limit is cut and reported, a step the budget left
#      cannot cover is skipped, saying so, and --only runs the steps named.
#
# Usage: tests/bench/check-gpu-first-run.sh BUILD_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:?usage: check-gpu-first-run.sh BUILD_DIR}

fail() { echo "FAIL: $*" >&2; exit 1; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# Field FIELD of step STEP's line in steps.jsonl of run DIR.
field() { python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["step"] == sys.argv[2]:
        print(r[sys.argv[3]])
' "$1/steps.jsonl" "$2" "$3"; }

torch_missing=0
python3 -c 'import torch' >/dev/null 2>&1 || torch_missing=1

# ---- 1. A whole run -----------------------------------------------------------
# The step limits are sized for a real GPU. The emulated GPU's speed depends
# on the host's load: under ctest -j2 beside a multi-rank test, the kernel
# benchmark that takes 23 s alone took over 60 s. This run checks what the
# steps write, not their speed, so its emulated steps get room (part 2 checks
# that a limit cuts).
rc=0
bench/gpu_first_run.sh "$T/a" --emulated "$BUILD" --budget-s 900 --limit attention=300 --limit kernels=300 \
  >"$T/a.out" 2>&1 || rc=$?
cat "$T/a.out"
[ "$rc" -eq 0 ] || fail "gpu_first_run.sh --emulated exited $rc"
for f in summary.md steps.jsonl log.txt device.jsonl cuda_tests.json attention.jsonl e2e.jsonl kernels.jsonl; do
  [ -s "$T/a/$f" ] || fail "$f missing or empty"
done
[ "$(ls "$T/a" | wc -l)" -le 8 ] || fail "more than 8 files in OUT_DIR: $(ls "$T/a")"
[ "$(wc -l <"$T/a/steps.jsonl")" -eq 6 ] || fail "steps.jsonl has $(wc -l <"$T/a/steps.jsonl") lines, want 6"
for s in device cuda_tests attention e2e kernels; do
  [ "$(field "$T/a" "$s" status)" = ok ] || fail "step $s: $(field "$T/a" "$s" status): $(field "$T/a" "$s" reason)"
done
[ "$(field "$T/a" sanitize status)" = skipped ] || fail "sanitize should be skipped on the emulated GPU"
field "$T/a" sanitize reason | grep -q '^compute-sanitizer needs a real GPU$' || fail "sanitize's reason: $(field "$T/a" sanitize reason)"

grep -q '"device": "emulated GPU' "$T/a/device.jsonl" || fail "device.jsonl lacks the emulated device's line"
python3 - "$T/a/cuda_tests.json" <<'EOF' || fail "cuda_tests.json: see above"
import json, sys
doc = json.load(open(sys.argv[1]))
tests = [t for s in doc["testsuites"] for t in s["testsuite"]]
assert len(tests) >= 3, f"only {len(tests)} tests in the report"
bad = [t["name"] for t in tests if t.get("failures")]
assert not bad, f"failed: {bad}"
EOF
field "$T/a" cuda_tests reason | grep -Eq '^[0-9]+ passed, 0 failed' || fail "cuda_tests reason: $(field "$T/a" cuda_tests reason)"
grep -q '"kernel": "attention_fwd"' "$T/a/attention.jsonl" || fail "no attention_fwd row"
grep -q '"impl": "ours-wgmma-tma"' "$T/a/attention.jsonl" || fail "no Hopper (wgmma-tma) attention row"
if grep -q '"agrees_with_[a-z]*": false' "$T/a/attention.jsonl"; then fail "an attention variant disagrees (attention.jsonl)"; fi
grep -q '"kernel": "gemm_fwd"' "$T/a/kernels.jsonl" || fail "no gemm_fwd row in kernels.jsonl"
grep -q '"kernel": "adamw"' "$T/a/kernels.jsonl" || fail "no adamw row in kernels.jsonl"
python3 - "$T/a/e2e.jsonl" <<'EOF' || fail "e2e.jsonl: see above"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
latam = [r for r in rows if r.get("impl") == "latam-train"]
assert latam, "no latam-train row"
assert latam[0].get("tokens_per_s", 0) > 0, f"no tokens/s: {latam[0]}"
assert latam[0].get("flops_per_token", 0) > 0, f"no plan: {latam[0]}"
EOF
if [ "$torch_missing" -eq 1 ]; then
  for s in attention e2e kernels; do
    field "$T/a" "$s" reason | grep -q 'skipped: no torch' || fail "step $s does not say 'skipped: no torch'"
  done
fi
for h in '| step | status |' '## cuda_tests' '## attention' 'latam-flash' '## e2e' 'latam-train' '## kernels'; do
  grep -qF -- "$h" "$T/a/summary.md" || fail "summary.md lacks '$h'"
done

# ---- 2. A cut step, and a step past the budget --------------------------------
# The emulated CUDA tests take several seconds; a 1 s limit cuts them. What a
# 35 s budget leaves then cannot cover e2e's minimum (45 s).
rc=0
bench/gpu_first_run.sh "$T/b" --emulated "$BUILD" --budget-s 35 --only cuda_tests,e2e --limit cuda_tests=1 \
  >"$T/b.out" 2>&1 || rc=$?
cat "$T/b.out"
[ "$rc" -eq 1 ] || fail "a run with a cut step exited $rc, want 1"
[ "$(field "$T/b" cuda_tests status)" = cut ] || fail "cuda_tests: $(field "$T/b" cuda_tests status), want cut"
field "$T/b" cuda_tests reason | grep -q 'over its 1 s limit' || fail "cut reason: $(field "$T/b" cuda_tests reason)"
grep -q '| cuda_tests | cut |' "$T/b/summary.md" || fail "summary.md does not report the cut"
[ "$(field "$T/b" e2e status)" = skipped ] || fail "e2e: $(field "$T/b" e2e status), want skipped (budget)"
field "$T/b" e2e reason | grep -q '^budget: .* at least 45 s' || fail "e2e reason: $(field "$T/b" e2e reason)"
[ "$(wc -l <"$T/b/steps.jsonl")" -eq 2 ] || fail "--only cuda_tests,e2e ran $(wc -l <"$T/b/steps.jsonl") steps"
if pgrep -f 'gtest_filter=CudaRmsNormTest\.\*:CudaRopeTest' >/dev/null; then
  fail "the cut step's test process is still running"
fi
echo "PASS: gpu_first_run.sh on the emulated GPU"
