#!/usr/bin/env bash
# One-command device check (issue 11): correctness tests + speed benchmarks -> device_check.md + device_check.json.
#
#   bash scripts/device_check.sh [--out DIR] [--checks a,b] [--budget_s S]   # on the NVIDIA GPU machine
#   bash scripts/device_check.sh --platform cpu --out DIR                    # CPU dry run, tiny sizes (CI runs it)
#   bash scripts/device_check.sh --download                                  # here: fetch the wheels to carry
#
# The GPU machine reaches no package registry. The pure-Python packages it lacks (scripts/device_wheels.txt) are
# downloaded here into the git-ignored folder .whl/ (MULO_WHEELS overrides) and installed there into a private
# folder put on PYTHONPATH, with `pip install --no-index --no-deps --find-links`; nothing else is installed.
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${MULO_WHEELS:-.whl}
LIST=${MULO_WHEEL_LIST:-scripts/device_wheels.txt}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
names() { grep -v '^\s*#' "$LIST" | grep -v '^\s*$'; }

if [[ "${1:-}" == "--download" ]]; then
  mkdir -p "$WHEELS"
  # pure-Python wheels (py3-none-any), the same for the GPU machine's Python 3.12
  names | xargs "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$WHEELS"
  ls "$WHEELS"
  exit 0
fi

PLATFORM=gpu
for ((i = 1; i <= $#; i++)); do
  if [[ "${!i}" == "--platform" ]]; then j=$((i + 1)); PLATFORM=${!j}; fi
done
if [[ -d "$WHEELS" ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE=$(mktemp -d "${TMPDIR:-/tmp}/mulo-site.XXXXXX")
  # shellcheck disable=SC2046
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --find-links "$WHEELS" \
    --target "$SITE" $(names)
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  export MULO_CARRIED_WHEELS="$(cd "$WHEELS" && ls ./*.whl | sed 's|^\./||' | tr '\n' ' ')"
  echo "device_check: installed $(names | wc -l) carried wheel(s) from $WHEELS into $SITE" >&2
elif [[ "$PLATFORM" == "gpu" ]]; then
  echo "device_check: no wheels in $WHEELS (run 'bash scripts/device_check.sh --download' where PyPI is reachable);" \
       "using what is installed" >&2
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=${WANDB_MODE:-disabled}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3} MPLBACKEND=${MPLBACKEND:-Agg}
exec "$PYTHON" scripts/device_check.py "$@"
