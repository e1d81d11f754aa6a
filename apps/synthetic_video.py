"""A rendered test video: small words moving at known positions over a textured background, written with
OpenCV's VideoWriter. Used by the camera app's test and by ``apps.benchmark pipeline``; the truth (each word's
box in every frame) is returned, and written beside the video as JSON."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["render_video", "rois", "match_words", "WORDS"]

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


def rois(row: list, pad: int = 4) -> list[tuple[int, int, int, int]]:
    """The words of one truth row (a frame's list of {"text", "box"}) as ``x, y, w, h`` regions of interest, ``pad``
    px larger on every side (the glyphs' tight box would clip their anti-aliased edges)."""
    return [(int(x0) - pad, int(y0) - pad, int(x1 - x0) + 2 * pad, int(y1 - y0) + 2 * pad)
            for x0, y0, x1, y1 in (t["box"] for t in row)]


def match_words(row: list, boxes) -> list[int | None]:
    """For each true word of a truth row, the index of the output box (x0, y0, x1, y1) that covers most of it, when
    that is at least half of its area; else None. The truth is the glyphs' tight box and a detector's box is about
    1.2 x 1.9 times larger, so IoU would turn a pixel of tracking drift on a short word into a miss."""
    from runtime.tracking import coverage

    if not len(boxes):
        return [None] * len(row)
    cover = coverage(np.array([t["box"] for t in row]), np.asarray(boxes, np.float64))
    best = cover.argmax(1)
    return [int(j) if cover[i, j] >= 0.5 else None for i, j in enumerate(best)]


def main(argv: list[str] | None = None) -> int:
    """``python -m apps.synthetic_video OUT.mp4 [--words N] [--frames F] [--font-px P] [--speed S] [--rois FILE]``"""
    import argparse

    from runtime.cli import check_writable, positive

    p = argparse.ArgumentParser(prog="python -m apps.synthetic_video", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", help="video to write (.mp4 or .avi); the truth goes beside it as OUT.truth.json")
    p.add_argument("--words", type=int, default=16, help="words in the scene")
    p.add_argument("--frames", type=int, default=150, help="frames")
    p.add_argument("--width", type=int, default=1280, help="frame width")
    p.add_argument("--height", type=int, default=720, help="frame height")
    p.add_argument("--font-px", type=int, default=18, help="font size")
    p.add_argument("--speed", type=float, default=1.5, help="largest word speed, px per frame (0: a static scene)")
    p.add_argument("--seed", type=int, default=0, help="word placement and motion")
    p.add_argument("--rois", default=None, help="also write each word's first-frame box (padded 4 px) as x,y,w,h lines "
                                                "for apps.camera --roi-file; unset: not written")
    args = p.parse_args(argv)
    for opt in ("words", "frames", "width", "height", "font_px"):
        positive("--" + opt.replace("_", "-"), getattr(args, opt))
    check_writable(args.out, "out", (".mp4", ".avi"))
    check_writable(args.rois, "--rois")
    truth = render_video(args.out, args.words, (args.height, args.width), args.frames, args.font_px, args.speed,
                         seed=args.seed)
    if args.rois:
        Path(args.rois).write_text("".join(f"{x},{y},{w},{h}\n" for x, y, w, h in rois(truth[0])))
    print(f"synthetic_video: wrote {args.out} ({args.frames} frames, {args.words} words) and {args.out}.truth.json")
    return 0


if __name__ == "__main__":
    import sys

    from runtime.cli import run

    sys.exit(run(main))
