#!/usr/bin/env bash
# Chaos test: a supervised cohort (coordinator, 3 peers, a teacher with KD/CRCD/RRD) under `cohort launch`,
# with SIGKILLs hitting random peers and (every third kill) the coordinator at random times, against an undisturbed run of the
# same configuration. Passes when the disturbed run finishes, every checkpoint on disk verifies, and each
# peer's final test top-1 is within 1.0 point of the undisturbed run's.
#
# Usage: Tests/Chaos/chaos.sh [path/to/cohort] [kills] [seed]   (defaults .build/release/cohort, 6, 1)
# About 10 minutes on 2 cores with a release build. The suite runs a shortened version
# (Tests/ClusterTests/FaultToleranceTests.swift).
set -euo pipefail

COHORT=$(realpath "${1:-.build/release/cohort}")
KILLS=${2:-6}
RANDOM=${3:-1}
WORK=$(mktemp -d /tmp/cohort-chaos.XXXXXX)
echo "chaos: working in $WORK"

"$COHORT" train --model resnet8 --epochs 2 --train-limit 12800 --test-limit 2000 --batch 128 --threads 2 \
    --out "$WORK/teacher" > "$WORK/teacher.log" 2>&1
cat > "$WORK/cohort.yaml" <<YAML
data: {dataset: fashion-mnist, train_limit: 12800, test_limit: 2000}
seed: 11
epochs: 3
batch_size: 64
checkpoint_every: 20
peers: [{model: resnet8}, {model: resnet8}, {model: resnet8}]
teacher:
  model: resnet8
  checkpoint: $WORK/teacher/checkpoints/last.safetensors
  kd: {weight: 0.9}
  crcd: {weight: 1, gradient_weight: 1, negatives: 256}
  rrd: {weight: 1, keys: 4096}
network: {coordinator: "tcp://127.0.0.1:*", stream: "tcp://127.0.0.1:*", timeout: 30, join_timeout: 120,
          heartbeat_interval: 0.5, heartbeat_timeout: 3}
YAML

start=$(date +%s)
echo "chaos: undisturbed run"
"$COHORT" launch --config "$WORK/cohort.yaml" --threads 2 --out "$WORK/calm" > "$WORK/calm.log" 2>&1
calm_seconds=$(( $(date +%s) - start ))

echo "chaos: disturbed run, $KILLS kills"
start=$(date +%s)
"$COHORT" launch --config "$WORK/cohort.yaml" --threads 2 --max-restarts $KILLS --out "$WORK/chaos" > "$WORK/chaos.log" 2>&1 &
launch=$!
victims=(coordinator "--rank 0" "--rank 1" "--rank 2")
done_kills=0
while [ $done_kills -lt "$KILLS" ] && kill -0 $launch 2>/dev/null; do
    sleep $(( 8 + RANDOM % 20 ))
    # Every third kill (the 2nd, 5th, ...) takes the coordinator; the others a random peer.
    if [ $((done_kills % 3)) = 1 ]; then victim=coordinator; else victim=${victims[$((1 + RANDOM % 3))]}; fi
    if [ "$victim" = coordinator ]; then pattern="cohort coordinator .*$WORK/chaos"; else pattern="cohort peer .*$WORK/chaos.*$victim "; fi
    pid=$(pgrep -f -- "$pattern" | head -n 1 || true)
    [ -n "$pid" ] || continue
    steps=$(grep -c '"kind":"step"' "$WORK/chaos/metrics.jsonl" 2>/dev/null || echo 0)
    echo "chaos: kill -9 $victim (pid $pid) after $steps steps"
    kill -9 "$pid"
    done_kills=$((done_kills + 1))
done
status=0
wait $launch || status=$?
chaos_seconds=$(( $(date +%s) - start ))
grep -E "\[launch\]" "$WORK/chaos.log" || true
[ $status = 0 ] || { echo "chaos: the disturbed run failed (exit $status)"; exit 1; }
[ $done_kills -ge "$KILLS" ] || { echo "chaos: the run ended after only $done_kills kills"; exit 1; }

"$COHORT" verify "$WORK/chaos" | tail -n 1
python3 - "$WORK" "$calm_seconds" "$chaos_seconds" <<'PY'
import json, sys
work, calm_s, chaos_s = sys.argv[1], sys.argv[2], sys.argv[3]
calm = json.load(open(f"{work}/calm/summary.json")); chaos = json.load(open(f"{work}/chaos/summary.json"))
print(f"| peer | undisturbed top-1 % | disturbed top-1 % | difference (points) |")
print("|---|---|---|---|")
ok = True
for a, b in zip(calm["peers"], chaos["peers"]):
    d = 100 * (b["test_top1"] - a["test_top1"])
    ok &= abs(d) <= 1.0
    print(f"| {a['rank']} | {100*a['test_top1']:.2f} | {100*b['test_top1']:.2f} | {d:+.2f} |")
print(f"| ensemble | {100*calm['ensemble_top1']:.2f} | {100*chaos['ensemble_top1']:.2f} | {100*(chaos['ensemble_top1']-calm['ensemble_top1']):+.2f} |")
print(f"steps {calm['steps']} / {chaos['steps']}; wall time {calm_s} s undisturbed, {chaos_s} s disturbed")
sys.exit(0 if ok else 1)
PY
echo "chaos: passed"
