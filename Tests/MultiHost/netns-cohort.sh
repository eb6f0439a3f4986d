#!/usr/bin/env bash
# Multi-host test: a short distributed cohort across network namespaces.
#
# Makes one namespace per host — the coordinator's and one per peer — each with its own host name and
# address on 10.231.0.0/24, joined by veth pairs to a bridge; runs `cohort coordinator` in the first and
# `cohort peer` in each of the others (over TCP between the addresses, not loopback), watches the log
# stream with `cohort monitor` from the root namespace, and checks that the cohort completed: every
# process exited 0, summary.json was written, and the stream carries every peer's records from its own
# host. Needs root (ip netns) and the fashion-mnist data set.
#
# With `partition`, it also cuts peer 1's link (its veth, down) once the run is under way, until both the
# coordinator and the peer have given up on each other (the heartbeat timeout), then restores it: the coordinator marks the peer absent and goes on, the peer
# rejoins by itself when the link is back, and the run completes.
#
# Usage: Tests/MultiHost/netns-cohort.sh [path/to/cohort] [basic|partition]   (defaults .build/debug/cohort, basic)
set -euo pipefail

COHORT=$(realpath "${1:-.build/debug/cohort}")
SCENARIO=${2:-basic}
PEERS=3
TAG=c$$                                 # interface and namespace names stay under 15 characters
WORK=$(mktemp -d /tmp/cohort-netns.XXXXXX)
SUBNET=10.231.0
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for i in $(seq 0 $PEERS); do ip netns del "${TAG}h$i" 2>/dev/null || true; done
    ip link del "${TAG}br" 2>/dev/null || true
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "netns-cohort: needs root (ip netns)" >&2; exit 1; }
[ -x "$COHORT" ] || { echo "netns-cohort: no cohort executable at $COHORT; run swift build" >&2; exit 1; }

# The network: a bridge in the root namespace (10.231.0.254, for the monitor), one host per namespace.
ip link add "${TAG}br" type bridge
ip addr add "$SUBNET.254/24" dev "${TAG}br"
ip link set "${TAG}br" up
for i in $(seq 0 $PEERS); do
    ns="${TAG}h$i"
    ip netns add "$ns"
    ip link add "${TAG}v$i" type veth peer name eth0 netns "$ns"
    ip link set "${TAG}v$i" master "${TAG}br" up
    ip -n "$ns" addr add "$SUBNET.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
done
COORDINATOR="tcp://$SUBNET.1:5570"
STREAM="tcp://$SUBNET.1:5571"

# Runs a command on "host" i: its namespace, its own host name.
on_host() {
    local i=$1; shift
    ip netns exec "${TAG}h$i" unshare --uts sh -c 'hostname "$0"; exec "$@"' "node-$i" "$@"
}

echo "netns-cohort: training a small teacher"
"$COHORT" train --model resnet8 --epochs 1 --train-limit 512 --test-limit 200 --batch 64 --threads 2 --out "$WORK/teacher" > "$WORK/teacher.log" 2>&1

# Every endpoint is reachable from the other hosts, so the cohort runs with CURVE keys.
"$COHORT" keygen --out "$WORK/keys" coordinator peer-0 peer-1 peer-2 monitor > /dev/null
K="$WORK/keys"

cat > "$WORK/cohort.yaml" <<YAML
data: {dataset: fashion-mnist, train_limit: $([ "$SCENARIO" = partition ] && echo 3840 || echo 640), test_limit: 300}
seed: 5
epochs: 2
batch_size: 64
peers: [{model: resnet8}, {model: resnet8}, {model: resnet14}]
mcl: {embedding_dim: 64}
teacher:
  model: resnet8
  checkpoint: $WORK/teacher/checkpoints/last.safetensors
  kd: {weight: 0.9}
  crcd: {weight: 1, gradient_weight: 1, negatives: 64}
  rrd: {weight: 1, keys: 256}
network: {coordinator: "$COORDINATOR", stream: "$STREAM", timeout: 20, join_timeout: 120, heartbeat_interval: 0.5, heartbeat_timeout: 3}
security:
  coordinator_key: $K/coordinator.pub
  peer_keys: [$K/peer-0.pub, $K/peer-1.pub, $K/peer-2.pub]
  monitor_keys: [$K/monitor.pub]
output: $WORK/run
YAML

echo "netns-cohort: coordinator on node-0 ($COORDINATOR), $PEERS peers on node-1..node-$PEERS"
on_host 0 "$COHORT" coordinator --config "$WORK/cohort.yaml" --key "$K/coordinator.key" --threads 1 > "$WORK/coordinator.log" 2>&1 &
coordinator=$!; pids+=("$coordinator")
"$COHORT" monitor "$STREAM" --json --key "$K/monitor.key" --server-key "$K/coordinator.pub" > "$WORK/monitor.jsonl" 2> "$WORK/monitor.err" &
monitor=$!; pids+=("$monitor")
peer_pids=()
for r in $(seq 0 $((PEERS - 1))); do
    on_host $((r + 1)) "$COHORT" peer --config "$WORK/cohort.yaml" --rank "$r" --coordinator "$COORDINATOR" --key "$K/peer-$r.key" --threads 1 \
        > "$WORK/peer-$r.log" 2>&1 &
    peer_pids+=($!); pids+=($!)
