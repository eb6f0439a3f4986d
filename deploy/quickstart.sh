#!/usr/bin/env bash
# From a fresh Debian machine with Swift to a real cohort: installs what is missing, builds Cohort (release),
# trains a resnet20 teacher on Fashion-MNIST (all 60,000 training images, one epoch), then runs a cohort of
# two resnet8 peers that learn from each other (MCL) and from the teacher (KD, CRCD with the gradient
# element, RRD) for one epoch over 30,000 of the images, as a coordinator and one process per peer on this
# machine, and prints each peer's, the ensemble's and the teacher's test accuracy (all 10,000 test images).
# About 7 minutes on 2 cores.
#
# Everything goes to runs/quickstart (the teacher is reused when run again). Watch the cohort live from
# another terminal with the `cohort monitor` command it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash deploy/setup.sh
echo "quickstart: building (release)"
swift build -c release --product cohort 2>&1 | tail -n 1
COHORT=.build/release/cohort
OUT=runs/quickstart
if [ ! -f "$OUT/teacher/checkpoints/last.safetensors" ]; then
    echo "quickstart: training the teacher (resnet20, one epoch)"
    rm -rf "$OUT/teacher"
    "$COHORT" train --model resnet20 --dataset fashion-mnist --epochs 1 --batch 128 --seed 0 --out "$OUT/teacher"
fi
mkdir -p "$OUT"
cat > "$OUT/cohort.yaml" <<YAML
# Written by deploy/quickstart.sh; every key: docs/configuration.md.
data: {dataset: fashion-mnist, train_limit: 30000}
seed: 0
epochs: 1
batch_size: 128
peers: [{model: resnet8}, {model: resnet8}]
mcl: {embedding_dim: 128}
teacher:
  model: resnet20
  checkpoint: $OUT/teacher/checkpoints/last.safetensors
  kd: {weight: 0.9, temperature: 4}
  crcd: {weight: 1.0, gradient_weight: 1.0, negatives: 500}
  rrd: {weight: 1.0, keys: 16384}
network: {coordinator: "tcp://127.0.0.1:*", stream: "tcp://127.0.0.1:*"}
output: $OUT/cohort
YAML
rm -rf "$OUT/cohort"
echo "quickstart: the cohort (two resnet8 peers, the teacher's KD + CRCD + RRD, MCL between the peers)"
"$COHORT" launch --config "$OUT/cohort.yaml"
echo
echo "quickstart: results ($OUT/cohort/summary.json), $(( $(date +%s) - start )) s in all"
if command -v python3 > /dev/null; then
    python3 - "$OUT/cohort/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print("| network | test top-1 | test top-5 |")
print("|---|---|---|")
print("| teacher (resnet20) | %.2f%% | |" % (100 * s["teacher_top1"]))
for p in s["peers"]:
    print("| peer %d (%s) | %.2f%% | %.2f%% |" % (p["rank"], p["model"], 100 * p["test_top1"], 100 * p["test_top5"]))
print("| ensemble | %.2f%% | %.2f%% |" % (100 * s["ensemble_top1"], 100 * s["ensemble_top5"]))
PY
else
    cat "$OUT/cohort/summary.json"
fi
