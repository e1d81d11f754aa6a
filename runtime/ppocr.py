"""A recognizer ONNX file that declares its own input and dictionary, the way PP-OCR's recognizers are run.

Our exported students carry their schema in metadata (``runtime.modelfile``) and read a crop stretched to a fixed
size (``runtime.recognizer``). Third-party recognizers (PP-OCRv6 small and tiny, PP-OCRv4, any ONNX CTC
recognizer) read a *letterboxed* crop instead: resized to a fixed height with its aspect kept, padded on the right
to the batch's widest crop, and decode CTC over a character dictionary (blank first, space last). This is the one
implementation of that: ``apps.benchmark`` reads the peers with it and ``distill.onnx_teacher`` turns its outputs
into training targets. Torch-free.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["Letterbox", "PPOCR_INPUT", "LetterboxRecognizer", "resolve_recognizer", "default_dictionary"]

_INTERP = {"bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC}


@dataclass(frozen=True)
class Letterbox:
    """How the model wants its input. PP-OCR's recognizers: 48 px high, width from the aspect ratio, the batch
    padded to at least 320 px (pad value 0 after normalisation), BGR, (x/255 - 0.5) / 0.5, bilinear resize."""

    height: int = 48
    min_width: int = 320
    max_width: int = 1600  # very long crops are squeezed to this width rather than growing the batch unbounded
    channel_order: str = "bgr"  # bgr | rgb
    mean: float = 0.5
    std: float = 0.5
    interp: str = "bilinear"  # bilinear | area | bicubic (OpenCV)

    def validate(self) -> "Letterbox":
        if self.channel_order not in ("bgr", "rgb"):
            raise ValueError(f"onnx teacher channel_order: expected bgr or rgb, got {self.channel_order!r}")
        if self.interp not in _INTERP:
            raise ValueError(f"onnx teacher interp: expected one of {sorted(_INTERP)}, got {self.interp!r}")
        if self.height <= 0 or self.min_width <= 0 or self.max_width < self.min_width:
            raise ValueError(f"onnx teacher sizes: height {self.height}, min_width {self.min_width}, "
                             f"max_width {self.max_width} are not usable")
        return self


PPOCR_INPUT = Letterbox()


def resolve_recognizer(spec: str) -> str:
    """A zoo name (``ppocrv6``, ``ppocrv6-tiny``, ``ppocrv4`` / ``ppocr``: ``runtime.zoo``) -> its recognizer inside
    the installed wheel; else an ONNX file path. A missing wheel or file is a FileNotFoundError naming it."""
    from . import zoo

    if zoo.is_zoo_name(spec):
        m = zoo.find(spec)
        if m.kind != "rec":
            raise FileNotFoundError(f"teacher {spec!r}: a {m.kind} model, not a recognizer")
        return str(m.path())
    if not Path(spec).is_file():
        raise FileNotFoundError(f"teacher {spec}: no such ONNX file (or a model name: "
                                f"{', '.join(zoo.rec_names())})")
    return spec


def default_dictionary(spec: str, configured: str = "") -> str:
    """The dictionary of recognizer ``spec``: ``configured`` when set, else the zoo model's own (its metadata or the
    dictionary file in its wheel), else the PP-OCR default ``metadata:character``."""
    from . import zoo

    if configured:
        return configured
    return zoo.find(spec).dictionary_spec() if zoo.is_zoo_name(spec) else "metadata:character"


class LetterboxRecognizer:
    """ONNX Runtime session + declared letterbox input + dictionary + CTC decoding.

    ``path``: an ONNX file or a zoo name; ``model``: the graph's bytes when they differ from the file (a graph with an
    extra output). ``dictionary``: ``metadata:KEY`` reads the model's metadata (PP-OCR: ``character``, one
    character a line), or a text file with one character a line; None: the zoo model's own. ``space_char``: the
    class after the dictionary is a space (PP-OCR)."""

    def __init__(self, path: str, preproc: Letterbox = PPOCR_INPUT, dictionary: str | None = None,
                 space_char: bool = True, threads: int = 0, model: bytes | None = None) -> None:
        from .onnxfile import ort_session

        self.path = resolve_recognizer(path)
        self.pre = preproc.validate()
        self.session = ort_session(model if model is not None else self.path, threads, what="recognizer (teacher)")
        self.input_name = self.session.get_inputs()[0].name
        dictionary = default_dictionary(path) if dictionary is None else dictionary
        self.classes = ["<blank>"] + self._dictionary(dictionary) + ([" "] if space_char else [])
        n_out = self.session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.classes):
            raise ValueError(f"{self.path}: the model has {n_out} output classes but the dictionary "
                             f"{dictionary!r} gives {len(self.classes)} (blank + characters"
                             f"{' + space' if space_char else ''})")
        self._is_prob: bool | None = None

    def _dictionary(self, spec: str) -> list[str]:
        if spec.startswith("metadata:"):
            key = spec.split(":", 1)[1]
            meta = self.session.get_modelmeta().custom_metadata_map
            if key not in meta:
                raise ValueError(f"{self.path}: no {key!r} in the model metadata (keys: {sorted(meta)}); give "
                                 "the dictionary file instead")
            return meta[key].splitlines()
        p = Path(spec)
        if not p.is_file():
            raise FileNotFoundError(f"onnx teacher dictionary {spec}: no such file")
        return [ln.rstrip("\r\n") for ln in p.read_text(encoding="utf-8").splitlines()]

    def batch(self, crops_rgb: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, H, W) float32 input and each crop's resized width in pixels."""
        pre = self.pre
        H = pre.height
        ratio = max([pre.min_width / H] + [c.shape[1] / max(c.shape[0], 1) for c in crops_rgb])
        W = min(int(H * ratio), pre.max_width)
        x = np.zeros((len(crops_rgb), 3, H, W), np.float32)
        widths = np.zeros(len(crops_rgb), np.int64)
        for i, c in enumerate(crops_rgb):
            h, w = c.shape[:2]
            rw = max(1, min(W, int(math.ceil(H * w / max(h, 1)))))
            img = c[..., ::-1] if pre.channel_order == "bgr" else c
            img = cv2.resize(np.ascontiguousarray(img), (rw, H), interpolation=_INTERP[pre.interp]).astype(np.float32)
            x[i, :, :, :rw] = ((img / 255.0 - pre.mean) / pre.std).transpose(2, 0, 1)
            widths[i] = rw
        return x, widths

    def outputs(self, crops_rgb: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(probabilities (N, T, C), valid frames per crop (those over the crop, not the padding), the graph's
        other outputs)."""
        x, widths = self.batch(crops_rgb)
        outs = self.session.run(None, {self.input_name: x})
        out = outs[0].astype(np.float32)
        if self._is_prob is None:  # some exports end in logits: decide once from the first batch
            s = out[:1].sum(-1)
            self._is_prob = bool(np.all(out[:1] >= 0) and np.allclose(s, 1.0, atol=1e-3))
        if not self._is_prob:
            out = np.exp(out - out.max(-1, keepdims=True))
            out /= out.sum(-1, keepdims=True)
        T = out.shape[1]
        valid = np.clip(np.ceil(widths * T / x.shape[3]).astype(np.int64), 1, T)
        return out, valid, outs[1:]

    def raw(self, crops_rgb: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(probs (N, T, C), valid frames per crop)."""
        return self.outputs(crops_rgb)[:2]

    def read(self, crops_rgb: list[np.ndarray]) -> list[tuple[str, float]]:
        """The model's reading over its full dictionary: (text, confidence) per crop."""
        return self.decode(self.raw(crops_rgb)[0])

    def decode(self, probs: np.ndarray) -> list[tuple[str, float]]:
        """Greedy CTC over the dictionary: (text, sequence confidence) per row."""
        from .fastpath import decode

        d = decode(np.ascontiguousarray(probs), "ctc", 0)
        return [("".join(self.classes[i] for i in ids[:n].tolist()), float(c))
                for ids, n, c in zip(d.ids, d.lengths, d.seq_conf)]
