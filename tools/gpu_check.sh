#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md in one command, on a CUDA machine with a fresh clone:
#
#     tools/gpu_check.sh [--cpu] [--no-install] [--workdir=runs/gpu_check] [--budget=570]
#                        [--icbhi_annotations=ICBHI_ROOT]
#
# Creates .venv (Python >= 3.11) unless PYTHON names an interpreter, installs resp_jax with the
# `cuda` extra (JAX's CUDA wheels) and pytest, then runs tools/gpu_check.py: the tests marked
# gpu, the CNN6 train step (float32 and bfloat16, batch 128, 8-s clips), one full-size epoch of
# the synthetic ICBHI stand-in, two-GPU equality when there are two GPUs, and the other
# methods' steps while the budget (seconds, installation included) lasts. The figures go to
# WORKDIR/gpu_check.json and, as one JSON line, to stdout.
#
# --cpu: the same steps on the CPU with tiny sizes (installs without the cuda extra), to try
# the script anywhere. --no-install: use the environment as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
INSTALL=1
EXTRA="cuda,dev"
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --no-install) INSTALL=0 ;;
    --cpu) EXTRA="dev"; ARGS+=("$arg") ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) ARGS+=("$arg") ;;
  esac
done

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  VENV="${VENV:-.venv}"
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -c 'import sys; assert sys.version_info >= (3, 11), "resp_jax needs Python >= 3.11, found " + sys.version'
    python3 -m venv "$VENV"
  fi
  PY="$VENV/bin/python"
fi
if [ "$INSTALL" = 1 ]; then
  echo "installing resp_jax[$EXTRA] into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$PY" -m pip install --quiet --disable-pip-version-check -e ".[$EXTRA]"
fi
INSTALL_S=$(( $(date +%s) - START ))
exec "$PY" tools/gpu_check.py --started="$START" --install_s="$INSTALL_S" ${ARGS[@]+"${ARGS[@]}"}
