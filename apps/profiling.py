"""Where an ONNX model's CPU time goes: ONNX Runtime's own profiler, summed by operator, beside the model's
multiply-adds, so a reader can tell whether a model is slow because it computes much (time follows the
multiply-adds and the convolutions run near the CPU's rate) or because of glue around the arithmetic (reorders,
float islands between integer kernels, elementwise passes).

``python -m apps.benchmark profile MODEL [--batch 32] [--threads 1]``. Multiply-adds are a convolution's output
size times its kernel's size per output channel, a matrix product's output size times its inner dimension. The
model's own (``mmacs_per_crop``) are counted on the model's graph with ONNX's shape inference; each operator's
GMAC/s on the graph ONNX Runtime actually runs (its optimised copy, whose node names the profile uses), which
counts what its kernels compute: a blocked (NCHWc) convolution pads its channels to the CPU's vector width.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.cli import InputError
from runtime.onnxfile import load_proto, ort_session

__all__ = ["OpTime", "Profile", "profile_model"]

_CONVS = {"Conv": 1, "QLinearConv": 3, "FusedConv": 1, "ConvInteger": 1}  # op -> index of its weight input
_MATMULS = {"MatMul", "FusedMatMul", "QLinearMatMul", "MatMulInteger", "Gemm"}
_KERNEL = "_kernel_time"  # the suffix of a node's kernel event in ONNX Runtime's profile


@dataclass
class OpTime:
    op: str
    nodes: int
    ms: float  # per batch, summed over the operator's nodes
    share: float  # of all kernel time, %
    gmacs: float = 0.0  # multiply-adds per batch, 1e9
    gmac_per_s: float = 0.0


@dataclass
class Profile:
    model: str
    input_shape: list[int]
    threads: int
    runs: int
    ms_per_batch: float  # kernel time summed, per batch
    mmacs_per_crop: float  # convolutions and matrix products, 1e6
    ops: list[OpTime] = field(default_factory=list)

    def to_markdown(self, top: int = 12) -> str:
        n = self.input_shape[0]
        lines = [f"`{self.model}`: input {'x'.join(map(str, self.input_shape))}, {self.threads} thread(s), "
                 f"{self.runs} runs: {self.ms_per_batch:.1f} ms of kernel time per batch "
                 f"({self.ms_per_batch / n:.2f} ms per crop), {self.mmacs_per_crop:.0f} M multiply-adds per crop",
                 "", "| operator | nodes | ms per batch | share | GMAC per batch | GMAC/s |",
                 "|---|---:|---:|---:|---:|---:|"]
        for o in self.ops[:top]:
            mac = f"{o.gmacs:.2f} | {o.gmac_per_s:.0f}" if o.gmacs else " | "
            lines.append(f"| {o.op} | {o.nodes} | {o.ms:.2f} | {o.share:.1f} % | {mac} |")
        rest = self.ops[top:]
        if rest:
            lines.append(f"| {len(rest)} other operators | {sum(o.nodes for o in rest)} | {sum(o.ms for o in rest):.2f} "
                         f"| {sum(o.share for o in rest):.1f} % | | |")
        return "\n".join(lines)


def _input_shape(sess, batch: int, size: tuple[int, int] | None) -> list[int]:
    inp = sess.get_inputs()[0]
    dims = list(inp.shape)
    if len(dims) != 4:
        raise InputError(f"{inp.name}: expected an NCHW image input, the model declares {dims}")
    shape = [batch, dims[1]] + [int(d) if isinstance(d, int) else 0 for d in dims[2:]]
    if size:
        shape[2:] = list(size)
    if not isinstance(dims[1], int) or 0 in shape[2:]:
        raise InputError(f"--size: the model's input {inp.name} has dynamic dimensions {dims}; give its HxW")
    return shape


def _macs(optimized: Path, events: list[tuple[str, dict]]) -> dict[str, float]:
    """Multiply-adds per node name of the optimised graph, from its weights and the profile's tensor shapes."""
    m = load_proto(optimized, load_external_data=False)
    weights = {t.name: list(t.dims) for t in m.graph.initializer}
    nodes = {n.name: n for n in m.graph.node}
    out: dict[str, float] = {}
    for name, e in events:
        node, args = nodes.get(name), e["args"]
        if node is None or not args.get("output_type_shape"):
            continue
        y = np.prod(list(args["output_type_shape"][0].values())[0], dtype=np.float64)
        if node.op_type in _CONVS:
            w = weights.get(node.input[_CONVS[node.op_type]])
            if w and len(w) >= 3:
                out[name] = y * np.prod(w[1:], dtype=np.float64)
        elif node.op_type in _MATMULS:
            a_shape = list(args["input_type_shape"][0].values())[0]
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)  # Gemm, FusedMatMul
            if len(a_shape) >= 2:
                out[name] = y * (a_shape[-2] if trans_a else a_shape[-1])
    return out


