"""Open a recognizer by its file's format (``runtime.modelfile.FORMATS``): ONNX Runtime or TensorRT."""
from __future__ import annotations

from .cli import InputError
from .modelfile import format_for
from .recognizer import OnnxRecognizer, Recognizer

__all__ = ["open_recognizer"]


def open_recognizer(path: str, **kw) -> Recognizer:
    """``.onnx`` -> ONNX Runtime (``threads``, ``providers``); ``.engine`` / ``.plan`` -> TensorRT (needs its
    ``.json`` sidecar; ONNX Runtime's options do not apply and are ignored)."""
    fmt = format_for(path)
    if fmt is not None and fmt.backend == "onnxruntime":
        return OnnxRecognizer(str(path), **kw)
    if fmt is not None and fmt.backend == "tensorrt":
        from .trt_backend import TensorRTRecognizer  # TensorRT only exists on GPU hosts and Jetsons

        return TensorRTRecognizer(str(path))
    raise InputError(f"{path}: unsupported model file (expected .onnx, or .engine built by compress.build_engine)")
