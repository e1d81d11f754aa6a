"""Fine-tuning an INT8 Q/DQ model through its own quantization points, distilled from the float model it came from.

ONNX Runtime's static quantization fixes the scale of every tensor it quantizes; what it leaves is the rounding noise
of those tensors, spread over the whole graph (on the PP-OCRv6 student no group of layers holds more than a sixth of
it). ``finetune_qdq`` runs the float graph as a PyTorch module (``distill.models.OnnxNet``) that rounds at exactly the
Q/DQ model's points with exactly its scales (``distill.models.fake_quant.QdqPoints``: activations per tensor, weights
per channel), trains the weights so that its frame distributions match the float model's on unlabeled LR inputs
(KL divergence, straight-through rounding), and writes them back: float tensors by name, int8 weights re-rounded
with their per-channel scales recomputed as the quantizer computes them. The activation scales stay the calibrated
ones unless ``scale_lr`` lets them learn too (learned step sizes); either way the file keeps the structure ONNX
Runtime fuses into integer kernels, since only the values of its scale initializers change."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

__all__ = ["finetune_qdq", "frame_kl"]


def frame_kl(ref_logp: np.ndarray, logp: np.ndarray) -> float:
    """Mean over frames of KL(ref || other), both (N, T, C) log-probabilities."""
    return float((np.exp(ref_logp) * (ref_logp - logp)).sum(-1).mean())


def _float_reader(model) -> Callable[[np.ndarray], np.ndarray]:
    """``x`` -> the float model's frame log-probabilities (ONNX Runtime), in batches of 64."""
    import onnxruntime as ort

    from runtime.onnxfile import ort_session

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort_session(model.SerializeToString(), options=so)
    name = s.get_inputs()[0].name

    def read(x: np.ndarray) -> np.ndarray:
        p = np.concatenate([s.run(None, {name: x[i:i + 64]})[0] for i in range(0, len(x), 64)])
        return np.log(np.clip(p, 1e-9, 1.0)).astype(np.float32)  # our exports end in Softmax: probabilities

    return read


def _write_back(net, points, qdq) -> None:
    """The trained float tensors into ``qdq`` (edited in place); int8 weights re-rounded at their new scales."""
    from onnx import numpy_helper

    from distill.models.fake_quant import int8_codes

    init = {t.name: t for t in qdq.graph.initializer}
    for name, (kind, key) in net.tensor_keys.items():
        if kind != "p":
            continue
        w = net.params[key].detach().cpu().float()
        if name in points.stored:
            q_name, s_name = points.stored[name]
            q, scale = int8_codes(w, points.weights[name])
            init[q_name].CopyFrom(numpy_helper.from_array(q.numpy(), q_name))
            init[s_name].CopyFrom(numpy_helper.from_array(scale.numpy(), s_name))
        elif name in init and tuple(init[name].dims) == tuple(w.shape):
            init[name].CopyFrom(numpy_helper.from_array(w.numpy(), name))
    for name, value in points.learned_scales().items():
        init[name].CopyFrom(numpy_helper.from_array(np.array(value, np.float32).reshape(tuple(init[name].dims)), name))


def _rounding_cells(net, points) -> dict:
    """Each int8 weight's parameter key -> (low, high): the float values between the code below and the code above
    its FP32 value at its FP32 per-channel scale; each channel's largest weight is pinned, so the scale stays."""
    import torch

    from distill.models.fake_quant import channel_shape, weight_scale

    cells = {}
    for name, (kind, key) in net.tensor_keys.items():
        if kind != "p" or name not in points.stored:
            continue
        w = net.params[key].detach()
        axis = points.weights[name]
        scale = weight_scale(w, axis).reshape(channel_shape(w, axis))
        codes = w / scale
        below = torch.clamp(torch.floor(codes), -127, 126)
        edge = codes.abs() >= 127 - 1e-4  # the channel's largest weight stays: the scale is then the FP32 one
        cells[key] = (torch.where(edge, w, below * scale), torch.where(edge, w, (below + 1) * scale))
    return cells