def _model_macs(path: str | Path, shape: list[int]) -> float:
    """The model's multiply-adds for an input of ``shape``, from ONNX shape inference on its own graph."""
    import onnx

    m = load_proto(path, load_external_data=False)
    inp = m.graph.input[0].type.tensor_type.shape
    for d, v in zip(inp.dim, shape):
        d.Clear()
        d.dim_value = int(v)
    m = onnx.shape_inference.infer_shapes(m)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*m.graph.value_info, *m.graph.output, *m.graph.input]}
    weights = {t.name: list(t.dims) for t in m.graph.initializer}
    total = 0.0
    for n in m.graph.node:
        y = shapes.get(n.output[0]) if n.output else None
        if not y or not all(y):
            continue
        if n.op_type in _CONVS:
            w = weights.get(n.input[_CONVS[n.op_type]]) if len(n.input) > _CONVS[n.op_type] else None
            if w and len(w) >= 3:
                total += np.prod(y, dtype=np.float64) * np.prod(w[1:], dtype=np.float64)
        elif n.op_type in _MATMULS:
            a = shapes.get(n.input[0]) or weights.get(n.input[0])
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            if a and len(a) >= 2:
                total += np.prod(y, dtype=np.float64) * (a[-2] if trans_a else a[-1])
    return total


def profile_model(path: str | Path, batch: int = 32, threads: int = 1, runs: int = 10,
                  size: tuple[int, int] | None = None, seed: int = 0) -> Profile:
    """Run ``path`` on a random batch ``runs`` times after two warm-ups, ONNX Runtime's profiler on, and sum its
    kernel times by operator (``share`` over all kernels; GMAC/s for convolutions and matrix products)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="tinytext-profile-") as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 4  # its warning (the optimised copy has hardware-specific layouts: the point) and its
        # error logs (a file it cannot load) would add lines to the one that names the problem
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        sess = ort_session(path, threads, ["CPUExecutionProvider"], "ONNX", so)
        shape = _input_shape(sess, batch, size)
        x = {sess.get_inputs()[0].name: np.random.default_rng(seed).random(shape, dtype=np.float32)}
        for _ in range(2 + runs):
            sess.run(None, x)
        # (node name of the optimised graph, event) for each kernel run
        events = [(e["name"].removesuffix(_KERNEL), e) for e in json.loads(Path(sess.end_profiling()).read_text())
                  if e.get("cat") == "Node" and e["name"].endswith(_KERNEL)]
        macs = _macs(Path(so.optimized_model_filepath), events)
    per_node: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    for name, e in events:
        per_node[name].append(e["dur"])
        op_of[name] = e["args"].get("op_name", "?")
    # the first two runs are warm-ups: keep each node's last ``runs`` calls
    time_ms: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    mac_sum: dict[str, float] = defaultdict(float)
    for name, durs in per_node.items():
        op = op_of[name]
        time_ms[op] += sum(durs[-runs:]) / runs / 1000
        count[op] += 1
        mac_sum[op] += macs.get(name, 0.0)
    total = sum(time_ms.values())
    ops = [OpTime(op, count[op], t, 100 * t / total, mac_sum[op] / 1e9,
                  mac_sum[op] / 1e9 / (t / 1000) if mac_sum[op] and t else 0.0)
           for op, t in sorted(time_ms.items(), key=lambda kv: -kv[1])]
    return Profile(str(path), shape, threads, runs, total, _model_macs(path, shape) / 1e6 / batch, ops)
