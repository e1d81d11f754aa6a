"""Export-time fusion of graphs imported from ONNX (``distill.models.OnnxNet``): the affine and activation chains
PP-LCNet-style recognizers are made of, folded into their convolutions before ``compress.export`` traces the
model. Identical outputs, fewer memory-bound elementwise passes (these dominate small networks' CPU time)."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from distill.models.onnx_net import OnnxNet, safe_name

__all__ = ["fuse_for_inference"]


@torch.no_grad()
def fuse_for_inference(net: OnnxNet) -> dict[str, int]:
    """Rewrite the node list for export, with identical outputs: ``Conv -> Mul(s) -> Add(t)`` (a learnable
    affine after a convolution, as in PP-LCNetV3) becomes one Conv with scaled weights and bias; ``x *
    Clip(x + 3, 0, 6) / 6`` becomes one HardSwish; a scalar affine feeding an unpadded Conv goes into its
    weights. Each removes memory-bound elementwise passes, which dominate these small networks' CPU time.
    Training after fusing is not supported. Returns the counts."""
    nodes = list(net.nodes)
    use = net.consumers(nodes)
    drop: set[int] = set()
    affine = hswish = 0
    for idx, (op, ins, outs, a, name) in enumerate(nodes):
        found = net.conv_affine(nodes, idx, use)
        if found is None:
            continue
        mul, add, scale, shift = found
        w = net.params[net.tensor_keys[ins[1]][1]]
        own = _own_bias(net, name, ins, w, use)
        if own is None:
            continue
        ins, b = own
        w.mul_(scale)
        b.mul_(scale).add_(shift)
        nodes[idx] = (op, ins, [nodes[add][2][0]], a, name)
        drop.update((mul, add))
        affine += 1
    for idx, (op, ins, outs, a, name) in enumerate(nodes):
        if op != "Add" or idx in drop or len(ins) != 2 or net.scalar(ins[1]) != 3.0:
            continue
        x = ins[0]
        clip = next((j for j, n in enumerate(nodes) if n[0] == "Clip" and n[1][:1] == [outs[0]]), None)
        if clip is None or use.get(outs[0], 0) != 1:
            continue
        lo_hi = [net.scalar(i) for i in nodes[clip][1][1:3]]
        mul = next((j for j, n in enumerate(nodes) if n[0] == "Mul" and sorted(n[1]) == sorted([x, nodes[clip][2][0]])),
                   None)
        if lo_hi != [0.0, 6.0] or mul is None:
            continue
        div = next((j for j, n in enumerate(nodes) if n[0] == "Div" and n[1][:1] == [nodes[mul][2][0]]), None)
        if div is None or net.scalar(nodes[div][1][1]) != 6.0 or use.get(nodes[mul][2][0], 0) != 1:
            continue
        nodes[div] = ("HardSwish", [x], nodes[div][2], {}, nodes[div][4])
        drop.update((idx, clip, mul))
        hswish += 1
    nodes = [n for j, n in enumerate(nodes) if j not in drop]
    nodes, into_conv = _fold_affine_into_conv(net, nodes, net.consumers(nodes))
    net.nodes = nodes
    return {"conv_affine": affine, "hardswish": hswish, "affine_into_conv": into_conv}


def _own_bias(net, name: str, ins: list[str], w: Tensor, use: dict[str, int]) -> tuple[list[str], Tensor] | None:
    """The Conv's bias as a parameter only it reads, for a fold to update in place: its own, or a new zero one
    (``<name>.fused_bias``, added to ``ins``). None when its bias is computed or shared: no fold then."""
    if len(ins) > 2 and ins[2]:
        k = net.tensor_keys.get(ins[2], ("",))
        return (ins, net.params[k[1]]) if k[0] == "p" and use.get(ins[2], 0) == 1 else None
    bname = f"{name}.fused_bias"
    net.params[safe_name(bname)] = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype))
    net.tensor_keys[bname] = ("p", safe_name(bname))
    return ins[:2] + [bname], net.params[safe_name(bname)]


def _fold_affine_into_conv(net, nodes: list, use: dict[str, int]) -> tuple[list, int]:
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
        sc = [net.scalar(i) for i in ins]
        if (sc[0] is None) == (sc[1] is None):
            continue
        x, s = (ins[1], sc[0]) if sc[0] is not None else (ins[0], sc[1])
        k = first_use.get(outs[0])
        add = nodes[k] if k is not None else None
        if add is None or add[0] != "Add" or len(add[1]) != 2 or use.get(add[2][0], 0) != 1:
            continue
        t = net.scalar(add[1][1] if add[1][0] == outs[0] else add[1][0])
        c = first_use.get(add[2][0])
        conv = nodes[c] if c is not None else None
        if t is None or conv is None or conv[0] != "Conv" or conv[1][0] != add[2][0]:
            continue
        cop, cins, couts, ca, cname = conv
        if any(ca.get("pads", [])) or net.tensor_keys.get(cins[1], ("",))[0] != "p" or use.get(cins[1], 0) != 1:
            continue
        w = net.params[net.tensor_keys[cins[1]][1]]
        own = _own_bias(net, cname, cins, w, use)
        if own is None:
            continue
        cins, b = own
        b.add_(t * w.sum(dim=(1, 2, 3)))
        w.mul_(s)
        nodes[c] = (cop, [x] + cins[1:], couts, ca, cname)
        drop.update((j, k))
        done += 1
    return [n for j, n in enumerate(nodes) if j not in drop], done
