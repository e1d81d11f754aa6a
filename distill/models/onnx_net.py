"""Any recognizer ONNX graph as a trainable PyTorch module.

``OnnxNet`` runs the graph's nodes in order with torch ops (``onnx_ops``); its float weights (initializers and
``Constant`` tensors feeding Conv, MatMul, Gemm, BatchNormalization, and non-scalar Add/Mul operands) become
parameters, so the network can be fine-tuned and exported again with ``torch.onnx.export``. The structure (the
graph with its weight bytes stripped) is a constructor argument: a checkpoint rebuilds the model from the file alone.

``distill.models.make_onnx_student`` makes KD-LTR's LR student of it (``lr_surgery``: strides and pools overridden so
a 16x64 input yields a usable frame sequence, halved-stride kernels composed with 2x upsampling); the first
convolution's input channels are reordered to our RGB, and the classifier keeps only the student charset's columns.
``compress.fusion`` folds its affine chains before export; quantization-aware training (``enable_fake_quant``)
places its points where that fusion will leave them.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .onnx_ops import OPS
from .parseq import RecOut

__all__ = ["OnnxNet", "strip_weights", "classifier_input", "SUPPORTED_OPS", "scale_pair"]

# ONNX TensorProto data types we meet in recognizers -> torch
_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64}
_WEIGHT_INPUTS = {"Conv": (1, 2), "MatMul": (0, 1), "Gemm": (1, 2), "BatchNormalization": (1, 2),
                  "LayerNormalization": (1, 2)}
# BatchNormalization's running statistics are buffers (updated in training mode), not parameters.
_BN_STATS = (3, 4)

def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _array(t) -> np.ndarray:
    """A TensorProto as an array; a stripped one (dims, no data) as zeros, to be filled by the state dict."""
    from onnx import helper, numpy_helper

    stripped = not (t.raw_data or t.float_data or t.int32_data or t.int64_data or t.double_data or t.string_data)
    if stripped and int(np.prod(t.dims)) > 0:
        return np.zeros(tuple(t.dims), helper.tensor_dtype_to_np_dtype(t.data_type))
    return numpy_helper.to_array(t)


def safe_name(name: str) -> str:
    """A tensor name as a module attribute key; names that are nn.Module attributes ('half', 'train', ...) get a
    trailing underscore (registering them would fail)."""
    k = re.sub(r"[^0-9A-Za-z_]", "_", name)
    return k + "_" if hasattr(nn.Module, k) or hasattr(nn.ParameterDict, k) else k


def strip_weights(model_bytes: bytes, keep_small: int = 16) -> tuple[bytes, dict[str, np.ndarray]]:
    """(graph without weight bytes, {tensor name: array}) of an ONNX model: the structure goes into the model
    spec, the arrays into the state dict. Tensors of up to ``keep_small`` elements stay in the graph."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(model_bytes)
    arrays: dict[str, np.ndarray] = {}

    def strip(t) -> None:
        a = numpy_helper.to_array(t)
        if a.size > keep_small:
            arrays[t.name] = a
            dims, dtype, name = list(t.dims), t.data_type, t.name
            t.Clear()
            t.name, t.data_type = name, dtype
            t.dims.extend(dims)

    for t in m.graph.initializer:
        strip(t)
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    if not a.t.name:
                        a.t.name = n.output[0]
                    strip(a.t)
    return m.SerializeToString(), arrays


def classifier_input(model) -> str:
    """The tensor an ONNX recognizer's classifier (its last MatMul/Gemm before the output) reads: the frames'
    features. Found the way ``OnnxNet`` finds its head, so a teacher's ``head`` feature and the student's tap agree."""
    g = model.graph
    nodes = [(n.op_type, list(n.input), list(n.output), {}, n.name) for n in g.node]
    consts = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    return OnnxNet._head(nodes, consts, OnnxNet._softmax_input(nodes, g.output[0].name))[2]


SUPPORTED_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Relu", "Sigmoid", "Tanh", "Erf", "HardSigmoid", "HardSwish", "Clip",
    "Conv", "BatchNormalization", "GlobalAveragePool", "AveragePool", "MaxPool", "MatMul", "Gemm", "Softmax",
    "ReduceMean", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Concat", "Shape", "Cast",
    "Constant", "Identity", "LayerNormalization", "Pad", "Resize",
})


