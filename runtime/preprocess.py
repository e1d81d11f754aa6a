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
from .cli import InputError

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


def _rgb(img: np.ndarray, what: str = "crop") -> np.ndarray:
    """An RGB uint8 HxWx3 view of ``img`` (gray HxW or HxWx1 repeated, RGBA's alpha dropped). Anything else is
    refused rather than cast: a float image in [0, 1] cast to uint8 reads as an empty black crop, a uint16 one
    wraps around. Convert first: ``(img * 255).round().astype(np.uint8)`` for floats in [0, 1]."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        hint = "; a float image in [0, 1] converts with (img * 255).round().astype(np.uint8)" \
            if img.dtype.kind == "f" else ""
        raise InputError(f"{what}: {img.dtype} image; expected uint8 (0-255){hint}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, 2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise InputError(f"{what}: shape {img.shape}; expected HxW, HxWx3 or HxWx4 with H, W >= 1")
    return np.ascontiguousarray(img)


def prepare(img: np.ndarray, size: tuple[int, int], mean: float = MEAN, std: float = STD,
            dtype=np.float32, what: str = "crop") -> np.ndarray:
    """One RGB (or gray) uint8 crop -> (3, H, W) normalised, stretched to ``size`` = (H, W)."""
    img = _rgb(img, what)
    h, w = img.shape[:2]
    return fastpath.pack(img, [[0, 0, w, h]], size, mean, std, swap_rb=False, dtype=dtype)[0]


def prepare_batch(crops, size: tuple[int, int], mean: float = MEAN, std: float = STD, dtype=np.float32) -> np.ndarray:
    """N crops of any sizes -> (N, 3, H, W)."""
    out = np.empty((len(crops), 3, *size), dtype)
    for i, c in enumerate(crops):
        out[i] = prepare(c, size, mean, std, dtype, what=f"crop {i}")
    return out
