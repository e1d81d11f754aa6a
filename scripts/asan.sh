#!/usr/bin/env bash
# Runs the C extension's tests under AddressSanitizer + UndefinedBehaviorSanitizer: builds runtime/_native.c with
# the sanitizers into a temporary directory and points runtime.fastpath at it (RUNTIME_NATIVE_LIB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CC=${CC:-gcc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
inc=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
suffix=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
"$CC" -std=c99 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -fPIC -shared -I"$inc" runtime/_native.c -o "$tmp/_native$suffix"
preload="$("$CC" -print-file-name=libasan.so):$("$CC" -print-file-name=libubsan.so)"
# Python itself leaks by design at exit: leak checking off, every other error aborts the run.
LD_PRELOAD="$preload" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  RUNTIME_NATIVE_LIB="$tmp/_native$suffix" "$PY" -m pytest -q -p no:cacheprovider tests/runtime/test_fastpath.py "$@"
echo "asan: the C extension's tests passed under AddressSanitizer + UBSan"
