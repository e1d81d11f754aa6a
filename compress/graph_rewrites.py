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
"""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["scalar_affine_to_conv", "conv_to_scalar_affine", "constant_lookup"]

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
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    for o in g.output:
        readers[o.name] = readers.get(o.name, 0) + 1
    producer = {o: n for n in g.node for o in n.output}
    read_scalars: set[str] = set()
    count = 0
    for add in list(g.node):
        if add.op_type != "Add":
            continue
        y, t = _split(add, value)
        mul = producer.get(y) if y is not None else None
        if mul is None or mul.op_type != "Mul" or readers.get(y, 0) != 1:  # one reader: each Mul meets one Add
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
    if count:
        # The scalars that only the rewritten nodes read would be left dangling: drop them
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        orphans = read_scalars - used
        for n in [n for n in g.node if n.op_type == "Constant" and n.output[0] in orphans]:
            g.node.remove(n)
        for t in [t for t in g.initializer if t.name in orphans]:
            g.initializer.remove(t)
    return count


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
