"""Everything ``apps.benchmark run`` can time and score, behind one call: ``open_reader(spec)`` returns an object with
``name, format, precision, backend, how, size_mb`` and ``read(list of RGB crops) -> list of strings``.

Specs: ``X.pt`` (PyTorch checkpoint), ``X.onnx`` (ONNX Runtime), ``X.engine`` (TensorRT), a PP-OCR recognizer of
``runtime.zoo`` (``ppocrv6``, ``ppocrv6-tiny``, ``ppocrv4`` alias ``ppocr``; found in its wheel and run with ONNX
Runtime the way RapidOCR runs it), ``NAME@HxW`` (the same recognizer fed H px high crops padded to at least W px: its
cost against its accuracy on small text), and ``tesseract`` (Tesseract CLI, one word per crop)."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np

__all__ = ["open_reader", "PPOCRReader", "TesseractReader"]


class _Base:
    name = format = precision = backend = how = ""
    size_mb = float("nan")

    def read(self, crops: list[np.ndarray]) -> list[str]:
        raise NotImplementedError


class TorchReader(_Base):
    def __init__(self, path: str) -> None:
        import torch

        from distill.checkpoint import load_model
        from distill.predict import predict_arrays

        torch.set_num_threads(os.cpu_count() or 1)
        self.model, self.tok, meta = load_model(path)
        self.model.eval()
        self._predict = predict_arrays
        self.name, self.format, self.backend = Path(path).name, "PyTorch", f"torch {torch.__version__} CPU"
        self.precision, self.size_mb = "fp32", Path(path).stat().st_size / 1e6
        self.how = f"{meta['model_spec']['name']}, input {getattr(self.model, 'img_size', '?')}"

    def read(self, crops):
        return [d.text for d in self._predict(self.model, self.tok, crops, batch=len(crops))]


class RuntimeReader(_Base):
    def __init__(self, path: str) -> None:
        from runtime.backends import open_recognizer
        from runtime.modelfile import format_for

        self.rec = open_recognizer(path)
        self.name = Path(path).name
        self.format = format_for(path).label
        self.backend = "TensorRT" if self.format == "TensorRT" else "onnxruntime " + _ort_version()
        self.precision = self.rec.info.precision
        self.size_mb = Path(path).stat().st_size / 1e6
        self.how = f"{self.rec.info.name}, input {self.rec.info.height}x{self.rec.info.width}"

    def read(self, crops):
        return [d.text for d in self.rec(crops, batch=max(1, len(crops)))]


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


class PPOCRReader(_Base):
    """A PP-OCR recognizer of the zoo (``runtime.zoo``: ``ppocrv6``, ``ppocrv6-tiny``, ``ppocrv4`` / ``ppocr``) run
    directly with ONNX Runtime the way RapidOCR runs it (``runtime.ppocr``): BGR, height 48, width from the aspect
    ratio, the batch padded to max(320, 48 * widest w/h), (x/255 - 0.5) / 0.5, CTC over the model's own dictionary
    (blank 0, space last). The same reading makes it a teacher in ``distill``."""

    def __init__(self, name: str = "ppocrv4", height: int | None = None, min_width: int | None = None) -> None:
        from runtime import zoo
        from runtime.ppocr import PPOCR_INPUT, Letterbox, LetterboxRecognizer

        m = zoo.find(name)
        if m.kind != "rec":
            raise ValueError(f"{name}: a {m.kind} model, not a recognizer")
        path = m.path()  # FileNotFoundError names the wheel to install
        height = PPOCR_INPUT.height if height is None else height  # RapidOCR's own 48x320 unless given
        min_width = PPOCR_INPUT.min_width if min_width is None else min_width
        self.rec = LetterboxRecognizer(name, Letterbox(height=height, min_width=min_width))  # validates the sizes
        default = (height, min_width) == (PPOCR_INPUT.height, PPOCR_INPUT.min_width)
        self.name = f"{m.label} ({m.package})" + ("" if default else f" @{height}x{min_width}")
        self.format, self.backend = "ONNX", "onnxruntime " + _ort_version()
        self.precision, self.size_mb = "fp32", Path(path).stat().st_size / 1e6
        self.how = (f"peer: {m.label} via ONNX Runtime, {height} px high, padded to >= {min_width} px wide"
                    + ("" if default else " (not RapidOCR's own 48x320)"))

    def batch(self, crops_rgb: list[np.ndarray]) -> np.ndarray:
        return self.rec.batch(crops_rgb)[0]

    def read(self, crops):
        return [text for text, _ in self.rec.read(crops)]


class TesseractReader(_Base):
    """Tesseract 5 CLI, ``--psm 7`` (a single text line), LSTM engine, English; crops under 32 px high are
    upscaled x2 (cubic) first, as Tesseract's documentation advises for small text."""

    def __init__(self) -> None:
        from .peers import tesseract_path

        self.exe = tesseract_path()
        if self.exe is None:
            raise RuntimeError("tesseract is not installed (apt install tesseract-ocr)")
        ver = subprocess.run([self.exe, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        self.name, self.format, self.backend, self.precision = "Tesseract", "traineddata", ver, "fp32"
        self.how = "peer: tesseract CLI --psm 7 --oem 1 -l eng, one process per crop, x2 upscale under 32 px"
        self._tmp = tempfile.mkdtemp(prefix="tess-")

    def read(self, crops):
        out = []
        for i, c in enumerate(crops):
            if c.shape[0] < 32:
                c = cv2.resize(c, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
            p = os.path.join(self._tmp, f"{i}.png")
            cv2.imwrite(p, c[..., ::-1])
            r = subprocess.run([self.exe, p, "stdout", "--psm", "7", "--oem", "1", "-l", "eng"],
                               capture_output=True, text=True)
            out.append(r.stdout.strip())
        return out


def parse_hw(text: str) -> tuple[int, int] | None:
    """``32x128`` -> (32, 128); None unless two positive integers joined by ``x``."""
    h, sep, w = text.partition("x")
    if not (sep and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
        return None
    return int(h), int(w)


def _peer_size(spec: str) -> tuple[int, int]:
    """``ppocrv6@32x128`` -> (32, 128)."""
    size = parse_hw(spec.partition("@")[2])
    if size is None:
        raise ValueError(f"{spec}: expected NAME@HxW with input height H and minimum padded width W, "
                         "e.g. ppocrv6@32x128")
    return size


def open_reader(spec: str) -> _Base:
    from runtime import zoo
    from runtime.modelfile import format_for

    name = spec.partition("@")[0]
    if zoo.is_zoo_name(name):
        return PPOCRReader(name, *_peer_size(spec)) if "@" in spec else PPOCRReader(name)
    if spec == "tesseract":
        return TesseractReader()
    if not Path(spec).is_file():
        raise FileNotFoundError(f"{spec}: no such model file")
    fmt = format_for(spec)
    if fmt is not None and fmt.backend == "pytorch":
        return TorchReader(spec)
    if fmt is not None:
        return RuntimeReader(spec)
    raise ValueError(f"{spec}: unknown model kind (expected .pt, .onnx, .engine, a zoo name "
                     f"({', '.join(zoo.rec_names())}, optionally NAME@HxW) or 'tesseract')")
