"""Augmentation suited to text: small rotations, shears and crops, photometric jitter; never flips (a mirrored
word is another word). Applied to the HR crop before the LR image is made from it, so the pair stays aligned."""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["text_augment", "text_view"]


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


def text_view(img: np.ndarray, rng: np.random.Generator, margin: float = 0.3, corner: float = 0.08,
              rotate: float = 4.0, aspect: tuple[float, float] = (0.8, 1.25)) -> np.ndarray:
    """Another look at the same word, as a detector and a camera would give it: the box loosened by up to
    ``margin`` x the crop's height on each side (tightened by at most 3 % of the height), its corners moved by up to
    ``corner`` x the height (perspective; mostly outwards), turned by up to ``rotate`` degrees with the box grown to
    keep the turned word inside, and the width scaled by a factor in ``aspect``. Pixels outside the crop repeat its
    border. No character is cut, so the label stays right and a view can be written once with its teacher targets
    cached like any crop's (``python -m distill.data views``)."""
    h, w = img.shape[:2]
    a = np.deg2rad(rng.uniform(-rotate, rotate))
    turn = 0.5 * w * abs(np.sin(a))  # the turned word's ends rise and fall by this much
    left, right = rng.uniform(-0.03, margin, 2) * h
    top, bottom = rng.uniform(-0.03, margin / 2, 2) * h + turn
    quad = np.array([[-left, -top], [w + right, -top], [w + right, h + bottom], [-left, h + bottom]], np.float64)
    outwards = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    quad += outwards * rng.uniform(-0.25 * corner, corner, (4, 2)) * h
    centre = quad.mean(0)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    quad = (quad - centre) @ rot.T + centre
    out_h = max(4, int(round(h + top + bottom)))
    out_w = max(4, int(round((w + left + right) * rng.uniform(*aspect))))
    dst = np.array([[0, 0], [out_w, 0], [out_w, out_h], [0, out_h]], np.float32)
    m = cv2.getPerspectiveTransform(quad.astype(np.float32), dst)
    interp = cv2.INTER_CUBIC if rng.random() < 0.5 else cv2.INTER_LINEAR
    return cv2.warpPerspective(img, m, (out_w, out_h), flags=interp, borderMode=cv2.BORDER_REPLICATE)
