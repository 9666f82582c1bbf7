#!/usr/bin/env bash
# Make sure Fashion-MNIST is available: Debian's dataset-fashion-mnist where apt is usable, else a TFDS download,
# else a clear message saying how to get it. Usage: scripts/ensure_data.sh [PYTHON]
set -u
PY="${1:-python3}"
DIR=/usr/share/datasets/fashion-mnist
have_idx() { [ -f "$DIR/train-images-idx3-ubyte.gz" ] && [ -f "$DIR/t10k-labels-idx1-ubyte.gz" ]; }

have_idx && exit 0
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && SUDO="sudo -n"; }
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    echo "Installing Debian's dataset-fashion-mnist ..."
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }
    have_idx && exit 0
  fi
fi
echo "Trying a TFDS download of fashion_mnist ..."
if "$PY" -c "import tensorflow_datasets as tfds; tfds.builder('fashion_mnist').download_and_prepare()" >/dev/null 2>&1; then
  exit 0
fi
echo "error: Fashion-MNIST not found: install Debian's package (apt-get install dataset-fashion-mnist), or run" \
     "on a machine with internet so TFDS can download fashion_mnist, or set fashion_mnist_dir to a folder with" \
     "the IDX .gz files" >&2
exit 1
