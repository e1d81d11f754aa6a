"""Preprocessing shared by training and inference: resize a crop to the model's input and normalise it.

``prepare`` (one crop) and ``prepare_batch`` (N crops) are THE model preprocessing: the training transforms in
``distill``, the ONNX recognizer and the camera pipeline (``runtime.fastpath.pack`` on frame boxes) all run the
same resampler (Pillow's antialiased bicubic algorithm, C extension or its NumPy twin), so a deployed model sees
exactly what it learned on. TextZoom-style sizes: HR 32x128, LR 16x64. ``resize`` (Pillow itself) is for making
data (synthetic images, bicubic-upsampled inputs), not for feeding a network.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from . import fastpath

__all__ = ["prepare", "prepare_batch", "resize", "normalize", "to_chw", "HR_SIZE", "LR_SIZE", "MEAN", "STD"]

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


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, 2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    return np.ascontiguousarray(img, dtype=np.uint8)


def prepare(img: np.ndarray, size: tuple[int, int], mean: float = MEAN, std: float = STD,
            dtype=np.float32) -> np.ndarray:
    """One RGB (or gray) uint8 crop -> (3, H, W) normalised, stretched to ``size`` = (H, W)."""
    img = _rgb(img)
    h, w = img.shape[:2]
    return fastpath.pack(img, [[0, 0, w, h]], size, mean, std, swap_rb=False, dtype=dtype)[0]


def prepare_batch(crops, size: tuple[int, int], mean: float = MEAN, std: float = STD, dtype=np.float32) -> np.ndarray:
    """N crops of any sizes -> (N, 3, H, W)."""
    out = np.empty((len(crops), 3, *size), dtype)
    for i, c in enumerate(crops):
        out[i] = prepare(c, size, mean, std, dtype)
    return out
