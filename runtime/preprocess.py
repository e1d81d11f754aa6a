"""Preprocessing shared by training and inference: resize a crop to the model's input and normalise it.

The training transforms in ``distill`` call these functions, so a deployed model sees exactly what it
learned on. TextZoom-style resizing (HR 32x128, LR 16x64) uses PIL's bicubic filter, as the KD-LTR and
TextZoom reference code does.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["resize", "normalize", "to_chw", "HR_SIZE", "LR_SIZE", "MEAN", "STD"]

HR_SIZE = (32, 128)  # (H, W)
LR_SIZE = (16, 64)
MEAN = 0.5  # images are scaled to [0, 1] then normalised to [-1, 1]
STD = 0.5

_FILTERS = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "area": Image.BOX,
    "nearest": Image.NEAREST,
}


def resize(img: np.ndarray, size: tuple[int, int], interp: str = "bicubic") -> np.ndarray:
    """Stretch an RGB uint8 HxWx3 image to ``size`` = (H, W)."""
    if interp not in _FILTERS:
        raise ValueError(f"resize: interp must be one of {sorted(_FILTERS)}, got {interp!r}")
    h, w = size
    if img.shape[0] == h and img.shape[1] == w:
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), _FILTERS[interp]))


def normalize(img: np.ndarray, mean: float = MEAN, std: float = STD) -> np.ndarray:
    """uint8 HxWxC -> float32 HxWxC, (x/255 - mean) / std."""
    return (img.astype(np.float32) * (1.0 / 255.0) - mean) / std


def to_chw(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img.transpose(2, 0, 1))
