"""The one table of artifact formats: export, the benchmark and the docs all read it."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Format", "FORMATS", "format_for"]


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str  # file name ending, beside the checkpoint's stem
    backend: str  # pytorch | onnxruntime | tensorrt
    precision: str  # fp32 | fp16 | int8
    needs_gpu: bool = False


FORMATS: tuple[Format, ...] = (
    Format("pytorch", ".pt", "pytorch", "fp32"),
    Format("onnx", ".onnx", "onnxruntime", "fp32"),
    Format("onnx-fp16", ".fp16.onnx", "onnxruntime", "fp16"),
    Format("onnx-int8", ".int8.onnx", "onnxruntime", "int8"),
    Format("engine-fp16", ".fp16.engine", "tensorrt", "fp16", True),
    Format("engine-int8", ".int8.engine", "tensorrt", "int8", True),
)


def format_for(path: str) -> Format:
    """The format of a file, by its longest matching suffix."""
    best = None
    for f in FORMATS:
        if path.endswith(f.suffix) and (best is None or len(f.suffix) > len(best.suffix)):
            best = f
    if best is None:
        raise ValueError(f"{path}: unknown model format; expected one of {[f.suffix for f in FORMATS]}")
    return best
