"""Torch-free inference core: charsets and decoding, dataset readers, preprocessing, evaluation protocol.

This package must never import torch (a test enforces it), so it runs on edge devices with only NumPy,
OpenCV and ONNX Runtime / TensorRT installed.
"""
from .charset import CHARSETS, AttnTokenizer, CTCTokenizer, Decoded, OOVError, make_tokenizer, normalize_textzoom

__all__ = ["CHARSETS", "AttnTokenizer", "CTCTokenizer", "Decoded", "OOVError", "make_tokenizer", "normalize_textzoom"]
