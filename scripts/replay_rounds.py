#!/usr/bin/env python3
"""Round structure of a traced psync-train run, for bench/replay_rounds.

Reads the --trace files of a run's workers (psync-train --trace, or
scripts/netns_crosscheck.sh --trace) and writes, one line per worker, the number of
steps the worker had completed when it took each reply: the boundary at which a
"push+pull" span ended, counted in "compute" spans ended before it. Checks that
each push left at the boundary where the previous reply was taken (psync::Worker
pushes there), so the order is one bench/replay_rounds can replay.

  scripts/replay_rounds.py rounds W0.trace.json W1.trace.json ... > rounds.txt
  scripts/replay_rounds.py even rounds.txt > even.txt      # same steps per worker, spread evenly
  scripts/replay_rounds.py shuffle rounds.txt > shuffled.txt  # each worker's step counts, rounds in a random order
  scripts/replay_rounds.py stats rounds.txt               # steps per round: mean, sd, correlation
  scripts/replay_rounds.py table DIR TAG SEEDS LR [BIN]    # the replay table (below)

`table` takes the traced runs DIR/kernel-TAG-sSEED-w*.trace.json (SEEDS: 1,2,3;
scripts/netns_crosscheck.sh --validate ... --trace --json-dir DIR writes them),
replays each seed's order as it was, evened out and shuffled through BIN
(bench/replay_rounds of a Release build; default build-netns/bench/replay_rounds,
which netns_crosscheck.sh --build makes; the policy is TAG's, e.g. osp20 ->
osp:20), checks that the replay of the run's own order gives the server's series
exactly, and prints a markdown table of the mean test accuracy over windows of
steps applied, per variant.

`even` keeps each worker's round count and total steps and gives every round the
same number of steps (as a simulator with regular steps does); `shuffle` permutes
each worker's steps per round independently (seeded), which keeps each worker's
distribution and breaks the pairing of the two workers' rounds (their
anti-correlation) and any order in time. Rows may differ in length: the last
worker's final rounds close without the workers that have left.
"""
import bisect
import json
import os
import random
import re
import statistics
import subprocess
import sys


def die(msg):
    print(f"replay_rounds.py: {msg}", file=sys.stderr)
    sys.exit(1)


def boundaries(path):
    try:
        events = json.load(open(path))["traceEvents"]
    except (OSError, ValueError, KeyError) as e:
        die(f"{path}: not a psync trace ({e})")
    ends = sorted(e["ts"] + e["dur"] for e in events if e.get("name") == "compute")
    trips = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "push+pull")
    if not ends or not trips:
        die(f"{path}: no compute or push+pull spans (was the run traced with psync-train --trace?)")
    b = []
    for i, (start, end) in enumerate(trips):
        pushed_after = bisect.bisect_right(ends, start)
        expected = b[-1] if b else 1
        if pushed_after != expected:
            die(f"{path}: push {i + 1} left after {pushed_after} steps, not at the previous reply's boundary ({expected})")
        b.append(bisect.bisect_right(ends, end))
    return b


def read(path):
    return [[int(x) for x in line.split()] for line in open(path) if line.strip() and not line.startswith("#")]


def per_round(b):
    return [b[0]] + [b[i] - b[i - 1] for i in range(1, len(b))]


def rows_to_text(rows):
    return "".join(" ".join(str(x) for x in r) + "\n" for r in rows)


def write(rows):
    sys.stdout.write(rows_to_text(rows))


def even(rows):
    return [[round(b[-1] * (i + 1) / len(b)) for i in range(len(b))] for b in rows]


def shuffled(rows):
    rng = random.Random(1)
    out = []
    for b in rows:
        k = per_round(b)
        rest = k[1:]
        rng.shuffle(rest)  # the first round (the join) stays first
        acc, row = 0, []
        for x in [k[0]] + rest:
            acc += x
            row.append(acc)
        out.append(row)
    return out


def replay(binary, rows, policy, lr, seed, at_steps, work):
    rounds = os.path.join(work, "rounds.txt")
    steps = os.path.join(work, "steps.txt")
    open(rounds, "w").write(rows_to_text(rows))
    open(steps, "w").write(" ".join(str(x) for x in at_steps) + "\n")
    out = subprocess.run([binary, "--rounds", rounds, "--policy", policy, "--lr", str(lr), "--seed", str(seed),
                          "--at-steps", steps, "--every", "5"], capture_output=True, text=True)
    if out.returncode != 0:
        die(f"{binary} failed: {out.stderr.strip()}")
    points = {}
    for line in out.stdout.splitlines():
        if line.startswith("#"):
            continue
        _, applied, accuracy = line.split()
        points[int(applied)] = float(accuracy)
    return points


