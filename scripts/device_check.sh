#!/usr/bin/env bash
# One-command device check (issue 11): correctness tests + speed benchmarks -> device_check.md + device_check.json.
#
#   bash scripts/device_check.sh [--out DIR] [--checks a,b] [--budget_s S]   # on the NVIDIA GPU machine
#   bash scripts/device_check.sh --platform cpu --out DIR                    # CPU dry run, tiny sizes (CI runs it)
#   bash scripts/device_check.sh --download                                  # here: fetch the wheels to carry
#
# The GPU machine reaches no package registry: the pure-Python packages it lacks are carried as wheels
# (scripts/carried_wheels.sh says how; scripts/gpu_e2e.sh installs them the same way).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/carried_wheels.sh
source scripts/carried_wheels.sh

if [[ "${1:-}" == "--download" ]]; then
  download_carried_wheels
  exit 0
fi

run_with_carried_wheels device_check "$@"
