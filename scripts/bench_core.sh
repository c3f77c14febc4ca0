#!/usr/bin/env bash
# Runs the hot-path micro-benchmarks (bench_core), writes docs/results/core.md and
# refreshes the README's core block. Every figure comes from this run.
#   scripts/bench_core.sh [--native]
set -euo pipefail
cd "$(dirname "$0")/.."
native=OFF
dir=build-bench
if [ "${1:-}" = "--native" ]; then native=ON; dir=build-bench-native; fi
scripts/setup.sh
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DPSYNC_NATIVE="$native" -DPSYNC_BUILD_TESTS=OFF \
      -DPSYNC_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$dir" --target bench_core -j "$(nproc)"
mkdir -p docs/results
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
timeout 900 "$dir/bench/bench_core" --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
  --benchmark_min_time=0.2 --benchmark_format=json > "$tmp"
/usr/bin/python3 - "$tmp" docs/results/core.md "$native" <<'PY'
import json, os, sys, datetime
data = json.load(open(sys.argv[1]))
native = sys.argv[3] == "ON"
med = {b["run_name"]: b for b in data["benchmarks"] if b.get("aggregate_name") == "median"}
def us(b):
    return b["real_time"] * {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[b["time_unit"]]
rows = []
for n in (1024, 100000, 1000000, 10000000):
    r = med.get(f"BM_ApplyRatio/{n}")
    if r:
        ratio = r["eigen_over_raw"]
        rows.append(f"| server apply `+=`, {n:,} floats | {r['eigen_ns']/1e3:.2f} us vs raw loop {r['raw_ns']/1e3:.2f} us | ratio {ratio:.2f} | <= 1.2 | {'met' if ratio <= 1.2 else 'missed'} |")
for n in (1024, 100000, 1000000):
    r = med.get(f"BM_ServerPushPull/{n}/real_time")
    if r:
        goal = "<= 10 us" if n == 1024 else "-"
        verdict = ("met" if us(r) <= 10 else "missed") if n == 1024 else "-"
        rows.append(f"| in-process push+pull through `Server<Asp>`, {n:,} floats, unpinned | {us(r):.2f} us | - | {goal} | {verdict} |")
for name, label in (("BM_ServerPushPullSameCpu", "both threads pinned to one CPU"),
                    ("BM_ServerPushPullSplit", "threads pinned to two CPUs")):
    r = med.get(f"{name}/1024/real_time")
    if r:
        rows.append(f"| in-process push+pull through `Server<Asp>`, 1,024 floats, {label} | {us(r):.2f} us | - | - | - |")
for name, label in (("BM_GradientSoftmax", "softmax 784-10"), ("BM_GradientMlp", "MLP 784-256-128-10")):
    for b in (1, 16, 64, 256):
        r = med.get(f"{name}/{b}")
        if r:
            rows.append(f"| gradient {label}, batch {b} | {us(r):.1f} us | - | - | - |")
ctx = data.get("context", {})
lines = ["### Hot paths (bench_core)", "",
         "| what | median | ratio | goal | verdict |", "|---|---:|---:|---:|---|", *rows, "",
         f"Medians of 5 repetitions, {'-march=native' if native else 'Release -O3'} build, "
         f"{ctx.get('num_cpus', os.cpu_count())} CPUs, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC. "
         f"Command: `scripts/bench_core.sh{' --native' if native else ''}`."]
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
/usr/bin/python3 scripts/update_readme.py docs/results/core.md --block core
