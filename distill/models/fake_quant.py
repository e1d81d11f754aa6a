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

import numpy as np
import torch
from torch import Tensor

__all__ = ["FakeQuant", "QdqPoints", "channel_shape", "dequantize_weight", "fake_quant_weight", "int8_codes", "int8_initializers",
           "int8_weights", "weight_scale"]


def weight_scale(w: Tensor, axis: int = 0) -> Tensor:
    """Per-channel (along ``axis``) symmetric int8 scale of a weight, max|w| / 127, as ONNX Runtime's quantizer
    sets it."""
    axis %= w.dim()
    return (w.detach().abs().amax(dim=tuple(d for d in range(w.dim()) if d != axis)).clamp_min(1e-8) / 127.0).float()


def fake_quant_weight(w: Tensor, axis: int = 0) -> Tensor:
    """Per-channel (along ``axis``) symmetric int8 rounding of a weight at ``weight_scale``, straight-through
    gradient."""
    scale = weight_scale(w, axis)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, axis % w.dim(), -127, 127)


def channel_shape(w: Tensor, axis: int = 0) -> list[int]:
    """The shape a per-channel (along ``axis``) scale takes to broadcast against ``w``."""
    shape = [1] * w.dim()
    shape[axis % w.dim()] = -1
    return shape


def int8_codes(w: Tensor, axis: int = 0) -> tuple[Tensor, Tensor]:
    """(int8 codes, per-channel scale) of a float weight, as ONNX Runtime's quantizer stores it."""
    scale = weight_scale(w, axis)
    return torch.clamp(torch.round(w / scale.reshape(channel_shape(w, axis))), -127, 127).to(torch.int8), scale


