"""Calibration data for INT8: network inputs made from LR images, cached as a file beside the model.

Sources, one entry point: a TextZoom-layout lmdb (its stored LR images; the ``train`` split of a synthetic root
by default), any STR lmdb or image folder (LR made by the ``lr16`` condition for LR models), or a synthetic root.
The cache file is keyed by the data path, the count, the input size and the preprocessing, so a change in any of
them calibrates afresh."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np

from runtime.conditions import apply_condition
from runtime.datasets import LabelPolicy, open_dataset
from runtime.preprocess import MEAN, STD, prepare

__all__ = ["CalibrationError", "calibration_tensors", "resolve_calib_path", "add_calibration_args"]

PREPROC_VERSION = 2  # 2: runtime.preprocess.prepare (fastpath resampler) instead of PIL


class CalibrationError(ValueError):
    pass


def resolve_calib_path(data: str) -> Path:
    p = Path(data)
    if (p / "train" / "data.mdb").exists():  # a synthetic / TextZoom root: its train split
        return p / "train"
    return p


def calibration_tensors(data: str, size: tuple[int, int], lr: bool, n: int = 512, batch: int = 1,
                        cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    path = resolve_calib_path(data)
    if not path.exists():
        raise CalibrationError(f"--calib {data}: no such dataset")
    key = hashlib.sha1(f"{path.resolve()}|{n}|{size}|{lr}|{MEAN}|{STD}|{PREPROC_VERSION}".encode()).hexdigest()[:12]
    cache = Path(cache_dir) / f"calib-{key}.npy" if cache_dir else None
    if cache is not None and cache.exists():
        x = np.load(cache)
    else:
        reader = open_dataset(path, LabelPolicy(max_len=0))
        out = []
        for s in reader.iter_valid():
            if s.lr is not None and lr:
                img = s.lr  # the TextZoom LR image: what the LR model will see
            elif lr:
                img = apply_condition("lr16", s.image)
            else:
                img = s.image
            out.append(prepare(img, size))
            if len(out) >= n:
                break
        reader.close()
        x = np.stack(out).astype(np.float32) if out else np.zeros((0, 3, *size), np.float32)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}.npy")
            np.save(tmp, x)
            os.replace(tmp, cache)
    if len(x) < max(1, batch):
        raise CalibrationError(f"--calib {data}: {len(x)} images, fewer than the batch size {batch}")
    if len(x) < 300:
        print(f"calibration: warning: only {len(x)} images from {data}; 300+ give steadier INT8 ranges",
              file=sys.stderr)
    return x


def add_calibration_args(p, calib_help: str) -> None:
    """The calibration options ``compress.export`` and ``compress.build_engine`` share."""
    p.add_argument("--calib", default=None, help=calib_help)
    p.add_argument("--calib-n", type=int, default=512, help="calibration images")
    p.add_argument("--calibrator", default="minmax", choices=["minmax", "entropy", "percentile"], help="INT8 calibrator")
