"""``python -m distill.synth``: write TextZoom-layout lmdbs of synthetic HR/LR word pairs.

Layout under ``--out``: ``train/``, ``val/`` (mixed degradation strength) and ``test/easy``, ``test/medium``,
``test/hard`` (strength rising), each an lmdb with ``image_hr-%09d``, ``image_lr-%09d``, ``label-%09d``
(1-based) and ``num-samples``, plus ``synth.json`` describing the run.

Every sample draws from its own generator seeded by (seed, split, index), so the output is the same bytes for a
seed whatever the number of worker processes.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..degrade import degrade, strength_for
from ..lmdb_writer import LmdbWriter
from .render import FontBank, render_word
from .words import WordSampler

__all__ = ["SPLITS", "SynthConfig", "parse_split_sizes", "generate_split", "make_pool", "make_pair", "main"]

# name -> (subdirectory, degradation level, split id used in seeding)
SPLITS = {
    "train": ("train", "mixed", 0),
    "val": ("val", "mixed", 1),
    "easy": ("test/easy", "easy", 2),
    "medium": ("test/medium", "medium", 3),
    "hard": ("test/hard", "hard", 4),
}
_TEST_SHARE = {"easy": 1619, "medium": 1411, "hard": 1343}  # TextZoom's test proportions


@dataclass
class SynthConfig:
    seed: int = 0
    charset: str = "94"
    min_len: int = 1
    max_len: int = 16
    hr_jpeg_quality: int = 95


def parse_split_sizes(spec: str, n: int) -> dict[str, int]:
    """``train=0.8,val=0.05,test=0.15`` (fractions of n: values with a '.') or counts (``train=1000,val=100``);
    ``test`` is shared between easy/medium/hard in TextZoom's proportions, or name them one by one."""
    sizes: dict[str, float] = {}
    kinds = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, val = part.partition("=")
        if not sep:
            raise ValueError(f"--split-sizes: {part!r} is not NAME=VALUE")
        if name not in SPLITS and name != "test":
            raise ValueError(f"--split-sizes: unknown split {name!r}; expected train, val, test, easy, medium, hard")
        try:
            v = float(val)
        except ValueError:
            raise ValueError(f"--split-sizes: {part!r}: value is not a number") from None
        if v < 0 or ("." in val and v > 1):
            raise ValueError(f"--split-sizes: {part!r}: a fraction must lie in [0, 1], a count must be >= 0")
        kinds.add("fraction" if "." in val else "count")
        sizes[name] = v
    if len(kinds) > 1:
        raise ValueError(f"--split-sizes: {spec!r} mixes fractions (with a '.') and counts; use one or the other")
    if not sizes:
        raise ValueError("--split-sizes: empty")
    fractional = kinds == {"fraction"}
    counts = {k: int(round(v * n)) if fractional else int(v) for k, v in sizes.items()}
    if "test" in counts:
        t = counts.pop("test")
        tot = sum(_TEST_SHARE.values())
        e = int(round(t * _TEST_SHARE["easy"] / tot))
        m = int(round(t * _TEST_SHARE["medium"] / tot))
        counts.update({"easy": e, "medium": m, "hard": t - e - m})
    return {k: counts[k] for k in SPLITS if k in counts}


# Per-process state, built once per worker (fonts are loaded lazily and cached there).
_STATE: dict = {}


def _init(cfg: SynthConfig, font_paths: list[str]) -> None:
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe
    _STATE["cfg"] = cfg
    _STATE["fonts"] = FontBank(font_paths, check=False)  # checked once in the parent
    _STATE["words"] = WordSampler(cfg.charset, cfg.min_len, cfg.max_len)


def make_pair(split: str, index: int) -> tuple[bytes, bytes, str]:
    """One sample: (HR JPEG bytes, LR JPEG bytes, label)."""
    cfg: SynthConfig = _STATE["cfg"]
    _, level, sid = SPLITS[split]
    rng = np.random.default_rng([cfg.seed, sid, index])
    label = _STATE["words"].sample(rng)
    hr = render_word(label, rng, _STATE["fonts"])
    lr, lr_jpeg, _ = degrade(hr, rng, strength_for(level, rng))
    ok, hr_buf = cv2.imencode(".jpg", cv2.cvtColor(hr, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, cfg.hr_jpeg_quality])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode an HR image")
    return hr_buf.tobytes(), lr_jpeg, label


def _chunk(args: tuple[str, int, int]) -> list[tuple[bytes, bytes, str]]:
    split, start, stop = args
    return [make_pair(split, i) for i in range(start, stop)]


def make_pool(cfg: SynthConfig, font_paths: list[str], workers: int):
    """Worker processes for :func:`generate_split`. They are spawned, not forked: a fork of a process that has
    used OpenCV's or torch's thread pools can deadlock in the child."""
    ctx = mp.get_context("spawn")
    return ctx.Pool(workers, initializer=_init, initargs=(cfg, font_paths))


def generate_split(out: Path, split: str, n: int, cfg: SynthConfig, font_paths: list[str], pool=None,
                   overwrite: bool = False, chunk: int = 64, progress: bool = True) -> Path:
    """Write one split; ``pool`` from :func:`make_pool` (None: in this process)."""
    target = out / SPLITS[split][0]
    jobs = [(split, s, min(n + 1, s + chunk)) for s in range(1, n + 1, chunk)]  # 1-based, inclusive of n
    with LmdbWriter(target, overwrite=overwrite) as w:
        bar = tqdm(total=n, desc=f"synth {split}", unit="pair", disable=not progress, leave=False)
        if pool is not None:
            _write(w, jobs, pool.imap(_chunk, jobs), bar)  # ordered: keys follow indices whatever the timing
        else:
            _init(cfg, font_paths)
            _write(w, jobs, map(_chunk, jobs), bar)
        bar.close()
        return w.finish(n)


