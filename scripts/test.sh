#!/usr/bin/env bash
# Runs the whole test suite (the C-extension path and, where the runtime has one, the pure-Python path).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
"$PY" -m pytest -q "$@"
