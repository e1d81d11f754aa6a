"""``python -m distill.data``: look at datasets and convert between layouts.

    info PATH [--json]          layout, counts, label-length and image-size statistics, skipped samples
    pack SRC OUT                image folder with labels.tsv -> STR lmdb
    degrade SRC OUT --seed S    STR lmdb (or image folder) of HR crops -> TextZoom-layout pair lmdb
    views SRC... OUT --copies K STR lmdbs (or image folders) of labelled crops -> K new views of each, labels kept
    split SRC OUT --held-out N  STR lmdb -> OUT/train and OUT/heldout, a seeded random N held out for selection
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from runtime.datasets import (
    CorruptSample,
    DataError,
    LabelPolicy,
    decode_image,
    open_dataset,
)

from .augment import text_view
from .degrade import LEVELS, degrade, strength_for
from .lmdb_writer import LmdbWriter

__all__ = ["DatasetInfo", "dataset_info", "pack_folder", "degrade_lmdb", "views_lmdb", "split_lmdb", "str_samples",
           "copy_samples", "main"]


def _stats(values: list[float]) -> dict:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {"min": float(a.min()), "median": float(np.median(a)), "mean": round(float(a.mean()), 2),
            "p95": float(np.percentile(a, 95)), "max": float(a.max())}


@dataclass
class DatasetInfo:
    path: str
    layout: str
    declared: int
    kept: int
    filtered_empty: int
    filtered_too_long: int
    bad_labels: int
    skipped_images: int
    skipped_keys: list[str] = field(default_factory=list)
    bad_label_keys: list[str] = field(default_factory=list)
    label_length: dict = field(default_factory=dict)
    label_length_histogram: dict = field(default_factory=dict)
    characters: dict = field(default_factory=dict)  # character -> count, most common first
    image_height: dict = field(default_factory=dict)
    image_width: dict = field(default_factory=dict)
    lr_height: dict = field(default_factory=dict)
    lr_width: dict = field(default_factory=dict)

    def to_text(self) -> str:
        lines = [f"path:        {self.path}", f"layout:      {self.layout}",
                 f"samples:     {self.kept} kept of {self.declared} declared",
                 f"filtered:    {self.filtered_empty} empty labels, {self.filtered_too_long} too long, "
                 f"{self.bad_labels} missing/undecodable labels",
                 f"skipped:     {self.skipped_images} undecodable images"]
        if self.skipped_keys:
            lines.append("             " + ", ".join(self.skipped_keys[:10]) + (" ..." if len(self.skipped_keys) > 10 else ""))
        if self.bad_label_keys:
            lines.append("bad labels:  " + ", ".join(self.bad_label_keys[:10]) + (" ..." if len(self.bad_label_keys) > 10 else ""))

        def fmt(d: dict) -> str:
            return "  ".join(f"{k} {v:g}" for k, v in d.items()) if d else "-"

        lines.append(f"label len:   {fmt(self.label_length)}")
        if self.label_length_histogram:
            lines.append("             " + " ".join(f"{k}:{v}" for k, v in self.label_length_histogram.items()))
        lines.append(f"{'HR ' if self.layout == 'textzoom' else ''}height:   {fmt(self.image_height)}")
        lines.append(f"{'HR ' if self.layout == 'textzoom' else ''}width:    {fmt(self.image_width)}")
        if self.lr_height:
            lines.append(f"LR height:   {fmt(self.lr_height)}")
            lines.append(f"LR width:    {fmt(self.lr_width)}")
        chars = "".join(self.characters)
        lines.append(f"characters:  {len(chars)} distinct: {chars[:120]}")
        return "\n".join(lines)


def dataset_info(path: str | Path, policy: LabelPolicy | None = None, images: bool = True,
                 progress: bool = True) -> DatasetInfo:
    """Scan a dataset: labels always, every image when ``images`` (the only way to count corrupt ones)."""
    reader = open_dataset(path, policy or LabelPolicy(normalize="none", max_len=0))
    st = reader.stats
    hs, ws, lhs, lws = [], [], [], []
    if images:
        for s in tqdm(reader.iter_valid(), total=len(reader), desc="info", unit="img", disable=not progress, leave=False):
            hs.append(s.image.shape[0])
            ws.append(s.image.shape[1])
            if s.lr is not None:
                lhs.append(s.lr.shape[0])
                lws.append(s.lr.shape[1])
    lengths = [len(lb) for lb in reader.labels]
    hist = dict(sorted(Counter(lengths).items()))
    chars = dict(Counter("".join(reader.labels)).most_common())
    info = DatasetInfo(str(path), reader.layout, st.total, st.kept, st.filtered_empty, st.filtered_too_long,
                       len(st.bad_labels), len(st.skipped_images), list(st.skipped_images), list(st.bad_labels),
                       _stats(lengths), hist, chars, _stats(hs), _stats(ws), _stats(lhs), _stats(lws))
    reader.close()
    return info


def pack_folder(src: str | Path, out: str | Path, overwrite: bool = False, progress: bool = True) -> tuple[int, list[str]]:
    """Image folder (labels.tsv) -> STR lmdb with the original encoded bytes. Returns (written, skipped keys)."""
    reader = open_dataset(src, LabelPolicy(normalize="none", max_len=0), layout="folder")
    skipped = [f"{k}" for k in reader.stats.bad_labels]
    n = 0
    with LmdbWriter(out, overwrite=overwrite) as w:
        for i in tqdm(range(len(reader)), desc="pack", unit="img", disable=not progress, leave=False):
            rel = reader.keys[i]
            p = reader.path / rel
            try:
                buf = p.read_bytes()
                decode_image(buf, rel)  # refuse to pack what no reader can decode
            except (OSError, CorruptSample) as e:
                skipped.append(f"{rel}: {e}")
                continue
            n += 1
            w.put(b"image-%09d" % n, buf)
            w.put(b"label-%09d" % n, reader.raw_labels[i])
        w.finish(n)
    return n, skipped


def _hr_crops(src: str | Path, tool: str, skipped: list[str], progress: bool, prefix: str = ""):
    """(index, sample, raw label) of each readable labelled HR crop of ``src`` (an STR lmdb or image folder; a pair
    lmdb is refused), with the progress bar; bad labels and undecodable crops go to ``skipped`` (``prefix`` first)."""
    reader = open_dataset(src, LabelPolicy(normalize="none", max_len=0))
    try:
        if reader.layout == "textzoom":
            raise DataError(f"{src}: already a TextZoom-layout pair lmdb; {tool} takes HR crops (STR lmdb or image "
                            "folder)")
        skipped += [f"{prefix}{k}" for k in reader.stats.bad_labels]
        for i in tqdm(range(len(reader)), desc=f"{tool} {Path(src).name}", unit="img", disable=not progress,
                      leave=False):
            try:
                s = reader[i]
            except CorruptSample as e:
                skipped.append(f"{prefix}{e}")
                continue
            yield i, s, reader.raw_labels[i]
    finally:
        reader.close()


def _png(img: np.ndarray) -> bytes | None:
    """An RGB crop as lossless PNG bytes; None when OpenCV cannot encode it."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return buf.tobytes() if ok else None


