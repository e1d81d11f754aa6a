"""A camera scene made of REAL word crops: crops from STR lmdbs pasted onto 1280x720 frames at 10-18 px text
height, then filmed through a simulated camera (shake, defocus and motion blur, sensor noise, exposure drift, JPEG).

Rendered fonts on a plain background are read at confidence ~1.0 and say little about how the camera pipeline
reads real small words; these scenes are what ``apps.benchmark pipeline --scene real`` and the README's real-scene
rows run on. The truth (each word's box in every frame, and its label) is written beside the video as JSON, in the
format of ``apps.synthetic_video.render_video``, so the same scoring (``score_frames``) serves both scenes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

__all__ = ["CameraEffects", "pick_crops", "render_crop_video", "DEFAULT_CROP_SETS"]

# The share of a word crop's height its text takes (STR crops are cut with a margin): a crop is scaled so that its
# text, not the crop, has the height asked for.
TEXT_SHARE = 0.8
# The real crops a scene is built from by default (``../shared/data/real``).
DEFAULT_CROP_SETS = ("ic15_train", "iiit5k_train", "svt_train")


@dataclass
class CameraEffects:
    """How the simulated camera degrades each frame (all on by default; 0 turns one off)."""

    shake_px: float = 1.2  # std of the whole frame's jitter (a mean-reverting random walk), pixels
    defocus: float = 0.5  # mean Gaussian blur sigma, px (varies by +-30 % over time)
    motion_px: float = 1.5  # motion blur length at the largest frame-to-frame shake step, px
    noise: float = 4.0  # sensor noise std, grey levels
    exposure: float = 0.12  # exposure drift amplitude (gain 1 +- this over ~5 s)
    jpeg: int = 75  # JPEG quality each frame goes through (0: none)

    def validate(self) -> "CameraEffects":
        for k in ("shake_px", "defocus", "motion_px", "noise", "exposure"):
            if not getattr(self, k) >= 0:
                raise ValueError(f"camera effects: {k} must be >= 0, got {getattr(self, k)}")
        if self.exposure >= 1:
            raise ValueError(f"camera effects: exposure must be < 1, got {self.exposure}")
        if not 0 <= self.jpeg <= 100:
            raise ValueError(f"camera effects: jpeg quality must be 0..100, got {self.jpeg}")
        return self


def pick_crops(paths: Sequence[str | Path], n: int, seed: int = 0, min_chars: int = 2,
               max_chars: int = 12, min_height: int = 16) -> list[tuple[np.ndarray, str]]:
    """``n`` (RGB crop, label) pairs drawn at random (``seed``) from the lmdbs (or folders) at ``paths``, in equal
    shares as far as each set allows. Labels keep their case and punctuation; only crops whose benchmark form
    (lowercase alphanumerics, ``runtime.charset.normalize_textzoom``) has ``min_chars``..``max_chars``
    characters and whose label has no space are used: a scene shows words, and a 25-character line does not fit
    a 16x64 read. Crops under ``min_height`` px are left out: the scene shrinks crops, it does not enlarge them."""
    from runtime.charset import normalize_textzoom
    from runtime.datasets import DataError, open_dataset

    if n < 1:
        raise ValueError(f"pick_crops: n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    pools: list[list[tuple[np.ndarray, str]]] = []
    for p in paths:
        r = open_dataset(p)
        try:
            idx = rng.permutation(len(r))
            pool: list[tuple[np.ndarray, str]] = []
            want = n  # enough of each set to fill the scene alone, should the others run short
            for i in idx:
                try:
                    s = r[int(i)]
                except Exception:  # an undecodable crop or a bad label: the readers skip and count them
                    r.record_skip(str(i))
                    continue
                norm = normalize_textzoom(s.label)
                if " " in s.label.strip() or not min_chars <= len(norm) <= max_chars or s.image.shape[0] < min_height:
                    continue
                pool.append((s.image, s.label.strip()))
                if len(pool) >= want:
                    break
        finally:
            r.close()
        if not pool:
            raise DataError(f"--crops {p}: no word crop with {min_chars}-{max_chars} letters or digits")
        pools.append(pool)
    out: list[tuple[np.ndarray, str]] = []
    k = 0
    while len(out) < n and any(pools):
        pool = pools[k % len(pools)]
        if pool:
            out.append(pool.pop(0))
        k += 1
    if len(out) < n:
        raise DataError(f"--crops: only {len(out)} usable word crops in {', '.join(map(str, paths))}, {n} asked")
    return out


def _shake(frames: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """(frames, 2) frame offsets: a mean-reverting random walk (a hand-held or pole-mounted camera's jitter), its
    stationary std ``std``."""
    out = np.zeros((frames, 2))
    if std <= 0:
        return out
    a = 0.8  # per-frame reversion: the offset decorrelates over ~5 frames
    step = std * np.sqrt(1 - a * a)
    for f in range(1, frames):
        out[f] = a * out[f - 1] + step * rng.standard_normal(2)
    return out


def _motion_kernel(dx: float, dy: float, length: float) -> np.ndarray | None:
    """A line kernel along (dx, dy) of ``length`` px (None when under a pixel)."""
    if length < 1.0:
        return None
    k = int(np.ceil(length)) | 1
    ker = np.zeros((k, k), np.float32)
    c = k // 2
    norm = np.hypot(dx, dy) or 1.0
    ux, uy = dx / norm, dy / norm
    for t in np.linspace(-length / 2, length / 2, 4 * k):
        ker[int(round(c + t * uy)), int(round(c + t * ux))] = 1.0
    return ker / ker.sum()


def render_crop_video(path: str, crops: Sequence[tuple[np.ndarray, str]], size: tuple[int, int] = (720, 1280),
                      frames: int = 300, text_px: tuple[float, float] = (10.0, 18.0), speed: float = 0.0,
                      effects: CameraEffects | None = None, fps: float = 30.0, seed: int = 0) -> list:
    """Write ``path`` (.mp4 or .avi) showing ``crops`` ((RGB crop, label) pairs, one word each) and return the
    truth: per frame, a list of {"text": label, "box": [x0, y0, x1, y1]} (the pasted crop's box, shake included).

    Each crop is scaled so that its text (``TEXT_SHARE`` of the crop) has a height drawn from ``text_px``, and placed on a
    4-column grid; ``speed`` > 0 moves every word at up to that many px per frame (0: a static scene)."""
    fx = (effects or CameraEffects()).validate()
    H, W = size
    rng = np.random.default_rng(seed)
    n = len(crops)
    cols = 4
    rows = -(-n // cols)
    cell_w, cell_h = (W - 80) // cols, (H - 80) // rows
    words = []
    for i, (img, label) in enumerate(crops):
        h = float(rng.uniform(*text_px)) / TEXT_SHARE
        w = min(cell_w - 30.0, h * img.shape[1] / img.shape[0])
        small = cv2.resize(np.ascontiguousarray(img[..., ::-1]), (max(2, int(round(w))), max(2, int(round(h)))),
                           interpolation=cv2.INTER_AREA)
        x = 40 + (i % cols) * cell_w + rng.uniform(0, max(1.0, cell_w - small.shape[1] - 20))
        y = 40 + (i // cols) * cell_h + rng.uniform(0, max(1.0, cell_h - small.shape[0] - 10))
        v = (rng.uniform(-speed, speed), rng.uniform(-speed / 2, speed / 2)) if speed > 0 else (0.0, 0.0)
        words.append((small, label, x, y, v))
    # a wall-like background: grey blobs with a faint tint, no text-like structure
    grey = cv2.resize(rng.normal(150, 30, (H // 24, W // 24)), (W, H), interpolation=cv2.INTER_CUBIC)
    tint = cv2.resize(rng.normal(0, 10, (H // 96, W // 96, 3)), (W, H), interpolation=cv2.INTER_CUBIC)
    bg = np.clip(grey[..., None] + tint, 0, 255).astype(np.uint8)
    shake = _shake(frames, fx.shake_px, rng)
    phase = rng.uniform(0, 2 * np.pi, 2)
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if str(path).endswith(".mp4") else "MJPG"))
    vw = cv2.VideoWriter(str(path), fourcc, fps, (W, H))
    if not vw.isOpened():
        raise RuntimeError(f"{path}: OpenCV could not open a video writer")
    truth = []
    noise = np.empty((H, W, 3), np.float32)
    try:
        for f in range(frames):
            frame = bg.copy()
            row = []
            for small, label, x, y, (vx, vy) in words:
                px, py = x + vx * f + shake[f, 0], y + vy * f + shake[f, 1]
                h, w = small.shape[:2]
                ix, iy = int(np.floor(px)), int(np.floor(py))
                x0, y0, x1, y1 = max(ix, 0), max(iy, 0), min(ix + w + 2, W), min(iy + h + 2, H)
                if x1 - x0 < 2 or y1 - y0 < 2:
                    row.append({"text": label, "box": [px, py, px + w, py + h]})
                    continue
                # the crop at its sub-pixel position, drawn over the background patch (transparent outside it)
                m = np.float32([[1, 0, px - x0], [0, 1, py - y0]])
                patch = frame[y0:y1, x0:x1]
                cv2.warpAffine(small, m, (x1 - x0, y1 - y0), dst=patch, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_TRANSPARENT)
                row.append({"text": label, "box": [float(px), float(py), float(px + w), float(py + h)]})
            img = frame.astype(np.float32)
            if fx.exposure:
                img *= 1.0 + fx.exposure * np.sin(2 * np.pi * f / 150 + phase[0])
            if fx.defocus:
                sigma = fx.defocus * (1 + 0.3 * np.sin(2 * np.pi * f / 97 + phase[1]))
                img = cv2.GaussianBlur(img, (0, 0), sigma)
            if fx.motion_px and f:
                d = shake[f] - shake[f - 1]
                ker = _motion_kernel(d[0], d[1], fx.motion_px * np.hypot(*d) / max(fx.shake_px, 1e-6))
                if ker is not None:
                    img = cv2.filter2D(img, -1, ker)
            if fx.noise:
                cv2.randn(noise, 0.0, float(fx.noise))
                img += noise
            out = np.clip(img, 0, 255).astype(np.uint8)
            if fx.jpeg:
                ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(fx.jpeg)])
                out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            vw.write(out)
            truth.append(row)
    finally:
        vw.release()
    Path(str(path) + ".truth.json").write_text(json.dumps(truth))
    return truth