done

if [ "$SCENARIO" = partition ]; then
    # Once 15 steps are done, cut peer 1 (node-2) off until both sides have noticed: the coordinator marks
    # it absent and the peer gives up on the coordinator, each after the 3 s heartbeat timeout. Restoring
    # the link then (not after a fixed time) leaves the peer most of the run to rejoin in, however fast
    # the steps are on this machine.
    for _ in $(seq 1200); do
        kill -0 "$coordinator" 2>/dev/null || break
        steps=$(grep -c '"kind":"step"' "$WORK/run/metrics.jsonl" 2>/dev/null) || true
        [ "${steps:-0}" -ge 15 ] && break
        sleep 0.1
    done
    echo "netns-cohort: cutting node-2's link"
    ip link set "${TAG}v2" down
    for _ in $(seq 300); do
        grep -q "peer 1 is absent" "$WORK/coordinator.log" && grep -q "lost the coordinator" "$WORK/peer-1.log" && break
        sleep 0.1
    done
    ip link set "${TAG}v2" up
    echo "netns-cohort: node-2's link restored after both sides noticed ($(grep -c '"kind":"step"' "$WORK/run/metrics.jsonl" 2>/dev/null || true) steps logged)"
fi

status=0
wait "$coordinator" || { echo "netns-cohort: coordinator failed"; status=1; }
for r in $(seq 0 $((PEERS - 1))); do
    wait "${peer_pids[$r]}" || { echo "netns-cohort: peer $r failed"; status=1; }
done
# The monitor ends with the stream; give it a few seconds after the coordinator, then stop it.
for _ in $(seq 50); do kill -0 "$monitor" 2>/dev/null || break; sleep 0.1; done
kill "$monitor" 2>/dev/null && { echo "netns-cohort: monitor did not see the run finish"; status=1; }
wait "$monitor" 2>/dev/null || true

cat "$WORK/coordinator.log"
[ -f "$WORK/run/summary.json" ] || { echo "netns-cohort: no summary.json"; status=1; }
for r in $(seq 0 $((PEERS - 1))); do
    host="node-$((r + 1))"
    grep -q "\"host\":\"$host\"" "$WORK/run/stream.jsonl" || { echo "netns-cohort: no record from $host in the stream"; status=1; }
    grep -q "peer $r joined.*host=$host" "$WORK/coordinator.log" || { echo "netns-cohort: peer $r did not join from $host"; status=1; }
    [ -f "$WORK/run/peer-$r/checkpoints/last.safetensors" ] || { echo "netns-cohort: peer $r wrote no checkpoint"; status=1; }
done
if [ "$SCENARIO" = partition ]; then
    grep -q "peer 1 is absent" "$WORK/coordinator.log" || { echo "netns-cohort: peer 1 was not marked absent"; status=1; }
    grep -q "peer 1 rejoins at the next step\|peer 1 joined again" "$WORK/run/stream.jsonl" || { echo "netns-cohort: peer 1 did not rejoin"; status=1; }
    grep -q "lost the coordinator; rejoining" "$WORK/peer-1.log" || { echo "netns-cohort: peer 1 did not notice the partition"; status=1; }
    grep -q '"present":\[0,2\]' "$WORK/run/metrics.jsonl" || { echo "netns-cohort: no step without peer 1"; status=1; }
    tail -n 1 "$WORK/run/metrics.jsonl" | grep -q '"kind":"epoch"' || true
    grep '"kind":"step"' "$WORK/run/metrics.jsonl" | tail -n 1 | grep -q '"present":\[0,1,2\]' || { echo "netns-cohort: peer 1 not back by the end"; status=1; }
fi
grep -q '"topic":"status"' "$WORK/monitor.jsonl" || { echo "netns-cohort: the monitor (root namespace) saw no status"; status=1; }
tail -n 1 "$WORK/monitor.jsonl" | grep -q '"topic":"end".*"ok":true' || { echo "netns-cohort: the monitor saw no successful end"; status=1; }

if [ $status = 0 ]; then
    echo "netns-cohort: $SCENARIO passed ($PEERS peers on $PEERS hosts, $(grep -c '"topic":"status"' "$WORK/monitor.jsonl") statuses seen by the monitor)"
    [ "$SCENARIO" = partition ] && grep -E "absent|rejoin|joined again" "$WORK/coordinator.log"
    rm -rf "$WORK"
else
    for r in $(seq 0 $((PEERS - 1))); do echo "--- peer $r"; tail -n 20 "$WORK/peer-$r.log"; done
    echo "netns-cohort: FAILED (files kept in $WORK)"
fi
exit $status
