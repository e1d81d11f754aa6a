"""Checkpoints: written atomically, carrying the model spec, charset and config so any consumer (evaluate,
compress, the benchmark) rebuilds the model from the file alone."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from runtime.charset import Tokenizer, make_tokenizer

from .models import build_model
from runtime.cli import InputError

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "strip_checkpoint", "CheckpointError"]


class CheckpointError(InputError, ValueError):
    pass


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """torch.save to a temp file in the same directory, fsync, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _allowed_globals() -> list:
    """The only non-tensor types a checkpoint may name: NumPy arrays (the RNG state of runs saved before it was
    stored as a tensor). Plain containers, numbers, strings and tensors need no allowlist."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint without running any code from it (``weights_only``): a file whose pickle asks for any
    other type is refused, naming what it asked for."""
    import pickle

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            allowed = {f"{g.__module__}.{g.__qualname__}" for g in _allowed_globals()}
            asked = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(p) if g not in allowed]
        except Exception:  # noqa: BLE001 - not even readable as a zip of pickles
            asked = []
        what = f"asks for {', '.join(asked[:4])}" if asked else "holds more than tensors and plain types"
        raise CheckpointError(f"{p}: refused: its pickle {what}; checkpoints load with weights_only (tensors and "
                              "plain types only), so that a file never runs code on this machine") from None
    except Exception as e:
        raise CheckpointError(f"{p}: cannot read checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    for key in ("model_spec", "model"):
        if not isinstance(ckpt, dict) or key not in ckpt:
            raise CheckpointError(f"{p}: not a distill checkpoint (no {key!r}); official PARSeq weights load "
                                  "through distill.models.load_official_parseq")
    return ckpt


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, Tokenizer, dict]:
    """(model in eval mode, its tokenizer, the checkpoint dict)."""
    ckpt = load_checkpoint(path)
    spec = ckpt["model_spec"]
    model = build_model(spec)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit model {spec['name']}: {e}") from None
    tok = make_tokenizer(spec["tokenizer"], spec["charset"]) if spec["tokenizer"] in ("attn", "ctc") else None
    return model.to(device).eval(), tok, ckpt


def strip_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """A shippable copy: model spec, weights, charset, config and provenance; no optimizer or RNG state."""
    ck = load_checkpoint(src)
    keep = {k: ck.get(k) for k in ("model_spec", "model", "charset", "tokenizer", "config", "stage", "step",
                                   "val_acc", "best_acc")}
    keep["teacher_ckpt"] = Path(ck["teacher_ckpt"]).name if ck.get("teacher_ckpt") else ""
    return save_checkpoint(dst, keep)
