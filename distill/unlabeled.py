"""Unlabeled word images as training data: a folder of images, an lmdb whose labels are ignored, or regions of
video frames. They learn from an ONNX teacher's targets (``distill.onnx_teacher``): frame-level soft targets
always, the teacher's string as CTC target when its confidence passes ``onnx_teacher.conf_threshold``.

Video frames with regions become an STR-layout lmdb of crops once (``python -m distill.data unlabeled --video V
--regions R --out X``): decoding a video at random positions every epoch would cost more than the training step.
Regions are a JSONL file with one object per frame, the camera app's ``--jsonl`` output or any file like it:
``{"frame": 12, "words": [{"box": [x0, y0, x1, y1]}, ...]}``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from runtime.video import VideoFrames
from runtime.datasets import (CorruptSample, DataError, Reader, Sample, decode_image, detect_layout, open_lmdb,
                              release_lmdb)

__all__ = ["UnlabeledFolder", "UnlabeledLmdb", "open_unlabeled", "video_regions_to_lmdb"]

_IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class UnlabeledFolder(Reader):
    """Every image file under a folder (recursively, sorted); keys are relative paths."""

    layout = "unlabeled-folder"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        if not self.path.is_dir():
            raise DataError(f"{self.path}: not a folder of images")
        self.keys = sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*")
                           if p.suffix.lower() in _IMAGE_EXT and p.is_file())
        if not self.keys:
            raise DataError(f"{self.path}: no images ({', '.join(sorted(_IMAGE_EXT))})")
        self.labels = [""] * len(self.keys)
        self.stats.total = self.stats.kept = len(self.keys)

    def __getitem__(self, i: int) -> Sample:
        rel = self.keys[i]
        try:
            buf = (self.path / rel).read_bytes()
        except OSError as e:
            raise CorruptSample(rel, f"cannot read {self.path / rel} ({e.strerror})") from None
        return Sample(rel, "", decode_image(buf, rel))


class UnlabeledLmdb(Reader):
    """The images of an STR or TextZoom-layout lmdb (HR images for TextZoom), labels ignored."""

    layout = "unlabeled-lmdb"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self._prefix = "image_hr" if detect_layout(path) == "textzoom" else "image"
        env = open_lmdb(path)
        with env.begin() as txn:
            raw = txn.get(b"num-samples")
            if raw is None:
                raise DataError(f"{self.path}: no 'num-samples' key")
            n = int(raw)
        release_lmdb(env)
        self.keys = [f"{i:09d}" for i in range(1, n + 1)]
        self.labels = [""] * n
        self.stats.total = self.stats.kept = n

    def __getitem__(self, i: int) -> Sample:
        key = self.keys[i]
        with open_lmdb(self.path).begin() as txn:  # one cached handle per process (fork-safe)
            buf = txn.get(f"{self._prefix}-{key}".encode())
        if buf is None:
            raise CorruptSample(key, f"no {self._prefix}-{key} in {self.path}")
        return Sample(key, "", decode_image(buf, key))


def open_unlabeled(path: str | os.PathLike) -> Reader:
    """An lmdb (data.mdb inside) or a folder of images."""
    p = Path(path)
    if (p / "data.mdb").is_file():
        return UnlabeledLmdb(p)
    if p.is_dir():
        return UnlabeledFolder(p)
    raise DataError(f"{p}: expected an lmdb folder or a folder of images")


def _read_regions(path: Path) -> dict[int, list[list[float]]]:
    out: dict[int, list[list[float]]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                frame = int(rec["frame"])
                boxes = [list(map(float, w["box"])) for w in rec.get("words", [])]
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{lineno}: expected {{\"frame\": N, \"words\": [{{\"box\": [x0, y0, x1, y1]}}]}} "
                                f"({type(e).__name__}: {e})") from None
            if any(len(b) != 4 for b in boxes):
                raise DataError(f"{path}:{lineno}: every box needs 4 numbers x0, y0, x1, y1")
            out.setdefault(frame, []).extend(boxes)
    return out


def video_regions_to_lmdb(video: str | os.PathLike, regions: str | os.PathLike, out: str | os.PathLike,
                          every: int = 1, min_size: int = 6, overwrite: bool = False) -> int:
    """Crop the regions of every ``every``-th frame listed in ``regions`` into an STR lmdb with empty labels
    (written atomically). Returns the number of crops."""
    import cv2

    from .lmdb_writer import LmdbWriter

    video, regions = Path(video), Path(regions)
    if not video.is_file():
        raise DataError(f"{video}: no such video file")
    if not regions.is_file():
        raise DataError(f"{regions}: no such regions file")
    wanted = _read_regions(regions)
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise DataError(f"{video}: OpenCV cannot open this video")
    n, idx = 0, -1
    frames = VideoFrames(cap)  # the camera app's reader: the same frame indices, past damaged stretches
    with LmdbWriter(out, overwrite=overwrite) as w:
        while True:
            frame = frames.read()
            if frame is None:
                break
            idx += 1
            if idx % every or idx not in wanted:
                continue
            H, W = frame.shape[:2]
            for x0, y0, x1, y1 in wanted[idx]:
                x0, y0 = int(max(0, np.floor(x0))), int(max(0, np.floor(y0)))
                x1, y1 = int(min(W, np.ceil(x1))), int(min(H, np.ceil(y1)))
                if x1 - x0 < min_size or y1 - y0 < min_size:
                    continue
                ok, buf = cv2.imencode(".png", frame[y0:y1, x0:x1])
                n += 1
                w.put(f"image-{n:09d}", buf.tobytes())
                w.put(f"label-{n:09d}", "")
        cap.release()
        if frames.damaged:
            print(f"unlabeled: {video}: skipped {frames.damaged} unreadable frames", file=sys.stderr)
        if n == 0:
            raise DataError(f"{regions}: no region of at least {min_size} px matched a frame of {video}")
        w.finish(n)
    return n
