#!/usr/bin/env python3
"""The seed papers' comparison at small scale: students alone, with a teacher's KD / CRCD / RRD, and in
MCL cohorts, over several seeds; a markdown table of mean and standard deviation.

    swift build -c release
    python3 docs/results/comparison.py --seeds 0,1,2 --epochs 5            # Fashion-MNIST, everything
    python3 docs/results/comparison.py --dataset cifar100 --data-dir DIR --teacher resnet32x4 --teacher-epochs 30
    python3 docs/results/comparison.py --dry-run                            # list the runs and their commands

Every run is a directory under --out (default runs/comparison): the teacher (`cohort train`), then per
student and method a cohort (`cohort launch --transport inproc`; a student alone or with a teacher is a
cohort of one), one per seed. Finished runs (their summary.json exists) are not run again, so the script
can be stopped and started. All rows use the same epochs, batch, schedule, sampler (m-per-class) and seed
set; only the method differs. The table (--table, default <out>/results.md) gives, per student and
method, the test top-1 of the last and of the best epoch — each network's, averaged over the run's
networks of that student, then mean ± sample standard deviation over the seeds — its gain over the
student alone (the per-seed differences' mean ± standard deviation: a seed gives a student the same initial
weights and batches in every row), the cohorts' ensemble and the wall time; a second table gives the test
top-1 after every epoch. Beside the table: a dot plot of it (.svg, --chart)
and every run's numbers per seed and network (.json).
`cohort report RUN...` draws any of the runs.

Methods (rows), per student S:
  alone           S, cross-entropy only
  kd              S + the teacher's KD (Hinton, T=4, weight 0.9)
  crcd            S + the teacher's CRCD on features and gradient elements
  crcd+kd         S + CRCD + KD (the CRCD repository's training loss)
  rrd             S + the teacher's RRD (FIFO queue)
  rrd+kd          S + RRD + KD
  mcl2, mcl2-nologit, mcl4, mcl4-nologit
                  cohorts of 2 or 4 copies of S with MCL, with or without logit distillation
  mcl2+crcd       2 x S with MCL and the teacher's CRCD
  mcl2+kd         2 x S with MCL and the teacher's KD
  lmcl2           2 x S with layer-wise MCL (auxiliary branches after stages 1 and 2, weights 1, 1, 1)
  mixed           S beside the networks of --mixed-with (default resnet8x4, wrn_16_2) in one MCL cohort;
                  the row scores the S networks

MCL rows take --soft-ramp-epochs and --soft-weight (mcl.soft_ramp_epochs, mcl.weights.soft_vcl/soft_icl).
The teacher may see more data than the students (--teacher-train-limit; 0 = all of it), or be given
(--teacher-checkpoint).
"""
import argparse, json, math, os, pathlib, statistics, subprocess, sys, time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent

METHODS = ["alone", "kd", "crcd", "crcd+kd", "rrd", "rrd+kd", "mcl2-nologit", "mcl2", "mcl4-nologit", "mcl4", "mcl2+crcd",
           "mcl2+kd", "lmcl2", "mixed"]
TEACHER_METHODS = ("kd", "crcd", "crcd+kd", "rrd", "rrd+kd", "mcl2+crcd", "mcl2+kd")


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cohort", default=str(ROOT / ".build/release/cohort"))
    ap.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, mnist, cifar10, cifar100")
    ap.add_argument("--data-dir", help="the data set's files (default: where Cohort looks for it)")
    ap.add_argument("--students", default="resnet8,resnet20")
    ap.add_argument("--teacher", default="resnet56")
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    ap.add_argument("--train-limit", type=int, help="use only the first N training images (smaller budget)")
    ap.add_argument("--test-limit", type=int, help="evaluate on the first N test images only")
    ap.add_argument("--evaluation-every", type=int, default=1, help="epochs between test-set evaluations (the last always)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--teacher-train-limit", type=int,
                    help="training images the teacher sees (default: --train-limit; 0: all of them)")
    ap.add_argument("--teacher-checkpoint", help="use this trained teacher (a --teacher model) instead of training one")
    ap.add_argument("--soft-ramp-epochs", type=float, default=0, help="MCL rows: mcl.soft_ramp_epochs")
    ap.add_argument("--soft-weight", type=float, default=1.0, help="MCL rows: the soft terms' weight (soft_vcl, soft_icl)")
    ap.add_argument("--mixed-with", default="resnet8x4,wrn_16_2", help="the other networks of the mixed row's cohort")
    ap.add_argument("--out", default="runs/comparison")
    ap.add_argument("--table", help="markdown file to write (default <out>/results.md)")
    ap.add_argument("--chart", help="SVG dot plot of the table to write (default: the table's path with .svg)")
    ap.add_argument("--dry-run", action="store_true", help="print the runs without running them")
    a = ap.parse_args()
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.students = a.students.split(",")
    a.methods = a.methods.split(",")
    unknown = [m for m in a.methods if m not in METHODS]
    if unknown:
        ap.error(f"--methods: unknown {unknown}; choose from {METHODS}")
    return a