def table(directory, tag, seeds, lr, binary):
    import tempfile
    policy = re.sub(r"^([a-z-]+)(\d+)$", r"\1:\2", tag)
    variants = {"as run": lambda r: r, "evened out": even, "shuffled": shuffled}
    windows = [(lo, lo + 1000) for lo in range(0, 8000, 1000)]
    means = {v: {w: [] for w in windows} for v in variants}
    plateau = {v: [] for v in variants}
    stats = []
    with tempfile.TemporaryDirectory() as work:
        for seed in seeds:
            pattern = re.compile(f"kernel-{tag}-s{seed}-w(\\d+)\\.trace\\.json")
            traces = sorted((f for f in os.listdir(directory) if pattern.fullmatch(f)),
                            key=lambda f: int(pattern.fullmatch(f).group(1)))
            if not traces:
                die(f"no {directory}/kernel-{tag}-s{seed}-w*.trace.json")
            rows = [boundaries(os.path.join(directory, f)) for f in traces]
            server = json.load(open(os.path.join(directory, f"kernel-{tag}-s{seed}-server.json")))
            series = {p["steps"]: p["accuracy"] for p in server["series"]}
            ks = [per_round(b)[1:] for b in rows]
            n = min(len(k) for k in ks)  # the last worker's final rounds, after the others left, are its own
            stats.append((statistics.mean(ks[0]), statistics.pstdev(ks[0]),
                          statistics.correlation(ks[0][:n], ks[1][:n]) if len(ks) == 2 else float("nan")))
            for name, f in variants.items():
                points = replay(binary, f(rows), policy, lr, seed, sorted(series), work)
                if name == "as run":
                    same = sum(1 for s, a in series.items() if s in points and abs(points[s] - a) < 1e-9)
                    if same != len(series):
                        die(f"seed {seed}: the replay of the run's own order matched {same} of {len(series)} series points")
                for w in windows:
                    vals = [a for s, a in points.items() if w[0] <= s < w[1]]
                    if vals:
                        means[name][w].append(statistics.mean(vals))
                vals = [a for s, a in points.items() if 2000 <= s < 5000]
                plateau[name].append(statistics.mean(vals))
    print(f"Seeds {','.join(map(str, seeds))}: each replay of the run's own order gave every point of its server's series exactly.")
    print("Steps per round (worker 0, as run): " + "; ".join(
        f"seed {s}: mean {m:.2f}, sd {sd:.2f}, correlation with worker 1 {c:.2f}" for s, (m, sd, c) in zip(seeds, stats)))
    print()
    print("| steps applied | " + " | ".join(variants) + " |")
    print("|---|" + "---:|" * len(variants))
    for w in windows:
        cells = [f"{statistics.mean(means[v][w]):.4f}" if means[v][w] else "-" for v in variants]
        print(f"| {w[0]:,}-{w[1]:,} | " + " | ".join(cells) + " |")
    cells = [f"**{statistics.mean(plateau[v]):.4f}** ({', '.join(f'{x:.4f}' for x in plateau[v])})" for v in variants]
    print("| 2,000-5,000 (per seed) | " + " | ".join(cells) + " |")


def main():
    if len(sys.argv) < 3:
        die("usage: replay_rounds.py rounds|even|shuffle|stats|table ...")
    verb, files = sys.argv[1], sys.argv[2:]
    if verb == "rounds":
        write(boundaries(f) for f in files)  # rows may differ in length: see the header
    elif verb == "even":
        write(even(read(files[0])))
    elif verb == "shuffle":
        write(shuffled(read(files[0])))
    elif verb == "table":
        if len(files) < 4:
            die("usage: replay_rounds.py table DIR TAG SEEDS LR [BIN]")
        binary = files[4] if len(files) > 4 else "build-netns/bench/replay_rounds"
        table(files[0], files[1], [int(x) for x in files[2].split(",")], float(files[3]), binary)
    elif verb == "stats":
        rows = read(files[0])
        ks = [per_round(b)[1:] for b in rows]
        for w, k in enumerate(ks):
            print(f"worker {w}: {len(k) + 1} rounds, steps per round mean {statistics.mean(k):.2f} sd {statistics.pstdev(k):.2f}")
        if len(ks) == 2:
            n = min(len(k) for k in ks)
            print(f"correlation of the two workers' steps per round: {statistics.correlation(ks[0][:n], ks[1][:n]):.3f}")
    else:
        die(f"unknown verb '{verb}'")


if __name__ == "__main__":
    main()
