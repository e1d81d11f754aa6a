"""Static check that an ONNX model (a Q/DQ one in particular) is buildable by TensorRT 8.6/10/11, run without
TensorRT: explicit quantization only (QuantizeLinear/DequantizeLinear, no QLinear*/integer ops), INT8 scales
with zero points of 0, opset >= 13, and only operators the TensorRT ONNX parser supports."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph_rewrites import constant_lookup

__all__ = ["TRT_SUPPORTED_OPS", "TrtCheck", "check_trt_buildable"]

# Operators of TensorRT's ONNX parser (onnx-tensorrt operator support list, TensorRT 10) that our exports use or
# may use; anything else is reported.
TRT_SUPPORTED_OPS = frozenset("""
Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape Conv
ConvTranspose Cos CumSum DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand Flatten Floor Gather
GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual HardSigmoid HardSwish
Identity InstanceNormalization LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax MatMul Max MaxPool
Mean Min Mod Mul Neg NonZero Not Or Pad Pow PRelu QuantizeLinear Range Reciprocal ReduceL2 ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum Relu Reshape Resize ScatterElements ScatterND Shape Sigmoid Sign Sin Slice Softmax
Softplus Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose Trilu Unsqueeze Where Xor
""".split())
_FORBIDDEN = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QLinearAdd"}


@dataclass
class TrtCheck:
    ok: bool
    opset: int
    qdq_pairs: int
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = f"TensorRT static check: {'OK' if self.ok else 'FAILED'} (opset {self.opset}, {self.qdq_pairs} Q/DQ nodes)"
        return "\n".join([head] + [f"  - {p}" for p in self.problems])


def check_trt_buildable(path: str, require_qdq: bool = False) -> TrtCheck:
    from runtime.onnxfile import load_proto

    m = load_proto(path)  # a truncated or foreign file is one line naming it
    opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)
    problems: list[str] = []
    if opset < 13:
        problems.append(f"opset {opset} < 13: per-channel Q/DQ needs opset 13+")
    value = constant_lookup(m.graph)
    qdq = 0
    for n in m.graph.node:
        if n.domain not in ("", "ai.onnx"):
            problems.append(f"{n.name or n.op_type}: custom-domain op {n.domain}.{n.op_type}")
            continue
        if n.op_type in _FORBIDDEN:
            problems.append(f"{n.name}: {n.op_type} (QOperator / integer op) is not explicit Q/DQ; TensorRT rejects it")
        elif n.op_type not in TRT_SUPPORTED_OPS:
            problems.append(f"{n.name}: operator {n.op_type} not in TensorRT's ONNX parser support list")
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            qdq += 1
            zp = value(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            if zp is not None:
                if zp.dtype != np.int8:
                    problems.append(f"{n.name}: zero point dtype {zp.dtype}; TensorRT needs int8 (symmetric)")
                if np.any(zp != 0):
                    problems.append(f"{n.name}: non-zero zero point; TensorRT supports symmetric quantization only")
            sc = value(n.input[1])
            if sc is not None and (np.any(~np.isfinite(sc)) or np.any(sc <= 0)):
                problems.append(f"{n.name}: scale not finite and positive")
    if require_qdq and qdq == 0:
        problems.append("no QuantizeLinear/DequantizeLinear nodes: not an explicitly quantized model")
    return TrtCheck(not problems, opset, qdq, problems)
