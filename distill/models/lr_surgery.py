"""KD-LTR's "same network, smaller stride" on an ONNX teacher: which strides and pools change (the PP-OCRv4
overrides), and the kernels that keep reading the input at the scale they were trained for."""
from __future__ import annotations

from typing import Any

import numpy as np

from .onnx_net import _array, _attrs

__all__ = ["PPOCR_LR_OVERRIDES", "upsample_halved_strides"]

# The PP-OCRv4 mobile recognizer (rapidocr's ch_PP-OCRv4_rec_infer.onnx) at 16x64: the backbone halves the height
# four times (16 -> 1) and the width twice; the second width stride is removed so 64 px give 32 frames, and the
# final [3, 2] average pool (48 px -> 3 rows, 2 columns a frame) becomes the identity.
PPOCR_LR_OVERRIDES: dict[str, dict[str, Any]] = {
    "p2o.Conv.11": {"strides": [1, 1]},
    "p2o.AveragePool.0": {"kernel_shape": [1, 1], "strides": [1, 1]},
}


def _upsample_conv_axis(w: np.ndarray, axis: int, pad: int) -> np.ndarray | None:
    """Along ``axis`` of kernel ``w`` (stride 2, leading pad ``pad``): the stride-1 kernel of the same size and pad
    that computes, on an input, what ``w`` computes on that input upsampled 2x (bilinear, half-pixel centres, as
    cv2.resize / ONNX Resize linear / F.interpolate align_corners=False). Exact away from the border. None when the
    composition does not fit the same kernel window (e.g. 1-wide kernels)."""
    k = w.shape[axis]
    # Half-pixel bilinear x2: up[2i] = .75 x[i] + .25 x[i-1], up[2i+1] = .75 x[i] + .25 x[i+1]. Output o of the
    # stride-2 conv reads up[2o - pad + t], t < k; collect the weight each x[o + d] receives.
    taps: dict[int, np.ndarray] = {}
    for t in range(k):
        m = t - pad  # output 0: offsets d are relative to the output position
        i, odd = m // 2, m % 2
        for d, c in ((i, 0.75), (i + 1 if odd else i - 1, 0.25)):
            taps[d] = taps.get(d, 0.0) + c * np.take(w, t, axis=axis)
    if min(taps) < -pad or max(taps) > k - 1 - pad:
        return None
    zero = np.zeros_like(np.take(w, 0, axis=axis))
    return np.stack([taps.get(j - pad, zero) for j in range(k)], axis=axis).astype(w.dtype)


def upsample_halved_strides(graph: bytes, weights: dict[str, np.ndarray], overrides: dict) -> list[str]:
    """KD-LTR halves an early stride of the teacher so that the LR input gives the HR feature grid. Copying the
    stride-2 kernel as it is makes the student read its input at half the scale the weights were trained for
    (PP-OCRv4 at 16x64 with the stem at stride 1 reads svt_test lr16 at 78.5 % zero-shot, and 80.1 % with this);
    instead each Conv whose stride ``overrides`` take from 2 to 1 gets the kernel that composes 2x bilinear
    upsampling with the original one, so the student computes at once what the teacher computes on the upsampled
    input. Updates ``weights`` (name -> array, filled from the graph when stripped); returns the node names done."""
    import onnx

    m = onnx.load_from_string(bytes(graph))
    init = {t.name: t for t in m.graph.initializer}
    done = []
    for n in m.graph.node:
        if n.op_type != "Conv" or "strides" not in overrides.get(n.name, {}):
            continue
        a = _attrs(n)
        old, new = list(a.get("strides", [1, 1])), list(overrides[n.name]["strides"])
        axes = [ax for ax, (s0, s1) in enumerate(zip(old, new)) if (s0, s1) == (2, 1)]
        wname = n.input[1]
        if not axes or wname not in weights and wname not in init:
            continue
        w = weights[wname] if wname in weights else _array(init[wname])
        nd = len(old)
        pads = list(a.get("pads", [0] * 2 * nd))
        out = w
        for ax in axes:
            out = _upsample_conv_axis(out, 2 + ax, pads[ax]) if out is not None else None
        if out is not None:
            weights[wname] = np.ascontiguousarray(out)
            done.append(n.name)
    return done
