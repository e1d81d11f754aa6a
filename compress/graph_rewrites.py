"""Exact ONNX graph rewrites that make exported recognizers faster on ONNX Runtime's CPU provider.

``scalar_affine_to_conv``: PP-LCNetV3 (PP-OCRv4's backbone) ends every activation with a learnable affine block,
``y = s * x + t`` with two scalars. Exported, that is a ``Mul`` and an ``Add`` between two convolutions, and ONNX
Runtime's blocked (NCHWc) convolution layout cannot take them: each one costs a reorder out of NCHWc, two
elementwise passes and a reorder back, more than half of the PP-OCRv4 student's CPU time at batch 32. Written as a
depthwise 1x1 ``Conv`` (weight ``s``, bias ``t`` for every channel) the affine stays inside the NCHWc chain, with
identical outputs. It cannot be folded into the next convolution instead: that convolution pads with zeros, which the
affine would turn into ``t`` at the border (tried: svt_test lr16 falls to 0 % when the 5x5 ones are folded).

``conv_to_scalar_affine`` undoes it before INT8 quantization for TensorRT: TensorRT fuses scalar elementwise
layers into its convolutions itself, and quantized as a convolution with symmetric int8 activations the affine
ruined the PP-OCRv4 student (svt_test lr16 3.7 % under ONNX Runtime, 71.0 % with the Mul/Add kept in float).

``qdq_integer_activations`` works on the INT8 (Q/DQ) graph of the ``cpu`` flavour: the activations ONNX Runtime has
no quantized kernel for (HardSwish, squeeze-excitation gates and means) as patterns it fuses into integer kernels,
and the affines above folded into them.

``erf_gelu_to_gelu``: exporters write GELU as five nodes (x / sqrt 2, Erf, + 1, * x, * 0.5). ONNX Runtime fuses
them into one Gelu kernel in a float graph, but not once Q/DQ pairs sit around them: in the INT8 PP-OCRv6 student the
five float passes took a quarter of the time. The rewrite writes the fused node itself (exact, same function);
``qdq_integer_activations`` then takes it between DQ and Q into integer kernels.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from runtime.onnxfile import graph_links

__all__ = ["scalar_affine_to_conv", "conv_to_scalar_affine", "constant_lookup", "qdq_integer_activations",
           "erf_gelu_to_gelu", "gelu_inputs", "fit_gelu_gate", "fitted_gelu_gates"]

_SUFFIX = ".affine_conv"  # name suffix of the convolutions scalar_affine_to_conv writes; its inverse finds them


def constant_lookup(graph) -> Callable[[str], np.ndarray | None]:
    """name -> the array of an initializer or a Constant node's tensor, None for computed tensors; converted on
    demand (a graph's weights are not all copied to find a few scalars)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name])
        return None

    return value


def _split(node, value) -> tuple[str | None, float | None]:
    """(tensor input, scalar) of a binary Mul/Add with one scalar input; ``value``: a ``constant_lookup``."""
    if len(node.input) != 2:
        return None, None
    a, b = node.input
    va, vb = value(a), value(b)
    if vb is not None and vb.size == 1 and va is None:
        return a, float(vb.ravel()[0])
    if va is not None and va.size == 1 and vb is None:
        return b, float(va.ravel()[0])
    return None, None


def scalar_affine_to_conv(model) -> int:
    """Rewrite every ``Mul(x, s) -> Add(., t)`` on a 4-D tensor with a known channel count (scalars s and t, the Mul
    read by the Add only) as one depthwise 1x1 Conv. In place; returns how many were rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    channels = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            channels[v.name] = dims[1].dim_value
    value = constant_lookup(g)
    producer, readers = graph_links(g)
    read_scalars: set[str] = set()
    count = 0
    for add in list(g.node):
        if add.op_type != "Add":
            continue
        y, t = _split(add, value)
        mul = producer.get(y) if y is not None else None
        if mul is None or mul.op_type != "Mul" or len(readers.get(y, [])) != 1:  # one reader: each Mul meets one Add
            continue
        x, s = _split(mul, value)
        if x is None or x not in channels:
            continue
        c = channels[x]
        base = add.name or add.output[0]  # unnamed nodes: their output names, unique in the graph
        g.initializer.append(numpy_helper.from_array(np.full((c, 1, 1, 1), s, np.float32), f"{base}.affine_w"))
        g.initializer.append(numpy_helper.from_array(np.full((c,), t, np.float32), f"{base}.affine_b"))
        conv = helper.make_node("Conv", [x, f"{base}.affine_w", f"{base}.affine_b"], [add.output[0]],
                                name=base + _SUFFIX, group=c, kernel_shape=[1, 1])
        at = list(g.node).index(mul)
        g.node.remove(mul)
        g.node.remove(add)
        g.node.insert(at, conv)
        read_scalars.update(i for i in (*mul.input, *add.input) if value(i) is not None)
        count += 1
    _drop_unused(g, read_scalars)  # the scalars only the rewritten nodes read
    return count


def _drop_unused(g, names: set[str]) -> None:
    """Remove those of ``names`` (initializers or Constant outputs) that no node or graph output reads any more."""
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    orphans = names - used
    for n in [n for n in g.node if n.op_type == "Constant" and n.output[0] in orphans]:
        g.node.remove(n)
    for t in [t for t in g.initializer if t.name in orphans]:
        g.initializer.remove(t)


def conv_to_scalar_affine(model) -> int:
    """The inverse of ``scalar_affine_to_conv``: each of its depthwise 1x1 convolutions (named ``*.affine_conv``,
    one weight and one bias value for all channels) back to ``Mul`` and ``Add`` by scalars. In place; returns the
    count."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    count = 0
    for conv in [n for n in g.node if n.op_type == "Conv" and n.name.endswith(_SUFFIX)]:
        if len(conv.input) != 3 or conv.input[1] not in inits or conv.input[2] not in inits:
            continue
        w, b = numpy_helper.to_array(inits[conv.input[1]]), numpy_helper.to_array(inits[conv.input[2]])
        if w.size == 0 or np.ptp(w) != 0 or np.ptp(b) != 0:
            continue
        base = conv.name[: -len(_SUFFIX)]
        s_name, t_name, mid = f"{base}.affine_s", f"{base}.affine_t", f"{base}.affine_mul_out"
        g.initializer.append(numpy_helper.from_array(np.array(w.ravel()[0], np.float32), s_name))
        g.initializer.append(numpy_helper.from_array(np.array(b.ravel()[0], np.float32), t_name))
        at = list(g.node).index(conv)
        g.node.remove(conv)
        g.node.insert(at, helper.make_node("Add", [mid, t_name], [conv.output[0]], name=f"{base}.affine_add"))
        g.node.insert(at, helper.make_node("Mul", [conv.input[0], s_name], [mid], name=f"{base}.affine_mul"))
        for name in conv.input[1:]:
            if not any(name in n.input for n in g.node):
                g.initializer.remove(inits[name])
        count += 1
    return count


def erf_gelu_to_gelu(model) -> int:
    """Each Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5 chain (the Muls in either order) as one
    ``com.microsoft.Gelu`` node, for ONNX Runtime. In place; returns the count."""
    from onnx import helper

    g = model.graph
    value = constant_lookup(g)
    prod, readers = graph_links(g)

    def only_reader(t: str, op: str):
        r = readers.get(t, [])
        return r[0] if len(r) == 1 and r[0] is not None and r[0].op_type == op else None

    def by(node, v: float) -> str | None:  # the tensor input of ``node`` when its other input is the scalar v
        t, s = _split(node, value)
        return t if s is not None and abs(s - v) < 1e-5 * max(1.0, abs(v)) else None

    count, dropped = 0, set()
    for erf in [n for n in g.node if n.op_type == "Erf"]:
        div = prod.get(erf.input[0])
        if div is None or div.op_type != "Div" or by(div, float(np.sqrt(2.0))) != div.input[0]:  # x / sqrt 2
            continue
        x = div.input[0]
        add = only_reader(erf.output[0], "Add")
        if only_reader(div.output[0], "Erf") is None or add is None or by(add, 1.0) != erf.output[0]:
            continue
        m1 = only_reader(add.output[0], "Mul")
        if m1 is None:
            continue
        other = next((i for i in m1.input if i != add.output[0]), "")
        if other == x:  # (x * (1 + erf)) * 0.5
            m2 = only_reader(m1.output[0], "Mul")
            ok = m2 is not None and by(m2, 0.5) == m1.output[0]
        else:  # (0.5 * x) * (1 + erf)
            m2, m1 = m1, prod.get(other)
            ok = m1 is not None and m1.op_type == "Mul" and by(m1, 0.5) == x and only_reader(m1.output[0], "Mul") is m2
        if not ok:
            continue
        at = list(g.node).index(m2)
        g.node.insert(at, helper.make_node("Gelu", [x], [m2.output[0]], name=f"{erf.name}.gelu",
                                           domain="com.microsoft"))
        for n in (div, erf, add, m1, m2):
            g.node.remove(n)
            dropped.update(i for i in n.input if value(i) is not None)
        count += 1
    if count:
        _drop_unused(g, dropped)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return count


# ---- INT8 (QDQ) activations as integer kernels ----------------------------------------------------------------------
_QACT = "int_act"  # name prefix of the nodes qdq_integer_activations writes
_GELU_MAX_MSE = 1.0  # a GELU whose fitted gate misses the exact output codes by more (mean squared) stays float


def gelu_inputs(model) -> list[str]:
    """The uint8 tensors that GELUs between DequantizeLinear and QuantizeLinear read (``qdq_integer_activations``
    needs their calibration histograms to write them as integer gates)."""
    prod, readers = graph_links(model.graph)
    out = []
    for n in model.graph.node:
        d, r = prod.get(n.input[0]) if n.input else None, readers.get(n.output[0], [])
        if n.op_type == "Gelu" and d is not None and d.op_type == "DequantizeLinear" and len(r) == 1 \
                and r[0] is not None and r[0].op_type == "QuantizeLinear":
            out.append(d.input[0])
    return out


def fitted_gelu_gates(model, gelu_hist: dict[str, np.ndarray]) -> dict[str, tuple[str, float, int]]:
    """The gates ``qdq_integer_activations`` would write for ``model``'s GELUs between DQ and Q, by float tensor
    names: Gelu output -> (its float input, a, k); the GELUs it would leave float are left out. For fine-tuning
    through the integer graph (``compress.qdq_finetune``) before the rewrite."""
    prod, readers = graph_links(model.graph)
    value = constant_lookup(model.graph)
    out = {}
    for n in model.graph.node:
        d = prod.get(n.input[0]) if n.op_type == "Gelu" else None
        q_x = prod.get(d.input[0]) if d is not None and d.op_type == "DequantizeLinear" else None
        r = readers.get(n.output[0], [])
        if q_x is None or q_x.op_type != "QuantizeLinear" or len(r) != 1 or r[0] is None \
                or r[0].op_type != "QuantizeLinear" or d.input[0] not in gelu_hist:
            continue
        sx, zx, sy, zy = (value(i) for i in (d.input[1], d.input[2], r[0].input[1], r[0].input[2]))
        if any(v is None or v.size != 1 for v in (sx, zx, sy, zy)):
            continue
        a, k, mse = fit_gelu_gate(float(sx), int(zx), float(sy), int(zy), gelu_hist[d.input[0]])
        if mse <= _GELU_MAX_MSE:
            out[n.output[0]] = (q_x.input[0], a, k)
    return out


def fit_gelu_gate(s_x: float, z_x: int, s_y: float, z_y: int, hist: np.ndarray) -> tuple[float, int, float]:
    """(a, k, mse): x * sigmoid(a (x + k s_x)), the gate on the uint8 grid 1/255, that best gives the output codes
    exact GELU gives, every input code weighted by ``hist`` (its count on calibration data); mse in output steps
    squared. Simulated on all 256 input codes as ONNX Runtime computes QLinearSigmoid (a table) and QLinearMul."""
    from math import erf

    x = (np.arange(256) - z_x) * s_x
    exact = np.clip(np.rint(0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2))) / s_y) + z_y, 0, 255)
    w = hist / max(hist.sum(), 1)
    best = (0.0, 0, np.inf)
    for a in np.arange(1.40, 2.2001, 0.02):
        for k in range(-8, 9):
            if not 0 <= z_x - k <= 255:
                continue
            gate = np.clip(np.rint(255 / (1 + np.exp(-a * (x + k * s_x)))), 0, 255) / 255
            mse = float((w * (np.clip(np.rint(x * gate / s_y) + z_y, 0, 255) - exact) ** 2).sum())
            if mse < best[2]:
                best = (float(a), k, mse)
    return best


