"""Parity gate between a PyTorch model and an ONNX file on real images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from runtime.conditions import apply_condition
from runtime.preprocess import prepare

__all__ = ["ParityError", "parity_images", "parity_check"]


class ParityError(RuntimeError):
    pass


def parity_images(data: str | None, lr: bool, n: int, size: tuple[int, int]) -> np.ndarray:
    """(n, 3, H, W) float32 network inputs of ``size`` (H, W) from real crops (LR models get the ``lr16``
    condition), or uniform noise when ``data`` is None or holds no usable crop."""
    from runtime.datasets import open_dataset

    if data is not None:
        path = Path(data)
        r = open_dataset(path)
        out = []
        for s in r.iter_valid():
            img = apply_condition("lr16", s.image) if lr else s.image
            out.append(prepare(img, size))
            if len(out) >= n:
                break
        r.close()
        if out:
            return np.stack(out)
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, (n, 3, *size)).astype(np.float32)


def parity_check(model: torch.nn.Module, tok, onnx_path: str, x: np.ndarray, atol: float = 1e-3,
                 min_agree: float = 0.99, batch: int = 16) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    ref, got = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i : i + batch]
            ref.append(model(torch.from_numpy(xb)).numpy())
            got.append(sess.run(None, {name: xb.astype(np.float32)})[0])
        one = sess.run(None, {name: x[:1].astype(np.float32)})[0]  # batch 1 must work too
    ref_a, got_a = np.concatenate(ref), np.concatenate(got)
    if one.shape[0] != 1 or not np.allclose(one, got_a[:1], atol=max(atol, 1e-4)):
        raise ParityError(f"{onnx_path}: batch-1 output differs from the batched one")
    diff = float(np.abs(ref_a - got_a).max())
    a = [d.text for d in tok.decode(ref_a)]
    b = [d.text for d in tok.decode(got_a)]
    agree = sum(p == q for p, q in zip(a, b)) / max(1, len(a))
    rep = {"n": len(x), "max_abs_diff": diff, "agreement": agree, "batch": batch}
    if diff > atol or agree < min_agree:
        raise ParityError(f"{onnx_path}: parity failed: max |diff| {diff:.2e} (allowed {atol:.0e}), strings agree "
                          f"{100 * agree:.1f}% (need {100 * min_agree:.0f}%)")
    return rep
