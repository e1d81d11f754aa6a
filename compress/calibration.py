"""Calibration data for INT8: network inputs made from LR images, cached as a file beside the model.

Sources, one entry point: a TextZoom-layout lmdb (its stored LR images; the ``train`` split of a synthetic root
by default), any STR lmdb or image folder (LR made from each HR crop by the named conditions in turn for LR
models), or a synthetic root. The cache file is keyed by the data's content (``runtime.datasets.content_fingerprint``),
the count, the input size, the conditions and the preprocessing, so a change in any of them calibrates afresh; a
set too small to calibrate is never cached."""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.conditions import CONDITIONS, apply_condition
from runtime.datasets import LabelPolicy, content_fingerprint, open_dataset
from runtime.preprocess import MEAN, STD, prepare
from runtime.cli import InputError
from runtime.files import write_bytes_atomic

__all__ = ["CalibrationError", "calibration_tensors", "finetune_tensors", "data_paths", "resolve_calib_path",
           "existing_data", "add_calibration_args", "add_conditions_arg", "add_finetune_args", "finetune_options", "conditions_arg",
           "lr_conditions", "CALIB_CONDITIONS", "FINETUNE_VIEWS"]

PREPROC_VERSION = 2  # 2: runtime.preprocess.prepare (fastpath resampler) instead of PIL
# LR made from HR crops alternates between plain and blurred-and-compressed 16x64: the INT8 ranges then cover both
# what a sharp and a soft camera give. Calibrated on lr16 alone, the PP-OCRv4 student's INT8 file lost 5.7 points
# on svt_test lr16blur and 2.3 on lr16 against FP32; on both, 2.5 and 0.5 (percentile, 12 float convolutions).
CALIB_CONDITIONS = ("lr16", "lr16blur")
# What the INT8 fine-tuning trains on: the cached inputs (each crop under CALIB_CONDITIONS) or new augmented views
# at every step (finetune_views.FreshViews).
FINETUNE_VIEWS = ("fixed", "fresh")


class CalibrationError(InputError, ValueError):
    pass


def data_paths(text: str) -> list[str]:
    """The datasets of a comma-separated ``--calib`` / ``--eval`` value, in order."""
    return [d.strip() for d in text.split(",") if d.strip()]


def resolve_calib_path(data: str) -> Path:
    p = Path(data)
    if (p / "train" / "data.mdb").exists():  # a synthetic / TextZoom root: its train split
        return p / "train"
    return p


def existing_data(data: str, option: str) -> Path:
    """``resolve_calib_path(data)``, refused in one line naming ``option`` when there is no such dataset."""
    path = resolve_calib_path(data)
    if not path.exists():
        raise CalibrationError(f"{option} {data}: no such dataset")
    return path


