"""The per-frame hot path outside the network: pack N boxes of a frame into one NCHW batch, and greedy decoding.

One selector, two implementations with one API (as msgpack-python does): the C extension ``runtime._native``
(built by ``pip install``) and its NumPy twin ``runtime._native_py``. ``RUNTIME_PUREPYTHON=1`` forces the twin;
``RUNTIME_NATIVE_LIB=/path/_native.so`` loads a specific build (the AddressSanitizer job uses it).
This module validates every argument and allocates the outputs, so both raise the same exceptions, and the C code
only ever sees well-formed, C-contiguous buffers (it re-checks sizes anyway).

Frames are HxWx3 uint8 (OpenCV's BGR by default). Axis-aligned boxes are (N, 4) ``x0, y0, x1, y1`` in pixels
(float allowed; clipped to the frame), quads are (N, 4, 2) corners in order top-left, top-right, bottom-right,
bottom-left. The output is (N, 3, out_h, out_w) float32 or float16, ``(x / 255 - mean) / std`` per channel.
"""
from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["IMPLEMENTATION", "pack", "decode", "clip_boxes", "DecodedBatch", "native_available"]


def _load():
    if os.environ.get("RUNTIME_PUREPYTHON", "") not in ("", "0"):
        from . import _native_py

        return _native_py, "numpy"
    lib = os.environ.get("RUNTIME_NATIVE_LIB")
    try:
        if lib:
            spec = importlib.util.spec_from_file_location("runtime._native", lib)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod, "c"
        from . import _native  # type: ignore[attr-defined]

        return _native, "c"
    except ImportError:
        if lib:
            raise
        from . import _native_py

        return _native_py, "numpy"


_impl, IMPLEMENTATION = _load()


def native_available() -> bool:
    """Whether the compiled extension is importable (whatever the selector chose)."""
    try:
        from . import _native  # type: ignore[attr-defined]  # noqa: F401

        return True
    except ImportError:
        return False


def _frame(frame) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"frame: expected a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise TypeError(f"frame: expected dtype uint8, got {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"frame: expected shape (H, W, 3), got {frame.shape}")
    if not frame.flags.c_contiguous:
        raise ValueError("frame: expected a C-contiguous array (np.ascontiguousarray(frame))")
    return frame


