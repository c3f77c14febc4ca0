#!/usr/bin/python3
"""The table of `scripts/netns_crosscheck.sh --validate` (docs/netns-crosscheck.md): reads the
run's JSON in WORK (the processes' server and worker reports, compare_policies' virtual runs)
and writes the markdown to OUT. The script calls it; run it by hand on a kept --json-dir to
render that run again.

usage: netns_validation_table.py WORK OUT POLICIES SEED REPEATS WORKERS TARGET SECONDS RATE
       QDISC_DESC KERNEL WHEN CPUS COMMANDS_FILE INIT_SEED [PROCESSES_WHEN]

PROCESSES_WHEN (netns_crosscheck.sh --reuse): when the reused process runs were made.
"""
import json, os, statistics, sys
(work, out, policies, seed, repeats, workers, target, seconds, rate, qdisc_desc, kernel, when, cpus,
 commands_file, init_seed) = sys.argv[1:16]
processes_when = sys.argv[16] if len(sys.argv) > 16 else ""
reuse_note = (f"; the process runs were made on {processes_when} and reused (`--reuse`): only the virtual side ran now"
              if processes_when else "")
seed, repeats, workers, target = int(seed), int(repeats), int(workers), float(target)

def median_or_none(xs):
    # A seed that never reached the target counts as infinitely late (psync::harness::median_time).
    if not xs:
        return None
    m = statistics.median(float("inf") if x is None or x < 0 else x for x in xs)
    return None if m == float("inf") else m

def fmt(x, d=2):
    return "-" if x is None else f"{x:.{d}f}"

def pct(v, r):
    return "-" if v is None or r is None or r <= 0 else f"{100 * (v - r) / r:+.1f}%"

cal = json.load(open(os.path.join(work, "virtual-calibrated", "paper-like.json")))
# The shared-host run (psync-train reports its CPU; older kept runs do not): the verdict's column.
host_path = os.path.join(work, "virtual-host", "paper-like.json")
host = json.load(open(host_path)) if os.path.exists(host_path) else None
rows, detail, own_ok, host_ok = [], [], True, True
for p in policies.split(","):
    tag = p.replace(":", "")
    real, steps, pushes = [], [], []
    for s in range(seed, seed + repeats):
        srv = json.load(open(os.path.join(work, f"kernel-{tag}-s{s}-server.json")))
        real.append(srv["time_to_target_s"])
        ws = [json.load(open(os.path.join(work, f"kernel-{tag}-s{s}-w{i}.json"))) for i in range(workers)]
        steps.append(1000 * sum(w["compute_s"] for w in ws) / sum(w["steps_done"] for w in ws))
    vc = next(r for r in cal["policies"] if r["policy"] == p)
    vs_doc = json.load(open(os.path.join(work, f"virtual-step-{tag}", "paper-like.json")))
    vs = next(r for r in vs_doc["policies"] if r["policy"] == p)
    vh = next(r for r in host["policies"] if r["policy"] == p) if host else None
    r_med, c_med, s_med = median_or_none(real), median_or_none(vc["time_to_target_seeds"]), median_or_none(vs["time_to_target_seeds"])
    h_med = median_or_none(vh["time_to_target_seeds"]) if vh else None
    def judge(v):
        return "n/a" if r_med is None or v is None else ("pass" if abs(v - r_med) / r_med <= 0.20 else "miss")
    verdict = judge(c_med) + " / " + (judge(h_med) if host else "-")
    own_ok = own_ok and judge(c_med) == "pass"
    host_ok = host_ok and host is not None and judge(h_med) == "pass"
    rows.append((p, vc["learning_rate"], real, r_med, c_med, vh["time_to_target_seeds"] if vh else [], h_med,
                 statistics.median(steps), s_med, verdict))
    # Where the time goes: throughput, steps folded in at the target, round trip per push.
    thr, at_target, comm = [], [], []
    for s in range(seed, seed + repeats):
        srv = json.load(open(os.path.join(work, f"kernel-{tag}-s{s}-server.json")))
        ws = [json.load(open(os.path.join(work, f"kernel-{tag}-s{s}-w{i}.json"))) for i in range(workers)]
        thr.append(sum(w["samples"] for w in ws) / max(w["wall_s"] for w in ws))
        comm.append(1000 * sum(w["comm_s"] for w in ws) / max(1, sum(w["pushes"] for w in ws)))
        t = srv["time_to_target_s"]
        if t is not None and t >= 0:
            at_target.append([x for x in srv["series"] if x["t"] <= t + 1e-9][-1]["steps"])
    detail.append((p, statistics.median(thr), vc["throughput"], vh["throughput"] if vh else None,
                   statistics.median(at_target) if at_target else None, vc["steps_to_target"], statistics.median(comm)))

