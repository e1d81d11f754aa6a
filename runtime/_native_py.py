"""The NumPy twin of ``runtime/_native.c``: same functions, same arguments, same arithmetic.

Used where the C extension is not built, or when ``RUNTIME_PUREPYTHON=1``. ``runtime.fastpath`` validates the
arguments and allocates the outputs for both, so the two raise the same exceptions. Results: decoding is exact,
pixels agree within 1 LSB (floating-point summation order differs)."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["pack_boxes", "pack_quads", "decode"]


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
                    np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0))


def _coeffs(in_size: int, in0: float, in1: float, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's precompute_coeffs as a dense (out_size, ksize) weight matrix plus each row's first input index."""
    scale = (in1 - in0) / out_size
    fscale = max(scale, 1.0)
    support = 2.0 * fscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = in0 + (np.arange(out_size) + 0.5) * scale
    # C's (int) cast truncates toward zero
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    xmax = np.maximum(xmax, 0)
    k = np.arange(ksize)
    w = _bicubic((k[None, :] + xmin[:, None] - center[:, None] + 0.5) / fscale)
    w = np.where(k[None, :] < xmax[:, None], w, 0.0)
    ww = w.sum(1, keepdims=True)
    w = np.divide(w, ww, out=w, where=ww != 0)
    return w, xmin, xmax


def _clip8(v: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(v, 0.0, 255.0) + 0.5).astype(np.uint8)


def _gather(src: np.ndarray, w: np.ndarray, start: np.ndarray, axis: int) -> np.ndarray:
    """Weighted sum along ``axis`` (0 rows, 1 columns) of an (h, w, 3) uint8 array, one weight row per output."""
    ksize = w.shape[1]
    n_in = src.shape[axis]
    idx = np.minimum(start[:, None] + np.arange(ksize)[None, :], n_in - 1)  # zero weights past the edge
    taps = np.take(src.astype(np.float64), idx, axis=axis)  # axis 1: (h, out, k, 3); axis 0: (out, k, w, 3)
    if axis == 1:
        return np.einsum("hokc,ok->hoc", taps, w)
    return np.einsum("okwc,ok->owc", taps, w)


def _write(slab: np.ndarray, px: np.ndarray, mean, inv_std, swap_rb: bool, pad: float) -> None:
    tw = px.shape[1]
    chans = px[..., ::-1] if swap_rb else px
    v = (chans.astype(np.float32) * np.float32(1.0 / 255.0) - np.asarray(mean, np.float32)) * np.asarray(inv_std, np.float32)
    slab[:, :, :tw] = v.transpose(2, 0, 1)
    slab[:, :, tw:] = pad


def _aspect_width(out_h: int, out_w: int, r: float, keep_aspect: bool) -> int:
    if not keep_aspect:
        return out_w
    t = math.floor(out_h * r + 0.5) if math.isfinite(out_h * r) else math.inf  # as the C side: clamp, then int
    return int(min(max(t, 1), out_w))


def _stats(mean, std):
    mean = [float(m) for m in mean]
    std = [float(s) for s in std]
    if len(mean) != 3 or len(std) != 3:
        raise ValueError("pack: mean and std need 3 values")
    if not all(s > 0 for s in std):
        raise ValueError("pack: std must be > 0")
    return [np.float32(m) for m in mean], [np.float32(1.0 / s) for s in std]


def _views(frame, H, W, boxes, n, per_box, out, out_h, out_w):
    """The frame, the (n, per_box) box coordinates, the output batch and a float32 scratch batch."""
    f = np.asarray(frame).reshape(H, W, 3)
    b = np.asarray(boxes, np.float64).reshape(n, per_box)
    o = np.asarray(out).reshape(n, 3, out_h, out_w)
    return f, b, o, np.empty((n, 3, out_h, out_w), np.float32)


def pack_boxes(frame, H, W, boxes, n, out, out_h, out_w, mean, std, swap_rb, keep_aspect, pad, half) -> None:
    mean, inv_std = _stats(mean, std)
    f, b, o, slabs = _views(frame, H, W, boxes, n, 4, out, out_h, out_w)
    for i, (x0, y0, x1, y1) in enumerate(b):
        tw = _aspect_width(out_h, out_w, (x1 - x0) / (y1 - y0), keep_aspect)
        wh, sh, nh = _coeffs(W, x0, x1, tw)
        wv, sv, nv = _coeffs(H, y0, y1, out_h)
        need_h = not (tw == W and x0 == 0.0 and x1 == W)
        need_v = not (out_h == H and y0 == 0.0 and y1 == H)
        yfirst = int(sv[0])
        ylast = min(max(int(sv[-1] + nv[-1]), yfirst + 1), H)
        if need_h:
            src, row0 = _clip8(_gather(f[yfirst:ylast], wh, sh, 1)), yfirst
        else:
            src, row0 = f, 0
        if need_v:
            px = _clip8(_gather(src, wv, sv - row0, 0))
        else:
            px = src[yfirst - row0 : yfirst - row0 + out_h]
        _write(slabs[i], px, mean, inv_std, swap_rb, pad)
    o[...] = slabs.astype(np.float16) if half else slabs