def qdq_integer_activations(model, gelu_hist: dict[str, np.ndarray] | None = None) -> dict[str, int]:
    """Rewrite a QDQ-quantized graph's float islands between INT8 layers as integer kernels for ONNX Runtime's CPU
    provider. In place; returns the count per pattern.

    ONNX Runtime has no quantized HardSwish: between two INT8 convolutions each one runs as DequantizeLinear,
    HardSigmoid, Mul and QuantizeLinear in float, and on the PP-OCRv4 student those passes took more time than the
    quantized convolutions themselves (a batch of 32 on one thread: 178 ms with them, 83 ms rewritten, FP32 171 ms).
    Each pattern below is written in a Q/DQ form that ONNX Runtime fuses into its integer kernels, with ranges that
    come from the function rather than from calibration:

    - ``hardswish``: Mul(DQ(q), HardSigmoid(DQ(q))) -> Q (how exporters write HardSwish), or HardSwish itself
      between DQ and Q. HardSigmoid(x) = clip(a*x + b, 0, 1) is x + b/a
      requantized to the uint8 scale 1/(255 a), zero point 0 (QLinearAdd): saturation at 0 and 255 is the clip, and
      the same integers read at scale 1/255 are HardSigmoid(x). QLinearMul of x and that gives HardSwish at the
      output scale calibrated for the float island. One rounding more than the island (HardSigmoid to 1/255: for
      |x| <= 3/a at most half a unit of the output), so the accuracy is the island's.
    - ``gelu``: Gelu(DQ(q)) -> Q (``erf_gelu_to_gelu``'s node) as x * sigmoid(a (x + k s_x)): x read at a times
      its scale and its zero point moved by k, a Sigmoid between DQ and Q on the uint8 grid 1/255 (QLinearSigmoid,
      a table lookup), then QLinearMul by x. Only with ``gelu_hist`` (input tensor -> counts of its 256 codes on
      calibration data, ``gelu_inputs`` names them): a and k are fitted per GELU to give the codes exact GELU gives
      (``fit_gelu_gate``), and a GELU stays float when the fit misses by more than ``_GELU_MAX_MSE``. The fit
      matters: GELU's outputs get fine grids (most inputs are negative, the outputs within [-0.17, 0]), where the
      textbook a = 1.702 misses by up to 6 steps (on the PP-OCRv6 student 0.3-1.5 steps squared over its
      calibration codes, fitted 0.2-0.7). The float island (DequantizeLinear, Gelu, QuantizeLinear) was a quarter
      of that student's time and the integer pair takes a tenth (ONNX Runtime's profile, batch 32).
    - ``gate``: Mul(DQ(q_x), Clip(DQ(q_g), 0, hi)) -> Q, squeeze-excitation's gate: the clip is a requantization to
      the uint8 scale hi/255, then QLinearMul broadcasts the per-channel gate.
    - ``affine``: a scalar affine (``scalar_affine_to_conv``'s depthwise convolution) after one of the Muls above
      goes into that Mul's scales (``_absorb_affines``).
    - ``squeeze``: DQ(q) -> ReduceMean over H and W of a 4-D tensor (keepdims) -> Q as GlobalAveragePool, which
      ONNX Runtime fuses into QLinearGlobalAveragePool.

    The uint8 grids make this the ``cpu`` flavour's rewrite (TensorRT fuses activations into its convolutions).
    """
    import onnx

    rw = _IntegerActivations(model.graph, onnx.shape_inference.infer_shapes(model).graph.value_info, gelu_hist or {})
    for node in list(model.graph.node):
        if node.op_type == "ReduceMean":
            rw.squeeze(node)
        else:
            rw.activation(node)
    return rw.finish()


