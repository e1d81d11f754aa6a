"""Third-party models our users compare against, found offline: the PP-OCRv4 detector and recognizer that the
``rapidocr-onnxruntime`` wheel carries (Apache-2.0), and Tesseract from Debian."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["ppocr_model", "tesseract_path"]

_FILES = {"det": "ch_PP-OCRv4_det_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx"}


def ppocr_model(kind: str) -> Path | None:
    """Path of the PP-OCRv4 ``det`` or ``rec`` ONNX model inside the installed rapidocr-onnxruntime, or None."""
    if kind not in _FILES:
        raise ValueError(f"ppocr_model: kind must be one of {sorted(_FILES)}, got {kind!r}")
    try:
        import rapidocr_onnxruntime
    except ImportError:
        return None
    p = Path(os.path.dirname(rapidocr_onnxruntime.__file__)) / "models" / _FILES[kind]
    return p if p.is_file() else None


def tesseract_path() -> str | None:
    return shutil.which("tesseract")