def _write(w: LmdbWriter, jobs, results, bar) -> None:
    for (_, start, _), chunk in zip(jobs, results):
        for j, (hr, lr, label) in enumerate(chunk):
            i = start + j
            w.put(b"image_hr-%09d" % i, hr)
            w.put(b"image_lr-%09d" % i, lr)
            w.put(b"label-%09d" % i, label)
        bar.update(len(chunk))


def save_preview(out_png: Path, dataset_dir: Path, n: int = 24, cols: int = 4) -> Path:
    """A grid of HR (stretched to 128x32) and LR (16x64 shown at 128x32, nearest) pairs with labels."""
    from PIL import Image, ImageDraw

    from runtime.datasets import open_dataset
    from runtime.preprocess import resize

    reader = open_dataset(dataset_dir)
    samples = [s for _, s in zip(range(n), reader.iter_valid())]
    cell_w, cell_h = 2 * 128 + 12, 32 + 18
    rows = max(1, (len(samples) + cols - 1) // cols)
    sheet = Image.new("RGB", (cols * cell_w + 8, rows * cell_h + 8), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, s in enumerate(samples):
        x, y = 4 + (k % cols) * cell_w, 4 + (k // cols) * cell_h
        hr = resize(s.image, (32, 128))
        lr = resize(resize(s.lr, (16, 64)), (32, 128), interp="nearest")
        sheet.paste(Image.fromarray(hr), (x, y))
        sheet.paste(Image.fromarray(lr), (x + 132, y))
        draw.text((x, y + 33), s.label, fill=(200, 0, 0))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.name + ".tmp.png")
    sheet.save(tmp)
    os.replace(tmp, out_png)
    reader.close()
    return out_png


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distill.synth", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (train/, val/, test/{easy,medium,hard}/)")
    p.add_argument("--n", type=int, default=2000, help="total number of pairs over all splits")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes")
    p.add_argument("--split-sizes", default="train=0.8,val=0.05,test=0.15",
                   help="NAME=VALUE list; fractions of --n or counts; test is shared easy/medium/hard as in TextZoom")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--charset", default="94", help="characters words may hold: 36, 62, 94 or a literal string")
    p.add_argument("--min-len", type=int, default=1, help="shortest label")
    p.add_argument("--max-len", type=int, default=16, help="longest label")
    p.add_argument("--fonts", nargs="*", default=None,
                   help="font files to use (default: every TrueType/OpenType font in fontconfig's directories)")
    p.add_argument("--preview", default=None, help="save a PNG grid of HR/LR pairs from the first split here")
    p.add_argument("--overwrite", action="store_true", help="replace existing splits (default: refuse)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n <= 0:
        raise SystemExit(f"--n: must be > 0, got {args.n}")
    if args.workers < 1:
        raise SystemExit(f"--workers: must be >= 1, got {args.workers}")
    try:
        sizes = parse_split_sizes(args.split_sizes, args.n)
        cfg = SynthConfig(seed=args.seed, charset=args.charset, min_len=args.min_len, max_len=args.max_len)
        WordSampler(cfg.charset, cfg.min_len, cfg.max_len)  # validate before forking
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(str(e))
    out = Path(args.out)
    if not args.overwrite:
        clash = [SPLITS[s][0] for s in sizes if (out / SPLITS[s][0]).exists()]
        if clash:
            raise SystemExit(f"{out}: {', '.join(clash)} already exist (pass --overwrite to replace them)")
    if args.fonts:
        missing = [f for f in args.fonts if not Path(f).is_file()]
        if missing:
            from runtime.cli import InputError

            raise InputError(f"--fonts {missing[0]}: no such font file")
    bank = FontBank(args.fonts)
    if bank.fallback:
        given = f"none of the {len(args.fonts)} --fonts files is" if args.fonts else "no system font is"
        print(f"warning: synth: {given} a usable Latin font; drawing every word in Pillow's built-in font (name "
              "TrueType/OpenType files with --fonts, or install fonts-dejavu-core fonts-liberation)", file=sys.stderr)
    total = sum(sizes.values())
    t0 = time.perf_counter()
    pool = make_pool(cfg, bank.paths, args.workers) if args.workers > 1 else None
    try:
        for split, n in sizes.items():
            if n > 0:
                generate_split(out, split, n, cfg, bank.paths, pool, args.overwrite, progress=not args.no_progress)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    dt = time.perf_counter() - t0
    rate = total / dt if dt > 0 else float("inf")
    meta = {"config": asdict(cfg), "split_sizes": sizes, "layout": {s: SPLITS[s][0] for s in sizes},
            "degradation": {s: SPLITS[s][1] for s in sizes}, "fonts": bank.names(), "workers": args.workers,
            "seconds": round(dt, 3), "pairs_per_second": round(rate, 1)}
    with open(out / "synth.json.tmp", "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(out / "synth.json.tmp", out / "synth.json")
    print(f"synth: wrote {total} pairs to {out} in {dt:.1f}s: {rate:.0f} pairs/s on {args.workers} worker(s), "
          f"{len(bank.paths)} font(s)")
    for split, n in sizes.items():
        print(f"  {SPLITS[split][0]:<12} {n:>7} pairs  degradation={SPLITS[split][1]}")
    if args.preview:
        first = next(s for s, n in sizes.items() if n > 0)
        print(f"synth: preview -> {save_preview(Path(args.preview), out / SPLITS[first][0])}")
    return 0
