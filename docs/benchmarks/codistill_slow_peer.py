#!/usr/bin/env python3
"""Codistillation against the synchronous cohort with one peer slowed to half speed (issue 18).

Two resnet20 peers with MCL in the fit setting of docs/results.md (the first 1,024 Fashion-MNIST training
images, 60 epochs, soft terms ramped over 20, scored on the first 5,000 test images every 10 epochs), run
as a coordinator and two peer processes on a 2-core machine: peer 0 and the coordinator pinned to CPU 0,
peer 1 pinned to CPU 1 beside a busy loop that takes half of that core — half speed. `--mode sync`
exchanges every step's outputs (the barrier: both peers step at the slow one's pace); `--mode codistill`
adds `network.exchange: mesh` and `codistillation: {every: K}`. Writes OUT/MODE-seed-S/ (the run) and
OUT/MODE-seed-S.json: per peer, test top-1, images per second while training (images over the seconds its
steps took, waiting included) and the process's wall time.

    python3 docs/benchmarks/codistill_slow_peer.py --mode codistill --seed 0 --out runs/codistill
    python3 docs/benchmarks/codistill_slow_peer.py --mode sync --seed 0 --epochs 10 --out runs/codistill   # speed only
"""
import argparse, json, os, pathlib, subprocess, sys, time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cohort", default=str(ROOT / ".build/release/cohort"))
    ap.add_argument("--mode", choices=["sync", "codistill"], required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--every", type=int, default=10, help="codistillation.every")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--no-slow", action="store_true", help="leave peer 1 at full speed")
    ap.add_argument("--out", default="runs/codistill")
    a = ap.parse_args()

    out = pathlib.Path(a.out)
    name = f"{a.mode}-seed-{a.seed}" + ("-e%d" % a.epochs if a.epochs != 60 else "") + ("-unslowed" if a.no_slow else "")
    run = out / name
    if (out / f"{name}.json").exists():
        print(f"{out / name}.json exists; remove it to run again")
        return
    if run.exists():
        sys.exit(f"{run} exists from an unfinished run; remove it first")
    out.mkdir(parents=True, exist_ok=True)
    config = out / f"{name}.yaml"
    lines = [
        "data: {dataset: fashion-mnist, train_limit: 1024, test_limit: 5000}",
        f"seed: {a.seed}",
        f"epochs: {a.epochs}",
        "batch_size: 128",
        "sampler: m-per-class",
        "optimizer: {lr: 0.1, momentum: 0.9, weight_decay: 0.0005, nesterov: true}",
        "schedule: {kind: cosine}",
        f"peers: [{{model: {a.model}}}, {{model: {a.model}}}]",
        "mcl: {weights: {logit: 1.0, soft_vcl: 1, soft_icl: 1}, soft_ramp_epochs: 20}",
        "evaluation_every: 10",
        "network: {coordinator: \"tcp://127.0.0.1:*\", stream: \"tcp://127.0.0.1:*\"%s}" % (", exchange: mesh" if a.mode == "codistill" else ""),
    ]
    if a.mode == "codistill":
        lines.append(f"codistillation: {{every: {a.every}}}")
    lines.append(f"output: {run}")
    config.write_text("\n".join(lines) + "\n")

    burner = None if a.no_slow else subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", "while True: pass"])
    ready = out / f"{name}.endpoints.json"
    ready.unlink(missing_ok=True)
    logs = [open(out / f"{name}.{who}.log", "w") for who in ("coordinator", "peer-0", "peer-1")]
    started = time.time()
    coordinator = subprocess.Popen(["taskset", "-c", "0", a.cohort, "coordinator", "--config", str(config), "--threads", "1",
                                    "--ready-file", str(ready)], stdout=logs[0], stderr=subprocess.STDOUT)
    while not ready.exists():
        if coordinator.poll() is not None:
            sys.exit(f"the coordinator stopped; see {logs[0].name}")
        time.sleep(0.2)
    endpoint = json.loads(ready.read_text())["coordinator"]
    peers = [subprocess.Popen(["taskset", "-c", str(rank), a.cohort, "peer", "--config", str(config), "--rank", str(rank), "--threads", "1",
                               "--coordinator", endpoint], stdout=logs[rank + 1], stderr=subprocess.STDOUT) for rank in (0, 1)]
    walls = [None, None]
    while any(w is None for w in walls):
        for rank, p in enumerate(peers):
            if walls[rank] is None and p.poll() is not None:
                walls[rank] = time.time() - started
        time.sleep(0.5)
    status = coordinator.wait()
    if burner:
        burner.kill()
    if status != 0 or any(p.returncode != 0 for p in peers):
        sys.exit(f"a process failed (coordinator {status}, peers {[p.returncode for p in peers]}); see {out}/{name}.*.log")

    summary = json.loads((run / "summary.json").read_text())
    result = {"mode": a.mode, "seed": a.seed, "epochs": a.epochs, "model": a.model, "every": a.every if a.mode == "codistill" else None,
              "slowed": not a.no_slow, "ensemble_top1": summary.get("ensemble_top1"), "peers": []}
    for rank in (0, 1):
        records = [json.loads(l) for l in (run / f"peer-{rank}" / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in records if r.get("kind") == "step"]
        tops = [r["test_top1"] for r in records if r.get("kind") == "epoch" and "test_top1" in r]
        seconds = sum(r["step_seconds"] + r.get("idle_seconds", 0) for r in steps)
        result["peers"].append({"rank": rank, "test_top1": summary["peers"][rank]["test_top1"], "test_top1_every_10": tops,
                                "steps": len(steps), "images_per_second": round(128 * len(steps) / seconds, 2),
                                "median_step_seconds": sorted(r["step_seconds"] for r in steps)[len(steps) // 2],
                                "wall_seconds": round(walls[rank], 1)})
    result["cpu"] = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