def configuration(a, student, method, seed, output, teacher_checkpoint):
    """The cohort YAML of one run."""
    copies = 4 if method.startswith("mcl4") else 2 if method.startswith(("mcl2", "lmcl2")) else 1
    models = [student] * copies
    if method == "mixed":
        models = [student] + a.mixed_with.split(",")
    lines = [
        "data: {dataset: %s%s%s%s}" % (a.dataset, f", directory: {a.data_dir}" if a.data_dir else "",
                                       f", train_limit: {a.train_limit}" if a.train_limit else "",
                                       f", test_limit: {a.test_limit}" if a.test_limit else ""),
        f"seed: {seed}",
        f"epochs: {a.epochs}",
        f"batch_size: {a.batch}",
        "sampler: m-per-class",
        "optimizer: {lr: 0.1, momentum: 0.9, weight_decay: 0.0005, nesterov: true}",
        "schedule: {kind: cosine}",
        "peers: [" + ", ".join("{model: %s}" % m for m in models) + "]",
    ]
    if a.evaluation_every > 1:
        lines.append(f"evaluation_every: {a.evaluation_every}")
    if len(models) > 1:
        mcl = "mcl: {weights: {logit: %s, soft_vcl: %g, soft_icl: %g}" % (
            "0" if method.endswith("nologit") else "1.0", a.soft_weight, a.soft_weight)
        if a.soft_ramp_epochs:
            mcl += f", soft_ramp_epochs: {a.soft_ramp_epochs:g}"
        if method == "lmcl2":
            mcl += ", layer_weights: [1, 1, 1]"
        lines.append(mcl + "}")
    losses = {"kd": ["kd"], "crcd": ["crcd"], "crcd+kd": ["crcd", "kd"], "rrd": ["rrd"], "rrd+kd": ["rrd", "kd"], "mcl2+crcd": ["crcd"],
              "mcl2+kd": ["kd"]}.get(method, [])
    if losses:
        lines += ["teacher:", f"  model: {a.teacher}", f"  checkpoint: {teacher_checkpoint}"]
        if "kd" in losses:
            lines.append("  kd: {weight: 0.9, temperature: 4}")
        if "crcd" in losses:
            lines.append("  crcd: {weight: 1.0, gradient_weight: 1.0, negatives: 500}")
        if "rrd" in losses:
            keys = 16384 - 16384 % a.batch
            lines.append("  rrd: {weight: 1.0, keys: %d}" % keys)
    lines.append(f"output: {output}")
    return "\n".join(lines) + "\n"


def run(command, log, dry):
    print(("would run: " if dry else "running: ") + " ".join(command), flush=True)
    if dry:
        return 0.0
    started = time.time()
    with open(log, "w") as f:
        result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        # The run's own error (a missing data set, a bad key) is the last thing in its log: show it here.
        tail = [l for l in pathlib.Path(log).read_text(errors="replace").replace("\r", "\n").splitlines() if l.strip()][-5:]
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n  " + "\n  ".join(tail) + f"\n(whole log: {log})")
    return time.time() - started


def network_scores(run_dir, student):
    """Per network of model `student`: (last test top-1, best test top-1), from its epoch records; the
    cohort's last-epoch ensemble top-1 (None for one network); the run's seconds."""
    summary = json.loads((run_dir / "summary.json").read_text())
    scores = []
    for peer in summary["peers"]:
        if peer["model"] != student:
            continue
        metrics = run_dir / f"peer-{peer['rank']}" / "metrics.jsonl"
        epochs = [json.loads(l) for l in metrics.read_text().splitlines() if '"kind":"epoch"' in l]
        tops = [e["test_top1"] for e in epochs if "test_top1" in e]
        scores.append((tops[-1], max(tops), tops))
    ensemble = summary.get("ensemble_top1") if len(summary["peers"]) > 1 else None
    return scores, ensemble, summary["seconds"]


