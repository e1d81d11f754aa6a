"""Fake INT8 quantization for quantization-aware fine-tuning (``train.qat``) of graphs imported from ONNX.

It simulates what ``compress.quantize`` later does for real with ONNX Runtime's static quantization (the ``cpu``
flavour): per-channel symmetric int8 convolution weights (range [-127, 127], scale max|w| / 127) and per-tensor
asymmetric uint8 activations at the inputs and outputs of every convolution, with ranges from a moving average of
the batches' min and max that always includes 0 (ONNX Runtime's MinMax calibrator with ``CalibMovingAverage``).
Rounding is straight-through for gradients, clipping is not: values outside the range learn nothing from it.

Why simulate the export's points on the unfused graph: PP-LCNet's scalar affines, which the export folds into the
neighbouring convolutions, do not change what is quantized. A per-channel symmetric weight grid scales with a scalar
factor, and an asymmetric activation grid of ``a*x + b`` is the grid of ``x`` mapped by the same affine (up to the
rounding of the zero point). So the weights a fine-tuning adapts here see the grids the INT8 export gives them.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["FakeQuant", "fake_quant_weight"]


def fake_quant_weight(w: Tensor) -> Tensor:
    """Per-output-channel symmetric int8 rounding of a convolution weight, straight-through gradient."""
    scale = w.detach().abs().amax(dim=tuple(range(1, w.dim()))).clamp_min(1e-8) / 127.0
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale.float(), zero, 0, -127, 127)


class FakeQuant:
    """Activation ranges (by tensor name) and the rounding of a fine-tuning under simulated INT8.

    ``points``: the tensor names whose values are quantized. In training mode each call first moves that tensor's
    range towards the batch's min and max (``momentum``; the first batch sets it); in eval mode the range is fixed.
    ``observing``: ranges move (in either mode) but nothing is rounded: a calibration pass on the float network.
    The ranges are not part of the model's weights: ``compress.export`` calibrates its own from real crops."""

    def __init__(self, points: set[str], momentum: float = 0.01) -> None:
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"FakeQuant: momentum must be in (0, 1], got {momentum}")
        self.points, self.momentum = set(points), float(momentum)
        self.ranges: dict[str, Tensor] = {}  # name -> tensor([min, max]) on the activations' device
        # observing: ranges follow the float values (a calibration pass, as ONNX Runtime's calibrator runs the float
        # model) and nothing is rounded
        self.observing = False

    def activation(self, name: str, x: Tensor, training: bool) -> Tensor:
        r = self.ranges.get(name)
        if r is not None and r.device != x.device:  # ranges restored from a checkpoint live on the CPU
            r = self.ranges[name] = r.to(x.device)
        if training or self.observing:
            with torch.no_grad():
                now = torch.stack([x.detach().amin(), x.detach().amax()]).float()
                if r is None:
                    r = self.ranges[name] = now
                else:
                    r.lerp_(now, self.momentum)
        if r is None or self.observing:  # float: a calibration pass, or an eval before any training step
            return x
        lo, hi = r[0].clamp_max(0.0), r[1].clamp_min(0.0)
        scale = ((hi - lo) / 255.0).clamp_min(1e-8)
        zero = torch.round(-lo / scale).clamp(0, 255).to(torch.int32)
        # float32 rounding even under bf16 autocast (the kernel has no bf16 variant on every device)
        y = torch.fake_quantize_per_tensor_affine(x.float(), scale.reshape(()), zero.reshape(()), 0, 255)
        return y.to(x.dtype)

    def state_dict(self) -> dict[str, list[float]]:
        """The ranges, for a checkpoint: a resumed fine-tuning continues from them, not from the next batch."""
        return {k: [float(v) for v in r.tolist()] for k, r in self.ranges.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        unknown = sorted(set(state) - self.points)
        if unknown:
            raise ValueError(f"FakeQuant: ranges for tensors that are not quantized here: {unknown[:5]}")
        self.ranges = {k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()}

    def weight(self, w: Tensor) -> Tensor:
        return w if self.observing else fake_quant_weight(w)
