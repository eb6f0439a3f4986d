#!/bin/bash
# The cohort exchange over emulated links (issue 18): the coordinator's side of `cohort bench --exchange`
# and each of N synthetic peers (real tensor sizes, no training) in a network namespace of its own, every
# namespace joined to one bridge (a switch, in namespace cx-sw) by a veth pair shaped with `tc tbf` to
# RATE in each direction: every process has a RATE link of its own, like hosts on a switch. Runs the
# coordinator mode and mesh mode for each N and prints one JSON line per run: the round time pooled over
# the peers (median, p90), the coordinator's bytes per step, the busiest link's load and its model time.
# Needs root (ip netns, tc) and python3.
#
#   RATE=1gbit PEERS_LIST="2 4 8 16" MODES="coordinator mesh" CLASSES=100 bash docs/benchmarks/exchange-links.sh
set -euo pipefail
COHORT=${COHORT:-.build/release/cohort}
RATE=${RATE:-1gbit}
PEERS_LIST=${PEERS_LIST:-"2 4 8 16"}
MODES=${MODES:-"coordinator mesh"}
CLASSES=${CLASSES:-100}
STEPS=${STEPS:-5}
COHORT=$(realpath "$COHORT")
OUT=$(mktemp -d)
MAX=$(echo $PEERS_LIST | tr ' ' '\n' | sort -n | tail -1)

namespaces() { echo cx-sw cx-c; for ((r = 0; r < MAX; r++)); do echo cx-p$r; done; }
cleanup() { for ns in $(namespaces); do ip netns del "$ns" 2>/dev/null || true; done; rm -rf "$OUT"; }
trap cleanup EXIT
cleanup
mkdir -p "$OUT"

ip netns add cx-sw
ip -n cx-sw link add cxbr type bridge
ip -n cx-sw link set cxbr up
ip -n cx-sw link set lo up
# node NAMESPACE ADDRESS: a namespace with one RATE link to the switch.
node() {
    local ns=$1 address=$2 i=$3
    ip netns add "$ns"
    ip link add "cxh$i" type veth peer name "cxs$i"
    ip link set "cxh$i" netns "$ns"
    ip link set "cxs$i" netns cx-sw
    ip -n "$ns" addr add "$address/16" dev "cxh$i"
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "cxh$i" up
    ip -n cx-sw link set "cxs$i" master cxbr
    ip -n cx-sw link set "cxs$i" up
    # A token bucket at RATE each way (burst: at least RATE / HZ).
    tc -n "$ns" qdisc add dev "cxh$i" root tbf rate "$RATE" burst 1mb latency 200ms
    tc -n cx-sw qdisc add dev "cxs$i" root tbf rate "$RATE" burst 1mb latency 200ms
}
node cx-c 10.232.0.1 c
for ((r = 0; r < MAX; r++)); do node "cx-p$r" "10.232.1.$((r + 1))" "$r"; done

port=5580
for n in $PEERS_LIST; do
    for mode in $MODES; do
        common=(--peers "$n" --classes "$CLASSES" --steps "$STEPS" --exchange-mode "$mode" --json)
        ip netns exec cx-c "$COHORT" bench --exchange-bind "tcp://10.232.0.1:$port" "${common[@]}" > "$OUT/coordinator.json" &
        coordinator=$!
        sleep 0.3
        pids=()
        for ((r = 0; r < n; r++)); do
            ip netns exec "cx-p$r" "$COHORT" bench --exchange-connect "tcp://10.232.0.1:$port" --exchange-rank "$r" \
                --mesh-endpoint "tcp://10.232.1.$((r + 1)):*" "${common[@]}" > "$OUT/peer-$r.json" &
            pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid"; done
        wait $coordinator
        python3 - "$OUT" "$n" "$RATE" <<'EOF'
import json, sys
out, n, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
peers = [json.loads(open(f"{out}/peer-{r}.json").read()) for r in range(n)]
times = sorted(t for p in peers for t in p["round_ms"])
first = peers[0]
print(json.dumps({"mode": first["mode"], "peers": n, "rate": rate, "rounds": first["rounds"],
                  "median_ms": times[len(times) // 2], "p90_ms": times[len(times) * 9 // 10],
                  "coordinator_bytes_per_step": first["coordinator_bytes_per_step"],
                  "peer_link_bytes_per_step": first["peer_link_bytes_per_step"],
                  "outputs_bytes": first["outputs_bytes"], "model_ms_at_1gbps": first["model_ms_at_1gbps"]}))
EOF
        port=$((port + 1))
    done
done
