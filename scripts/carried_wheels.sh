# Sourced (not run) by scripts/device_check.sh and scripts/gpu_e2e.sh, from the repository root: the one place that
# picks the interpreter and fetches / installs the pure-Python wheels the GPU machine lacks (scripts/device_wheels.txt).
#
# The GPU machine reaches no package registry. The wheels are downloaded here, where PyPI is reachable, into the
# git-ignored folder .whl/ (MULO_WHEELS overrides; MULO_WHEEL_LIST the list) and installed there into a private folder
# put on PYTHONPATH, with `pip install --no-index --no-deps --find-links`; nothing else is installed. A script started
# by one that already installed them (MULO_CARRIED_WHEELS is set) installs nothing again.
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
WHEELS=${MULO_WHEELS:-.whl}
WHEEL_LIST=${MULO_WHEEL_LIST:-scripts/device_wheels.txt}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

wheel_names() { grep -v '^\s*#' "$WHEEL_LIST" | grep -v '^\s*$'; }

# pure-Python wheels (py3-none-any), the same for the GPU machine's Python 3.12
download_carried_wheels() {
  mkdir -p "$WHEELS"
  wheel_names | xargs "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$WHEELS"
  ls "$WHEELS"
}

# install_carried_wheels WHO REQUIRED: WHO names the caller in its messages; REQUIRED=1 says so when there are none
install_carried_wheels() {
  local who=$1 required=${2:-0} site
  if [[ -n "${MULO_CARRIED_WHEELS+x}" ]]; then return 0; fi
  if [[ -d "$WHEELS" ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    site=$(mktemp -d "${TMPDIR:-/tmp}/mulo-site.XXXXXX")
    # shellcheck disable=SC2046
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --find-links "$WHEELS" \
      --target "$site" $(wheel_names) || return 1
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    MULO_CARRIED_WHEELS="$(cd "$WHEELS" && ls ./*.whl | sed 's|^\./||' | tr '\n' ' ')"
    export MULO_CARRIED_WHEELS
    echo "$who: installed $(wheel_names | wc -l) carried wheel(s) from $WHEELS into $site" >&2
  elif [[ "$required" == 1 ]]; then
    echo "$who: no wheels in $WHEELS (run 'bash scripts/device_check.sh --download' where PyPI is reachable);" \
         "using what is installed" >&2
  fi
}

# the environment every mulo command of these scripts runs in
export_run_env() {
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=${WANDB_MODE:-disabled}
  export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3} MPLBACKEND=${MPLBACKEND:-Agg}
}

# run_with_carried_wheels NAME ARGS...: install the wheels (required unless ARGS say --platform cpu), set the run
# environment and exec scripts/NAME.py ARGS
run_with_carried_wheels() {
  local name=$1 platform=gpu i j
  shift
  for ((i = 1; i <= $#; i++)); do
    if [[ "${!i}" == "--platform" ]]; then j=$((i + 1)); platform=${!j}; fi
  done
  install_carried_wheels "$name" "$([[ "$platform" == gpu ]] && echo 1 || echo 0)"
  export_run_env
  exec "$PYTHON" "scripts/$name.py" "$@"
}
