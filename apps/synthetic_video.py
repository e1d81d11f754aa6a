"""Test videos with known words: rendered words moving over a textured background (``render_video``), or real word
crops filmed through a simulated camera (``--crops``, ``apps.crop_scene``). Used by the camera app's tests and by
``apps.benchmark pipeline``; the truth (each word's box in every frame) is returned, and written beside the video
as JSON; ``score_frames`` scores a run's per-frame output against it."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["render_video", "rois", "match_words", "score_frames", "same_word", "parse_range", "WORDS"]

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


def same_word(read: str, label: str) -> bool:
    """The benchmark's protocol (``runtime.metrics``): lowercase alphanumerics compared."""
    from runtime.charset import normalize_textzoom

    return normalize_textzoom(read) == normalize_textzoom(label)


def score_frames(truth: list, outputs: list[list[tuple[list[float], str]]]) -> tuple[int, int]:
    """(word-frames right, word-frames in all): a true word counts as right on a frame when the output box that
    covers at least half of it (``match_words``) carries its text. ``outputs[i]`` is frame i's (box, text) pairs,
    ``truth[i]`` its true words."""
    right = total = 0
    for row, out in zip(truth, outputs):
        total += len(row)
        for t, j in zip(row, match_words(row, [b for b, _ in out])):
            right += j is not None and same_word(out[j][1], t["text"])
    return right, total


def parse_range(text: str, option: str) -> tuple[float, float]:
    """``LOW,HIGH`` (e.g. ``--text-px 10,18``) -> (low, high), 0 < low <= high; InputError naming ``option``."""
    from runtime.cli import InputError

    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{option} {text!r}: expected LOW,HIGH, e.g. 10,18") from None
    if not 0 < lo <= hi:
        raise InputError(f"{option} {text!r}: need 0 < LOW <= HIGH")
    return lo, hi


def main(argv: list[str] | None = None) -> int:
    """``python -m apps.synthetic_video OUT.mp4 [--crops LMDB ...] [--words N] [--frames F] [--speed S] [--rois FILE]``"""
    import argparse

    from runtime.cli import InputError, check_writable, non_negative, positive

    from .crop_scene import CameraEffects, pick_crops, render_crop_video

    fx = CameraEffects()
    p = argparse.ArgumentParser(prog="python -m apps.synthetic_video", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", help="video to write (.mp4 or .avi); the truth goes beside it as OUT.truth.json")
    p.add_argument("--crops", nargs="+", default=None,
                   help="real word crops (STR lmdbs or image folders) to film instead of rendered words, e.g. "
                        "../shared/data/real/ic15_train; unset: rendered words")
    p.add_argument("--words", type=int, default=16, help="words in the scene")
    p.add_argument("--frames", type=int, default=150, help="frames")
    p.add_argument("--width", type=int, default=1280, help="frame width")
    p.add_argument("--height", type=int, default=720, help="frame height")
    p.add_argument("--font-px", type=int, default=18, help="font size of rendered words")
    p.add_argument("--text-px", default="10,18", help="range of the real crops' height in the frame, px (--crops)")
    p.add_argument("--speed", type=float, default=1.5, help="largest word speed, px per frame (0: a static scene)")
    p.add_argument("--seed", type=int, default=0, help="word choice, placement, motion and camera effects")
    p.add_argument("--shake", type=float, default=fx.shake_px, help="camera jitter std, px (--crops; 0: none)")
    p.add_argument("--defocus", type=float, default=fx.defocus, help="defocus blur sigma, px (--crops; 0: none)")
    p.add_argument("--motion-blur", type=float, default=fx.motion_px,
                   help="motion blur length at the largest shake step, px (--crops; 0: none)")
    p.add_argument("--noise", type=float, default=fx.noise, help="sensor noise std, grey levels (--crops; 0: none)")
    p.add_argument("--exposure", type=float, default=fx.exposure, help="exposure drift amplitude (--crops; 0: none)")
    p.add_argument("--jpeg", type=int, default=fx.jpeg, help="JPEG quality of every frame (--crops; 0: none)")
    p.add_argument("--rois", default=None, help="also write each word's first-frame box (padded 4 px) as x,y,w,h lines "
                                                "for apps.camera --roi-file; unset: not written")
    args = p.parse_args(argv)
    for opt in ("words", "frames", "width", "height", "font_px"):
        positive("--" + opt.replace("_", "-"), getattr(args, opt))
    non_negative("--speed", args.speed)
    check_writable(args.out, "out", (".mp4", ".avi"))
    check_writable(args.rois, "--rois")
    if args.crops:
        effects = CameraEffects(args.shake, args.defocus, args.motion_blur, args.noise, args.exposure, args.jpeg)
        try:
            effects.validate()
        except ValueError as e:
            raise InputError(f"--shake/--defocus/--motion-blur/--noise/--exposure/--jpeg: {e}") from None
        text_px = parse_range(args.text_px, "--text-px")
        for c in args.crops:
            if not Path(c).exists():
                raise InputError(f"--crops {c}: no such lmdb or folder")
        crops = pick_crops(args.crops, args.words, args.seed)
        truth = render_crop_video(args.out, crops, (args.height, args.width), args.frames, text_px, args.speed,
                                  effects, seed=args.seed)
    else:
        truth = render_video(args.out, args.words, (args.height, args.width), args.frames, args.font_px, args.speed,
                             seed=args.seed)
    if args.rois:
        Path(args.rois).write_text("".join(f"{x},{y},{w},{h}\n" for x, y, w, h in rois(truth[0])))
    kind = "real word crops" if args.crops else "rendered words"
    print(f"synthetic_video: wrote {args.out} ({args.frames} frames, {args.words} {kind}) and {args.out}.truth.json")
    return 0


if __name__ == "__main__":
    import sys

    from runtime.cli import run

    sys.exit(run(main))
