#!/usr/bin/env bash
# Issue 18.3: install the accelerator jax wheels matching the installed jax, then run the
# accelerator-only checks (benchmarks/accelerator_check.py, < 8 minutes) and write one JSON.
#   benchmarks/accelerator_check.sh [--dry-run] [--out FILE] [other accelerator_check.py flags]
# --dry-run: tiny sizes on CPU, installs nothing (what the test suite runs).
# JAXEFF_ACCEL_EXTRA=cuda12|cuda13|tpu picks the jax extra (default: from nvidia-smi's CUDA version).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python}"
dry=0
for a in "$@"; do [[ "$a" == "--dry-run" ]] && dry=1; done
if [[ $dry -eq 0 ]]; then
  jaxver="$("$PY" -c 'import jax; print(jax.__version__)')"
  extra="${JAXEFF_ACCEL_EXTRA:-}"
  if [[ -z "$extra" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1; then
      cuda="$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -1)"
      if [[ -n "$cuda" && "$cuda" -ge 13 ]]; then extra=cuda13; else extra=cuda12; fi
    elif ls /dev/accel* >/dev/null 2>&1 || ls /dev/vfio/[0-9]* >/dev/null 2>&1; then
      extra=tpu
    else
      echo "accelerator_check.sh: no NVIDIA GPU (nvidia-smi) or TPU found; set JAXEFF_ACCEL_EXTRA or use --dry-run" >&2
      exit 2
    fi
  fi
  echo "accelerator_check.sh: pip install jax[$extra]==$jaxver" >&2
  "$PY" -m pip install -q -U "jax[$extra]==$jaxver"
  "$PY" -c 'import jax; b = jax.default_backend(); print("jax backend:", b, jax.devices()); assert b != "cpu", "accelerator wheels installed but JAX still sees only CPU"'
fi
budget="${JAXEFF_ACCEL_BUDGET_S:-420}"
exec "$PY" "$here/accelerator_check.py" --budget-s "$budget" "$@"
