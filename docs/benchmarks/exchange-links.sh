#!/bin/bash
# The coordinator's exchange over an emulated link (issue 18's baseline): the coordinator's side of
# `cohort bench --exchange` in network namespace cx-coord, N synthetic peers (real tensor sizes, no
# training) in cx-peers, joined by one veth pair shaped with `tc tbf` to RATE in each direction — the
# coordinator's link. Prints one JSON line per N. Needs root (ip netns, tc).
#
#   RATE=1gbit PEERS_LIST="2 4 8 16" CLASSES=100 bash docs/benchmarks/exchange-links.sh
set -euo pipefail
COHORT=${COHORT:-.build/release/cohort}
RATE=${RATE:-1gbit}
PEERS_LIST=${PEERS_LIST:-"2 4 8 16"}
CLASSES=${CLASSES:-100}
STEPS=${STEPS:-5}
COHORT=$(realpath "$COHORT")

cleanup() { ip netns del cx-coord 2>/dev/null || true; ip netns del cx-peers 2>/dev/null || true; }
trap cleanup EXIT
cleanup
ip netns add cx-coord
ip netns add cx-peers
ip link add cx0 type veth peer name cx1
ip link set cx0 netns cx-coord
ip link set cx1 netns cx-peers
ip -n cx-coord addr add 10.232.0.1/24 dev cx0
ip -n cx-peers addr add 10.232.0.2/24 dev cx1
for ns in cx-coord cx-peers; do ip -n $ns link set lo up; done
ip -n cx-coord link set cx0 up
ip -n cx-peers link set cx1 up
# A token bucket at RATE each way (burst: at least RATE / HZ).
tc -n cx-coord qdisc add dev cx0 root tbf rate "$RATE" burst 1mb latency 200ms
tc -n cx-peers qdisc add dev cx1 root tbf rate "$RATE" burst 1mb latency 200ms

port=5580
for n in $PEERS_LIST; do
    ip netns exec cx-coord "$COHORT" bench --exchange-bind "tcp://10.232.0.1:$port" --peers "$n" --classes "$CLASSES" --steps "$STEPS" --json > /dev/null &
    coordinator=$!
    sleep 0.5
    ip netns exec cx-peers "$COHORT" bench --exchange-connect "tcp://10.232.0.1:$port" --peers "$n" --classes "$CLASSES" --steps "$STEPS" --json \
        | sed "s/}\$/,\"rate\":\"$RATE\"}/"
    wait $coordinator
    port=$((port + 1))
done
