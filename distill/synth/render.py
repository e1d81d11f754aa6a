"""Render an HR word crop that looks like a real one: system fonts, coloured and textured backgrounds,
outlines and shadows, slight rotation, perspective and curvature, and clutter (underlines, borders, cut-off
neighbours) at the crop edges."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["find_fonts", "FontBank", "render_word"]

# fontconfig's usual directories (the ones `fc-list` scans on Debian/Ubuntu)
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "~/.local/share/fonts")
# Fonts that do not draw Latin letters as letters
_SKIP = ("symbol", "emoji", "dingbat", "math", "music", "wingding", "webdings", "opensymbol", "braille")
BUILTIN = "<pillow-builtin>"


def find_fonts(dirs: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """TrueType/OpenType files under fontconfig's directories, sorted (so a seed means the same fonts)."""
    found: set[str] = set()
    for d in dirs or FONT_DIRS:
        root = Path(os.path.expanduser(d))
        if not root.is_dir():
            continue
        for p in root.rglob("*"):
            if p.suffix.lower() in (".ttf", ".otf") and not any(s in p.name.lower() for s in _SKIP):
                found.add(str(p))
    return sorted(found)


@lru_cache(maxsize=4096)
def _load(path: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if path == BUILTIN:
        return ImageFont.load_default(size=size)  # Pillow's built-in scalable font (needs FreeType)
    return ImageFont.truetype(path, size=size)


class FontBank:
    """The fonts a run draws from. Fonts that fail to load or lack ASCII glyphs are dropped once."""

    def __init__(self, paths: list[str] | None = None, check: bool = True) -> None:
        paths = find_fonts() if paths is None else list(paths)
        good = [p for p in paths if self._usable(p)] if check else paths
        self.paths = good or [BUILTIN]
        self.fallback = not good

    @staticmethod
    def _usable(path: str) -> bool:
        try:
            f = _load(path, 32)
            # A font without Latin glyphs draws every letter as the same .notdef box.
            masks = {bytes(f.getmask(c)) for c in "aAgQ8"}
            return len(masks) >= 4
        except Exception:
            return False

    def pick(self, rng: np.random.Generator, size: int):
        return _load(self.paths[int(rng.integers(0, len(self.paths)))], int(size))

    def names(self) -> list[str]:
        return [Path(p).name if p != BUILTIN else p for p in self.paths]


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _colors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background and text colours with enough luminance contrast to be legible at HR."""
    r = rng.random()
    if r < 0.3:  # dark on light (print, labels)
        bg = rng.uniform(170, 255, 3)
        fg = rng.uniform(0, 80, 3)
    elif r < 0.5:  # light on dark (signs, displays)
        bg = rng.uniform(0, 90, 3)
        fg = rng.uniform(180, 255, 3)
    else:
        while True:
            bg, fg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            if abs(_luma(bg) - _luma(fg)) > 70:
                break
    return bg.astype(np.float32), fg.astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int, bg: np.ndarray) -> np.ndarray:
    u = rng.random()
    kind = 0 if u < 0.3 else 1 if u < 0.55 else 2 if u < 0.9 else 3
    img = np.empty((h, w, 3), np.float32)
    img[:] = bg.astype(np.float32)
    if kind == 1:  # linear gradient
        other = np.clip(bg + rng.uniform(-60, 60, 3), 0, 255).astype(np.float32)
        t = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
        t = t[None, :, None] if t.shape[0] == w else t[:, None, None]
        img = img * (1 - t) + other * t
    elif kind == 2:  # smooth texture: low-resolution noise upscaled (paper, wall, metal)
        gh, gw = int(rng.integers(2, 8)), int(rng.integers(4, 24))
        noise = rng.standard_normal((gh, gw), dtype=np.float32) * rng.uniform(8, 30)
        noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
        noise += rng.standard_normal((h, w), dtype=np.float32) * rng.uniform(0, 6)
        img += noise[..., None]
    elif kind == 3:  # stripes (shelf edges, packaging)
        period = rng.uniform(4, 20)
        phase = rng.uniform(0, 2 * np.pi)
        stripes = np.sin(np.arange(h, dtype=np.float32)[:, None, None] * 2 * np.pi / period + phase)
        img += stripes * np.float32(rng.uniform(5, 25))
    return img


def _text_mask(text: str, font, stroke: int) -> np.ndarray:
    """The text's alpha mask (float32 in [0, 1]), cropped to the ink."""
    try:
        # getmask2 renders once; ImageDraw.text would measure and render again (twice the cost here).
        core, _ = font.getmask2(text, mode="L", stroke_width=stroke)
        arr = np.asarray(Image.Image()._new(core))
    except (AttributeError, TypeError):  # the built-in bitmap font or an older Pillow
        x0, y0, x1, y1 = font.getbbox(text, stroke_width=stroke)
        m = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
        ImageDraw.Draw(m).text((-x0, -y0), text, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
        arr = np.asarray(m)
    if arr.size == 0 or arr.max() == 0:
        return np.ones((1, 1), np.float32) * 0  # nothing drawn (e.g. only spaces)
    rows, cols = np.flatnonzero(arr.max(1)), np.flatnonzero(arr.max(0))
    arr = arr[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return arr.astype(np.float32) * np.float32(1.0 / 255.0)


def _draw_text(text: str, font, pad: tuple[int, int], stroke: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Alpha mask of the text on a padded canvas and the text's box (x0, y0, x1, y1) in it."""
    ink = _text_mask(text, font, stroke)
    th, tw = ink.shape
    mask = np.zeros((th + 2 * pad[1], tw + 2 * pad[0]), np.float32)
    mask[pad[1] : pad[1] + th, pad[0] : pad[0] + tw] = ink
    return mask, (pad[0], pad[1], pad[0] + tw, pad[1] + th)


def render_word(text: str, rng: np.random.Generator, fonts: FontBank) -> np.ndarray:
    """An RGB uint8 HR word crop of ``text``, roughly 28-64 px high."""
    # One linear recipe, kept whole on purpose (86 lines): every random draw happens in this order, so a seed renders
    # the same word on every machine; splitting it would scatter the draw order across functions.
    size = int(rng.integers(26, 52))
    font = fonts.pick(rng, size)
    pad = (int(size * rng.uniform(0.4, 0.7)), int(size * rng.uniform(0.3, 0.5)))  # room for warps and clutter
    bold = int(rng.random() < 0.15)
    mask, (tx0, ty0, tx1, ty1) = _draw_text(text, font, pad, bold)
    H, W = mask.shape
    bg, fg = _colors(rng)
    img = _background(rng, H, W, bg)

    # Outline or shadow in a third colour, under the text.
    r = rng.random()
    if r < 0.12:
        k = np.ones((3, 3), np.uint8)
        ring = cv2.dilate(mask, k, iterations=int(rng.integers(1, 3)))
        img = img * (1 - ring[..., None]) + rng.uniform(0, 255, 3).astype(np.float32) * ring[..., None]
    elif r < 0.22:
        d = int(rng.integers(1, 4))
        shadow = np.zeros_like(mask)
        shadow[d:, d:] = mask[:-d, :-d]
        img = img * (1 - 0.6 * shadow[..., None]) + (bg * 0.3) * 0.6 * shadow[..., None]

    # Text colour, sometimes a vertical gradient.
    color = fg
    if rng.random() < 0.15:
        t = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
        color = fg * (1 - t) + np.clip(fg + rng.uniform(-70, 70, 3), 0, 255).astype(np.float32) * t
    # Blend only inside the text box: the mask is zero elsewhere.
    a = mask[ty0:ty1, tx0:tx1, None] * np.float32(rng.uniform(0.85, 1.0))
    if not np.isscalar(color) and color.ndim == 3:
        color = color[ty0:ty1]
    region = img[ty0:ty1, tx0:tx1]
    region += (color - region) * a
    # Geometry and clutter run on uint8: OpenCV's warps are several times faster on it.
    np.clip(img, 0, 255, out=img)
    img = img.astype(np.uint8)

    # Clutter that real word crops carry at their edges.
    if rng.random() < 0.25:  # underline
        y = min(H - 1, ty1 + int(rng.integers(1, max(2, pad[1] // 2))))
        cv2.line(img, (tx0, y), (tx1, y), fg.tolist(), int(rng.integers(1, 3)))
    if rng.random() < 0.15:  # border of a label or sign
        m = int(rng.integers(2, max(3, pad[1] // 2)))
        cv2.rectangle(img, (tx0 - m, ty0 - m), (tx1 + m, ty1 + m), rng.uniform(0, 255, 3).tolist(), int(rng.integers(1, 3)))
    if rng.random() < 0.15:  # a neighbouring word cut off at the crop edge
        nb = _text_mask("ABCDEFGHKMNPRSTWXYZ"[int(rng.integers(0, 19))], font, 0)
        nh, nw = nb.shape
        if nh < H and nw < pad[0]:
            y = int(np.clip(ty0 + (ty1 - ty0 - nh) // 2, 0, H - nh))
            x = tx0 - nw - int(rng.integers(2, 8)) if rng.random() < 0.5 else tx1 + int(rng.integers(2, 8))
            x = int(np.clip(x, 0, W - nw))
            region = img[y : y + nh, x : x + nw].astype(np.float32)
            img[y : y + nh, x : x + nw] = (region + (fg - region) * nb[..., None] + 0.5).astype(np.uint8)

    # Geometry: curve (vertical sine displacement), then rotation + perspective in one warp.
    pts = np.float32([[tx0, ty0], [tx1, ty0], [tx1, ty1], [tx0, ty1]])
    if rng.random() < 0.2:
        amp = rng.uniform(0.03, 0.12) * (ty1 - ty0)
        freq = rng.uniform(0.5, 1.2) * np.pi / max(1, W)
        xs = np.arange(W, dtype=np.float32)
        map_x = np.tile(xs, (H, 1))
        map_y = np.arange(H, dtype=np.float32)[:, None] + (amp * np.sin(freq * xs + rng.uniform(0, np.pi)))[None, :]
        img = cv2.remap(img, map_x, map_y.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        pts[:, 1] += np.float32([-amp, -amp, amp, amp])
    angle = np.deg2rad(rng.normal(0, 2.0))
    c = np.float32([W / 2, H / 2])
    rot = np.float32([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.float32([[0, 0], [W, 0], [W, H], [0, H]])
    # Corner jitter scaled by the text height (not the width), so long words keep their ends inside the pad.
    jitter = rng.uniform(-1, 1, (4, 2)).astype(np.float32) * np.float32(H * rng.uniform(0, 0.08))
    dst = (src - c) @ rot.T + c + jitter
    M = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    img = cv2.warpPerspective(img, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    wp = cv2.perspectiveTransform(pts[None], M)[0]

    # Crop around the warped text box with random margins, as a detector's box would.
    th = max(1.0, float(wp[:, 1].max() - wp[:, 1].min()))
    mx0, mx1 = (rng.uniform(0.02, 0.35, 2) * th).tolist()
    my0, my1 = (rng.uniform(0.02, 0.25, 2) * th).tolist()
    (xmin, ymin), (xmax, ymax) = wp.min(0).tolist(), wp.max(0).tolist()
    x0 = min(max(int(xmin - mx0), 0), W - 1)  # plain Python: np.clip on scalars costs more than the warp
    x1 = min(max(int(xmax + mx1 + 1), x0 + 1), W)
    y0 = min(max(int(ymin - my0), 0), H - 1)
    y1 = min(max(int(ymax + my1 + 1), y0 + 1), H)
    return np.ascontiguousarray(img[y0:y1, x0:x1])
