#!/usr/bin/env python3
"""Run `cohort bench` and PyTorch's `torch_bench.py` back to back on the same work and print the ratios.

    pip install torch          # once (CPU wheels are enough); several GB
    swift build -c release
    python3 docs/benchmarks/compare_pytorch.py --rounds 2

Each configuration is one training step at batch 128 (forward, cross-entropy, backward, SGD with Nesterov
momentum and weight decay) on random data; the defaults are the four of issue 8: resnet20 at 3x32x32 and
1x28x28, resnet8x4 and resnet32x4 at 3x32x32, at 1 and 2 threads. The goals column checks ms/step at most
0.7x PyTorch's (issue 19; issue 8 asked for 0.8x) and peak RSS at most half.

Each configuration is measured `--rounds` times, alternating Cohort and PyTorch so that both see the same
machine conditions; the table reports the medians and `cohort / pytorch` for ms_per_step and peak RSS.
"""
import argparse, importlib.util, json, os, statistics, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

ap = argparse.ArgumentParser()
ap.add_argument("--cohort", default=os.path.join(ROOT, ".build/release/cohort"))
ap.add_argument("--torch-bench", default=os.path.join(HERE, "torch_bench.py"))
ap.add_argument("--configs", default="resnet20:3x32x32,resnet20:1x28x28,resnet8x4:3x32x32,resnet32x4:3x32x32",
                help="comma-separated MODEL:CxHxW")
ap.add_argument("--threads", default="1,2")
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--json", action="store_true", help="print the raw measurements as JSON lines too")
a = ap.parse_args()

if not os.path.exists(a.cohort):
    sys.exit(f"no Cohort binary at {a.cohort}: run `swift build -c release` first")
# Not imported here: a child's peak RSS (ru_maxrss) starts from this process's size at fork time.
if importlib.util.find_spec("torch") is None:
    sys.exit("PyTorch is not installed: `pip install torch` (CPU wheels suffice), then run this again")

def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])

rows = []
for config in a.configs.split(","):
    model, shape = config.split(":")
    for threads in a.threads.split(","):
        common = ["--model", model, "--input", shape, "--batch", str(a.batch), "--threads", threads,
                  "--steps", str(a.steps)]
        ours, theirs = [], []
        for _ in range(a.rounds):
            ours.append(run([a.cohort, "bench", *common, "--json"]))
            theirs.append(run([sys.executable, a.torch_bench, *common]))
        if a.json:
            for r in ours + theirs:
                print(json.dumps(r))
        ms = statistics.median(r["ms_per_step"] for r in ours)
        tms = statistics.median(r["ms_per_step"] for r in theirs)
        rss = statistics.median(r["peak_rss_mb"] for r in ours)
        trss = statistics.median(r["peak_rss_mb"] for r in theirs)
        rows.append((model, shape, threads, ms, tms, ms / tms, rss, trss, rss / trss))

print(f"torch {theirs[0]['framework']}, batch {a.batch}, {a.steps} timed steps, median of {a.rounds} rounds")
print("| model | input | threads | Cohort ms/step | PyTorch ms/step | ratio | Cohort peak RSS MB | PyTorch peak RSS MB | ratio | goals (<= 0.7, <= 0.5) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for m, s, t, ms, tms, r, rss, trss, rr in rows:
    goals = ("time met" if r <= 0.7 else "time missed") + ", " + ("memory met" if rr <= 0.5 else "memory missed")
    print(f"| {m} | {s} | {t} | {ms:.1f} | {tms:.1f} | {r:.2f} | {rss:.0f} | {trss:.0f} | {rr:.2f} | {goals} |")
