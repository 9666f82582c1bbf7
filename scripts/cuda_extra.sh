#!/usr/bin/env bash
# Which of JAX's CUDA builds `make install ACCEL=cuda` installs: prints cuda13 or cuda12 (the pip extra of the pinned
# jax; both exist for it). CUDA=12 or CUDA=13 forces one. Else nvidia-smi decides:
# - cuda13 when the driver runs CUDA 13 (its header's "CUDA Version: 13.x"; drivers 580+) and every GPU has compute
#   capability 7.5 or more (CUDA 13 dropped Maxwell, Pascal and Volta);
# - cuda12 on a driver for CUDA 12 (525+), or for older GPUs (a newer driver runs CUDA 12 builds too);
# - one error line, exit 2, when nvidia-smi does not run, or the driver is older than CUDA 12.
set -u
fail() { echo "error: $*" >&2; exit 2; }
case "${CUDA:-}" in
  12|13) echo "cuda$CUDA"; exit 0 ;;
  "") ;;
  *) fail "bad CUDA='${CUDA}' for make install: expected 12 or 13 (JAX's cuda12 or cuda13 build)" ;;
esac
out=$(nvidia-smi 2>/dev/null) || fail "ACCEL=cuda but nvidia-smi does not run: install the NVIDIA driver, or pass" \
  "CUDA=12 or CUDA=13 to choose JAX's CUDA build"
major=$(sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' <<<"$out" | head -n 1)
[[ -n "$major" ]] || fail "cannot read the driver's CUDA version from nvidia-smi: pass CUDA=12 or CUDA=13"
((major >= 12)) || fail "the NVIDIA driver runs CUDA $major; JAX's CUDA builds need 12 or newer (driver 525+):" \
  "update the driver"
old=0
for cap in $(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null); do
  [[ "$cap" =~ ^([0-9]+)\.([0-9]+)$ ]] && ((BASH_REMATCH[1] * 10 + BASH_REMATCH[2] < 75)) && old=1
done
if ((major >= 13 && old == 0)); then echo cuda13; else echo cuda12; fi
