#!/usr/bin/env bash
# Measures psync's TCP push/pull over loopback against the machine's own loopback
# reference (iperf3, same run), writes docs/results/tcp.md and refreshes the
# README's TCP block. Every figure comes from this run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh iperf3
dir=build-bench
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DPSYNC_BUILD_TESTS=OFF -DPSYNC_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$dir" --target bench_tcp -j "$(nproc)"
out=docs/results
mkdir -p "$out"
tmp=$(mktemp -d)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

port=$((20000 + RANDOM % 20000))
for len in 128K 1M; do
  iperf3 -s -1 -p "$port" >/dev/null 2>&1 &
  server_pid=$!
  sleep 0.5
  timeout 30 iperf3 -c 127.0.0.1 -p "$port" -t 5 -l "$len" -J > "$tmp/iperf-$len.json"
  wait "$server_pid" || true
  server_pid=""
done
timeout 900 "$dir/bench/bench_tcp" --real-server=off --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
  --benchmark_min_time=0.5 --benchmark_format=json > "$tmp/bench.json"
# The real server path (Server<Flat, Asp/Bsp>, copy per reply against shared snapshots, interleaved).
timeout 900 "$dir/bench/bench_tcp" --real-server=only --reps=5 > "$tmp/real.md"
/usr/bin/python3 - "$tmp" "$out/tcp.md" <<'PY'
import json, os, subprocess, sys, datetime
tmp, dest = sys.argv[1], sys.argv[2]
bench = json.load(open(f"{tmp}/bench.json"))
def iperf(len_):
    j = json.load(open(f"{tmp}/iperf-{len_}.json"))
    return j["end"]["sum_received"]["bits_per_second"] / 8
ref = {k: iperf(k) for k in ("128K", "1M")}
med = {}
for b in bench["benchmarks"]:
    if b.get("aggregate_name") == "median":
        med[b["run_name"]] = b
def ms(name):
    b = med.get(name)
    if not b: return None
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
    return b["real_time"] * scale
goals = {1000: 0.1, 1000000: 3.0, 10000000: 50.0}
rows = []
for n in (1000, 100000, 1000000, 10000000):
    push, pull, rt = ms(f"push/floats:{n}/manual_time"), ms(f"pull/floats:{n}/real_time"), ms(f"push_pull/floats:{n}/real_time")
    gbps = (2 * 4 * n / (rt / 1e3)) / 1e9 if rt else None
    goal = goals.get(n)
    verdict = "-" if goal is None or rt is None else ("met" if rt <= goal else "missed")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    ref_gbps = ref["1M"] / 1e9
    goal_s = "-" if goal is None else f"<= {goal:g}"
    gbps_s = "-" if gbps is None else f"{gbps:.2f}"
    ratio_s = "-" if gbps is None else f"{gbps / ref_gbps:.2f}"
    rows.append(f"| {n:,} | {fmt(push)} | {fmt(pull)} | {fmt(rt)} | {goal_s} | {verdict} | {gbps_s} | {ratio_s} |")
four = ms("push_pull/floats:1000000/real_time/threads:4")
lines = [
    "### TCP over loopback, transport only (echo server: one worker, one server)",
    "",
    "| floats | push ms | pull ms | push+pull ms | goal | verdict | payload GB/s (both ways) | ratio to iperf3 -l 1M |",
    "|---:|---:|---:|---:|---:|---|---:|---:|",
    *rows,
    "",
    "4 workers pushing and pulling 1M floats each at once (`push_pull/floats:1000000/threads:4`, Google Benchmark real time per iteration): " + ("-" if four is None else f"{four:.3f}") + f" ms; one worker alone: {ms('push_pull/floats:1000000/real_time'):.3f} ms.",
    "",
    f"Loopback reference, same run: `iperf3 -c 127.0.0.1 -t 5 -l 128K` {ref['128K']/1e9:.2f} GB/s, `-l 1M` {ref['1M']/1e9:.2f} GB/s.",
    f"Medians of 5 repetitions (`bench_tcp`), {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end. Command: `scripts/bench_tcp.sh`.",
    "",
    "### TCP over loopback, the real server path",
    "",
    *[l.rstrip("\n") for l in open(f"{tmp}/real.md") if l.strip()],
    "",
    "Command: `bench_tcp --real-server=only --reps=5` (same run).",
]
open(dest, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
/usr/bin/python3 scripts/update_readme.py "$out/tcp.md" --block tcp
