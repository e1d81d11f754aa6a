"""Any recognizer ONNX graph as a trainable PyTorch module, and the surgery that makes an LR student of it.

``OnnxNet`` runs the graph's nodes in order with torch ops; its float weights (initializers and ``Constant``
tensors feeding Conv, MatMul, Gemm, BatchNormalization, and non-scalar Add/Mul operands) become parameters, so
the network can be fine-tuned and exported again with ``torch.onnx.export``. The structure (the graph with its
weight bytes stripped) is a constructor argument: a checkpoint rebuilds the model from the file alone.

``distill.models.make_onnx_student`` is KD-LTR's "same network, halved stride" applied to an ONNX teacher: node attributes are
overridden (strides, pooling) so a 16x64 input yields a usable frame sequence, the first convolution's input
channels are reordered to our RGB, and the classifier keeps only the columns of the student's charset.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .parseq import RecOut

__all__ = ["OnnxNet", "strip_weights", "classifier_input", "SUPPORTED_OPS", "PPOCR_LR_OVERRIDES",
           "upsample_halved_strides"]

# ONNX TensorProto data types we meet in recognizers -> torch
_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64}
_WEIGHT_INPUTS = {"Conv": (1, 2), "MatMul": (0, 1), "Gemm": (1, 2), "BatchNormalization": (1, 2),
                  "LayerNormalization": (1, 2)}
# BatchNormalization's running statistics are buffers (updated in training mode), not parameters.
_BN_STATS = (3, 4)

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


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


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
    "Constant", "Identity", "LayerNormalization",
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
        import onnx

        if not graph:
            raise ValueError("OnnxNet: model.kwargs.graph is empty (build the student with distill.models.onnx_student)")
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
        self._key: dict[str, tuple[str, str]] = {}  # tensor name -> ("p"|"b", attribute key)
        bufs, fixed = nn.Module(), nn.Module()
        for name, arr in consts.items():
            t = torch.from_numpy(np.array(arr))
            k = _safe(name)
            if name in trainable and t.is_floating_point():
                self.params[k] = nn.Parameter(t.float())
                self._key[name] = ("p", k)
            elif name in stats:
                bufs.register_buffer(k, t.float())
                self._key[name] = ("b", k)
            else:  # structural constants: buffers so .to(device) moves them, not saved in the state dict
                fixed.register_buffer(k, t, persistent=False)
                self._key[name] = ("c", k)
        self.stats, self.consts = bufs, fixed
        self.fake_quant = None  # a FakeQuant while fine-tuning under simulated INT8 (enable_fake_quant)
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
        k = self._key.get(name)
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
            if fq is not None and op == "Conv":
                args[0] = fq.activation(ins[0], args[0], self.training)
                args[1] = fq.weight(args[1])
            y = _OPS[op](self, args, a, x.device)
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
        use = self._consumers(self.nodes)
        for idx, (op, ins, outs, _, _) in enumerate(self.nodes):
            if op != "Conv":
                continue
            points.add(ins[0])
            affine = self._conv_affine(self.nodes, idx, use)  # the chain fuse_for_inference folds into this Conv
            points.add(self.nodes[affine[1]][2][0] if affine else outs[0])
        self.fake_quant = FakeQuant(points, momentum)
        return len(points)

    def disable_fake_quant(self) -> None:
        self.fake_quant = None

    def decode_logits(self, x: Tensor, early_stop: bool = False) -> Tensor:
        return self.run(x, (self.logits_name,))[self.logits_name]

    def forward(self, x: Tensor) -> Tensor:
        return self.decode_logits(x).softmax(-1)

    # -- inference-time fusion ---------------------------------------------------------------------------------------
    def _scalar(self, name: str) -> float | None:
        k = self._key.get(name)
        if k is None or k[0] == "p":
            return None
        t = getattr(self.stats if k[0] == "b" else self.consts, k[1])
        return float(t.reshape(-1)[0]) if t.numel() == 1 and t.is_floating_point() else None

    @torch.no_grad()
    def fuse_for_inference(self) -> dict[str, int]:
        """Rewrite the node list for export, with identical outputs: ``Conv -> Mul(s) -> Add(t)`` (a learnable
        affine after a convolution, as in PP-LCNetV3) becomes one Conv with scaled weights and bias; ``x *
        Clip(x + 3, 0, 6) / 6`` becomes one HardSwish; a scalar affine feeding an unpadded Conv goes into its
        weights. Each removes memory-bound elementwise passes, which dominate these small networks' CPU time.
        Training after fusing is not supported. Returns the counts."""
        nodes = list(self.nodes)
        use = self._consumers(nodes)
        drop: set[int] = set()
        affine = hswish = 0
        for idx, (op, ins, outs, a, name) in enumerate(nodes):
            found = self._conv_affine(nodes, idx, use)
            if found is None:
                continue
            mul, add, scale, shift = found
            w = self.params[self._key[ins[1]][1]]
            own = self._own_bias(name, ins, w, use)
            if own is None:
                continue
            ins, b = own
            w.mul_(scale)
            b.mul_(scale).add_(shift)
            nodes[idx] = (op, ins, [nodes[add][2][0]], a, name)
            drop.update((mul, add))
            affine += 1
        for idx, (op, ins, outs, a, name) in enumerate(nodes):
            if op != "Add" or idx in drop or len(ins) != 2 or self._scalar(ins[1]) != 3.0:
                continue
            x = ins[0]
            clip = next((j for j, n in enumerate(nodes) if n[0] == "Clip" and n[1][:1] == [outs[0]]), None)
            if clip is None or use.get(outs[0], 0) != 1:
                continue
            lo_hi = [self._scalar(i) for i in nodes[clip][1][1:3]]
            mul = next((j for j, n in enumerate(nodes) if n[0] == "Mul" and sorted(n[1]) == sorted([x, nodes[clip][2][0]])),
                       None)
            if lo_hi != [0.0, 6.0] or mul is None:
                continue
            div = next((j for j, n in enumerate(nodes) if n[0] == "Div" and n[1][:1] == [nodes[mul][2][0]]), None)
            if div is None or self._scalar(nodes[div][1][1]) != 6.0 or use.get(nodes[mul][2][0], 0) != 1:
                continue
            nodes[div] = ("HardSwish", [x], nodes[div][2], {}, nodes[div][4])
            drop.update((idx, clip, mul))
            hswish += 1
        nodes = [n for j, n in enumerate(nodes) if j not in drop]
        nodes, into_conv = self._fold_affine_into_conv(nodes, self._consumers(nodes))
        self.nodes = nodes
        return {"conv_affine": affine, "hardswish": hswish, "affine_into_conv": into_conv}

    def _consumers(self, nodes: list) -> dict[str, int]:
        """How many readers each tensor has; the logits and features count as read (they are outputs)."""
        c: dict[str, int] = {}
        for n in nodes:
            for i in n[1]:
                c[i] = c.get(i, 0) + 1
        c[self.logits_name] = c.get(self.logits_name, 0) + 1
        c[self.features_name] = c.get(self.features_name, 0) + 1
        return c

    def _conv_affine(self, nodes: list, idx: int, use: dict[str, int]) -> tuple[int, int, float, float] | None:
        """``nodes[idx]`` as ``Conv(W trainable) -> Mul(s) -> Add(t)`` with scalar s and t, each output read once
        (PP-LCNetV3's learnable affine): (Mul index, Add index, s, t), or None."""
        op, ins, outs, _, _ = nodes[idx]
        if op != "Conv" or use.get(outs[0], 0) != 1 or ins[1] not in self._key or self._key[ins[1]][0] != "p":
            return None
        mul = next((j for j, n in enumerate(nodes) if n[0] == "Mul" and outs[0] in n[1]), None)
        if mul is None or use.get(nodes[mul][2][0], 0) != 1:
            return None
        sc = [self._scalar(i) for i in nodes[mul][1] if i != outs[0]]
        add = next((j for j, n in enumerate(nodes) if n[0] == "Add" and nodes[mul][2][0] in n[1]), None)
        if len(sc) != 1 or sc[0] is None or add is None:
            return None
        sh = [self._scalar(i) for i in nodes[add][1] if i != nodes[mul][2][0]]
        if len(sh) != 1 or sh[0] is None:
            return None
        return mul, add, sc[0], sh[0]

    def _own_bias(self, name: str, ins: list[str], w: Tensor, use: dict[str, int]) -> tuple[list[str], Tensor] | None:
        """The Conv's bias as a parameter only it reads, for a fold to update in place: its own, or a new zero one
        (``<name>.fused_bias``, added to ``ins``). None when its bias is computed or shared: no fold then."""
        if len(ins) > 2 and ins[2]:
            k = self._key.get(ins[2], ("",))
            return (ins, self.params[k[1]]) if k[0] == "p" and use.get(ins[2], 0) == 1 else None
        bname = f"{name}.fused_bias"
        self.params[_safe(bname)] = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype))
        self._key[bname] = ("p", _safe(bname))
        return ins[:2] + [bname], self.params[_safe(bname)]

    def _fold_affine_into_conv(self, nodes: list, use: dict[str, int]) -> tuple[list, int]:
        """``Mul(x, s) -> Add(t) -> Conv(W, b)`` with scalar s, t and an unpadded Conv becomes ``Conv(x; W*s, b +
        t*sum(W))``: PP-LCNetV3's affine after each activation. Left as scalar Mul/Add nodes, each is a memory-bound
        pass and makes ONNX Runtime leave its blocked (NCHWc) layout around it. A padded Conv is left alone: its
        zero border would become ``t`` after folding, and on maps a few rows high nearly every position is border
        (folding those too, then fine-tuning, was tried: the PP-OCRv4 student's zero-shot accuracy fell to 0)."""
        first_use: dict[str, int] = {}
        for j, n in enumerate(nodes):
            for i in n[1]:
                first_use.setdefault(i, j)
        drop: set[int] = set()
        done = 0
        for j, (op, ins, outs, _, _) in enumerate(nodes):
            if op != "Mul" or len(ins) != 2 or use.get(outs[0], 0) != 1:
                continue
            sc = [self._scalar(i) for i in ins]
            if (sc[0] is None) == (sc[1] is None):
                continue
            x, s = (ins[1], sc[0]) if sc[0] is not None else (ins[0], sc[1])
            k = first_use.get(outs[0])
            add = nodes[k] if k is not None else None
            if add is None or add[0] != "Add" or len(add[1]) != 2 or use.get(add[2][0], 0) != 1:
                continue
            t = self._scalar(add[1][1] if add[1][0] == outs[0] else add[1][0])
            c = first_use.get(add[2][0])
            conv = nodes[c] if c is not None else None
            if t is None or conv is None or conv[0] != "Conv" or conv[1][0] != add[2][0]:
                continue
            cop, cins, couts, ca, cname = conv
            if any(ca.get("pads", [])) or self._key.get(cins[1], ("",))[0] != "p" or use.get(cins[1], 0) != 1:
                continue
            w = self.params[self._key[cins[1]][1]]
            own = self._own_bias(cname, cins, w, use)
            if own is None:
                continue
            cins, b = own
            b.add_(t * w.sum(dim=(1, 2, 3)))
            w.mul_(s)
            nodes[c] = (cop, [x] + cins[1:], couts, ca, cname)
            drop.update((j, k))
            done += 1
        return [n for j, n in enumerate(nodes) if j not in drop], done

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


# -- operators ---------------------------------------------------------------------------------------------------
def _pads(p, nd: int = 2):
    if not p:
        return [0] * nd, None
    begin, end = p[:nd], p[nd:]
    if begin == end:
        return list(begin), None
    pad = []
    for b, e in zip(reversed(begin), reversed(end)):
        pad += [b, e]
    return [0] * nd, pad


def _auto_pads(a: dict, x: Tensor, kernel: Sequence[int]) -> list[int]:
    """Explicit ONNX ``pads`` (begins, then ends) for ``auto_pad`` SAME_UPPER / SAME_LOWER (the output keeps
    ceil(input / stride); an odd total goes to the end for UPPER, the beginning for LOWER), else ``pads``."""
    mode = a.get("auto_pad", "NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
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


def _flatten(self, args, a, dev):
    ax = a.get("axis", 1)
    return args[0].flatten(1) if ax == 1 else args[0].reshape(int(np.prod(args[0].shape[:ax])) if ax else 1, -1)


_OPS = {
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
}
