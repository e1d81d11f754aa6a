"""Augmentation suited to text: small rotations, shears and crops, photometric jitter; never flips (a mirrored
word is another word). Applied to the HR crop before the LR image is made from it, so the pair stays aligned."""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["text_augment"]


def text_augment(img: np.ndarray, rng: np.random.Generator, p: float = 0.5, geometric: bool = True) -> np.ndarray:
    """geometric False: photometric changes only, for crops whose teacher targets were computed once on the
    original (an ONNX teacher's cached frames): a shear or crop would move the characters under them."""
    if rng.random() > p:
        return img
    h, w = img.shape[:2]
    if geometric and rng.random() < 0.5:  # rotation + shear about the centre, borders replicated
        ang = rng.uniform(-4, 4)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), ang, 1.0)
        m[0, 1] += rng.uniform(-0.15, 0.15)
        img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if geometric and rng.random() < 0.4:  # crop jitter: a detector's box is never exact
        dx0, dx1 = (rng.uniform(0, 0.06, 2) * w).astype(int)
        dy0, dy1 = (rng.uniform(0, 0.1, 2) * h).astype(int)
        if w - dx0 - dx1 > 4 and h - dy0 - dy1 > 4:
            img = img[dy0 : h - dy1, dx0 : w - dx1]
    if rng.random() < 0.5:  # brightness / contrast
        a, b = rng.uniform(0.7, 1.3), rng.uniform(-30, 30)
        img = np.clip(img.astype(np.float32) * a + b, 0, 255).astype(np.uint8)
    if rng.random() < 0.1:  # polarity: light-on-dark and dark-on-light text are both common
        img = 255 - img
    return np.ascontiguousarray(img)
