"""Model registry: a name and its arguments rebuild a model, so checkpoints carry everything export needs."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from runtime.charset import resolve_charset
from runtime.preprocess import HR_SIZE, LR_SIZE

from .clip import CLIP
from .cnn import CNNAttn, CNNCTC
from .lr_surgery import PPOCR_LR_OVERRIDES, upsample_halved_strides
from .onnx_net import OnnxNet, scale_pair, strip_weights
from .pruning import ffn_pairs, prune_ffn, prune_ffn_refit, resolve_keep
from .parseq import PARSeq, RecOut, gen_tgt_perms

__all__ = ["MODELS", "build_model", "model_spec", "resolved_kwargs", "make_student", "make_onnx_student",
           "PPOCR_LR_OVERRIDES", "load_official_parseq", "RecOut", "gen_tgt_perms",
           "HR_SIZE", "LR_SIZE"]


_PARSEQ_SIZES = {
    "tiny": dict(dim=192, depth=12, heads=3, dec_heads=6),
    "small": dict(dim=384, depth=12, heads=6, dec_heads=12),
}


def _parseq(size: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, max_len: int, lr: bool, **kw: Any) -> nn.Module:
        args = dict(_PARSEQ_SIZES[size])
        args.update(kw)
        img, patch = (LR_SIZE, (2, 4)) if lr else (HR_SIZE, (4, 8))
        return PARSeq(num_classes, max_len, img_size=img, patch_size=patch, **args)

    return build


def _cnn(cls) -> Callable[..., nn.Module]:
    def build(num_classes: int, max_len: int, lr: bool, **kw: Any) -> nn.Module:
        return cls(num_classes, max_len, img_size=LR_SIZE if lr else HR_SIZE, lr=lr, **kw)

    return build


def _onnx(num_classes: int, max_len: int, lr: bool, **kw: Any) -> nn.Module:
    return OnnxNet(num_classes, max_len, img_size=LR_SIZE if lr else HR_SIZE, lr=lr, **kw)


# name -> (builder, tokenizer kind)
def _clip(num_classes: int, max_len: int, lr: bool, **kw: Any) -> nn.Module:
    return CLIP(**kw)


MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "clip": (_clip, "clip"),
    "parseq-tiny": (_parseq("tiny"), "attn"),
    "parseq-small": (_parseq("small"), "attn"),
    "cnn-attn": (_cnn(CNNAttn), "attn"),
    "cnn-ctc": (_cnn(CNNCTC), "ctc"),
    "onnx-ctc": (_onnx, "ctc"),
}


_CLASSES = {"clip": CLIP, "parseq-tiny": PARSeq, "parseq-small": PARSeq, "cnn-attn": CNNAttn, "cnn-ctc": CNNCTC,
            "onnx-ctc": OnnxNet}
_SET_BY_BUILDER = {"self", "num_classes", "max_len", "img_size", "patch_size", "lr", "weights"}


def resolved_kwargs(name: str, kwargs: dict) -> dict:
    """Every architecture argument spelled out, so a checkpoint rebuilds its model even if defaults change."""
    sig = inspect.signature(_CLASSES[name].__init__)
    known = {k for k in sig.parameters if k not in _SET_BY_BUILDER}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"model.kwargs: {name} has no argument(s) {unknown}; known: {sorted(known)}")
    full = {k: p.default for k, p in sig.parameters.items() if k in known}
    if name.startswith("parseq-"):
        full.update(_PARSEQ_SIZES[name.split("-", 1)[1]])
    full.update(kwargs)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}


def model_spec(name: str, charset: str = "36", max_len: int = 25, lr: bool = False, **kwargs: Any) -> dict:
    if name not in MODELS:
        raise ValueError(f"model: unknown name {name!r}; known: {sorted(MODELS)}")
    return {"name": name, "charset": resolve_charset(charset), "max_len": int(max_len), "lr": bool(lr),
            "kwargs": resolved_kwargs(name, kwargs), "tokenizer": MODELS[name][1]}


def num_classes(spec: dict) -> int:
    n = len(spec["charset"])
    return {"attn": n + 3, "ctc": n + 1}.get(spec["tokenizer"], 0)


def build_model(spec: dict) -> nn.Module:
    builder, _ = MODELS[spec["name"]]
    return builder(num_classes(spec), spec["max_len"], spec["lr"], **spec.get("kwargs", {}))


def make_student(teacher_spec: dict, teacher_state: dict | None = None) -> tuple[dict, nn.Module, list[str]]:
    """The LR twin of a teacher: same architecture on 16x64 input; starts from the teacher's weights except where
    shapes differ (the PARSeq patch embedding). Returns (spec, model, keys not copied)."""
    spec = dict(teacher_spec, lr=True, kwargs=dict(teacher_spec.get("kwargs", {})))
    student = build_model(spec)
    skipped: list[str] = []
    if teacher_state is not None:
        own = student.state_dict()
        take = {}
        for k, v in teacher_state.items():
            if k in own and own[k].shape == v.shape:
                take[k] = v
            else:
                skipped.append(k)
        student.load_state_dict(take, strict=False)
    return spec, student, skipped


def make_onnx_student(onnx_path: str, charset: str, max_len: int, teacher_classes: list[str],
                      overrides: dict | None = None, flip_input_channels: bool = True,
                      input_scale: float | Sequence[float] = 1.0, stride_init: str = "upsample",
                      ffn_keep: float | dict | None = None,
                      calib: torch.Tensor | None = None) -> tuple[dict, nn.Module, list[str]]:
    """The LR student of an ONNX recognizer: its graph with ``overrides`` (stride/pool changes for 16x64 input),
    its classifier cut to ``charset`` (class k+1 <- the teacher class of charset[k], its lower-case twin when only
    that exists) and all its weights. ``teacher_classes``: the teacher's class names, blank first.
    stride_init: "upsample" gives each convolution whose stride the overrides halve the kernel that reads its input
    as the original reads it upsampled x2 (``upsample_halved_strides``); "copy" keeps the kernel as it is.
    ffn_keep: the fraction of hidden channels each feed-forward pair keeps (``pruning``): one number, or {widening
    conv name: fraction} with "*" for the rest; None or 1: the full graph. The channels kept are those with the most
    signal on ``calib`` (LR images, N x 3 x 16 x 64, as the student reads them), the projections refitted to
    what the full network gave there (``pruning.prune_ffn_refit``); without images, by weight norms, no refit.
    Returns (spec, model, names of the convolutions whose kernels were composed)."""
    cs = resolve_charset(charset)
    index = {c: i for i, c in enumerate(teacher_classes)}
    keep = [0]
    for c in cs:
        t = index.get(c, index.get(c.swapcase()))
        if t is None:
            raise ValueError(f"{onnx_path}: the teacher has no class for student character {c!r}; use a charset "
                             "the teacher covers")
        keep.append(t)
    with open(onnx_path, "rb") as f:
        graph, arrays = strip_weights(f.read())
    if stride_init not in ("upsample", "copy"):
        raise ValueError(f"stride_init: expected upsample or copy, got {stride_init!r}")
    composed = upsample_halved_strides(graph, arrays, overrides or {}) if stride_init == "upsample" else []
    sh, sw = scale_pair(input_scale, "input_scale")
    kwargs = {"graph": graph, "overrides": overrides or {}, "keep_classes": keep, "logits": "",
              "flip_input_channels": bool(flip_input_channels), "input_scale": sh if sh == sw else [sh, sw]}
    spec = model_spec("onnx-ctc", cs, max_len, lr=True, **kwargs)
    if ffn_keep is not None and ffn_keep != 1:
        pairs = ffn_pairs(graph)
        kept = resolve_keep(pairs, ffn_keep)
        if calib is not None:
            def run(g: bytes, w: dict, names: tuple) -> dict:
                net = OnnxNet(num_classes(spec), max_len, img_size=LR_SIZE, lr=True, weights=w,
                              **{**kwargs, "graph": g}).eval()
                with torch.no_grad():
                    return {k: v.numpy() for k, v in net.run(calib, names).items()}

            kwargs["graph"], arrays = prune_ffn_refit(graph, arrays, pairs, kept, run)
        else:  # no images: rank by weight norms, no refit
            importance = {p.expand: np.linalg.norm(arrays[p.expand_weight].reshape(p.hidden, -1), axis=1)
                          * np.linalg.norm(arrays[p.project_weight].reshape(-1, p.hidden), axis=0) for p in pairs}
            kwargs["graph"], arrays = prune_ffn(graph, arrays, pairs, kept, importance)
        spec = model_spec("onnx-ctc", cs, max_len, lr=True, **kwargs)
    model = OnnxNet(num_classes(spec), max_len, img_size=LR_SIZE, lr=True, weights=arrays, **kwargs)
    return spec, model, composed


def load_official_parseq(path_or_state: str | dict, size: str = "small", charset: str = "94", max_len: int = 25,
                         **kw: Any) -> tuple[dict, nn.Module]:
    """Load a checkpoint of the official PARSeq release (its state-dict names) as an HR teacher.

    Accepts a raw state dict, a Lightning checkpoint (``state_dict`` inside) and keys with or without the
    ``model.`` prefix. Any missing, unexpected or mis-shaped tensor is an error listing them."""
    src = path_or_state
    if isinstance(src, str):
        src = torch.load(src, map_location="cpu", weights_only=True)
    state = src.get("state_dict", src) if isinstance(src, dict) else src
    state = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in state.items()}
    spec = model_spec(f"parseq-{size}", charset, max_len, lr=False, **kw)
    model = build_model(spec)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = [f"not an official PARSeq-{size} checkpoint for charset of {len(spec['charset'])} characters:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        lines += [f"  shape {s}" for s in shapes[:8]]
        raise ValueError("\n".join(lines))
    model.load_state_dict(state)
    return spec, model
