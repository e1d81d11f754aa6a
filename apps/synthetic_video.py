"""A rendered test video: small words moving at known positions over a textured background, written with
OpenCV's VideoWriter. Used by the camera app's test and by ``apps.benchmark pipeline``; the truth (each word's
box in every frame) is returned, and written beside the video as JSON."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["render_video", "WORDS"]

WORDS = ["price", "meter", "shelf", "seven", "label", "green", "coffee", "water", "north", "store", "milk", "sale",
         "bread", "exit", "open", "stop", "gate", "lamp", "paper", "river"]


def _font(size: int):
    for name in ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "FreeSans.ttf"):
        for d in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype/liberation",
                  "/usr/share/fonts/truetype/freefont"):
            p = Path(d) / name
            if p.is_file():
                return ImageFont.truetype(str(p), size)
    return ImageFont.load_default(size=size)


def render_video(path: str, n_words: int = 16, size: tuple[int, int] = (720, 1280), frames: int = 60,
                 font_px: int = 18, speed: float = 1.5, blur: float = 0.0, fps: float = 30.0, seed: int = 0,
                 words: list[str] | None = None, moving: list[int] | None = None,
                 changes: list[tuple[int, int, str]] = ()) -> list:
    """Write ``path`` (.mp4 or .avi) and return the truth: per frame, a list of {"text", "box": [x0, y0, x1, y1]}.

    ``words``: the texts (default: ``n_words`` from WORDS); ``moving``: indices of the words that move (default:
    all, at up to ``speed`` px per frame); ``changes``: (frame, word index, new text) events, e.g. a sign that
    turns from OPEN to CLOSED."""
    H, W = size
    rng = np.random.default_rng(seed)
    font = _font(font_px)
    words = list(words) if words is not None else [WORDS[i % len(WORDS)] for i in range(n_words)]
    n_words = len(words)
    cols = 4
    rows = -(-n_words // cols)
    starts = [(40 + (i % cols) * (W - 80) // cols + rng.uniform(0, 40), 40 + (i // cols) * (H - 80) // rows + rng.uniform(0, 30))
              for i in range(n_words)]
    vel = [(rng.uniform(-speed, speed), rng.uniform(-speed / 2, speed / 2)) for _ in range(n_words)]
    if moving is not None:
        vel = [v if i in moving else (0.0, 0.0) for i, v in enumerate(vel)]
    bg = np.clip(rng.normal(200, 12, (H // 8, W // 8, 3)), 0, 255).astype(np.uint8)
    bg = cv2.resize(bg, (W, H), interpolation=cv2.INTER_CUBIC)
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if str(path).endswith(".mp4") else "MJPG"))
    vw = cv2.VideoWriter(str(path), fourcc, fps, (W, H))
    if not vw.isOpened():
        raise RuntimeError(f"{path}: OpenCV could not open a video writer")
    truth = []
    for f in range(frames):
        for at, i, text in changes:
            if at == f:
                words[i] = text
        im = Image.fromarray(bg[..., ::-1].copy())
        d = ImageDraw.Draw(im)
        row = []
        for w, (x, y), (vx, vy) in zip(words, starts, vel):
            px, py = x + vx * f, y + vy * f
            d.text((px, py), w, fill=(25, 25, 30), font=font)
            x0, y0, x1, y1 = d.textbbox((px, py), w, font=font)
            row.append({"text": w, "box": [float(x0), float(y0), float(x1), float(y1)]})
        frame = np.asarray(im)[..., ::-1]
        if blur > 0:
            frame = cv2.GaussianBlur(frame, (0, 0), blur)
        vw.write(np.ascontiguousarray(frame))
        truth.append(row)
    vw.release()
    Path(str(path) + ".truth.json").write_text(json.dumps(truth))
    return truth