def dequantize_weight(codes: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """A stored int8 weight in float: codes x scale (per channel along ``axis`` when the scale is a vector)."""
    w = codes.astype(np.float32)
    s = np.asarray(scale, np.float32)
    if s.ndim:
        shape = [1] * w.ndim
        shape[axis % w.ndim] = -1
        s = s.reshape(shape)
    return w * s


def int8_initializers(qdq) -> dict[str, tuple[str, int]]:
    """Every int8 initializer of the Q/DQ model ``qdq`` (the quantizer's weights): (its scale initializer, channel
    axis), read off the DequantizeLinear node that reads it."""
    init = {t.name: t for t in qdq.graph.initializer}
    return {n.input[0]: (n.input[1], next((a.i for a in n.attribute if a.name == "axis"), 1))
            for n in qdq.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in init and init[n.input[0]].data_type == 3}  # 3: int8


def int8_weights(qdq, float_model) -> dict[str, tuple[str, str, int]]:
    """Every weight the Q/DQ model ``qdq`` stores as int8, by the tensor name ``float_model`` (the graph it was
    quantized from; nodes pair by name) gives it: (int8 initializer, scale initializer, channel axis) in ``qdq``."""
    from runtime.onnxfile import graph_links

    stored = int8_initializers(qdq)
    producer, _ = graph_links(qdq.graph)
    floats = {n.name: n for n in float_model.graph.node if n.name}
    found: dict[str, tuple[str, str, int]] = {}
    for n in qdq.graph.node:
        twin = floats.get(n.name)
        for k, x in enumerate(n.input):
            dq = producer.get(x)
            if twin is None or dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in stored:
                continue
            found[twin.input[k]] = (dq.input[0], *stored[dq.input[0]])
    return found


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

    def inputs(self, op: str, names: list[str], args: list, training: bool) -> list:
        """A node's operands as the export quantizes them: a convolution's input and weight."""
        if op == "Conv":
            args[0] = self.activation(names[0], args[0], training)
            args[1] = self.weight(args[1])
        return args


class QdqPoints:
    """The quantization of an ONNX Q/DQ model, simulated on its float twin (``compress.qdq_finetune``).

    Every tensor the Q/DQ model quantizes, at its own fixed scale and zero point (``activations``: name -> (scale,
    zero point, qmin, qmax)), and every weight it stores as int8 (``weights``: name -> channel axis), by the float
    model's tensor names: the simulation rounds exactly where ONNX Runtime's integer kernels will, including the
    layer norms, attention and GELU inputs that ``FakeQuant``'s convolution-only points leave out.

    ``scale_names``: tensor -> the Q/DQ model's scale initializer for it. ``learn_scales`` then makes those scales
    trainable (``log_scales``), and ``learned_scales`` gives their values to write back."""

    def __init__(self, activations: dict[str, tuple[float, int, int, int]], weights: dict[str, int],
                 gates: dict[str, tuple[str, float, int]] | None = None, graph_inputs: set[str] = frozenset(),
                 stored: dict[str, tuple[str, str]] | None = None, scale_names: dict[str, str] | None = None) -> None:
        self.activations, self.weights = dict(activations), dict(weights)
        self.points = set(self.activations)
        self.scale_names = dict(scale_names or {})
        # learn_scales: a group of equal scale initializers -> log of its factor on the calibrated scale
        self.log_scales: dict[str, Tensor] = {}
        self._scale_key: dict[str, str] = {}  # scale initializer -> its group
        # GELU output -> (its input, a, k): the integer gate x * sigmoid(a (x + k s_x)) that replaces exact GELU in
        # the cpu flavour (compress.graph_rewrites.fitted_gelu_gates), simulated in place of the float chain
        self.gates = dict(gates or {})
        missing = sorted({n for y, (x, _, _) in self.gates.items() for n in (y, x)} - self.points)
        if missing:
            raise ValueError(f"QdqPoints: GELU gates on tensors that are not quantized: {missing[:5]}")
        self._gate_inputs = {x for x, _, _ in self.gates.values()}
        self._seen: dict[str, Tensor] = {}
        # quantized tensors no node computes; weight -> its (int8, scale) initializers in the Q/DQ model
        self.graph_inputs, self.stored = set(graph_inputs), dict(stored or {})

    @classmethod
    def from_models(cls, qdq, float_model, gates: dict[str, tuple[str, float, int]] | None = None) -> "QdqPoints":
        """Read the points off ``qdq`` (an ``onnx.ModelProto`` from ``onnxruntime.quantization.quantize_static``)
        for ``float_model``, the graph it was quantized from (same node and tensor names); ``gates`` as above."""
        from onnx import numpy_helper

        init = {t.name: t for t in qdq.graph.initializer}
        computed = {o for n in float_model.graph.node for o in n.output} | {i.name for i in float_model.graph.input}
        acts: dict[str, tuple[float, int, int, int]] = {}
        names: dict[str, str] = {}
        for n in qdq.graph.node:
            if n.op_type != "QuantizeLinear" or n.input[0] in init:
                continue
            if n.input[0] not in computed:
                raise ValueError(f"QdqPoints: the Q/DQ model quantizes {n.input[0]!r}, which the float model lacks")
            zp = numpy_helper.to_array(init[n.input[2]])
            lo, hi = (0, 255) if zp.dtype == np.uint8 else (-128, 127)
            acts[n.input[0]] = (float(numpy_helper.to_array(init[n.input[1]])), int(zp), lo, hi)
            names[n.input[0]] = n.input[1]
        found = int8_weights(qdq, float_model)
        weights = {name: axis for name, (_, _, axis) in found.items()}
        stored = {name: (q, scale) for name, (q, scale, _) in found.items()}
        return cls(acts, weights, gates, {i.name for i in float_model.graph.input} & set(acts), stored, names)

    def learn_scales(self) -> list[Tensor]:
        """Make the activation scales trainable, as learned step sizes (LSQ, Esser et al. 2020): the calibrator picks
        each range from statistics alone, while a tensor's best trade between clipping and rounding depends on what
        the network does with it. Learned in log space, so one rate suits scales of any size; zero points stay.
        Scales the quantizer made equal (a Transpose or Reshape between two points) learn as one: ONNX Runtime
        drops the Q/DQ pair around such an op only while they are equal. The GELU gates' tensors keep their
        calibrated scales: each gate is fitted to them. Returns the new parameters."""
        fixed = {self.scale_names.get(n) for y, (x, _, _) in self.gates.items() for n in (y, x)}
        tied: dict[tuple[float, int], str] = {}  # (calibrated scale, zero point) -> its group
        for tensor, init_name in sorted(self.scale_names.items()):
            if init_name in fixed:
                continue
            scale, zero = self.activations[tensor][:2]
            key = tied.setdefault((scale, zero), init_name)  # the first initializer of equal value names it
            self._scale_key[init_name] = key
            self.log_scales.setdefault(key, torch.zeros(1, requires_grad=True))
        return list(self.log_scales.values())

    def _theta(self, name: str) -> Tensor | None:
        return self.log_scales.get(self._scale_key.get(self.scale_names.get(name, ""), ""))

    def learned_scales(self) -> dict[str, float]:
        """Scale initializer -> its learned value (only those ``learn_scales`` made trainable)."""
        first = {}
        for tensor, init_name in self.scale_names.items():
            first.setdefault(init_name, self.activations[tensor][0])
        return {k: first[k] * float(torch.exp(self.log_scales[g].detach()).item()) for k, g in self._scale_key.items()}

    def activation(self, name: str, x: Tensor, training: bool) -> Tensor:
        p = self.activations.get(name)
        if p is None:
            return x
        gate = self.gates.get(name)
        if gate is not None:  # the float GELU's value is replaced by what the integer gate gives from the same input
            src, a, k = gate
            xq = self._seen.pop(src)
            g = torch.sigmoid(a * (xq + k * self.activations[src][0]))
            x = xq * torch.fake_quantize_per_tensor_affine(g, 1 / 255, 0, 0, 255)  # QLinearSigmoid's uint8 output
        theta = self._theta(name)
        if theta is None:
            y = torch.fake_quantize_per_tensor_affine(x.float(), p[0], p[1], p[2], p[3])
        else:  # straight-through for x inside the range; the scale learns from rounding and clipping alike
            # PyTorch's one op with a gradient for the scale (LSQ's); its grad factor stays 1, as AdamW scales steps
            zero = torch.full((1,), float(p[1]), device=x.device)
            y = torch._fake_quantize_learnable_per_tensor_affine(x.float(), p[0] * torch.exp(theta), zero, p[2], p[3],
                                                                 1.0)
        y = y.to(x.dtype)
        if name in self._gate_inputs:
            self._seen[name] = y
        return y

    def inputs(self, op: str, names: list[str], args: list, training: bool) -> list:
        for k, name in enumerate(names):
            if name in self.weights and args[k] is not None:
                args[k] = fake_quant_weight(args[k], self.weights[name])
            elif name in self.graph_inputs:  # no node's output: rounded where it is read
                args[k] = self.activation(name, args[k], training)
        return args