def seeds(xs):
    return ", ".join("-" if x is None or x < 0 else f"{x:.2f}" for x in xs)

lines = [f"| policy | lr | processes: time to {target:g} per seed (s) | median | virtual, own cores (s) | error | virtual, shared host, per seed (s) | median | error | processes' step (ms) | virtual at that step (s) | error | verdict, within 20% (own cores / shared host) |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for p, lr, real, r_med, c_med, hs, h_med, step, s_med, verdict in rows:
    lines.append(f"| {p} | {lr:g} | {seeds(real)} | {fmt(r_med)} | {fmt(c_med)} | {pct(c_med, r_med)} | "
                 f"{seeds(hs) if host else '-'} | {fmt(h_med)} | {pct(h_med, r_med)} | "
                 f"{step:.3f} | {fmt(s_med)} | {pct(s_med, r_med)} | {verdict} |")
table = "\n".join(lines)
more = ["| policy | processes: samples/s | virtual, own cores: samples/s | virtual, shared host: samples/s | processes: steps folded in at the target | virtual (own cores): steps at the target | processes: push round trip (ms) |",
        "|---|---|---|---|---|---|---|"]
for p, thr, vthr, hthr, steps_at, vsteps, comm in detail:
    more.append(f"| {p} | {thr:.0f} | {vthr:.0f} | {fmt(hthr, 0)} | {fmt(steps_at, 0)} | {fmt(vsteps, 0)} | {comm:.1f} |")
more_table = "\n".join(more)
commands = [c for c in open(commands_file).read().strip().splitlines() if "warmup" not in c]
doc = f"""### Validation: virtual time against processes over kernel-shaped TCP ({workers} workers)

Generated by `scripts/netns_crosscheck.sh --validate {target:g}` (see `docs/netns-crosscheck.md`);
every figure below was measured by that run. Do not edit by hand.

- Date: {when}; kernel: {kernel}; CPUs: {cpus}{reuse_note}
- Cluster: `psync-train`, 1 server and {workers} worker processes, each in its own network namespace;
  MLP 784-256-128-10 on Fashion-MNIST, batch 64, initial model seed {init_seed}, seeds {seed}..{seed + repeats - 1}
  (shards and batch order), each worker trains for {seconds} s
- Links: every worker link and each direction of the server NIC at {int(rate):,} bytes/s ({int(rate) * 8 / 1e9:g} Gbit/s); {qdisc_desc}
- Processes: the server copies the model every 0.25 s; after the run each copy is evaluated on the first
  2,000 test samples; time to target is the first time the mean of the last 3 reached it, counted from
  the moment the last worker joined (`started_s`)
- Virtual: `bench/compare_policies --time virtual`, the same cluster (paper-like scenario with
  `--workers {workers} --straggler 1`, the same link rates and latency, the same seeds, learning rates,
  evaluation and rule, and replies taken at step ends as psync-train's `psync::Worker` takes them,
  `--replies step-end`); once with the step cost {"given" if cal.get("step_cost", "").startswith("given") else "calibrated single-threaded"} ({cal["step_s"] * 1e3:.3f} ms, varying by {100 * cal.get("step_cv", 0):.1f}% from step to step),
  as a real cluster would run it, each process with cores of its own ("own cores"); then on this
  machine's {cpus} cores shared by the {workers + 1} processes ("shared host", `--host-cores {cpus}`), each
  byte of a message costing {fmt(host["cpu_s_per_byte"] * 1e9, 3) if host else "-"} ns of CPU at its sender and again at its receiver
  (`--cpu-ns-per-byte`: what a {workers}-worker BSP calibration run, the warm-up, kept the machine busy
  while it trained (/proc/stat over worker 0's run: every process, the kernel and its soft interrupts,
  which do the packet processing and which no process is charged for), less its steps at the virtual
  step, over the bytes it moved, counted at both ends; the calibration run is not in the table),
  the step calibrated with {cpus} threads computing at once ({host["step_s"] * 1e3 if host else 0:.3f} ms); and once per
  policy with own cores at the step the processes measured (the workers' compute time per step, median
  over the seeds; it includes what the processes and the kernel's TCP take from each other on {cpus} cores)

{table}

Goal (issue 8): within 20%, medians over the seeds. Own cores: {"met for every policy" if own_ok else "not met for every policy"}; shared host: {("met for every policy" if host_ok else "not met for every policy") if host else "not run"}.

Where the time goes (medians over the seeds; samples/s over each run's slowest worker's wall time):

{more_table}

Commands:

```
{chr(10).join(commands)}
```
"""
open(out, "w").write(doc)
print(table)
