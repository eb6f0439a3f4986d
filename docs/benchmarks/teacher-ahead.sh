#!/bin/bash
# The peers' wait for the teacher (docs/benchmarks.md, "The teacher ahead"): a coordinator pinned to CPU 0
# with a resnet56 teacher (KD), two resnet8 peers pinned to CPU 1, Fashion-MNIST, batch 128, 30 steps; prints
# each peer's median wait for the step message as a share of its step.
#
#   bash docs/benchmarks/teacher-ahead.sh 0     # the teacher in line, between steps
#   bash docs/benchmarks/teacher-ahead.sh 2     # two steps ahead (the default)
#   NO_TEACHER=1 bash docs/benchmarks/teacher-ahead.sh 0   # the baseline without a teacher
set -euo pipefail
AHEAD=${1:-2}
COHORT=$(realpath "${COHORT:-.build/release/cohort}")
WORK=${WORK:-/tmp/cohort-teacher-ahead}
mkdir -p "$WORK"
cd "$WORK"
if [ ! -f teacher/checkpoints/last.safetensors ]; then
    # Only its forward pass's cost matters here, not its accuracy.
    "$COHORT" train --model resnet56 --epochs 1 --train-limit 512 --test-limit 100 --batch 128 --out teacher > teacher.log
fi
TEACHER_LINE=""
[ -z "${NO_TEACHER:-}" ] && TEACHER_LINE="teacher: {model: resnet56, checkpoint: $WORK/teacher/checkpoints/last.safetensors, kd: {}}"
cat > cohort.yaml <<YAML
data: {dataset: fashion-mnist, train_limit: 3840, test_limit: 500}
epochs: 1
batch_size: 128
peers: [{model: resnet8}, {model: resnet8}]
$TEACHER_LINE
network: {coordinator: "tcp://127.0.0.1:*", stream: "tcp://127.0.0.1:*"}
YAML
OUT=$WORK/run-$AHEAD
rm -rf "$OUT" ready.json
taskset -c 0 "$COHORT" coordinator --config cohort.yaml --out "$OUT" --threads 1 --teacher-ahead "$AHEAD" --ready-file ready.json > coordinator.log 2>&1 &
while [ ! -f ready.json ]; do sleep 0.2; done
ENDPOINT=$(python3 -c "import json; print(json.load(open('ready.json'))['coordinator'])")
for rank in 0 1; do
    taskset -c 1 "$COHORT" peer --config cohort.yaml --out "$OUT" --rank $rank --coordinator "$ENDPOINT" --threads 1 > peer-$rank.log 2>&1 &
done
wait
python3 - "$OUT" <<PY
import json, statistics, sys
out = sys.argv[1]
for rank in (0, 1):
    steps = [json.loads(l) for l in open(f"{out}/peer-{rank}/metrics.jsonl") if '"kind":"step"' in l][2:]
    idle = statistics.median(s["idle_seconds"] for s in steps)
    step = statistics.median(s["step_seconds"] for s in steps)
    print(f"peer {rank}: median wait {idle * 1000:.0f} ms, step {step * 1000:.0f} ms, wait share {idle / (idle + step) * 100:.1f}%")
print(f"run: {json.load(open(f'{out}/summary.json'))['seconds']:.1f} s")
PY
