"""Where the shipped weights are, in a source checkout and in an installed wheel.

The wheel installs the runtime's models (the ONNX files of ``weights/``) as data files under
``<prefix>/share/tinytext/weights``; a checkout reads ``weights/`` beside the packages. ``TINYTEXT_WEIGHTS`` (a
folder) comes before both.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["DEFAULT_MODELS", "weight_dirs", "find_weight", "default_model", "model_or_default"]

# The default recognizer, most accurate first (the figures: the README table and weights/MODEL_CARD.md): the PP-OCRv6
# student in FP32 (its INT8 file is about twice as fast on x86 CPUs but reads blurred words a little worse), its INT8
# flavour, the student of PP-OCRv6 tiny's graph (about as fast as the CNN student, far more accurate), the CNN student
# (the smallest file, the last fallback).
DEFAULT_MODELS = ("ppocrv6-student-lr.onnx", "ppocrv6-student-lr.int8.onnx", "ppocrv6-tiny-student-lr.int8.onnx",
                  "ctc-student-lr.int8.onnx")


def weight_dirs() -> list[Path]:
    """The folders searched, in order."""
    dirs = [Path(os.environ["TINYTEXT_WEIGHTS"])] if os.environ.get("TINYTEXT_WEIGHTS") else []
    dirs.append(Path(__file__).resolve().parents[1] / "weights")  # a source checkout (or an editable install)
    dirs.append(Path(sys.prefix) / "share" / "tinytext" / "weights")  # a wheel's data files
    return dirs


def find_weight(name: str) -> Path | None:
    """The first ``name`` in ``weight_dirs()``; None when no folder has it."""
    for d in weight_dirs():
        if (d / name).is_file():
            return d / name
    return None


def default_model() -> str | None:
    """The shipped default recognizer: the first of ``DEFAULT_MODELS`` found; None when none is installed."""
    for name in DEFAULT_MODELS:
        p = find_weight(name)
        if p is not None:
            return str(p)
    return None


def model_or_default(given: str | None, option: str = "--model") -> str:
    """``given``, else the shipped default; an InputError naming ``option`` when neither exists."""
    model = given or default_model()
    if model is None:
        from .cli import InputError

        raise InputError(f"{option} not given and no shipped weights found in {', '.join(map(str, weight_dirs()))}")
    return model
