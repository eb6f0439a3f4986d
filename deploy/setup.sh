#!/usr/bin/env bash
# Installs what Cohort needs on Debian (bookworm) when it is missing: OpenBLAS, ZeroMQ, zlib and the
# Fashion-MNIST data set; with --tests also Python's safetensors and numpy (the interop tests use them).
# Uses sudo when not root. Swift itself must be installed already (swift.org).
set -euo pipefail
packages=(libopenblas-dev libzmq3-dev zlib1g-dev dataset-fashion-mnist)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" > /dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    echo "setup: installing ${missing[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
fi
if [ "${1:-}" = --tests ]; then
    python3 -c "import safetensors, numpy" 2> /dev/null || python3 -m pip install --quiet safetensors numpy
fi
command -v swift > /dev/null || { echo "setup: Swift is not installed (https://swift.org/install/linux)" >&2; exit 1; }
