#!/usr/bin/env bash
# Make sure the data a run needs is there, fetching it where the network allows; else one error line saying how to get
# it. Usage: scripts/ensure_data.sh [PYTHON] [WHAT ...]   (WHAT: fashion_mnist (default), lm1b)
#   fashion_mnist: Debian's dataset-fashion-mnist where apt is usable, else a TFDS download.
#   lm1b:          the T5 SentencePiece model (cc_all.32000, 0.8 MB) the LM1B tasks tokenise with, into
#                  ~/.cache/mulo/t5/ (then pass --vocab_path); the lm1b text itself comes from TFDS
#                  (tfds build lm1b, or --tfds_download true on the first run).
# Tiny Shakespeare needs nothing: it ships in src/mulo/data/assets/.
set -u
PY="${1:-python3}"
shift || true
WHAT=("$@")
[ ${#WHAT[@]} -eq 0 ] && WHAT=(fashion_mnist)

fashion_mnist() {
  local DIR=/usr/share/datasets/fashion-mnist
  have_idx() { [ -f "$DIR/train-images-idx3-ubyte.gz" ] && [ -f "$DIR/t10k-labels-idx1-ubyte.gz" ]; }
  have_idx && return 0
  if command -v apt-get >/dev/null 2>&1; then
    local SUDO=""
    [ "$(id -u)" -eq 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && SUDO="sudo -n"; }
    if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
      echo "Installing Debian's dataset-fashion-mnist ..."
      $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }
      have_idx && return 0
    fi
  fi
  echo "Trying a TFDS download of fashion_mnist ..."
  if "$PY" -c "import tensorflow_datasets as tfds; tfds.builder('fashion_mnist').download_and_prepare()" >/dev/null 2>&1; then
    return 0
  fi
  echo "error: Fashion-MNIST not found: install Debian's package (apt-get install dataset-fashion-mnist), or run" \
       "on a machine with internet so TFDS can download fashion_mnist, or set fashion_mnist_dir to a folder with" \
       "the IDX .gz files" >&2
  return 1
}

lm1b() {
  local URL=https://storage.googleapis.com/t5-data/vocabs/cc_all.32000/sentencepiece.model
  local OUT="${MULO_T5_VOCAB:-$HOME/.cache/mulo/t5/cc_all.32000.model}"
  if [ ! -s "$OUT" ]; then
    echo "Downloading the T5 SentencePiece model ..."
    if ! "$PY" - "$URL" "$OUT" <<'PYEOF' 2>/dev/null
import os, sys, tempfile, urllib.request
url, out = sys.argv[1], sys.argv[2]
os.makedirs(os.path.dirname(out), exist_ok=True)
data = urllib.request.urlopen(url, timeout=20).read()
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out))
with os.fdopen(fd, "wb") as f:
    f.write(data)
os.replace(tmp, out)
PYEOF
    then
      echo "error: cannot download the T5 SentencePiece model from $URL (no network?): fetch it elsewhere and pass" \
           "--vocab_path FILE" >&2
      return 1
    fi
  fi
  echo "LM1B vocabulary: --vocab_path $OUT (the lm1b text: tfds build lm1b, or --tfds_download true)"
}

status=0
for w in "${WHAT[@]}"; do
  case "$w" in
    fashion_mnist|lm1b) "$w" || status=1 ;;
    *) echo "error: unknown dataset '$w' for make data: expected fashion_mnist or lm1b" >&2; status=2 ;;
  esac
done
exit $status
