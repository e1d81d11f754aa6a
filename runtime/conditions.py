"""Named, deterministic low-resolution conditions, one definition for the whole project.

Evaluation (``distill.evaluate --lr-from-hr``) and the benchmark (``apps.benchmark --lr-from-hr``) make LR
inputs from HR crops with these, so figures from different commands are comparable:

* ``lr16``: area resize of the original crop to 64x16 (W x H).
* ``lr16blur``: Gaussian blur with sigma 1 on the original crop (7x7 kernel, reflect-101 border), area resize to
  64x16, then a JPEG round trip at quality 50 (OpenCV's encoder, 4:2:0).
* ``lr16jpeg``: ``lr16`` then the same JPEG round trip, no blur: tells the codec's share of ``lr16blur``'s loss
  from the optics'.
* ``hr``: the original crop, unchanged.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from .cli import InputError
from .preprocess import LR_SIZE

__all__ = ["CONDITIONS", "apply_condition", "area_resize", "jpeg_roundtrip", "parse_conditions", "LR_SIZE"]


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """RGB uint8 -> JPEG at ``quality`` -> RGB uint8."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode the image")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def area_resize(img: np.ndarray, size: tuple[int, int] = LR_SIZE) -> np.ndarray:
    """``lr16``'s resize: pixel-area averaging to ``size`` = (H, W), nothing else (training's plain LR uses it too)."""
    return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _lr16(img: np.ndarray) -> np.ndarray:
    return area_resize(img, LR_SIZE)


def _lr16blur(img: np.ndarray) -> np.ndarray:
    blurred = cv2.GaussianBlur(img, (7, 7), sigmaX=1.0, sigmaY=1.0, borderType=cv2.BORDER_REFLECT_101)
    return jpeg_roundtrip(_lr16(blurred), 50)


def _lr16jpeg(img: np.ndarray) -> np.ndarray:
    return jpeg_roundtrip(_lr16(img), 50)


CONDITIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "hr": lambda img: img,
    "lr16": _lr16,
    "lr16blur": _lr16blur,
    "lr16jpeg": _lr16jpeg,
}


def apply_condition(name: str, img: np.ndarray) -> np.ndarray:
    if name not in CONDITIONS:
        raise ValueError(f"unknown LR condition {name!r}; expected one of {sorted(CONDITIONS)}")
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"condition {name!r}: expected an RGB uint8 HxWx3 image, got {img.dtype} {img.shape}")
    return CONDITIONS[name](img)


def parse_conditions(text: str, option: str = "--conditions") -> tuple[str, ...]:
    """A command line's comma-separated condition names, checked: one line naming ``option`` when one is unknown or
    none is given."""
    names = tuple(c for c in text.split(",") if c)
    unknown = sorted(set(names) - set(CONDITIONS))
    if unknown or not names:
        raise InputError(f"{option}: {f'unknown {unknown}' if unknown else 'none given'}; "
                         f"expected some of {sorted(CONDITIONS)}")
    return names
