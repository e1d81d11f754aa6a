#!/usr/bin/env bash
# Runs the whole test suite with the C extension, then the runtime's tests and its consumers' (tests/runtime,
# tests/apps, tests/test_faults.py) again on the NumPy twin forced with RUNTIME_PUREPYTHON=1 (training and export
# tests reach the fastpath only through runtime.preprocess, whose two paths tests/runtime/test_fastpath.py compares),
# then the C extension's tests under AddressSanitizer + UBSan (needs gcc), then the wheel
# installed without torch (scripts/wheel_check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
echo "== tests, C extension path ($("$PY" -c 'from runtime import fastpath; print(fastpath.IMPLEMENTATION)'))"
"$PY" -m pytest -q "$@"
echo "== runtime tests, pure NumPy path (RUNTIME_PUREPYTHON=1)"
RUNTIME_PUREPYTHON=1 "$PY" -m pytest -q tests/runtime tests/apps tests/test_faults.py "$@"
if command -v gcc >/dev/null 2>&1; then
  echo "== C extension under AddressSanitizer + UBSan"
  bash scripts/asan.sh
else
  echo "== skipped the AddressSanitizer job: no gcc on this machine" >&2
fi
echo "== the wheel in a fresh virtual environment without torch"
bash scripts/wheel_check.sh
