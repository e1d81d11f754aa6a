"""The C extension runtime._native (everything else is in pyproject.toml).

``optional=True``: where no C compiler is available the package still installs and runtime.fastpath falls back to
its NumPy twin. Portable C99 without architecture flags: the same source builds on x86-64 and aarch64 (Jetson)."""
import sys

from setuptools import Extension, setup

args = [] if sys.platform == "win32" else ["-O3", "-std=c99", "-Wall", "-Wno-unused-parameter"]
setup(ext_modules=[Extension("runtime._native", ["runtime/_native.c"], extra_compile_args=args, optional=True)])