def degrade_lmdb(src: str | Path, out: str | Path, seed: int, level: str = "mixed", overwrite: bool = False,
                 progress: bool = True) -> tuple[int, list[str]]:
    """HR crops -> TextZoom-layout pairs by the camera-chain degradation. HR bytes are re-encoded losslessly (PNG).
    Returns (written, skipped keys)."""
    if level not in LEVELS:
        raise ValueError(f"--level: expected one of {sorted(LEVELS)}, got {level!r}")
    skipped: list[str] = []
    n = 0
    with LmdbWriter(out, overwrite=overwrite) as w:
        for i, s, label in _hr_crops(src, "degrade", skipped, progress):
            rng = np.random.default_rng([seed, i])  # per sample: the same output for a seed, whatever the order
            _, lr_jpeg, _ = degrade(s.image, rng, strength_for(level, rng))
            hr_png = _png(s.image)
            if hr_png is None:
                skipped.append(f"{s.key}: PNG encoding failed")
                continue
            n += 1
            w.put(b"image_hr-%09d" % n, hr_png)
            w.put(b"image_lr-%09d" % n, lr_jpeg)
            w.put(b"label-%09d" % n, label)
        w.finish(n)
    return n, skipped


def views_lmdb(srcs: list[str | Path], out: str | Path, copies: int, seed: int, overwrite: bool = False,
               progress: bool = True) -> tuple[int, list[str]]:
    """Labelled HR crops -> an STR lmdb of ``copies`` views of each (``augment.text_view``: looser boxes,
    perspective, a turn, another aspect), written losslessly (PNG) with the crop's label. A view is a crop like any
    other for training: an ONNX teacher reads it once and caches its targets, which a geometric augmentation on the
    fly would move from under the characters. Returns (written, skipped keys)."""
    if copies < 1:
        raise ValueError(f"--copies: must be >= 1, got {copies}")
    skipped: list[str] = []
    n = 0
    with LmdbWriter(out, overwrite=overwrite) as w:
        for si, src in enumerate(srcs):
            for i, s, label in _hr_crops(src, "views", skipped, progress, prefix=f"{src}: "):
                for k in range(copies):
                    rng = np.random.default_rng([seed, si, i, k])  # per view: the same output whatever the order
                    png = _png(text_view(s.image, rng))
                    if png is None:
                        skipped.append(f"{src}: {s.key}: PNG encoding failed")
                        break
                    n += 1
                    w.put(b"image-%09d" % n, png)
                    w.put(b"label-%09d" % n, label)
        w.finish(n)
    return n, skipped


