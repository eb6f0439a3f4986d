#!/usr/bin/env python3
"""The official PyTorch implementations beside Cohort, method by method: a markdown table of mean ± sd over
seeds of each run's last-epoch test top-1 (the mean over its networks), and their difference.

    python3 docs/results/official/side_by_side.py --repos /tmp/official \\
        --train-limit 7680 --test-limit 5000 --epochs 3 --seeds 0,1,2 --student resnet8
    python3 docs/results/official/side_by_side.py --repos /tmp/official --dry-run     # list the runs

Each official run is `run_official.py` for one method and seed, written to
<out>/<student>/<method>/seed-<s>.json (default out: runs/official); a result that exists is not run again,
so the script can be stopped and started. Cohort's numbers come from the runs of docs/results/comparison.py
(<cohort-runs>/<student>/<method>/seed-<s>/summary.json and peer-*/metrics.jsonl, default runs/comparison),
else from docs/results/fashion-mnist.json when its settings are the same; a method Cohort has no runs for
shows "–" (run comparison.py with the same --train-limit/--test-limit/--epochs/--methods first). The teacher
rows use Cohort's teacher (default <cohort-runs>/teacher-<arch>/checkpoints/last.safetensors), so both
implementations distil the same network.
"""
import argparse, json, math, os, pathlib, re, statistics, subprocess, sys, time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent
METHODS = ["alone", "kd", "crcd", "crcd+kd", "rrd", "rrd+kd", "mcl2-nologit", "mcl2", "mcl4-nologit", "mcl4", "lmcl2", "mcl2+kd"]
TEACHER_METHODS = ("kd", "crcd", "crcd+kd", "rrd", "rrd+kd", "mcl2+kd", "mcl2+crcd")
REPOS = {"repdistiller": "RepDistiller", "mcl": "MCL", "lmcl": "L-MCL", "crcd": "CRCD", "distillers": "distillers"}


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated; also mcl2+crcd")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--teacher-arch", default="resnet56")
    ap.add_argument("--teacher-checkpoint", help="default: <cohort-runs>/teacher-<arch>/checkpoints/last.safetensors")
    ap.add_argument("--train-limit", type=int, default=7680)
    ap.add_argument("--test-limit", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--soft-weight", type=float, default=1.0, help="passed to run_official.py (MCL rows)")
    ap.add_argument("--soft-ramp-epochs", type=float, default=0.0, help="passed to run_official.py (MCL rows)")
    ap.add_argument("--repos", default="/tmp/official", help="directory holding the clones: " + ", ".join(REPOS.values()))
    for key, name in REPOS.items():
        ap.add_argument(f"--{key}-repo", help=f"the {name} clone (default <repos>/{name})")
    ap.add_argument("--out", default=str(ROOT / "runs/official"))
    ap.add_argument("--cohort-runs", default=str(ROOT / "runs/comparison"), help="comparison.py's --out")
    ap.add_argument("--cohort-json", default=str(HERE.parent / "fashion-mnist.json"), help="comparison.py's per-seed numbers")
    ap.add_argument("--table", help="markdown file to write (default <out>/<student>/side_by_side[-probe].md)")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    a.methods = a.methods.split(",")
    a.seeds = [int(s) for s in a.seeds.split(",")]
    for key, name in REPOS.items():
        if getattr(a, f"{key}_repo") is None:
            setattr(a, f"{key}_repo", os.path.join(a.repos, name))
    if a.teacher_checkpoint is None:
        a.teacher_checkpoint = os.path.join(a.cohort_runs, f"teacher-{a.teacher_arch}", "checkpoints/last.safetensors")
    a.probe = "" if a.soft_weight == 1 and a.soft_ramp_epochs == 0 else f"soft-w{a.soft_weight:g}-ramp{a.soft_ramp_epochs:g}"
    return a


def official_path(a, method, seed):
    base = pathlib.Path(a.out) / a.student
    if a.probe:
        base = base / a.probe
    return base / method / f"seed-{seed}.json"


def command(a, method, seed, out):
    c = [sys.executable, str(HERE / "run_official.py"), "--method", method, "--seed", str(seed), "--student", a.student,
         "--train-limit", str(a.train_limit), "--test-limit", str(a.test_limit), "--epochs", str(a.epochs),
         "--batch-size", str(a.batch_size), "--threads", str(a.threads), "--out", str(out),
         "--soft-weight", str(a.soft_weight), "--soft-ramp-epochs", str(a.soft_ramp_epochs)]
    for key in REPOS:
        c += [f"--{key}-repo", getattr(a, f"{key}_repo")]
    if method in TEACHER_METHODS:
        c += ["--teacher-arch", a.teacher_arch, "--teacher-checkpoint", a.teacher_checkpoint]
    return c


def run_official(a):
    for method in a.methods:
        for seed in a.seeds:
            out = official_path(a, method, seed)
            if out.exists():
                continue
            c = command(a, method, seed, out)
            print(("would run: " if a.dry_run else "running: ") + " ".join(c), flush=True)
            if a.dry_run:
                continue
            if method in TEACHER_METHODS and not os.path.exists(a.teacher_checkpoint):
                sys.exit(f"no teacher at {a.teacher_checkpoint}: run docs/results/comparison.py (it trains the teacher) "
                         "or pass --teacher-checkpoint")
            out.parent.mkdir(parents=True, exist_ok=True)
            log = out.with_suffix(".log")
            started = time.time()
            with open(log, "w") as f:
                result = subprocess.run(c, stdout=f, stderr=subprocess.STDOUT)
            if result.returncode != 0:
                tail = [l for l in log.read_text(errors="replace").splitlines() if l.strip()][-8:]
                sys.exit(f"failed ({result.returncode}): {' '.join(c)}\n  " + "\n  ".join(tail) + f"\n(whole log: {log})")
            print(f"  done in {time.time() - started:.0f} s", flush=True)


def official_scores(a, method):
    """Per seed: (mean over networks of the last-epoch top-1, ensemble top-1 or None)."""
    scores = {}
    for seed in a.seeds:
        p = official_path(a, method, seed)
        if p.exists():
            r = json.loads(p.read_text())
            scores[seed] = (r["mean_final_top1"], r.get("ensemble_top1"))
    return scores


def cohort_settings_differ(a, run_yaml):
    """What in a comparison.py cohort file differs from this table's setting (empty: nothing)."""
    if not run_yaml.exists():
        return []
    text = run_yaml.read_text()
    want = {"train_limit": a.train_limit, "test_limit": a.test_limit, "epochs": a.epochs, "batch_size": a.batch_size}
    found = {}
    for key in want:
        m = re.search(rf"\b{key}: (\d+)", text)
        found[key] = int(m.group(1)) if m else None
    differ = [f"{k} {found[k]} (want {v})" for k, v in want.items() if found[k] is not None and found[k] != v]
    ramp = re.search(r"soft_ramp_epochs: ([0-9.]+)", text)
    ramp = float(ramp.group(1)) if ramp else 0.0
    if ramp != a.soft_ramp_epochs:
        differ.append(f"soft_ramp_epochs {ramp:g} (want {a.soft_ramp_epochs:g})")
    soft = re.search(r"soft_vcl: ([0-9.eE+-]+)", text)
    if soft and float(soft.group(1)) != a.soft_weight:
        differ.append(f"soft_vcl {soft.group(1)} (want {a.soft_weight:g})")
    return differ


def cohort_scores(a, method, warnings):
    """Per seed, from comparison.py's run directories, else from its per-seed JSON when its settings match."""
    scores = {}
    for seed in a.seeds:
        run_dir = pathlib.Path(a.cohort_runs) / a.student / method / f"seed-{seed}"
        summary = run_dir / "summary.json"
        if not summary.exists():
            continue
        differ = cohort_settings_differ(a, run_dir.parent / f"seed-{seed}.yaml")
        if differ:
            warnings.append(f"Cohort {method} seed {seed} left out: {', '.join(differ)}")
            continue
        s = json.loads(summary.read_text())
        tops = []
        for peer in s["peers"]:
            if peer["model"] != a.student:
                continue
            metrics = run_dir / f"peer-{peer['rank']}" / "metrics.jsonl"
            epochs = [json.loads(l) for l in metrics.read_text().splitlines() if '"kind":"epoch"' in l]
            tops.append(epochs[-1]["test_top1"])
        if tops:
            scores[seed] = (statistics.mean(tops), s.get("ensemble_top1") if len(s["peers"]) > 1 else None)
    if scores or a.probe:
        return scores
    path = pathlib.Path(a.cohort_json)
    if path.exists():
        data = json.loads(path.read_text())
        st = data.get("settings", {})
        same = (st.get("train_limit") == a.train_limit and st.get("test_limit") == a.test_limit
                and st.get("epochs") == a.epochs and st.get("batch") == a.batch_size)
        runs = data.get("runs", {}).get(f"{a.student}/{method}", {})
        if same:
            for seed in a.seeds:
                r = runs.get(str(seed))
                if r:
                    scores[seed] = (statistics.mean(r["networks_last_top1"]), r.get("ensemble_top1"))
    return scores


def mean_sd(values):
    values = [100 * v for v in values]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values):
    m, sd = mean_sd(values)
    if m is None:
        return "–"
    return f"{m:.2f}" if len(values) == 1 else f"{m:.2f} ± {sd:.2f}"