def finetune_qdq(float_model, qdq, x: np.ndarray, steps: int, lr: float = 1e-5, batch: int = 32, seed: int = 0,
                 progress: bool = True, gates: dict[str, tuple[str, float, int]] | None = None,
                 targets: Sequence[Sequence[int]] | None = None, ctc_weight: float = 0.0,
                 scale_lr: float = 0.0,
                 views: Callable[[int, int], tuple[np.ndarray, Sequence[Sequence[int]]]] | None = None,
                 rounding_only: bool = False) -> tuple[float, float]:
    """Fine-tune ``qdq`` (an ``onnx.ModelProto``, edited in place) on the LR inputs ``x`` (N, 3, H, W) to read like
    ``float_model`` (the graph it was quantized from, same names). ``gates``: the integer GELU gates the file will
    get (``graph_rewrites.fitted_gelu_gates``), simulated instead of exact GELU. ``ctc_weight`` > 0: CTC on
    ``targets`` (class indices per input, blank 0) is added to the KL, so the file also learns the labels where the
    float model misreads (on the PP-OCRv6 student KL alone left most of the INT8 loss: docs/compression.md).
    ``scale_lr`` > 0: the activation scales learn too, at that peak rate on their logarithms
    (``QdqPoints.learn_scales``); 0 keeps the calibrated ones. ``views``: ``(step, batch) -> (inputs, targets)``,
    new inputs at every step (``finetune_views.FreshViews``) whose KL targets the float model reads as they come;
    ``x`` then only measures. ``rounding_only``: only the int8 weights learn, each within its rounding cell (between
    the codes just below and just above its FP32 value, as AdaRound chooses), and every float tensor keeps its
    FP32 value, so the file's weights stay within one int8 step of the FP32 model's. Returns the simulated frame KL to the float model on
    the first 256 inputs before and after."""
    import torch
    from tqdm import tqdm

    from distill.models.fake_quant import QdqPoints
    from distill.models.onnx_net import OnnxNet

    if steps < 1:
        raise ValueError(f"--int8-finetune-steps: expected a count >= 1, got {steps}")
    read_float = _float_reader(float_model)
    target = torch.from_numpy(read_float(x[:256] if views is not None else x))
    net = OnnxNet(target.shape[-1], img_size=tuple(x.shape[2:]), graph=float_model.SerializeToString())
    points = QdqPoints.from_models(qdq, float_model, gates)
    net.fake_quant = points
    xs = torch.from_numpy(np.ascontiguousarray(x))
    probe = slice(0, min(256, len(x)))
    if ctc_weight and views is None and (targets is None or len(targets) != len(x)):
        raise ValueError(f"CTC fine-tuning: {len(x)} inputs but {0 if targets is None else len(targets)} targets")
    tl = [torch.as_tensor(t, dtype=torch.long) for t in targets] if ctc_weight and views is None else []

    def simulated_kl() -> float:
        net.eval()
        with torch.no_grad():
            lq = torch.cat([net.decode_logits(xs[i:i + 64]).log_softmax(-1) for i in range(0, probe.stop, 64)])
        return frame_kl(target[probe].numpy(), lq.numpy())

    before = simulated_kl()
    net.train()
    cells = _rounding_cells(net, points) if rounding_only else {}
    params = [net.params[k] for k in cells] if rounding_only else list(net.params.values())
    groups = [{"params": params, "lr": lr, "peak": lr}]
    if scale_lr > 0:
        groups.append({"params": points.learn_scales(), "lr": scale_lr, "peak": scale_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    for step in tqdm(range(steps), desc="int8 fine-tune", disable=not progress):
        if views is not None:
            xb, tb = views(step, batch)
            lt = torch.from_numpy(read_float(xb))
            lq = net.decode_logits(torch.from_numpy(xb)).log_softmax(-1)
            tg = [torch.as_tensor(t, dtype=torch.long) for t in tb]
        else:
            idx = torch.randint(0, len(xs), (batch,), generator=gen)
            lq = net.decode_logits(xs[idx]).log_softmax(-1)
            lt = target[idx]
            tg = [tl[j] for j in idx.tolist()] if ctc_weight else []
        loss = (lt.exp() * (lt - lq)).sum(-1).mean()
        if ctc_weight:  # labels too long for the frames (zero_infinity) add nothing rather than inf
            lens = torch.tensor([len(t) for t in tg], dtype=torch.long)
            frames = torch.full((len(tg),), lq.shape[1], dtype=torch.long)
            loss = loss + ctc_weight * torch.nn.functional.ctc_loss(
                lq.transpose(0, 1), torch.cat(tg), frames, lens, blank=0, zero_infinity=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for key, (lo, hi) in cells.items():
                net.params[key].copy_(torch.minimum(torch.maximum(net.params[key], lo), hi))
        for g in opt.param_groups:  # cosine to zero: the last steps settle on the rounding grid
            g["lr"] = g["peak"] * 0.5 * (1.0 + math.cos(math.pi * (step + 1) / steps))
    after = simulated_kl()
    _write_back(net, points, qdq)
    return before, after
