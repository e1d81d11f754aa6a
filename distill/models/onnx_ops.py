"""The ONNX operators ``OnnxNet`` runs, as torch ops: one function per op type (``OPS``), each
``(net, inputs, attributes, device) -> output``; the graph's constants and shapes arrive as tensors."""
from __future__ import annotations

from typing import Sequence

import numpy as np

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OPS"]

_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64}


# -- operators ---------------------------------------------------------------------------------------------------
def _text(a: dict, key: str, default: str) -> str:
    """A string attribute (ONNX stores them as bytes)."""
    v = a.get(key, default)
    return v.decode() if isinstance(v, bytes) else v


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX pads (begins of every axis, then ends) as ``F.pad``'s list (last axis first, begin then end)."""
    nd = len(pads) // 2
    out: list[int] = []
    for b, e in zip(reversed(pads[:nd]), reversed(pads[nd:])):
        out += [b, e]
    return out


def _pads(p, nd: int = 2):
    if not p:
        return [0] * nd, None
    begin, end = p[:nd], p[nd:]
    if begin == end:
        return list(begin), None
    return [0] * nd, _torch_pad(p)


def _auto_pads(a: dict, x: Tensor, kernel: Sequence[int]) -> list[int]:
    """Explicit ONNX ``pads`` (begins, then ends) for ``auto_pad`` SAME_UPPER / SAME_LOWER (the output keeps
    ceil(input / stride); an odd total goes to the end for UPPER, the beginning for LOWER), else ``pads``."""
    mode = _text(a, "auto_pad", "NOTSET")
    if mode in ("NOTSET", "VALID"):
        return list(a.get("pads", []))
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"OnnxNet: auto_pad {mode!r} is not supported")
    strides, dil = a.get("strides", [1] * len(kernel)), a.get("dilations", [1] * len(kernel))
    begin, end = [], []
    for n, k, s, d in zip(x.shape[2:], kernel, strides, dil):
        total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
        small = total // 2
        begin.append(small if mode == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return begin + end


def _conv(self, args, a, dev):
    x, w, b = (args + [None])[:3]
    sym, asym = _pads(_auto_pads(a, x, w.shape[2:]))
    if asym:
        x = F.pad(x, asym)
    return F.conv2d(x, w, b, tuple(a.get("strides", [1, 1])), tuple(sym), tuple(a.get("dilations", [1, 1])),
                    a.get("group", 1))


def _pool(kind):
    def f(self, args, a, dev):
        x = args[0]
        sym, asym = _pads(_auto_pads(a, x, a["kernel_shape"]))
        if asym:  # padding never wins a max, and an average excludes it (count_include_pad 0, ONNX's default)
            if kind == "max":
                x = F.pad(x, asym, value=float("-inf"))
            elif not a.get("count_include_pad", 0):
                raise ValueError("OnnxNet: an AveragePool with uneven padding that excludes the pad is not supported")
            else:
                x = F.pad(x, asym)
        k = tuple(a["kernel_shape"])
        s = tuple(a.get("strides", [1] * len(k)))  # ONNX: strides default to 1
        if tuple(k) == (1, 1) and tuple(s) == (1, 1):
            return x
        if kind == "avg":
            return F.avg_pool2d(x, k, s, tuple(sym), bool(a.get("ceil_mode", 0)),
                                count_include_pad=bool(a.get("count_include_pad", 0)))
        return F.max_pool2d(x, k, s, tuple(sym), ceil_mode=bool(a.get("ceil_mode", 0)))
    return f


def _reshape(self, args, a, dev):
    x, shape = args
    target = [int(v) for v in shape.tolist()]
    dims = [x.shape[i] if v == 0 and not a.get("allowzero", 0) else v for i, v in enumerate(target)]
    # A traced export freezes every int here; recognizers keep the batch as the leading dimension, so it becomes
    # -1 (dynamic) and any other inferred dimension is resolved from the non-batch dimensions alone.
    if dims and x.dim() and dims[0] == x.shape[0]:
        if -1 in dims[1:]:
            known = int(np.prod([d for d in dims[1:] if d != -1]))
            dims[dims.index(-1, 1)] = int(np.prod([int(d) for d in x.shape[1:]])) // max(known, 1)
        dims[0] = -1
    return x.reshape(dims)


def _slice(self, args, a, dev):
    x = args[0]
    if len(args) > 1:
        starts, ends = args[1].tolist(), args[2].tolist()
        axes = args[3].tolist() if len(args) > 3 and args[3] is not None else list(range(len(starts)))
        steps = args[4].tolist() if len(args) > 4 and args[4] is not None else [1] * len(starts)
    else:
        starts, ends = a["starts"], a["ends"]
        axes, steps = a.get("axes", list(range(len(starts)))), [1] * len(starts)
    idx = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        n = x.shape[ax]
        e = min(e, n) if e >= 0 else e
        idx[ax] = slice(s, e, st)
    return x[tuple(idx)]


def _squeeze(self, args, a, dev):
    axes = a.get("axes") if "axes" in a else (args[1].tolist() if len(args) > 1 and args[1] is not None else None)
    if axes is None:
        return args[0].squeeze()
    x = args[0]
    for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _unsqueeze(self, args, a, dev):
    axes = a.get("axes") if "axes" in a else args[1].tolist()
    x = args[0]
    for ax in sorted(axes):
        x = x.unsqueeze(ax)
    return x


def _reduce_mean(self, args, a, dev):
    axes = a.get("axes") if "axes" in a else (args[1].tolist() if len(args) > 1 else None)
    keep = bool(a.get("keepdims", 1))
    return args[0].mean(dim=tuple(axes), keepdim=keep) if axes else args[0].mean()


def _clip(self, args, a, dev):
    lo = args[1] if len(args) > 1 and args[1] is not None else a.get("min")
    hi = args[2] if len(args) > 2 and args[2] is not None else a.get("max")
    lo = float(lo) if lo is not None else None
    hi = float(hi) if hi is not None else None
    return torch.clamp(args[0], lo, hi)


def _gemm(self, args, a, dev):
    x, w, b = (args + [None])[:3]
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    y = a.get("alpha", 1.0) * (x @ w)
    return y + a.get("beta", 1.0) * b if b is not None else y


def _bn(self, args, a, dev):
    x, g, b, mean, var = args
    batch_stats = self.training and not self.freeze_bn_stats
    return F.batch_norm(x, mean, var, g, b, batch_stats, 1.0 - a.get("momentum", 0.9), a.get("epsilon", 1e-5))


def _layer_norm(self, args, a, dev):
    x, g, b = (args + [None])[:3]
    axis = a.get("axis", -1) % x.dim()
    return F.layer_norm(x, x.shape[axis:], g, b, a.get("epsilon", 1e-5))


def _cast(self, args, a, dev):
    return args[0].to(_DTYPES[a["to"]])


def _pad(self, args, a, dev):
    """Constant padding (opset 11+: pads as an input, begins then ends; older: the ``pads`` attribute)."""
    mode = _text(a, "mode", "constant")
    if mode != "constant":
        raise ValueError(f"OnnxNet: Pad mode {mode!r} is not supported")
    pads = [int(v) for v in (args[1].tolist() if len(args) > 1 and args[1] is not None else a["pads"])]
    value = float(args[2]) if len(args) > 2 and args[2] is not None else float(a.get("value", 0.0))
    return F.pad(args[0], _torch_pad(pads), value=value)


def _resize(self, args, a, dev):
    """Upsampling by ``scales`` (linear with half-pixel centres, or nearest): what an exported input scale writes."""
    x, scales = args[0], args[2] if len(args) > 2 else None
    if scales is None or scales.numel() == 0 or (len(args) > 3 and args[3] is not None and args[3].numel()):
        raise ValueError("OnnxNet: Resize by output size is not supported, only by scales")
    mode, coords = _text(a, "mode", "nearest"), _text(a, "coordinate_transformation_mode", "half_pixel")
    factor = tuple(float(v) for v in scales.tolist()[2:])
    if mode == "linear" and coords in ("half_pixel", "pytorch_half_pixel"):
        return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    if mode == "nearest" and coords == "asymmetric" and _text(a, "nearest_mode", "round_prefer_floor") == "floor":
        return F.interpolate(x, scale_factor=factor, mode="nearest")
    raise ValueError(f"OnnxNet: Resize mode {mode!r} with {coords!r} coordinates is not supported")


def _flatten(self, args, a, dev):
    ax = a.get("axis", 1)
    return args[0].flatten(1) if ax == 1 else args[0].reshape(int(np.prod(args[0].shape[:ax])) if ax else 1, -1)


OPS = {
    "Add": lambda s, x, a, d: x[0] + x[1],
    "Sub": lambda s, x, a, d: x[0] - x[1],
    "Mul": lambda s, x, a, d: x[0] * x[1],
    "Div": lambda s, x, a, d: x[0] / x[1],
    "Pow": lambda s, x, a, d: x[0] ** x[1],
    "Sqrt": lambda s, x, a, d: torch.sqrt(x[0]),
    "Relu": lambda s, x, a, d: F.relu(x[0]),
    "Sigmoid": lambda s, x, a, d: torch.sigmoid(x[0]),
    "Tanh": lambda s, x, a, d: torch.tanh(x[0]),
    "Erf": lambda s, x, a, d: torch.erf(x[0]),
    "HardSigmoid": lambda s, x, a, d: torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda s, x, a, d: F.hardswish(x[0]),
    "Clip": _clip,
    "Conv": _conv,
    "BatchNormalization": _bn,
    "GlobalAveragePool": lambda s, x, a, d: x[0].mean(dim=(2, 3), keepdim=True),
    "AveragePool": _pool("avg"),
    "MaxPool": _pool("max"),
    "MatMul": lambda s, x, a, d: torch.matmul(x[0], x[1]),
    "Gemm": _gemm,
    "Softmax": lambda s, x, a, d: torch.softmax(x[0], a.get("axis", -1)),
    "ReduceMean": _reduce_mean,
    "Transpose": lambda s, x, a, d: x[0].permute(*a["perm"]),
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Flatten": _flatten,
    "Slice": _slice,
    "Concat": lambda s, x, a, d: torch.cat(x, a["axis"]),
    "Shape": lambda s, x, a, d: torch.tensor(list(x[0].shape), dtype=torch.int64),
    "Cast": _cast,
    "Identity": lambda s, x, a, d: x[0],
    "LayerNormalization": _layer_norm,
    "Pad": _pad,
    "Resize": _resize,
}
