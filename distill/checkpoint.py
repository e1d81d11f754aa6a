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

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "strip_checkpoint", "CheckpointError"]


class CheckpointError(ValueError):
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


def load_checkpoint(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{p}: cannot read checkpoint ({type(e).__name__}: {e})") from None
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