def _bilinear(f: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    H, W = f.shape[:2]
    x = np.clip(x - 0.5, 0, W - 1)
    y = np.clip(y - 0.5, 0, H - 1)
    xi, yi = x.astype(np.int64), y.astype(np.int64)
    xj, yj = np.minimum(xi + 1, W - 1), np.minimum(yi + 1, H - 1)
    fx, fy = (x - xi)[..., None], (y - yi)[..., None]
    a, b, c, d = (f[yy, xx].astype(np.float64) for yy, xx in ((yi, xi), (yi, xj), (yj, xi), (yj, xj)))
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def pack_quads(frame, H, W, boxes, n, out, out_h, out_w, mean, std, swap_rb, keep_aspect, pad, half) -> None:
    mean, inv_std = _stats(mean, std)
    f, q, o, slabs = _views(frame, H, W, boxes, n, 8, out, out_h, out_w)
    for i, (x0, y0, x1, y1, x2, y2, x3, y3) in enumerate(q):
        qw = 0.5 * (math.hypot(x0 - x1, y0 - y1) + math.hypot(x3 - x2, y3 - y2))
        qh = 0.5 * (math.hypot(x0 - x3, y0 - y3) + math.hypot(x1 - x2, y1 - y2))
        if not (qw >= 1.0 and qh >= 1.0):
            raise ValueError(f"pack: quad {i} is degenerate (zero area or self-intersecting)")
        tw = _aspect_width(out_h, out_w, qw / qh, keep_aspect)
        sx, sy, g, h = x0 - x1 + x2 - x3, y0 - y1 + y2 - y3, 0.0, 0.0
        if sx != 0.0 or sy != 0.0:
            dx1, dx2, dy1, dy2 = x1 - x2, x3 - x2, y1 - y2, y3 - y2
            den = dx1 * dy2 - dx2 * dy1
            if abs(den) < 1e-12:
                raise ValueError(f"pack: quad {i} is degenerate (zero area or self-intersecting)")
            g = (sx * dy2 - dx2 * sy) / den
            h = (dx1 * sy - sx * dy1) / den
        a, b, c = x1 - x0 + g * x1, x3 - x0 + h * x3, x0
        d, e, ff = y1 - y0 + g * y1, y3 - y0 + h * y3, y0
        nx = min(max(int(math.ceil(qw / tw)), 1), 8)
        ny = min(max(int(math.ceil(qh / out_h)), 1), 8)
        # sample grid (out_h, tw, ny, nx), summed in the C loop's order (j outer, i inner)
        v = (np.arange(out_h)[:, None, None, None] + (np.arange(ny)[None, None, :, None] + 0.5) / ny) / out_h
        u = (np.arange(tw)[None, :, None, None] + (np.arange(nx)[None, None, None, :] + 0.5) / nx) / tw
        w = g * u + h * v + 1.0
        w = np.where(np.abs(w) < 1e-12, 1e-12, w)
        xs = (a * u + b * v + c) / w
        ys = (d * u + e * v + ff) / w
        s = _bilinear(f, *np.broadcast_arrays(xs, ys))  # (out_h, tw, ny, nx, 3)
        px = _clip8(s.reshape(out_h, tw, ny * nx, 3).sum(2) * (1.0 / (nx * ny)))
        _write(slabs[i], px, mean, inv_std, swap_rb, pad)
    o[...] = slabs.astype(np.float16) if half else slabs


def decode(probs, N, T, C, mode, special, ids, conf, lengths, seqconf) -> None:
    P = np.asarray(probs).reshape(N, T, C)
    if N and T:
        bad = np.isnan(P).any(axis=(1, 2))
        if bad.any():
            raise ValueError(f"decode: probabilities of row {int(np.flatnonzero(bad)[0])} contain NaN")
    ids_o = np.asarray(ids).reshape(N, T)
    conf_o = np.asarray(conf).reshape(N, T)
    best = P.argmax(-1) if T else np.zeros((N, 0), np.int64)
    bp = np.take_along_axis(P, best[..., None], -1)[..., 0] if T else np.zeros((N, 0), np.float32)
    for n in range(N):
        row_ids, row_p = best[n].tolist(), bp[n].tolist()
        out_i: list[int] = []
        out_p: list[float] = []
        if mode == 0:
            prev = -1
            for i, p in zip(row_ids, row_p):
                if i != special:
                    if i != prev:
                        out_i.append(i)
                        out_p.append(p)
                    elif p > out_p[-1]:
                        out_p[-1] = p
                prev = i
            prod = 1.0
            for p in out_p:
                prod *= p
            if not out_i:
                prod = min(min(row_p), 1.0) if T else 1.0
        else:
            prod = 1.0
            for i, p in zip(row_ids, row_p):
                prod *= p
                if i == special:
                    break
                out_i.append(i)
                out_p.append(p)
        k = len(out_i)
        ids_o[n, :k] = out_i
        conf_o[n, :k] = out_p
        lengths[n] = k
        seqconf[n] = prod