def chart(results, students, methods, title):
    """An SVG dot plot of the table: per method one row, per student a dot at the mean last-epoch top-1
    with a bar of ± one standard deviation over the seeds, and the student alone as a dashed line."""
    colors = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759"]
    values = [100 * v for r in results.values() for v in r["last"]]
    spreads = [100 * statistics.stdev(r["last"]) if len(r["last"]) > 1 else 0 for r in results.values()]
    lo = min(values) - max(spreads + [0]) - 0.2
    hi = max(values) + max(spreads + [0]) + 0.2
    step = next(s for s in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10, 20) if (hi - lo) / s <= 10)
    lo, hi = step * math.floor(lo / step), step * math.ceil(hi / step)
    left, right, top, row = 130, 30, 62, 26
    width, height = 720, top + row * len(methods) + 60
    x = lambda v: left + (v - lo) / (hi - lo) * (width - left - right)
    esc = lambda t: t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{esc(title)}</text>']
    bottom = top + row * len(methods)
    tick = lo
    while tick <= hi + 1e-9:
        out.append(f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top - 8}" y2="{bottom}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x(tick):.1f}" y="{bottom + 16}" text-anchor="middle">{tick:g}</text>')
        tick += step
    out.append(f'<text x="{(left + width - right) / 2}" y="{bottom + 36}" text-anchor="middle">'
               'last-epoch test top-1 % (mean ± standard deviation over the seeds)</text>')
    for i, method in enumerate(methods):
        y = top + row * i + row / 2
        out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{esc(method)}</text>')
    for k, student in enumerate(students):
        color = colors[k % len(colors)]
        offset = (k - (len(students) - 1) / 2) * 7
        alone = results.get((student, "alone"))
        if alone:
            a = 100 * statistics.mean(alone["last"])
            out.append(f'<line x1="{x(a):.1f}" x2="{x(a):.1f}" y1="{top - 8}" y2="{bottom}" stroke="{color}" stroke-dasharray="4 3"/>')
        for i, method in enumerate(methods):
            r = results.get((student, method))
            if not r:
                continue
            y = top + row * i + row / 2 + offset
            m = 100 * statistics.mean(r["last"])
            sd = 100 * statistics.stdev(r["last"]) if len(r["last"]) > 1 else 0
            out.append(f'<line x1="{x(m - sd):.1f}" x2="{x(m + sd):.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}" stroke-width="2"/>')
            out.append(f'<circle cx="{x(m):.1f}" cy="{y:.1f}" r="4" fill="{color}"><title>{esc(student)} {esc(method)}: '
                       f'{m:.2f} ± {sd:.2f}</title></circle>')
        lx = left + 160 * k
        out.append(f'<circle cx="{lx}" cy="{top - 22}" r="4" fill="{color}"/>')
        out.append(f'<text x="{lx + 8}" y="{top - 18}">{esc(student)} (dashed: alone)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def duration(seconds):
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def mean_std(values):
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main():
    a = parse()
    cohort = os.path.abspath(a.cohort)
    if not a.dry_run and not os.path.exists(cohort):
        sys.exit(f"no Cohort binary at {cohort}: run `swift build -c release` first")
    out = pathlib.Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    teacher_dir = out / f"teacher-{a.teacher}"
    teacher_checkpoint = pathlib.Path(a.teacher_checkpoint).resolve() if a.teacher_checkpoint else teacher_dir / "checkpoints/last.safetensors"
    teacher_limit = a.train_limit if a.teacher_train_limit is None else a.teacher_train_limit
    needs_teacher = any(m in TEACHER_METHODS for m in a.methods)
    wall = {}
    if needs_teacher and not teacher_checkpoint.exists():
        command = [cohort, "train", "--model", a.teacher, "--dataset", a.dataset, "--epochs", str(a.teacher_epochs),
                   "--batch", str(a.batch), "--schedule", "cosine", "--seed", "0", "--threads", str(a.threads),
                   "--out", str(teacher_dir)]
        if a.data_dir:
            command += ["--data-dir", a.data_dir]
        if teacher_limit:
            command += ["--train-limit", str(teacher_limit)]
        if a.test_limit:
            command += ["--test-limit", str(a.test_limit)]
        wall["teacher"] = run(command, out / "teacher.log", a.dry_run)

    for student in a.students:
        for method in a.methods:
            for seed in a.seeds:
                run_dir = out / student / method / f"seed-{seed}"
                if (run_dir / "summary.json").exists():
                    continue
                config = run_dir.parent / f"seed-{seed}.yaml"
                if not a.dry_run:
                    run_dir.mkdir(parents=True, exist_ok=True)
                    config.write_text(configuration(a, student, method, seed, run_dir, teacher_checkpoint))
                run([cohort, "launch", "--config", str(config), "--transport", "inproc", "--threads", str(a.threads)],
                    run_dir.parent / f"seed-{seed}.log", a.dry_run)
    if a.dry_run:
        return

    teacher_top1 = None
    teacher_metrics = teacher_checkpoint.parent.parent / "metrics.jsonl"
    if needs_teacher and teacher_metrics.exists():
        epochs = [json.loads(l) for l in teacher_metrics.read_text().splitlines() if '"kind":"epoch"' in l]
        teacher_top1 = epochs[-1]["test_top1"] if epochs else None
    results = {}
    for student in a.students:
        for method in a.methods:
            r = {"last": [], "best": [], "curve": [], "ensemble": [], "seconds": [], "networks": 0, "per_seed": {}}
            for seed in a.seeds:
                scores, ensemble, s = network_scores(out / student / method / f"seed-{seed}", student)
                r["networks"] = len(scores)
                r["last"].append(statistics.mean(x[0] for x in scores))
                r["best"].append(statistics.mean(x[1] for x in scores))
                r["curve"].append([statistics.mean(x[2][e] for x in scores) for e in range(min(len(x[2]) for x in scores))])
                if ensemble is not None:
                    r["ensemble"].append(ensemble)
                r["seconds"].append(s)
                r["per_seed"][seed] = {"networks_last_top1": [x[0] for x in scores], "networks_best_top1": [x[1] for x in scores],
                                       "ensemble_top1": ensemble, "seconds": s}
            results[(student, method)] = r
    rows = ["| student | method | networks per run | last-epoch test top-1 % | vs alone (paired by seed) | best-epoch test top-1 % | "
            "ensemble (last epoch) % | wall time per run |",
            "|---|---|---|---|---|---|---|---|"]
    for student in a.students:
        alone = results.get((student, "alone"))
        for method in a.methods:
            r = results[(student, method)]
            # Paired by seed: the same seed gives the student the same initial weights and batches.
            gain = ""
            if alone and method != "alone":
                differences = [100 * (x - y) for x, y in zip(r["last"], alone["last"])]
                gain = f"{statistics.mean(differences):+.2f}" + (f" ± {statistics.stdev(differences):.2f}" if len(differences) > 1 else "")
            rows.append(f"| {student} | {method} | {r['networks']} | {mean_std(r['last'])} | {gain} | {mean_std(r['best'])} | "
                        f"{mean_std(r['ensemble']) if r['ensemble'] else ''} | {duration(statistics.mean(r['seconds']))} |")
    header = (f"{a.dataset}, {a.epochs} epochs, batch {a.batch}, seeds {','.join(map(str, a.seeds))}"
              + (f", first {a.train_limit} training images" if a.train_limit else "")
              + (f", first {a.test_limit} test images" if a.test_limit else "")
              + (f"; teacher {a.teacher} ({a.teacher_epochs} epochs): test top-1 {100 * teacher_top1:.2f}%" if teacher_top1 else "")
              + ". Each cell: per run, the mean over its networks of the student model; then mean ± standard deviation over the seeds.\n\n")
    epochs = min(len(c) for r in results.values() for c in r["curve"])
    # The evaluated epochs: every --evaluation-every-th and the last.
    evaluated = [e + 1 for e in range(a.epochs) if (e + 1) % a.evaluation_every == 0 or e + 1 == a.epochs]
    by_epoch = ["| student | method | " + " | ".join(f"epoch {evaluated[e] if e < len(evaluated) else e + 1}" for e in range(epochs)) + " |",
                "|---|---|" + "---|" * epochs]
    for student in a.students:
        for method in a.methods:
            curves = results[(student, method)]["curve"]
            by_epoch.append(f"| {student} | {method} | " + " | ".join(
                f"{100 * statistics.mean(c[e] for c in curves):.2f}" for e in range(epochs)) + " |")
    table = (header + "\n".join(rows) + "\n\nTest top-1 % after each evaluated epoch (mean over the networks and the seeds):\n\n"
             + "\n".join(by_epoch) + "\n")
    path = pathlib.Path(a.table) if a.table else out / "results.md"
    path.write_text(table)
    print(table)
    print(f"wrote {path}")
    svg = pathlib.Path(a.chart) if a.chart else path.with_suffix(".svg")
    svg.write_text(chart(results, a.students, a.methods,
                         f"{a.dataset}: {', '.join(a.students)}, {a.epochs} epochs, {len(a.seeds)} seeds"))
    print(f"wrote {svg}")
    raw = path.with_suffix(".json")
    raw.write_text(json.dumps({"settings": {k: v for k, v in vars(a).items() if k not in ("cohort",)},
                               "teacher_top1": teacher_top1,
                               "runs": {f"{st}/{m}": {str(seed): v for seed, v in r["per_seed"].items()}
                                        for (st, m), r in results.items()}}, indent=1))
    print(f"wrote {raw}")


if __name__ == "__main__":
    main()
