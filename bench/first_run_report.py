#!/usr/bin/env python3
"""Report helper of bench/gpu_first_run.sh: formats nvidia-smi's device line,
the gtest report of the CUDA tests, one steps.jsonl line per step, and
summary.md.

    first_run_report.py smi < nvidia-smi-csv
    first_run_report.py device-section DEVICE.jsonl
    first_run_report.py gtest REPORT.json REASON_FILE
    first_run_report.py step-line NAME STATUS REASON SECONDS LIMIT
    first_run_report.py summary OUT_DIR WORK_DIR MODE BUDGET ELAPSED
"""

import json
import os
import sys

from bench_jsonl import read_jsonl


def smi(_):
    keys = ["name", "compute_cap", "driver", "memory_total", "max_sm_clock", "power_limit", "temperature"]
    for line in sys.stdin:
        values = [v.strip() for v in line.split(",")]
        if len(values) == len(keys):
            row = {"impl": "nvidia-smi"}
            row.update(zip(keys, values))
            print(json.dumps(row))


def device_section(a):
    rows = read_jsonl(a[0])
    if not rows:
        print("No device seen.")
    for r in rows:
        who = "nvidia-smi" if r.get("impl") == "nvidia-smi" else "CUDA runtime"
        print(f"- {who}: " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "impl"))


def gtest(a):
    report, reason_file = a
    with open(report) as f:
        doc = json.load(f)
    passed, failed, skipped = [], [], []
    for suite in doc.get("testsuites", []):
        for t in suite.get("testsuite", []):
            name = f"{suite.get('name')}.{t.get('name')}"
            if t.get("failures"):
                failed.append(name)
            elif t.get("result") == "SKIPPED" or t.get("status") == "NOTRUN":
                skipped.append(name)
            else:
                passed.append(name)
    total = len(passed) + len(failed) + len(skipped)
    print(f"{len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped of {total} CUDA tests.")
    for name in failed:
        print(f"- FAILED {name}")
    if skipped and not passed and not failed:
        why = "every test skipped (no GPU visible to them?)"
    else:
        why = f"{len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped"
    with open(reason_file, "w") as f:
        print(why, file=f)


def step_line(a):
    name, status, reason, seconds, limit = a
    print(json.dumps({"step": name, "status": status, "reason": reason, "seconds": int(seconds),
                      "limit_s": int(limit)}))


def summary(a):
    out, work, mode, budget, elapsed = a
    steps = read_jsonl(os.path.join(out, "steps.jsonl"))
    lines = [f"# GPU first run ({mode})", ""]
    device = [r for r in read_jsonl(os.path.join(out, "device.jsonl")) if r.get("impl") == "ours"]
    if device:
        d = device[0]
        lines.append(f"Device: {d.get('device')}, compute capability {d.get('cc')}, {d.get('sms')} SMs, "
                     f"{d.get('mem_gib')} GiB, CUDA runtime {d.get('cuda_runtime')}, driver {d.get('cuda_driver')}.")
        lines.append("")
    lines.append(f"Budget {budget} s, {elapsed} s used.")
    lines += ["", "| step | status | seconds | limit | reason |", "|---|---|---:|---:|---|"]
    for s in steps:
        lines.append(f"| {s['step']} | {s['status']} | {s['seconds']} | {s['limit_s']} | {s['reason']} |")
    for s in steps:
        path = os.path.join(work, s["step"] + ".md")
        if os.path.exists(path):
            with open(path) as f:
                body = f.read().rstrip()
            if body:
                lines += ["", f"## {s['step']}", "", body]
    tmp = os.path.join(out, "summary.md.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, os.path.join(out, "summary.md"))


if __name__ == "__main__":
    {"smi": smi, "device-section": device_section, "gtest": gtest, "step-line": step_line,
     "summary": summary}[sys.argv[1]](sys.argv[2:])