def scale_pair(value: Any, what: str) -> tuple[float, float]:
    """An upsampling factor as (height, width): a number stands for both. Factors below 1 are refused (a student
    that shrinks its LR input would throw away the pixels it has)."""
    pair = [value, value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1.0 for v in pair)):
        raise ValueError(f"{what} must be a factor >= 1 or [height, width] factors >= 1, got {value!r}")
    return float(pair[0]), float(pair[1])


class OnnxNet(nn.Module):
    """A CTC recognizer from an ONNX graph. forward -> class probabilities (B, T, C) like our other models;
    ``decode_logits`` -> logits; ``forward_train`` -> RecOut with the frames before the classifier.

    graph: serialized ONNX model, weights optional (``strip_weights``); missing weights come from the state dict.
    overrides: {node name: {attribute: value}} applied on top of the graph (strides, pooling windows).
    keep_classes: classifier columns to keep, in the student's class order (None: all).
    logits: name of the tensor holding the logits (default: the input of the final Softmax).
    flip_input_channels: reverse the first convolution's input channels (BGR-trained weights on RGB input).
    input_scale: upsample the input by this factor (bilinear, half-pixel) before the graph, so the first layers see
        the text at the scale the teacher's weights were trained for; a number, or [height, width] factors; 1 = off.
    """

    decoder_type = "ctc"

    def __init__(self, num_classes: int, max_len: int = 25, img_size=(16, 64), lr: bool = True, graph: bytes = b"",
                 overrides: dict | None = None, keep_classes: list | None = None, logits: str = "",
                 flip_input_channels: bool = False, weights: dict | None = None,
                 input_scale: float | Sequence[float] = 1.0) -> None:
        super().__init__()
        # Long (87 lines) but one pass over the graph: weights become parameters, buffers or constants, then the
        # overrides, the head and the input are resolved against those same tables; split, each piece would need them.
        import onnx

        if not graph:
            raise ValueError("OnnxNet: model.kwargs.graph is empty (build the student with "
                             "distill.models.make_onnx_student)")
        m = onnx.load_from_string(bytes(graph))
        self.max_len, self.img_size, self.blank_id = max_len, tuple(img_size), 0
        self.input_scale = scale_pair(input_scale, "OnnxNet: input_scale")
        unsupported = sorted({n.op_type for n in m.graph.node} - SUPPORTED_OPS)
        if unsupported:
            raise ValueError(f"OnnxNet: the graph uses operators not supported here: {unsupported}")
        overrides = overrides or {}
        names = {n.name for n in m.graph.node}
        missing = sorted(set(overrides) - names)
        if missing:
            raise ValueError(f"OnnxNet overrides: no node named {missing} in the graph")
        weights = weights or {}
        self.input_name = m.graph.input[0].name
        consts: dict[str, np.ndarray] = {}
        for t in m.graph.initializer:
            consts[t.name] = weights[t.name] if t.name in weights else _array(t)
        nodes = []
        for n in m.graph.node:
            if n.op_type == "Constant":
                t = _attrs(n).get("value")
                if t is None:
                    raise ValueError(f"OnnxNet: Constant node {n.name} without a tensor value")
                nm = t.name or n.output[0]
                consts[n.output[0]] = weights[nm] if nm in weights else _array(t)
                continue
            a = _attrs(n)
            a.update(overrides.get(n.name, {}))
            nodes.append((n.op_type, list(n.input), list(n.output), a, n.name))
        # Which constants are weights: operands of the ops above, and non-scalar float operands of Add/Mul.
        trainable, stats = set(), set()
        for op, ins, _, _, _ in nodes:
            for k in _WEIGHT_INPUTS.get(op, ()):
                if k < len(ins) and ins[k] in consts:
                    trainable.add(ins[k])
            if op == "BatchNormalization":
                stats.update(i for i in ins[3:5] if i in consts)
            if op in ("Add", "Mul", "Sub"):
                trainable.update(i for i in ins if i in consts and consts[i].size > 1 and consts[i].dtype.kind == "f")
        # The classifier: the last MatMul/Gemm before the output, optionally cut to keep_classes.
        self.logits_name = logits or self._softmax_input(nodes, m.graph.output[0].name)
        head_w, head_b, self.tap_name = self._head(nodes, consts, self.logits_name)
        if flip_input_channels:
            first = next(n for n in nodes if n[0] == "Conv")
            consts[first[1][1]] = np.ascontiguousarray(consts[first[1][1]][:, ::-1])
        if keep_classes is not None:
            idx = np.asarray(keep_classes, dtype=np.int64)
            consts[head_w] = np.ascontiguousarray(consts[head_w][..., idx])
            if head_b is not None:
                consts[head_b] = np.ascontiguousarray(consts[head_b][..., idx])
        n_out = consts[head_w].shape[-1]
        if n_out != num_classes:
            raise ValueError(f"OnnxNet: the classifier gives {n_out} classes, the charset needs {num_classes} "
                             "(set keep_classes)")
        self.head_name = head_w
        self.params = nn.ParameterDict()
        self.tensor_keys: dict[str, tuple[str, str]] = {}  # tensor name -> ("p"|"b", attribute key)
        bufs, fixed = nn.Module(), nn.Module()
        for name, arr in consts.items():
            t = torch.from_numpy(np.array(arr))
            k = safe_name(name)
            if name in trainable and t.is_floating_point():
                self.params[k] = nn.Parameter(t.float())
                self.tensor_keys[name] = ("p", k)
            elif name in stats:
                bufs.register_buffer(k, t.float())
                self.tensor_keys[name] = ("b", k)
            else:  # structural constants: buffers so .to(device) moves them, not saved in the state dict
                fixed.register_buffer(k, t, persistent=False)
                self.tensor_keys[name] = ("c", k)
        self.stats, self.consts = bufs, fixed
        # a FakeQuant while fine-tuning under simulated INT8 (enable_fake_quant), or the fixed QdqPoints of a Q/DQ
        # model (compress.qdq_finetune)
        self.fake_quant = None
        # Fine-tuning keeps the graph's BatchNorm statistics: re-estimated on a few thousand degraded LR crops they
        # pulled the PP-OCRv4 student from 80 to 51 % on svt_test lr16 in 100 steps at lr 1e-5 (the weights had
        # hardly moved); the affine weights still train. Off: batch statistics and running averages, as usual.
        self.freeze_bn_stats = True
        # Drop nodes after the logits: the trailing Softmax is applied by forward().
        self.nodes = self._prune(nodes, self.logits_name)
        self.features_name = self._neck_input(self.nodes)

    @staticmethod
    def _softmax_input(nodes, out_name: str) -> str:
        for op, ins, outs, _, _ in nodes:
            if op == "Softmax" and outs[0] == out_name:
                return ins[0]
        return out_name

    @staticmethod
    def _head(nodes, consts, logits_name: str) -> tuple[str, str | None, str]:
        """(classifier weight, its bias or None, the classifier's input: the frames' features)."""
        producer = {o: (op, ins) for op, ins, outs, _, _ in nodes for o in outs}
        name, bias = logits_name, None
        for _ in range(4):  # logits <- [Add bias] <- MatMul/Gemm
            op, ins = producer[name]
            if op in ("MatMul", "Gemm"):
                w = next(i for i in ins if i in consts)
                if op == "Gemm" and len(ins) > 2:
                    bias = ins[2]
                return w, bias, next(i for i in ins[:2] if i != w)
            if op == "Add":
                c = [i for i in ins if i in consts]
                if c:
                    bias = c[0]
                name = next(i for i in ins if i not in consts)
                continue
            name = ins[0]
        raise ValueError(f"OnnxNet: no MatMul/Gemm classifier found before {logits_name!r}")

    @staticmethod
    def _prune(nodes, last: str) -> list:
        need, keep = {last}, []
        for n in reversed(nodes):
            if set(n[2]) & need:
                keep.append(n)
                need.update(n[1])
        return keep[::-1]

    @staticmethod
    def _neck_input(nodes) -> str:
        """The last 4-D map before the height is squeezed away: the 'visual' features for RecOut."""
        for op, ins, _, _, _ in reversed(nodes):
            if op == "Squeeze":
                return ins[0]
        return nodes[-1][2][0]

    def _value(self, env: dict, name: str) -> Tensor | None:
        if name == "":
            return None
        if name in env:
            return env[name]
        k = self.tensor_keys.get(name)
        if k is None:
            raise KeyError(f"OnnxNet: tensor {name!r} is neither computed nor a constant")
        if k[0] == "p":
            return self.params[k[1]]
        return getattr(self.stats if k[0] == "b" else self.consts, k[1])

    def run(self, x: Tensor, want: tuple[str, ...]) -> dict[str, Tensor]:
        if self.input_scale != (1.0, 1.0):
            x = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear", align_corners=False)
        env: dict[str, Tensor] = {self.input_name: x}
        fq = self.fake_quant
        for op, ins, outs, a, name in self.nodes:
            args = [self._value(env, i) for i in ins]
            if fq is not None:
                args = fq.inputs(op, ins, args, self.training)
            y = OPS[op](self, args, a, x.device)
            if fq is not None and outs[0] in fq.points:
                y = fq.activation(outs[0], y, self.training)
            env[outs[0]] = y
        return {w: env[w] for w in want}

    def enable_fake_quant(self, momentum: float = 0.01) -> int:
        """Simulate the INT8 export from now on (quantization-aware fine-tuning, ``train.qat``): convolution weights
        per channel, and the activations ONNX Runtime quantizes around each convolution: its input, and its output
        after the scalar affine that follows it (what the export folds into it). Returns the number of activation
        points. Not saved with the weights; ``disable_fake_quant`` turns it off."""
        from .fake_quant import FakeQuant

        points: set[str] = set()
        use = self.consumers(self.nodes)
        for idx, (op, ins, outs, _, _) in enumerate(self.nodes):
            if op != "Conv":
                continue
            points.add(ins[0])
            affine = self.conv_affine(self.nodes, idx, use)  # the chain fuse_for_inference folds into this Conv
            points.add(self.nodes[affine[1]][2][0] if affine else outs[0])
        self.fake_quant = FakeQuant(points, momentum)
        return len(points)

    def disable_fake_quant(self) -> None:
        self.fake_quant = None

    def decode_logits(self, x: Tensor, early_stop: bool = False) -> Tensor:
        return self.run(x, (self.logits_name,))[self.logits_name]

    def forward(self, x: Tensor) -> Tensor:
        return self.decode_logits(x).softmax(-1)

    # -- the patterns compress.fusion folds (QAT places its points the same way) ---------------------------------------------------------------------------------------
    def scalar(self, name: str) -> float | None:
        k = self.tensor_keys.get(name)
        if k is None or k[0] == "p":
            return None
        t = getattr(self.stats if k[0] == "b" else self.consts, k[1])
        return float(t.reshape(-1)[0]) if t.numel() == 1 and t.is_floating_point() else None

    def consumers(self, nodes: list) -> dict[str, int]:
        """How many readers each tensor has; the logits and features count as read (they are outputs)."""
        c: dict[str, int] = {}
        for n in nodes:
            for i in n[1]:
                c[i] = c.get(i, 0) + 1
        c[self.logits_name] = c.get(self.logits_name, 0) + 1
        c[self.features_name] = c.get(self.features_name, 0) + 1
        return c

    def conv_affine(self, nodes: list, idx: int, use: dict[str, int]) -> tuple[int, int, float, float] | None:
        """``nodes[idx]`` as ``Conv(W trainable) -> Mul(s) -> Add(t)`` with scalar s and t, each output read once
        (PP-LCNetV3's learnable affine): (Mul index, Add index, s, t), or None."""
        op, ins, outs, _, _ = nodes[idx]
        if op != "Conv" or use.get(outs[0], 0) != 1 or ins[1] not in self.tensor_keys or self.tensor_keys[ins[1]][0] != "p":
            return None
        mul = next((j for j, n in enumerate(nodes) if n[0] == "Mul" and outs[0] in n[1]), None)
        if mul is None or use.get(nodes[mul][2][0], 0) != 1:
            return None
        sc = [self.scalar(i) for i in nodes[mul][1] if i != outs[0]]
        add = next((j for j, n in enumerate(nodes) if n[0] == "Add" and nodes[mul][2][0] in n[1]), None)
        if len(sc) != 1 or sc[0] is None or add is None:
            return None
        sh = [self.scalar(i) for i in nodes[add][1] if i != nodes[mul][2][0]]
        if len(sh) != 1 or sh[0] is None:
            return None
        return mul, add, sc[0], sh[0]

    def forward_train(self, x: Tensor, tgt=None, perms=None, generator=None) -> RecOut:
        r = self.run(x, (self.logits_name, self.features_name, self.tap_name))
        lg = r[self.logits_name]
        # char_feats: the tapped tensor (default the (B, T, D) frames the classifier reads), what an ONNX teacher's
        # feature of the same name is matched against
        return RecOut([lg], [r[self.tap_name]], r[self.features_name], None, None)

    def set_feature_tap(self, name: str) -> None:
        """Return tensor ``name`` of the graph as ``char_feats`` in training (the teacher's ``feature``)."""
        if name not in {o for n in self.nodes for o in n[2]}:
            raise ValueError(f"OnnxNet: the graph computes no tensor {name!r} on the way to its logits")
        self.tap_name = name
