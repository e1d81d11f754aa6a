#!/usr/bin/env bash
# Runs the whole test suite on both paths of runtime.fastpath (the C extension, then its NumPy twin forced with
# RUNTIME_PUREPYTHON=1), then the C extension's tests under AddressSanitizer + UBSan (needs gcc), then the wheel
# installed without torch (scripts/wheel_check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
echo "== tests, C extension path ($("$PY" -c 'from runtime import fastpath; print(fastpath.IMPLEMENTATION)'))"
"$PY" -m pytest -q "$@"
echo "== tests, pure NumPy path (RUNTIME_PUREPYTHON=1)"
RUNTIME_PUREPYTHON=1 "$PY" -m pytest -q "$@"
if command -v gcc >/dev/null 2>&1; then
  echo "== C extension under AddressSanitizer + UBSan"
  bash scripts/asan.sh
else
  echo "== skipped the AddressSanitizer job: no gcc on this machine" >&2
fi
echo "== the wheel in a fresh virtual environment without torch"
bash scripts/wheel_check.sh
