"""The recognizer contract every backend shares, and its ONNX Runtime backend (CPU, or CUDA/TensorRT execution
providers when that build of onnxruntime is installed); TensorRT engines are ``runtime.trt_backend``, and
``runtime.backends.open_recognizer`` picks one by file format. Everything a recognizer needs (charset, input size,
normalisation, decoder type) comes from the file's metadata (``runtime.modelfile``). Batched: N crops (or N boxes
of one frame) in, N (text, confidence, per-character confidences) out."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .charset import Decoded, Tokenizer, make_tokenizer
from .cli import InputError
from . import fastpath
from .modelfile import ModelInfo, model_info
from .preprocess import prepare_batch

__all__ = ["Recognizer", "OnnxRecognizer"]


class Recognizer:
    """What every backend shares: preprocessing (the training one), batching and decoding. A backend sets
    ``info``, ``tokenizer`` and ``input_dtype`` and implements ``run`` ((N, 3, H, W) -> (N, T, C) float32)."""

    info: ModelInfo
    tokenizer: Tokenizer
    input_dtype = np.float32
    max_batch = 64

    @property
    def size(self) -> tuple[int, int]:
        return self.info.height, self.info.width

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def preprocess(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 crops of any size -> the network's input batch."""
        return prepare_batch(crops, self.size, self.info.mean, self.info.std, self.input_dtype)

    def __call__(self, crops: Sequence[np.ndarray], batch: int = 32) -> list[Decoded]:
        out: list[Decoded] = []
        for i in range(0, len(crops), batch):
            out += self.tokenizer.decode(self.run(self.preprocess(crops[i : i + batch])))
        return out

    def read_boxes(self, frame: np.ndarray, boxes, bgr: bool = True) -> list[Decoded]:
        """Read N boxes ((N, 4) or (N, 4, 2) quads) of one frame: packed straight from the frame by the C path."""
        x = fastpath.pack(frame, boxes, self.size, self.info.mean, self.info.std, swap_rb=bgr,
                          dtype=self.input_dtype)
        out: list[Decoded] = []
        for i in range(0, len(x), self.max_batch):
            out += self.tokenizer.decode(self.run(x[i : i + self.max_batch]))
        return out


class OnnxRecognizer(Recognizer):
    """An exported model through ONNX Runtime."""

    def __init__(self, path: str, providers: Sequence[str] | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        from .onnxfile import ort_session

        self.path = str(path)
        if not Path(self.path).is_file():
            raise InputError(f"{self.path}: no such model file")
        self.info = model_info(self.path)
        so = ort.SessionOptions()
        if self.info.precision == "fp16" and "CUDAExecutionProvider" not in ort.get_available_providers():
            # ONNX Runtime's CPU graph optimiser has crashed (SIGSEGV) on FP16 transformer graphs here; FP16 is a GPU
            # format, on CPU we only need it to run correctly, so run it unoptimised.
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if threads < 0:
            raise InputError(f"recognizer threads: must be >= 0 (0: ONNX Runtime's default), got {threads}")
        self.session = ort_session(self.path, threads, providers or ["TensorrtExecutionProvider",
                                                                     "CUDAExecutionProvider", "CPUExecutionProvider"],
                                   "recognizer", so)
        self.input_name = self.session.get_inputs()[0].name
        self.input_type = self.session.get_inputs()[0].type  # tensor(float) or tensor(float16)
        self.input_dtype = np.float16 if "float16" in self.input_type else np.float32
        self.tokenizer: Tokenizer = make_tokenizer(self.info.decoder, self.info.charset)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0].astype(np.float32, copy=False)
