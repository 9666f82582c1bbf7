#!/usr/bin/env bash
# The held-out suite in one command (config/meta_test/heldout_suite.py says what each row tests):
#   scripts/heldout_suite.sh OUT_DIR [GENERAL_CHECKPOINT] [--key value ...]
# For every row in config/meta_test/heldout/: tune MuAdam's lr on the row's sweep grid (config/sweeps/heldout/<row>.py,
# narrowest width), meta-test MuAdam with the best lr, the general muLO (GENERAL_CHECKPOINT: a theta file, a run
# directory or pretrained:NAME; default pretrained:cpu_mulo_general, skipped with "none") and the Fashion-MNIST muLO
# (pretrained:cpu_mulo_m_fmnist), each into OUT_DIR/<row>/; then `report` per row into OUT_DIR/<row>/report.
# Extra --key value options go to every sweep and meta-test (a dry run: --num_inner_steps 20 --num_runs 1).
# Rows can be picked with ROWS="mlp_depth8 vit"; PYTHON (default python) runs src/main.py. Stops at the first error.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: scripts/heldout_suite.sh OUT_DIR [GENERAL_CHECKPOINT] [--key value ...]" >&2; exit 2; }
OUT="$1"; shift
GENERAL="pretrained:cpu_mulo_general"
if [ $# -ge 1 ] && [ "${1#--}" = "$1" ]; then GENERAL="$1"; shift; fi
PY="${PYTHON:-python}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
ROWS="${ROWS:-$(ls config/meta_test/heldout/ | sed -n 's/\.py$//p' | tr '\n' ' ')}"
LO=(--optimizer.name lo --lo.name mup_small_fc_mlp)
for row in $ROWS; do
  cfg="config/meta_test/heldout/$row.py"
  [ -f "$cfg" ] || { echo "error: no held-out row $cfg" >&2; exit 2; }
  dir="$OUT/$row"
  mkdir -p "$dir"
  "$PY" src/main.py sweep --config "config/sweeps/heldout/$row.py" --output_dir "$dir/sweep" "$@"
  best=$(ls -d "$dir"/sweep/*/best.json | head -1)
  lr=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["params"]["learning_rate"])' "$best")
  echo "[heldout] $row: MuAdam lr $lr (from $best)"
  "$PY" src/main.py meta-test --config "$cfg" --optimizer.name muadam --optimizer.learning_rate "$lr" --output_dir "$dir" "$@"
  if [ "$GENERAL" != "none" ]; then
    "$PY" src/main.py meta-test --config "$cfg" "${LO[@]}" --checkpoint "$GENERAL" --output_dir "$dir" "$@"
  fi
  "$PY" src/main.py meta-test --config "$cfg" "${LO[@]}" --checkpoint pretrained:cpu_mulo_m_fmnist --output_dir "$dir" "$@"
  "$PY" src/main.py report "$dir"/meta-test_* --output_dir "$dir/report"
done
echo "[heldout] done: reports in $OUT/<row>/report/report.md"
