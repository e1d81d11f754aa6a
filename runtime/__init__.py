"""Torch-free inference core: the reader people embed (``TextReader``), charsets and decoding, dataset readers,
preprocessing, evaluation protocol.

This package must never import torch (a test enforces it), so it runs on edge devices with only NumPy,
OpenCV and ONNX Runtime / TensorRT installed.
"""
from .charset import CHARSETS, AttnTokenizer, CTCTokenizer, Decoded, OOVError, make_tokenizer, normalize_textzoom

__all__ = ["CHARSETS", "AttnTokenizer", "CTCTokenizer", "Decoded", "OOVError", "make_tokenizer", "normalize_textzoom",
           "TextReader", "Word"]


def __getattr__(name: str):
    # the reader pulls in OpenCV and the pipeline: imported when first asked for, not with every runtime module
    if name in ("TextReader", "Word"):
        from . import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