def _shares(n: int, parts: int) -> list[int]:
    """``n`` split into ``parts`` counts as equal as they come, the first ones larger by one."""
    return [n // parts + (i < n % parts) for i in range(parts)]


def _write_cache(cache: Path, save, *args, **kwargs) -> None:
    """``save`` (``np.save`` or ``np.savez``) of the arrays into ``cache``, atomically."""
    buf = io.BytesIO()
    save(buf, *args, **kwargs)
    write_bytes_atomic(buf.getvalue(), cache)


def _source(data: str, option: str, conditions: Sequence[str], key: str, cache_dir: str | os.PathLike | None,
            prefix: str, suffix: str) -> tuple[Path, tuple[str, ...], Path | None]:
    """One dataset of ``option``: its path, the checked LR conditions, and its cache file, keyed by the data's content,
    the preprocessing, the conditions and the caller's ``key`` (None without ``cache_dir``)."""
    path = existing_data(data, option)
    try:
        conditions = lr_conditions(conditions)
    except ValueError as e:
        raise CalibrationError(f"--calib-conditions: {e}") from None
    digest = hashlib.sha1(f"{content_fingerprint(path)}|{MEAN}|{STD}|{PREPROC_VERSION}|{conditions}|{key}".encode())
    return path, conditions, Path(cache_dir) / f"{prefix}-{digest.hexdigest()[:12]}{suffix}" if cache_dir else None


def calibration_tensors(data: str, size: tuple[int, int], lr: bool, n: int = 512, batch: int = 1,
                        cache_dir: str | os.PathLike | None = None,
                        conditions: Sequence[str] = CALIB_CONDITIONS) -> np.ndarray:
    """``n`` network inputs from ``data``; HR crops become LR for LR models by ``conditions`` in turn. Several
    datasets, comma-separated, give an equal share each, interleaved (ranges that see every kind of crop in every
    pass of a strided calibrator)."""
    if "," in data:
        parts = data_paths(data)
        xs = [calibration_tensors(d, size, lr, k, 1, cache_dir, conditions)
              for d, k in zip(parts, _shares(n, len(parts)))]
        order = sorted(((j / len(x), i, j) for i, x in enumerate(xs) for j in range(len(x))))
        x = np.stack([xs[i][j] for _, i, j in order]) if order else np.zeros((0, 3, *size), np.float32)
        if len(x) < max(1, batch):
            raise CalibrationError(f"--calib {data}: {len(x)} usable images, fewer than the batch size {batch}")
        return x
    path, conditions, cache = _source(data, "--calib", conditions, f"{n}|{size}|{lr}", cache_dir, "calib", ".npy")
    if cache is not None and cache.exists():
        x = np.load(cache)
    else:
        reader = open_dataset(path, LabelPolicy(max_len=0))
        out = []
        for s in reader.iter_valid():
            if s.lr is not None and lr:
                img = s.lr  # the TextZoom LR image: what the LR model will see
            elif lr:
                img = apply_condition(conditions[len(out) % len(conditions)], s.image)
            else:
                img = s.image
            out.append(prepare(img, size))
            if len(out) >= n:
                break
        reader.close()
        x = np.stack(out).astype(np.float32) if out else np.zeros((0, 3, *size), np.float32)
        if cache is not None and len(x) >= max(1, batch):
            _write_cache(cache, np.save, x)
    if len(x) < max(1, batch):
        raise CalibrationError(f"--calib {data}: {len(x)} usable images, fewer than the batch size {batch}")
    if len(x) < 300:
        print(f"calibration: warning: only {len(x)} images from {data}; 300+ give steadier INT8 ranges",
              file=sys.stderr)
    return x


def finetune_tensors(data: str, size: tuple[int, int], n: int, cache_dir: str | os.PathLike | None = None,
                     conditions: Sequence[str] = CALIB_CONDITIONS, lr: bool = True) -> tuple[np.ndarray, list[str]]:
    """Up to ``n`` network inputs from the crops of ``data`` with their labels, for fine-tuning an INT8 file: for LR
    models every HR crop under every condition in turn (a crop's views side by side), so a label comes with each
    input; for HR models each crop once. Several datasets, comma-separated, give up to an equal share each. Cached
    beside the calibration tensors."""
    parts = data_paths(data)
    if len(parts) > 1:
        got = [finetune_tensors(d, size, k, cache_dir, conditions, lr) for d, k in zip(parts, _shares(n, len(parts)))]
        return np.concatenate([x for x, _ in got]), [lb for _, y in got for lb in y]
    path, conditions, cache = _source(data, "--int8-finetune-data", conditions, f"{n}|{size}|{lr}", cache_dir,
                                      "finetune", ".npz")
    if cache is not None and cache.exists():
        z = np.load(cache)
        return z["x"], [str(s) for s in z["labels"]]
    reader = open_dataset(path, LabelPolicy(max_len=0))
    xs, labels = [], []
    for s in reader.iter_valid():
        if lr and s.lr is not None:  # a TextZoom pair: its own LR image
            views = [s.lr]
        else:
            views = [apply_condition(c, s.image) for c in conditions] if lr else [s.image]
        for img in views[:n - len(xs)]:
            xs.append(prepare(img, size))
            labels.append(s.label)
        if len(xs) >= n:
            break
    reader.close()
    if not xs:
        raise CalibrationError(f"--int8-finetune-data {data}: no usable labelled crops")
    x = np.stack(xs).astype(np.float32)
    if cache is not None:
        _write_cache(cache, np.savez, x=x, labels=np.array(labels, dtype=str))
    return x, labels


def lr_conditions(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple when each is a condition that makes LR (any of runtime.conditions but ``hr``)."""
    names = tuple(names)
    if not names or any(c not in CONDITIONS or c == "hr" for c in names):
        raise ValueError(f"expected LR conditions from {sorted(set(CONDITIONS) - {'hr'})}, got {list(names)}")
    return names


def conditions_arg(text: str) -> tuple[str, ...]:
    """argparse type of --calib-conditions: comma-separated LR condition names."""
    try:
        return lr_conditions([c.strip() for c in text.split(",") if c.strip()])
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_conditions_arg(p) -> None:
    """--calib-conditions, for every command that calibrates (export, build_engine, ship)."""
    p.add_argument("--calib-conditions", default=",".join(CALIB_CONDITIONS), type=conditions_arg,
                   help="LR conditions (runtime.conditions) that make LR calibration images from HR crops, "
                        "in turn")


def add_calib_n_arg(p) -> None:
    """--calib-n, for every command that calibrates (export, build_engine, ship)."""
    p.add_argument("--calib-n", type=int, default=512,
                   help="calibration images (minmax holds them all in memory; percentile and entropy go in passes)")


def add_finetune_args(p) -> None:
    """--int8-finetune-steps / --int8-finetune-n, for every command that writes INT8 files (export, ship)."""
    p.add_argument("--int8-finetune-steps", type=int, default=0, metavar="N",
                   help="INT8: fine-tune the weights N steps through the file's own quantization points, distilled "
                        "from the FP32 model (compress.qdq_finetune; 0: off; default: 0)")
    p.add_argument("--int8-finetune-n", type=int, default=2048, metavar="N",
                   help="INT8 fine-tuning: up to N LR inputs, each crop of --int8-finetune-data under every "
                        "--calib-conditions (default: 2048)")
    p.add_argument("--int8-finetune-data", default=None, metavar="DATA",
                   help="INT8 fine-tuning: labelled crops (comma-separated: up to an equal share of each; default: "
                        "--calib)")
    p.add_argument("--int8-finetune-lr", type=float, default=1e-5, metavar="LR",
                   help="INT8 fine-tuning: peak learning rate of AdamW, cosine to zero (default: 1e-5)")
    p.add_argument("--int8-finetune-ctc", type=float, default=0.0, metavar="W",
                   help="INT8 fine-tuning: weight of CTC on the labels beside KL to the FP32 model's frames (0: the "
                        "labels are not used; default: 0)")
    p.add_argument("--int8-finetune-seed", type=int, default=0, metavar="N",
                   help="INT8 fine-tuning: seed of the batch order; two seeds measure how much the fine-tuning "
                        "itself moves accuracy (default: 0)")
    p.add_argument("--int8-finetune-rounding", action="store_true",
                   help="INT8 fine-tuning: only the int8 weights learn, each between the codes just below and just "
                        "above its FP32 value (AdaRound's choice); float tensors keep their FP32 values "
                        "(default: off, every weight and float tensor learns)")
    p.add_argument("--int8-finetune-views", default="fixed", choices=FINETUNE_VIEWS,
                   help="INT8 fine-tuning: fixed: the cached inputs, each crop under every --calib-conditions; "
                        "fresh: new augmented views at every step, 40%% plain lr16 and the rest the training's camera "
                        "chain, read by the FP32 model as they come (compress.finetune_views; default: fixed)")
    p.add_argument("--int8-finetune-weights", default=None, metavar="W1,W2,...",
                   help="INT8 fine-tuning with fresh views: the share of each --int8-finetune-data source "
                        "(default: by their sizes)")
    p.add_argument("--int8-finetune-scale-lr", type=float, default=0.0, metavar="LR",
                   help="INT8 fine-tuning: the activation scales learn too (learned step sizes), at this peak rate "
                        "on their logarithms, cosine to zero (0: the calibrated scales stay; default: 0)")


def finetune_options(args) -> dict:
    """The parsed fine-tuning options, checked, as ``quantize_from_data`` keywords."""
    from runtime.cli import non_negative, positive

    non_negative("--int8-finetune-steps", args.int8_finetune_steps)
    positive("--int8-finetune-n", args.int8_finetune_n)
    non_negative("--int8-finetune-ctc", args.int8_finetune_ctc)
    positive("--int8-finetune-lr", args.int8_finetune_lr)
    non_negative("--int8-finetune-scale-lr", args.int8_finetune_scale_lr)
    weights = None
    if args.int8_finetune_weights is not None:
        try:
            weights = [float(w) for w in args.int8_finetune_weights.split(",")]
        except ValueError:
            raise CalibrationError(f"--int8-finetune-weights: expected comma-separated numbers, got "
                                   f"{args.int8_finetune_weights!r}") from None
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise CalibrationError(f"--int8-finetune-weights: expected shares >= 0 with a positive sum, got "
                                   f"{args.int8_finetune_weights!r}")
    return {"finetune_steps": args.int8_finetune_steps, "finetune_n": args.int8_finetune_n,
            "finetune_data": args.int8_finetune_data, "finetune_ctc": args.int8_finetune_ctc,
            "finetune_lr": args.int8_finetune_lr, "finetune_seed": args.int8_finetune_seed,
            "finetune_scale_lr": args.int8_finetune_scale_lr, "finetune_views": args.int8_finetune_views,
            "finetune_weights": weights, "finetune_rounding": args.int8_finetune_rounding}


def add_calibration_args(p, calib_help: str) -> None:
    """The calibration options ``compress.export`` and ``compress.build_engine`` share."""
    p.add_argument("--calib", default=None, help=calib_help + " (comma-separated: an equal share of each)")
    add_calib_n_arg(p)
    add_conditions_arg(p)
    p.add_argument("--calibrator", default="minmax", choices=["minmax", "entropy", "percentile"], help="INT8 calibrator")