def difference(x, y):
    """Difference of the means, ± the standard deviation of that difference, sqrt(sd_x^2/n_x + sd_y^2/n_y)."""
    if not x or not y:
        return "–"
    mx, sx = mean_sd(x)
    my, sy = mean_sd(y)
    sd = math.sqrt(sx ** 2 / len(x) + sy ** 2 / len(y))
    return f"{mx - my:+.2f} ± {sd:.2f}"


def paired_gain(scores, alone):
    """Gain over the student alone of the same implementation, paired by seed: mean ± sd of the differences."""
    seeds = [s for s in scores if s in alone]
    if not seeds:
        return "–"
    d = [100 * (scores[s][0] - alone[s][0]) for s in seeds]
    return f"{statistics.mean(d):+.2f}" + (f" ± {statistics.stdev(d):.2f}" if len(d) > 1 else "")


def table(a):
    warnings = []
    rows = ["| method | official PyTorch % | Cohort % | official − Cohort (± sd of the difference) | n seeds (official / Cohort) "
            "| official vs alone | Cohort vs alone |",
            "|---|---|---|---|---|---|---|"]
    ensembles = ["| method | official ensemble % | Cohort ensemble % | official − Cohort |", "|---|---|---|---|"]
    official_alone = official_scores(a, "alone")
    cohort_alone = cohort_scores(a, "alone", warnings)
    raw = {}
    for method in a.methods:
        o = official_scores(a, method)
        c = cohort_scores(a, method, warnings)
        raw[method] = {"official": {str(k): v for k, v in o.items()}, "cohort": {str(k): v for k, v in c.items()}}
        ov, cv = [v[0] for v in o.values()], [v[0] for v in c.values()]
        gain_o = paired_gain(o, official_alone) if method != "alone" else ""
        gain_c = paired_gain(c, cohort_alone) if method != "alone" else ""
        rows.append(f"| {method} | {cell(ov)} | {cell(cv)} | {difference(ov, cv)} | {len(ov)} / {len(cv)} | {gain_o} | {gain_c} |")
        oe = [v[1] for v in o.values() if v[1] is not None]
        ce = [v[1] for v in c.values() if v[1] is not None]
        if oe or ce:
            ensembles.append(f"| {method} | {cell(oe)} | {cell(ce)} | {difference(oe, ce)} |")
    header = (f"{a.student} on Fashion-MNIST: first {a.train_limit} training images, first {a.test_limit} test images, "
              f"{a.epochs} epochs, batch {a.batch_size}, seeds {','.join(map(str, a.seeds))}"
              + (f"; soft terms x{a.soft_weight:g}, ramp {a.soft_ramp_epochs:g} epochs" if a.probe else "")
              + ". Each cell: per run, the mean over its networks of the last-epoch test top-1; then mean ± sample "
              "standard deviation over the seeds. The difference's ± is the standard deviation of a difference of two "
              "independent means (the implementations' initial weights differ, so seeds do not pair across them); "
              "the gains over the student alone are paired by seed within each implementation.\n\n")
    text = header + "\n".join(rows) + "\n"
    if len(ensembles) > 2:
        text += "\nCohorts' ensembles (sum of the networks' logits), last epoch:\n\n" + "\n".join(ensembles) + "\n"
    if warnings:
        text += "\n" + "\n".join(f"- {w}" for w in warnings) + "\n"
    return text, raw


def main():
    a = parse()
    run_official(a)
    if a.dry_run:
        return
    text, raw = table(a)
    path = pathlib.Path(a.table) if a.table else pathlib.Path(a.out) / a.student / (
        "side_by_side" + (f"-{a.probe}" if a.probe else "") + ".md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.with_suffix(".json").write_text(json.dumps({"settings": {k: v for k, v in vars(a).items()}, "runs": raw}, indent=1))
    print(text)
    print(f"wrote {path} and {path.with_suffix('.json')}")


if __name__ == "__main__":
    main()
