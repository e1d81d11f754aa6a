"""The LR degradation model: a camera chain that turns an HR word crop into a realistic small crop.

Order follows how a far-away word reaches a sensor: optics (defocus / Gaussian / motion blur), sampling
(downscale by 2-4 with a randomly chosen kernel and sub-pixel phase), sensor (signal-dependent noise), the ISP
(contrast loss, gamma) and the codec (JPEG). One scalar ``strength`` in [0, 1] widens every range at once;
the synthetic ``test/easy|medium|hard`` splits draw it from rising thirds.

Used by ``distill.synth`` (synthetic pairs), ``distill.data degrade`` (pairs from a user's HR crops) and
on-the-fly LR for STR lmdbs during training. The fixed evaluation conditions (``lr16``, ``lr16blur``) live in
``runtime.conditions``; they are deterministic, this chain is random.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["LEVELS", "DegradeInfo", "degrade", "strength_for"]

# strength ranges of the named levels; "mixed" (training) spans them all
LEVELS: dict[str, tuple[float, float]] = {
    "easy": (0.0, 0.34),
    "medium": (0.33, 0.67),
    "hard": (0.66, 1.0),
    "mixed": (0.0, 1.0),
}


def strength_for(level: str, rng: np.random.Generator) -> float:
    if level not in LEVELS:
        raise ValueError(f"unknown degradation level {level!r}; expected one of {sorted(LEVELS)}")
    lo, hi = LEVELS[level]
    return float(rng.uniform(lo, hi))


@dataclass
class DegradeInfo:
    strength: float
    scale: float
    blur: str
    jpeg_quality: int


def _disk_kernel(radius: float) -> np.ndarray:
    r = max(radius, 0.5)
    n = int(np.ceil(r)) * 2 + 1
    y, x = np.mgrid[:n, :n] - n // 2
    k = np.clip(r + 0.5 - np.sqrt(x * x + y * y), 0.0, 1.0).astype(np.float32)  # anti-aliased disk
    return k / k.sum()


def _motion_kernel(length: float, angle_deg: float) -> np.ndarray:
    n = int(np.ceil(length)) | 1
    k = np.zeros((n, n), np.float32)
    c = n // 2
    t = np.deg2rad(angle_deg)
    for s in np.linspace(-length / 2, length / 2, 4 * n):
        x, y = c + s * np.cos(t), c + s * np.sin(t)
        xi, yi = int(round(x)), int(round(y))
        if 0 <= xi < n and 0 <= yi < n:
            k[yi, xi] += 1.0
    return k / k.sum()


def _blur(img: np.ndarray, rng: np.random.Generator, s: float) -> tuple[np.ndarray, str]:
    if rng.random() > 0.55 + 0.4 * s:
        return img, "none"
    u = rng.random()  # (rng.choice with p= is slow for one draw)
    kind = "gaussian" if u < 0.5 else "defocus" if u < 0.8 else "motion"
    if kind == "gaussian":
        sigma = rng.uniform(0.3, 0.6 + 1.4 * s)
        return cv2.GaussianBlur(img, (0, 0), sigma), f"gaussian({sigma:.2f})"
    if kind == "defocus":
        radius = rng.uniform(0.5, 1.0 + 1.5 * s)
        return cv2.filter2D(img, -1, _disk_kernel(radius), borderType=cv2.BORDER_REFLECT_101), f"defocus({radius:.2f})"
    length = rng.uniform(2.0, 3.0 + 5.0 * s)
    angle = rng.uniform(0, 180)
    k = _motion_kernel(length, angle)
    return cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT_101), f"motion({length:.1f},{angle:.0f})"


_DOWN = [cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST]


def _scale(rng: np.random.Generator, s: float) -> float:
    return rng.uniform(2.0 + 0.8 * s, 2.4 + 1.6 * s)  # 2..4, larger for stronger


def _to_height(hr: np.ndarray, height: float) -> np.ndarray:
    h, w = hr.shape[:2]
    f = height / h
    size = (max(1, int(round(w * f))), max(1, int(round(height))))
    return cv2.resize(hr, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)


def degrade(hr: np.ndarray, rng: np.random.Generator, strength: float,
            lr_height: int = 0) -> tuple[np.ndarray, bytes, DegradeInfo]:
    """HR RGB uint8 -> (LR RGB uint8, its JPEG bytes, what was done). Deterministic for the generator state.

    lr_height: 0 samples the crop 2-4x below its own size. A height lands the word at that height x0.8-1.25
    (aspect kept): the crop is first brought to that height times the chain's scale, so blur, noise and the codec
    act at the scale of the pixels the network reads, as a camera's do on a word that small in its frame."""
    s = float(np.clip(strength, 0.0, 1.0))
    if lr_height:  # (draws only in this mode: the default chain keeps its samples for a seed)
        scale = _scale(rng, s)
        hr = _to_height(hr, lr_height * rng.uniform(0.8, 1.25) * scale)
    img, blur = _blur(hr, rng, s)

    # Sampling: scale 2..4, larger for stronger; a random sub-pixel phase so LR grids do not all align.
    if not lr_height:
        scale = _scale(rng, s)
    h, w = hr.shape[:2]
    lh, lw = max(6, int(round(h / scale))), max(12, int(round(w / scale)))
    dx, dy = rng.uniform(-0.5, 0.5, size=2)
    if abs(dx) + abs(dy) > 0.05:
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    u = rng.random()
    interp = _DOWN[0 if u < 0.4 else 1 if u < 0.7 else 2 if u < 0.9 else 3]
    lr = cv2.resize(img, (lw, lh), interpolation=interp).astype(np.float32)

    # ISP: contrast loss towards the mean and a gamma change (haze, low light, cheap optics).
    contrast = rng.uniform(1.0 - 0.55 * s, 1.0)
    mean = lr.mean(axis=(0, 1), keepdims=True)
    lr = mean + (lr - mean) * contrast + rng.uniform(-12, 12) * s
    gamma = rng.uniform(1.0 - 0.3 * s, 1.0 + 0.3 * s)
    lr = 255.0 * np.power(np.clip(lr, 0, 255) / 255.0, gamma)

    # Sensor: shot noise (variance grows with signal) + read noise, partly correlated across channels.
    read = rng.uniform(0.5, 2.0 + 8.0 * s)
    shot = rng.uniform(0.0, 0.04 + 0.25 * s)
    std = np.sqrt(read * read + shot * lr)
    luma_noise = rng.standard_normal(lr.shape[:2] + (1,)).astype(np.float32)
    chroma_noise = rng.standard_normal(lr.shape).astype(np.float32)
    lr = lr + std * (0.7 * luma_noise + 0.3 * chroma_noise)
    lr = np.clip(lr + 0.5, 0, 255).astype(np.uint8)

    # Codec: JPEG, quality 95..60 when easy down to 50..15 when hard.
    q = int(round(rng.uniform(60 - 45 * s, 95 - 45 * s)))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(lr, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode an LR image")
    jpeg = buf.tobytes()
    lr = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return lr, jpeg, DegradeInfo(s, float(scale), blur, q)