class _IntegerActivations:
    """The state of one ``qdq_integer_activations`` pass: the graph's links, the new constants, the counts."""

    def __init__(self, g, value_info, gelu_hist: dict[str, np.ndarray]) -> None:
        self.g, self.value, self.gelu_hist = g, constant_lookup(g), gelu_hist
        self.prod, self.readers = graph_links(g)
        self.rank = {v.name: len(v.type.tensor_type.shape.dim) for v in value_info}
        self.counts = {"hardswish": 0, "gelu": 0, "gate": 0, "squeeze": 0, "affine": 0}
        self.consts: list = []
        self.replaced: set[str] = set()

    def prefix(self) -> str:
        return f"{_QACT}_{sum(self.counts.values())}"

    def scalar(self, name: str, v: float, dtype) -> str:
        from onnx import numpy_helper

        self.consts.append(numpy_helper.from_array(np.array(v, dtype), name))
        return name

    def is_op(self, name: str, op: str) -> bool:
        return name in self.prod and self.prod[name].op_type == op

    def quantized_reader(self, node) -> bool:
        """Whether ``node`` is read by one QuantizeLinear only."""
        r = self.readers.get(node.output[0], [])
        return len(r) == 1 and r[0] is not None and r[0].op_type == "QuantizeLinear"

    def replace(self, old: list, new: list) -> None:
        """``new`` where the last of ``old`` was: every input they read is computed before it."""
        g = self.g
        at = list(g.node).index(old[-1]) - (len(old) - 1)
        for n in old:
            g.node.remove(n)
        for j, n in enumerate(new):
            g.node.insert(at + j, n)
        for n in old:
            self.replaced.update(n.input)

    def squeeze(self, node) -> None:
        """DQ -> ReduceMean over H, W (keepdims) -> Q as GlobalAveragePool (QLinearGlobalAveragePool)."""
        from onnx import helper

        if not (self.is_op(node.input[0], "DequantizeLinear") and self.quantized_reader(node)):
            return
        a = _attrs(node)
        axes = a.get("axes") or (list(self.value(node.input[1])) if len(node.input) > 1 and node.input[1] else None)
        if a.get("keepdims", 1) != 1 or self.rank.get(node.input[0]) != 4 or \
                sorted(int(x) % 4 for x in axes or []) != [2, 3]:
            return
        self.replace([node], [helper.make_node("GlobalAveragePool", [node.input[0]], [node.output[0]],
                                               name=self.prefix() + "_gap")])
        self.counts["squeeze"] += 1

    def activation(self, node) -> None:
        """A HardSwish or a GELU, or a Mul of x by HardSigmoid(x) or by a clipped gate, between DQ and Q -> a
        QLinearMul of x by the factor requantized on a fixed uint8 grid."""
        from onnx import helper

        prod, p = self.prod, self.prefix()
        if node.op_type == "HardSwish" and self.is_op(node.input[0], "DequantizeLinear") and self.quantized_reader(node):
            x, act, old = node.input[0], node, [node]  # HardSwish = x * HardSigmoid(x), alpha 1/6, beta 0.5
        elif node.op_type == "Gelu" and self.is_op(node.input[0], "DequantizeLinear") and self.quantized_reader(node):
            x, act, old = node.input[0], node, [node]
        elif node.op_type == "Mul" and len(node.input) == 2 and self.quantized_reader(node):
            x, f = node.input
            if not (self.is_op(f, "HardSigmoid") or self.is_op(f, "Clip")):
                x, f = f, x
            if not self.is_op(x, "DequantizeLinear") or f not in prod or len(self.readers.get(f, [])) != 1:
                return
            act, old = prod[f], [prod[f], node]
        else:
            return
        dq_x = prod[x]
        zp_x = self.value(dq_x.input[2]) if len(dq_x.input) > 2 and dq_x.input[2] else None
        if zp_x is None or zp_x.dtype != np.uint8:  # the uint8 grids below need uint8 activations (cpu flavour)
            return
        if act.op_type in ("HardSwish", "HardSigmoid") and act.input[0] == x:
            f_new, kind = self._hardsigmoid(act, dq_x, p), "hardswish"
        elif act.op_type == "Gelu":
            f_new, kind = self._gelu_gate(dq_x, act, p), "gelu"
        elif act.op_type == "Clip" and len(act.input) == 3 and self.is_op(act.input[0], "DequantizeLinear"):
            f_new, kind = self._gate(act, p), "gate"
        else:
            return
        if f_new is None:
            return
        # a DequantizeLinear of its own for the Mul: ONNX Runtime fuses a DQ into the one node that reads it
        self.replace(old, f_new + [
            helper.make_node("DequantizeLinear", list(dq_x.input), [p + "_x"], name=p + "_dq_x"),
            helper.make_node("Mul", [p + "_x", p + "_f"], [node.output[0]], name=p + "_mul")])
        if all(r in old for r in self.readers.get(x, [])):
            self.g.node.remove(dq_x)  # read by nothing else now
        self.counts[kind] += 1

    def _hardsigmoid(self, act, dq_x, p: str) -> list | None:
        """HardSigmoid(x) as x + b/a requantized to the uint8 scale 1/(255 a), read back at scale 1/255."""
        from onnx import helper

        a = float(_attrs(act).get("alpha", 0.2)) if act.op_type == "HardSigmoid" else 1 / 6
        b = float(_attrs(act).get("beta", 0.5)) if act.op_type == "HardSigmoid" else 0.5
        if a <= 0 or b <= 0:
            return None
        zp = self.scalar(p + "_zp", 0, np.uint8)
        return [helper.make_node("DequantizeLinear", list(dq_x.input), [p + "_x1"], name=p + "_dq_x1"),
                helper.make_node("DequantizeLinear", [self.scalar(p + "_b_q", 255, np.uint8),
                                                      self.scalar(p + "_b_s", b / a / 255, np.float32), zp],
                                 [p + "_b"], name=p + "_dq_b"),
                helper.make_node("Add", [p + "_x1", p + "_b"], [p + "_u"], name=p + "_add"),
                helper.make_node("QuantizeLinear", [p + "_u", self.scalar(p + "_u_s", 1 / (255 * a), np.float32), zp],
                                 [p + "_uq"], name=p + "_q_u"),
                helper.make_node("DequantizeLinear", [p + "_uq", self.scalar(p + "_f_s", 1 / 255, np.float32), zp],
                                 [p + "_f"], name=p + "_dq_f")]

    def _gelu_gate(self, dq_x, act, p: str) -> list | None:
        """GELU's factor as sigmoid(a (x + k s_x)) on the uint8 grid 1/255, a and k fitted to the calibration codes
        (``fit_gelu_gate``): x dequantized at a times its scale from zero point z_x - k, a Sigmoid between DQ and
        Q (ONNX Runtime's table-driven QLinearSigmoid). None (the float island stays) without a histogram or a
        good enough fit."""
        from onnx import helper

        hist = self.gelu_hist.get(dq_x.input[0])
        q_y = self.readers[act.output[0]][0]
        sx, zx, sy, zy = (self.value(i) for i in (dq_x.input[1], dq_x.input[2], q_y.input[1], q_y.input[2]))
        if hist is None or any(v is None or v.size != 1 for v in (sx, zx, sy, zy)):
            return None
        a, k, mse = fit_gelu_gate(float(sx), int(zx), float(sy), int(zy), hist)
        if mse > _GELU_MAX_MSE:
            return None
        zp = self.scalar(p + "_zp", 0, np.uint8)
        f_s = self.scalar(p + "_f_s", 1 / 255, np.float32)
        return [helper.make_node("DequantizeLinear", [dq_x.input[0], self.scalar(p + "_x_s", float(sx) * a, np.float32),
                                                      self.scalar(p + "_x_z", int(zx) - k, np.uint8)],
                                 [p + "_x1"], name=p + "_dq_x1"),
                helper.make_node("Sigmoid", [p + "_x1"], [p + "_u"], name=p + "_sigmoid"),
                helper.make_node("QuantizeLinear", [p + "_u", f_s, zp], [p + "_uq"], name=p + "_q_u"),
                helper.make_node("DequantizeLinear", [p + "_uq", f_s, zp], [p + "_f"], name=p + "_dq_f")]

    def _gate(self, act, p: str) -> list | None:
        """Clip(g, 0, hi) as a requantization of g to the uint8 scale hi/255."""
        from onnx import helper

        lo, hi = self.value(act.input[1]), self.value(act.input[2])
        if lo is None or hi is None or float(lo) != 0.0 or float(hi) <= 0:
            return None
        zp, s = self.scalar(p + "_zp", 0, np.uint8), self.scalar(p + "_f_s", float(hi) / 255, np.float32)
        return [helper.make_node("QuantizeLinear", [act.input[0], s, zp], [p + "_fq"], name=p + "_q_f"),
                helper.make_node("DequantizeLinear", [p + "_fq", s, zp], [p + "_f"], name=p + "_dq_f")]

    def finish(self) -> dict[str, int]:
        """The new constants in, the scalar affines absorbed, the unread constants dropped; the counts."""
        g = self.g
        g.initializer.extend(self.consts)
        self.counts["affine"] = _absorb_affines(g, self.replaced)
        value = constant_lookup(g)  # with the new initializers
        _drop_unused(g, {n for n in self.replaced if value(n) is not None})
        return self.counts


