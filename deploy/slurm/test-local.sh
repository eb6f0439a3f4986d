#!/usr/bin/env bash
# Runs deploy/slurm/cohort.sbatch under a real Slurm on this one machine: configures and starts munge,
# slurmctld and slurmd (Debian's slurm-wlm, installed if missing) for a one-node cluster, submits a small
# secured cohort (coordinator + 2 peers, Fashion-MNIST), waits for it, and checks its summary. Needs root.
#
# Usage: deploy/slurm/test-local.sh [path/to/cohort]   (default .build/release/cohort, else .build/debug/cohort)
set -euo pipefail
cd "$(dirname "$0")/../.."
COHORT=${1:-$( [ -x .build/release/cohort ] && echo .build/release/cohort || echo .build/debug/cohort )}
COHORT=$(realpath "$COHORT")

if ! command -v slurmctld > /dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge > /dev/null
fi
host=$(hostname -s)
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmd /var/spool/slurmctld /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=cohort-test
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=cohort Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
pgrep -x munged > /dev/null || { mkdir -p /run/munge && chown munge: /run/munge 2>/dev/null || true; su -s /bin/sh munge -c munged 2>/dev/null || munged --force; }
pgrep -x slurmctld > /dev/null || slurmctld
pgrep -x slurmd > /dev/null || slurmd
for _ in $(seq 100); do sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed" && break; sleep 0.2; done
sinfo

JOB=$(mktemp -d /tmp/cohort-slurm.XXXXXX)
"$COHORT" keygen --out "$JOB/keys" coordinator peer-0 peer-1 > /dev/null
cat > "$JOB/cohort.yaml" <<YAML
data: {dataset: fashion-mnist, train_limit: 1280, test_limit: 500}
epochs: 2
batch_size: 64
peers: [{model: resnet8}, {model: resnet8}]
network: {timeout: 60, join_timeout: 120}
security: {coordinator_key: keys/coordinator.pub, peer_keys: [keys/peer-0.pub, keys/peer-1.pub]}
output: run
YAML
cp deploy/slurm/cohort.sbatch "$JOB/"
cd "$JOB"
# Three tasks on a machine with fewer cores: --overcommit lets Slurm place them anyway.
status=0
COHORT="$COHORT" sbatch --wait --ntasks=3 --overcommit cohort.sbatch || status=$?
cat cohort-*.out
[ $status = 0 ] && [ -f run/summary.json ] || { echo "slurm test: FAILED (files in $JOB)"; exit 1; }
echo "slurm test: passed ($(python3 -c 'import json; s = json.load(open("run/summary.json")); print("ensemble top-1 %.2f%%, %d steps" % (100 * s["ensemble_top1"], s["steps"]))'))"
