#!/usr/bin/env bash
# The test suite: installs what is missing (deploy/setup.sh --tests), builds, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh --tests
swift build
swift test