def clip_boxes(boxes, width: int, height: int, min_size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Clip (N, 4) boxes to a frame; returns (clipped boxes, mask of those still at least ``min_size`` wide and
    high). The camera pipeline filters with this before packing, so one bad detection never fails a batch."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    finite = np.isfinite(b).all(1)
    b[~finite] = 0
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    ok = finite & (b[:, 2] - b[:, 0] >= min_size) & (b[:, 3] - b[:, 1] >= min_size)
    return b, ok


def _boxes(boxes, H: int, W: int) -> tuple[np.ndarray, bool]:
    try:
        b = np.array(boxes, dtype=np.float64)  # a copy: C-contiguous float64 whatever came in
    except (TypeError, ValueError) as e:
        raise ValueError(f"boxes: not numeric ({e})") from None
    if b.size == 0 and b.ndim >= 1 and len(b) == 0:
        return np.zeros((0, 4)), False
    if b.ndim == 2 and b.shape[1] == 4:
        quads = False
    elif b.ndim == 3 and b.shape[1:] == (4, 2):
        quads = True
    else:
        raise ValueError(f"boxes: expected (N, 4) x0,y0,x1,y1 or (N, 4, 2) quads, got shape {b.shape}")
    bad = ~np.isfinite(b.reshape(len(b), -1)).all(1)
    if bad.any():
        raise ValueError(f"boxes: box {int(np.flatnonzero(bad)[0])} has a non-finite coordinate")
    if quads:
        # its bounding box must meet the frame; samples outside the frame replicate the edge
        inside = (b[..., 0].min(1) < W) & (b[..., 0].max(1) > 0) & (b[..., 1].min(1) < H) & (b[..., 1].max(1) > 0)
        if not inside.all():
            raise ValueError(f"boxes: quad {int(np.flatnonzero(~inside)[0])} lies outside the {W}x{H} frame")
        # corners in reading order (top-left, top-right, bottom-right, bottom-left) turn the same way at every
        # corner; a self-crossing or mirrored quad would be sampled into a scrambled or mirrored crop
        e = np.roll(b, -1, axis=1) - b
        turn = e[:, :, 0] * np.roll(e, -1, axis=1)[:, :, 1] - e[:, :, 1] * np.roll(e, -1, axis=1)[:, :, 0]
        bad = ~(turn > 0).all(1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"boxes: quad {i} {b[i].tolist()} is self-crossing, mirrored or degenerate (corners "
                             "must go top-left, top-right, bottom-right, bottom-left)")
        return np.ascontiguousarray(b.reshape(len(b), 8)), True
    raw = b
    b, _ = clip_boxes(raw, W, H)
    empty = (b[:, 2] - b[:, 0] <= 0) | (b[:, 3] - b[:, 1] <= 0)
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise ValueError(f"boxes: box {i} {raw[i].tolist()} is empty or outside the {W}x{H} frame")
    return b, False


def _triple(v, name: str) -> list[float]:
    t = [float(v)] * 3 if np.isscalar(v) else [float(x) for x in v]
    if len(t) != 3 or not all(np.isfinite(t)):
        raise ValueError(f"{name}: expected a number or 3 finite numbers, got {v!r}")
    if name == "std" and not all(x > 0 for x in t):
        raise ValueError(f"std: must be > 0, got {v!r}")
    return t


def pack(frame: np.ndarray, boxes, size: tuple[int, int], mean: float | Sequence[float] = 0.5,
         std: float | Sequence[float] = 0.5, *, swap_rb: bool = True, keep_aspect: bool = False, pad: float = 0.0,
         dtype=np.float32) -> np.ndarray:
    """Crop, resize, normalise and pack N boxes of ``frame`` into one (N, 3, H, W) batch, ``size`` = (H, W).

    ``swap_rb``: the frame is BGR (OpenCV) and the model wants RGB. ``keep_aspect``: resize to the box's aspect
    ratio (at most ``W`` wide), left-aligned, the rest filled with ``pad`` (a value after normalisation);
    otherwise stretch, as training does. Axis-aligned boxes use Pillow's antialiased bicubic, the filter the
    training transforms use (``runtime.preprocess.prepare``)."""
    f = _frame(frame)
    H, W = f.shape[:2]
    try:
        out_h, out_w = (int(size[0]), int(size[1]))
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"size: expected (H, W), got {size!r}") from None
    if out_h < 1 or out_w < 1 or out_h > 4096 or out_w > 4096:
        raise ValueError(f"size: expected 1..4096, got {size!r}")
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float16):
        raise TypeError(f"dtype: expected float32 or float16, got {dt}")
    m, s = _triple(mean, "mean"), _triple(std, "std")
    if not np.isfinite(pad):
        raise ValueError(f"pad: expected a finite number, got {pad!r}")
    b, quads = _boxes(boxes, H, W)
    n = len(b)
    out = np.empty((n, 3, out_h, out_w), dt)
    if n:
        fn = _impl.pack_quads if quads else _impl.pack_boxes
        fn(f, H, W, b, n, out, out_h, out_w, m, s, int(bool(swap_rb)), int(bool(keep_aspect)), float(pad),
           int(dt == np.float16))
    return out


class DecodedBatch(NamedTuple):
    """Greedy decoding of N rows: ``ids[n, :lengths[n]]`` and ``conf[n, :lengths[n]]`` are row n's classes and
    per-character confidences, ``seq_conf[n]`` its sequence confidence."""

    ids: np.ndarray
    conf: np.ndarray
    lengths: np.ndarray
    seq_conf: np.ndarray


def decode(probs: np.ndarray, kind: str, special: int = 0) -> DecodedBatch:
    """``kind`` "ctc": argmax, drop ``special`` (the blank), collapse repeats. "eos": argmax, cut at the first
    ``special`` (EOS). ``probs`` is (N, T, C) float32 probabilities (softmax applied)."""
    if kind not in ("ctc", "eos"):
        raise ValueError(f"decode: kind must be 'ctc' or 'eos', got {kind!r}")
    if not isinstance(probs, np.ndarray):
        raise TypeError(f"decode: expected a numpy array, got {type(probs).__name__}")
    if probs.ndim != 3:
        raise ValueError(f"decode: expected (N, T, C) probabilities, got shape {probs.shape}")
    if probs.dtype not in (np.float32, np.float16, np.float64):
        raise TypeError(f"decode: expected float probabilities, got dtype {probs.dtype}")
    N, T, C = probs.shape
    if C < 1 or not 0 <= special < C:
        raise ValueError(f"decode: special id {special} outside the {C} classes")
    p = np.ascontiguousarray(probs, dtype=np.float32)  # no copy for the usual float32 C-contiguous output
    ids = np.zeros((N, T), np.int32)
    conf = np.zeros((N, T), np.float32)
    lengths = np.zeros(N, np.int32)
    seq = np.zeros(N, np.float64)
    _impl.decode(p, N, T, C, 0 if kind == "ctc" else 1, int(special), ids, conf, lengths, seq)
    return DecodedBatch(ids, conf, lengths, seq)
