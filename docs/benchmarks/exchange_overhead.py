#!/usr/bin/env python3
"""Exchange overhead of a distributed cohort run, from its peers' metrics.

Each peer logs per step (OUTPUT/peer-<rank>/metrics.jsonl):
  exchange_seconds  from sending its outputs to holding all the others', minus the time the coordinator
                    held them waiting for slower peers (the exchange's own cost: encoding, loopback or
                    network transfer, validation, the coordinator's relay);
  step_seconds      the step's wall time from the coordinator's `step` message to the update, minus that
                    wait (forward, exchange, loss, backward, SGD);
  idle_seconds      time waiting for the coordinator (for the next step, and for slower peers).

Usage: exchange_overhead.py OUTPUT [--skip N]   (skips each peer's first N steps, default 5: warm-up)
"""
import json, pathlib, statistics, sys

def main():
    run = pathlib.Path(sys.argv[1])
    skip = int(sys.argv[sys.argv.index("--skip") + 1]) if "--skip" in sys.argv else 5
    rows = []
    for peer in sorted(run.glob("peer-*")):
        steps = [json.loads(l) for l in (peer / "metrics.jsonl").read_text().splitlines()]
        steps = [s for s in steps if s.get("kind") == "step"][skip:]
        ex = [s["exchange_seconds"] * 1000 for s in steps]
        st = [s["step_seconds"] * 1000 for s in steps]
        idle = [s["idle_seconds"] * 1000 for s in steps]
        rows.append((peer.name, len(steps), statistics.median(ex), statistics.mean(ex), max(ex),
                     statistics.median(st), statistics.mean(idle), 100 * sum(ex) / sum(st)))
    print("| peer | steps | exchange median ms | mean ms | max ms | step median ms | idle mean ms | exchange share of step |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %s | %d | %.2f | %.2f | %.2f | %.0f | %.1f | %.2f%% |" % r)

main()