@contextmanager
def str_samples(src: str | Path):
    """(read transaction, sample count) of an STR lmdb, checked to be one; the shared handle released after."""
    from runtime.datasets import open_lmdb, release_lmdb

    env = open_lmdb(src)
    try:
        with env.begin() as txn:
            raw = txn.get(b"num-samples")
            if raw is None or txn.get(b"image-000000001") is None:
                raise DataError(f"{src}: not an STR lmdb (needs num-samples and image-%09d keys)")
            yield txn, int(raw)
    finally:
        release_lmdb(env)


def copy_samples(txn, indices: Sequence[int], out: str | Path, overwrite: bool = False,
                 recode: Callable[[bytes], bytes] | None = None) -> int:
    """Samples ``indices`` (1-based) of an open STR lmdb into the new STR lmdb ``out``, numbered from 1: each encoded
    image as stored (or through ``recode``) and its label as stored. Returns the count."""
    with LmdbWriter(out, overwrite=overwrite) as w:
        for j, i in enumerate(indices, 1):
            img = txn.get(b"image-%09d" % i)
            w.put(b"image-%09d" % j, recode(img) if recode else img)
            w.put(b"label-%09d" % j, txn.get(b"label-%09d" % i) or b"")
        w.finish(len(indices))
    return len(indices)


