"""``python -m apps.read PATH... [--json | --jsonl] [--annotate DIR]``: read the words of photos, folders of photos and
globs (``tinytext-read``), through ``runtime.TextReader``.

Prints one line per word (``path<TAB>text<TAB>confidence<TAB>x0,y0,x1,y1``), or one JSON document (``--json``) or
one JSON line per image (``--jsonl``). Files that are not images OpenCV can decode are skipped and counted; a path
that does not exist is an error.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from runtime.cli import InputError, console_script, positive
from runtime.files import write_bytes_atomic

__all__ = ["main", "expand_paths", "annotate", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given, the images under folders (recursively, sorted), globs expanded; InputError naming a path
    that matches nothing."""
    out: list[Path] = []
    for p in paths:
        if any(c in p for c in "*?["):
            hits = sorted(glob.glob(p, recursive=True))
            if not hits:
                raise InputError(f"{p}: no file matches")
            out += [Path(h) for h in hits if Path(h).is_file()]
        elif Path(p).is_dir():
            out += sorted(f for f in Path(p).rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif Path(p).is_file():
            out.append(Path(p))
        else:
            raise InputError(f"{p}: no such file or folder")
    return out


def annotate(image: np.ndarray, words) -> np.ndarray:
    """The image with each word's quad and text drawn on it."""
    out = image.copy()
    for w in words:
        q = np.round(np.array(w.quad)).astype(np.int32)
        cv2.polylines(out, [q], True, (0, 200, 0), 1, cv2.LINE_AA)
        x, y = int(q[:, 0].min()), int(q[:, 1].min())
        cv2.putText(out, w.text, (x, max(10, y - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 255), 1, cv2.LINE_AA)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m apps.read", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("paths", nargs="+", help="image files, folders (read recursively) or globs")
    p.add_argument("--model", default=None, help="recognizer file (default: the shipped default, weights/MODEL_CARD.md)")
    p.add_argument("--detector", default="default",
                   help="detector: a model name (ppocrv6-tiny-det, ppocrv6-det, ppocrv4-det) or ONNX file")
    p.add_argument("--det-side", type=int, default=960,
                   help="detector input side; a larger image is tiled so its words shrink by 1.5x at most")
    p.add_argument("--threads", type=int, default=0, help="recognizer threads (0: the cores the detector leaves)")
    p.add_argument("--min-confidence", type=float, default=0.0, help="leave out words read below this confidence")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON document: [{path, words}] (default: lines)")
    out.add_argument("--jsonl", action="store_true", help="print one JSON line per image (default: lines)")
    p.add_argument("--annotate", default=None,
                   help="write a copy of each image with its words drawn into this folder (must exist); unset: none")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: shown on a terminal)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from runtime.reader import TextReader, load_image

    positive("--det-side", args.det_side)
    if args.threads < 0:
        raise InputError(f"--threads: must be >= 0, got {args.threads}")
    if args.annotate and not Path(args.annotate).is_dir():
        raise InputError(f"--annotate {args.annotate}: no such folder")
    files = expand_paths(args.paths)
    if not files:
        raise InputError(f"{' '.join(args.paths)}: no image files")
    reader = TextReader(args.model, args.detector, threads=args.threads, det_side=args.det_side)
    results, skipped = [], []
    bar = None
    if len(files) > 1 and not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="image", file=sys.stderr)
    try:
        for f in files:
            try:
                img = load_image(f)
            except InputError:
                skipped.append(f)
                continue
            finally:
                if bar is not None:
                    bar.update(1)
            words = [w for w in reader.read(img) if w.confidence >= args.min_confidence]
            results.append({"path": str(f), "words": [w.to_dict() for w in words]})
            if args.jsonl:
                print(json.dumps(results[-1]), flush=True)
            elif not args.json:
                for w in words:
                    box = ",".join(f"{v:.0f}" for v in w.box)
                    print(f"{f}\t{w.text}\t{w.confidence:.3f}\t{box}", flush=True)
            if args.annotate:
                ok, png = cv2.imencode(".png", annotate(img, words))
                write_bytes_atomic(png.tobytes(), Path(args.annotate) / (f.stem + ".png"))
    finally:
        if bar is not None:
            bar.close()
        reader.close()
    if args.json:
        print(json.dumps(results, indent=1))
    n_words = sum(len(r["words"]) for r in results)
    note = f", {len(skipped)} skipped (not images OpenCV can decode: {', '.join(map(str, skipped[:3]))}" \
           f"{' ...' if len(skipped) > 3 else ''})" if skipped else ""
    print(f"read: {n_words} words in {len(results)} images{note}", file=sys.stderr)
    if not results:
        raise InputError(f"{' '.join(args.paths)}: none of the {len(files)} files is an image OpenCV can decode")
    return 0


console = console_script(main)  # tinytext-* (pyproject.toml)

if __name__ == "__main__":
    sys.exit(console())
