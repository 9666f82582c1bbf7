#!/usr/bin/env bash
# The main job on one GPU, end to end through the CLI, in one device call (issue 23): meta-train the GPU recipe
# (config/meta_train/gpu_smoke.py), SIGTERM + --auto_resume checked bit for bit against an uninterrupted run,
# meta-test of the θ at widths 1024 and 8192 beside MuAdam tuned at 1024, report, timing table. scripts/gpu_e2e.py
# says what each stage does; --help lists the options.
#
#   bash scripts/gpu_e2e.sh --prepare                            # here, once: wheels into .whl/, IDX files into .data/
#   bash scripts/gpu_e2e.sh --out "$OUT"                         # on the GPU machine (carry .whl and .data)
#   bash scripts/gpu_e2e.sh --platform cpu --out DIR --work DIR  # the CPU dry run at tiny sizes
#                                                                  (tests/scripts/test_gpu_e2e.py)
#
# The GPU machine reaches no registry and has no Fashion-MNIST: --prepare puts the carried wheels
# (scripts/carried_wheels.sh) and the four IDX .gz files (30 MB, from Debian's dataset-fashion-mnist or
# MULO_FASHION_MNIST) into the git-ignored folders .whl/ and .data/fashion-mnist/, which the device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/carried_wheels.sh
source scripts/carried_wheels.sh

if [[ "${1:-}" == "--prepare" ]]; then
  download_carried_wheels
  SRC=${MULO_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
  FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
  for f in "${FILES[@]}"; do
    if [[ ! -f "$SRC/$f" ]]; then
      echo "error: $SRC/$f not found: run 'make data' (Debian's dataset-fashion-mnist) or set MULO_FASHION_MNIST" >&2
      exit 2
    fi
  done
  mkdir -p .data/fashion-mnist
  for f in "${FILES[@]}"; do cp "$SRC/$f" .data/fashion-mnist/; done
  du -sh .whl .data
  exit 0
fi

run_with_carried_wheels gpu_e2e "$@"