def split_lmdb(src: str | Path, out: str | Path, held_out: int, seed: int = 0,
               overwrite: bool = False) -> tuple[int, int]:
    """An STR lmdb into ``out/train`` and ``out/heldout`` (STR lmdbs, the encoded bytes and labels as stored):
    ``held_out`` samples drawn by ``seed`` are held out, the rest keep their order. The same source, count and seed
    give the same split on any machine, so a held-out set named in a recipe is reproducible. Returns the counts."""
    src, out = Path(src), Path(out)
    there = [str(out / n) for n in ("train", "heldout") if (out / n).exists()]
    if there and not overwrite:  # before writing either: a split is whole or not there
        raise FileExistsError(f"{there[0]}: already exists (pass --overwrite to replace it)")
    with str_samples(src) as (txn, n):
        if not 0 < held_out < n:
            raise ValueError(f"--held-out: expected 1 to {n - 1} of the {n} samples in {src}, got {held_out}")
        hold = set((np.random.default_rng(seed).permutation(n)[:held_out] + 1).tolist())
        n_train = copy_samples(txn, [i for i in range(1, n + 1) if i not in hold], out / "train", overwrite)
        n_held = copy_samples(txn, sorted(hold), out / "heldout", overwrite)
    return n_train, n_held


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="python -m distill.data", description="Look at datasets and convert layouts.",
                                formatter_class=fmt)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("info", help="print layout, counts, label and image statistics", formatter_class=fmt)
    i.add_argument("path", help="TextZoom lmdb, STR lmdb or image folder with labels.tsv")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    i.add_argument("--normalize", choices=["none", "textzoom"], default="none",
                   help="label normalisation before statistics (textzoom: lowercase, [0-9a-z] only)")
    i.add_argument("--max-len", type=int, default=0, help="filter labels longer than this (0: no limit)")
    i.add_argument("--no-images", action="store_true", help="skip decoding images (no size stats, no skip count)")
    k = sub.add_parser("pack", help="pack an image folder (labels.tsv) into an STR lmdb", formatter_class=fmt)
    k.add_argument("src", help="folder holding labels.tsv")
    k.add_argument("out", help="output lmdb directory")
    k.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    d = sub.add_parser("degrade", help="make a TextZoom-layout pair lmdb from HR crops", formatter_class=fmt)
    d.add_argument("src", help="STR lmdb or image folder of HR crops")
    d.add_argument("out", help="output lmdb directory")
    d.add_argument("--seed", type=int, default=0, help="random seed of the degradation")
    d.add_argument("--level", choices=sorted(LEVELS), default="mixed", help="degradation strength range")
    d.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    v = sub.add_parser("views", help="write new views of labelled crops (looser boxes, perspective, a turn, "
                       "another aspect) into an STR lmdb, labels kept", formatter_class=fmt)
    v.add_argument("srcs", nargs="+", metavar="SRC", help="STR lmdbs or image folders of labelled HR crops")
    v.add_argument("out", help="output lmdb directory")
    v.add_argument("--copies", type=int, default=2, help="views written per crop")
    v.add_argument("--seed", type=int, default=0, help="random seed of the views")
    v.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    t = sub.add_parser("split", help="hold out a seeded random part of an STR lmdb: OUT/train and OUT/heldout",
                       formatter_class=fmt)
    t.add_argument("src", help="STR lmdb")
    t.add_argument("out", help="output folder (two lmdbs: train, heldout)")
    t.add_argument("--held-out", type=int, required=True, help="samples held out (required)")
    t.add_argument("--seed", type=int, default=0, help="random seed of the draw")
    t.add_argument("--overwrite", action="store_true", help="replace OUT's lmdbs if they exist")
    u = sub.add_parser("unlabeled", help="crop the regions of video frames into an unlabeled STR lmdb "
                       "(training data for an ONNX teacher's student)", formatter_class=fmt)
    u.add_argument("--video", required=True, help="video file OpenCV can read")
    u.add_argument("--regions", required=True,
                   help="JSONL, one object per frame: {\"frame\": N, \"words\": [{\"box\": [x0, y0, x1, y1]}]} "
                        "(the camera app's --jsonl output works)")
    u.add_argument("--out", required=True, help="output lmdb directory")
    u.add_argument("--every", type=int, default=1, help="take every N-th frame")
    u.add_argument("--min-size", type=int, default=6, help="skip regions smaller than this many pixels")
    u.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    for sp in (i, k, d, v):
        sp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _report(done: str, skipped: list[str]) -> None:
    print(f"{done}; skipped {len(skipped)}")
    for s in skipped[:20]:
        print(f"  skipped {s}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "info":
            info = dataset_info(args.path, LabelPolicy(args.normalize, args.max_len), not args.no_images,
                                not args.no_progress)
            print(json.dumps(asdict(info), indent=2) if args.json else info.to_text())
        elif args.cmd == "pack":
            n, skipped = pack_folder(args.src, args.out, args.overwrite, not args.no_progress)
            _report(f"pack: wrote {n} samples to {args.out}", skipped)
        elif args.cmd == "degrade":
            n, skipped = degrade_lmdb(args.src, args.out, args.seed, args.level, args.overwrite, not args.no_progress)
            _report(f"degrade: wrote {n} HR/LR pairs to {args.out} (level {args.level}, seed {args.seed})", skipped)
        elif args.cmd == "views":
            n, skipped = views_lmdb(args.srcs, args.out, args.copies, args.seed, args.overwrite, not args.no_progress)
            _report(f"views: wrote {n} crops ({args.copies} per crop, seed {args.seed}) to {args.out}", skipped)
        elif args.cmd == "split":
            n_train, n_held = split_lmdb(args.src, args.out, args.held_out, args.seed, args.overwrite)
            print(f"split: {args.out}/train ({n_train}) and {args.out}/heldout ({n_held}), seed {args.seed}")
        elif args.cmd == "unlabeled":
            from .unlabeled import video_regions_to_lmdb

            if args.every < 1:
                raise ValueError(f"--every: must be >= 1, got {args.every}")
            n = video_regions_to_lmdb(args.video, args.regions, args.out, args.every, args.min_size, args.overwrite)
            print(f"unlabeled: wrote {n} crops from {args.video} to {args.out}")
    except (DataError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from runtime.cli import run

    sys.exit(run(main))