def _absorb_affines(g, replaced: set[str]) -> int:
    """The scalar affines ``scalar_affine_to_conv`` wrote as depthwise convolutions, where one follows a Mul of
    ``qdq_integer_activations``: y = s*m + t goes into that QLinearMul, s > 0 into its second factor's scale and t
    into its output zero point, which then writes y at y's own scale. Saves a pass over the tensor per affine;
    ``replaced`` collects the inputs of removed nodes and the scales replaced."""
    from onnx import helper, numpy_helper

    value = constant_lookup(g)
    prod, readers = graph_links(g)

    def chain(name: str, op: str):  # the node that makes ``name``, if it is an ``op`` read by one node
        n = prod.get(name)
        return n if n is not None and n.op_type == op and len(readers.get(n.output[0], [])) == 1 else None

    def dequantized(name: str) -> np.ndarray | None:
        if value(name) is not None:
            return value(name)
        d = prod.get(name)
        if d is None or d.op_type != "DequantizeLinear" or any(value(i) is None for i in d.input):
            return None
        q, sc = value(d.input[0]).astype(np.float64), value(d.input[1]).astype(np.float64)
        zp = value(d.input[2]).astype(np.float64) if len(d.input) > 2 and d.input[2] else np.zeros_like(sc)
        if sc.ndim == 1:  # per channel along ``axis``
            shape = [1] * q.ndim
            shape[int(_attrs(d).get("axis", 1))] = -1
            sc, zp = sc.reshape(shape), zp.reshape(shape)
        return (q - zp) * sc

    count = 0
    for conv in [n for n in g.node if n.op_type == "Conv" and n.name.endswith(_SUFFIX) and len(n.input) == 3]:
        dq_h = chain(conv.input[0], "DequantizeLinear")
        q_h = chain(dq_h.input[0], "QuantizeLinear") if dq_h is not None else None
        mul = chain(q_h.input[0], "Mul") if q_h is not None else None
        after = readers.get(conv.output[0], [])
        if mul is None or not mul.name.startswith(_QACT) or len(after) != 1 or after[0] is None \
                or after[0].op_type != "QuantizeLinear":
            continue
        q_y, dq_f = after[0], prod.get(mul.input[1])
        w, t = dequantized(conv.input[1]), value(conv.input[2])
        if dq_f is None or dq_f.op_type != "DequantizeLinear" or value(dq_f.input[1]) is None or w is None \
                or t is None or np.ptp(w) > 1e-6 * np.abs(w).max() or np.ptp(t) != 0 or w.ravel()[0] <= 0:
            continue
        # t goes into the zero point in whole units of y's grid: y is off by a constant under half a unit (on the
        # PP-OCRv4 student its frames agree with FP32's as often as without absorbing: 92.5 vs 92.7 %)
        y_s, y_zp = float(value(q_y.input[1])), int(value(q_y.input[2]))
        zp = y_zp + int(round(float(t.ravel()[0]) / y_s))
        if not 0 <= zp <= 255:
            continue
        base = conv.name[: -len(_SUFFIX)]
        f_s = float(value(dq_f.input[1])) * float(w.ravel()[0])
        g.initializer.extend([numpy_helper.from_array(np.array(f_s, np.float32), base + ".absorbed_f_s"),
                              numpy_helper.from_array(np.array(zp, np.uint8), base + ".absorbed_zp")])
        replaced.add(dq_f.input[1])  # the island's own scale: orphaned unless something else reads it
        dq_f.input[1] = base + ".absorbed_f_s"
        mul.output[0] = base + ".absorbed"
        q_new = helper.make_node("QuantizeLinear", [base + ".absorbed", q_y.input[1], base + ".absorbed_zp"],
                                 [q_y.output[0]], name=base + ".absorbed_q")
        g.node.insert(list(g.node).index(q_y), q_new)
        gone = [q_h, dq_h, conv, q_y] + [prod[i] for i in conv.input[1:] if i in prod and readers[i] == [conv]]
        for n in gone:
            replaced.update(n.input)
            g.node.remove(n)
        count += 1
    return count


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}
