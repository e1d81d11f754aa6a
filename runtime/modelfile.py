"""What a model file is: its format (one table, by file ending) and what it declares about itself.

The ``tinytext.*`` keys are the schema every exported recognizer carries, in the ONNX ``metadata_props`` or, for a
TensorRT engine, in the JSON sidecar beside it. ``compress.export`` writes them (``ModelInfo.to_metadata``), INT8
quantization and the engine builder add their own keys (``ModelInfo.extra``), and every backend reads them back
(``model_info``). The format table drives file names (``FORMATS``: ``compress`` names its outputs with
``path_for``), backend dispatch (``runtime.backends``) and the format column of the benchmark.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .cli import InputError

__all__ = ["ModelInfo", "Format", "FORMATS", "format_for", "path_for", "model_info", "read_metadata",
           "sidecar_path", "write_sidecar", "PREFIX"]

PREFIX = "tinytext."


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str  # file name ending, after the model's stem
    backend: str  # pytorch | onnxruntime | tensorrt
    precision: str  # fp32 | fp16 | int8
    label: str  # how tables name it


FORMATS: tuple[Format, ...] = (
    Format("pytorch", ".pt", "pytorch", "fp32", "PyTorch"),
    Format("onnx", ".onnx", "onnxruntime", "fp32", "ONNX"),
    Format("onnx-fp16", ".fp16.onnx", "onnxruntime", "fp16", "ONNX"),
    Format("onnx-int8", ".int8.onnx", "onnxruntime", "int8", "ONNX"),  # uint8 activations: ONNX Runtime's CPU kernels
    Format("onnx-int8-trt", ".int8-trt.onnx", "onnxruntime", "int8", "ONNX"),  # symmetric Q/DQ that TensorRT builds
    Format("engine-fp16", ".fp16.engine", "tensorrt", "fp16", "TensorRT"),
    Format("engine-int8", ".int8.engine", "tensorrt", "int8", "TensorRT"),
    Format("engine-fp32", ".fp32.engine", "tensorrt", "fp32", "TensorRT"),
    Format("engine", ".engine", "tensorrt", "fp32", "TensorRT"),  # any other engine, its sidecar says the rest
    Format("plan", ".plan", "tensorrt", "fp32", "TensorRT"),
)
_BY_NAME = {f.name: f for f in FORMATS}


def format_for(path: str | Path) -> Format | None:
    """The format of a file by its longest matching ending; None when no format ends so."""
    p = str(path)
    hits = [f for f in FORMATS if p.endswith(f.suffix)]
    return max(hits, key=lambda f: len(f.suffix)) if hits else None


def path_for(path: str | Path, fmt: str, folder: str | Path | None = None) -> Path:
    """The file of format ``fmt`` (a ``FORMATS`` name) made from ``path``: same stem, in ``folder`` (default: beside
    ``path``). ``model.onnx`` -> ``model.int8.onnx``; ``model.int8-trt.onnx`` -> ``model.int8.engine``."""
    p = Path(path)
    src = format_for(p)
    stem = p.name[: -len(src.suffix)] if src else p.stem
    return Path(folder if folder is not None else p.parent) / (stem + _BY_NAME[fmt].suffix)


@dataclass
class ModelInfo:
    """The schema of an exported recognizer. ``extra``: further ``tinytext.*`` keys (provenance, INT8 calibration,
    engine batch range), kept in order and written back as they came."""

    name: str
    decoder: str  # attn (EOS = class 0) or ctc (blank = class 0)
    charset: str
    height: int
    width: int
    mean: float = 0.5
    std: float = 0.5
    precision: str = "fp32"
    lr: bool = False
    max_len: int = 25
    extra: dict[str, str] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        meta = {
            "model_name": self.name, "decoder": self.decoder, "charset": self.charset, "max_len": str(self.max_len),
            "input_height": str(self.height), "input_width": str(self.width), "channel_order": "RGB",
            "layout": "NCHW", "resize": "stretch-bicubic", "mean": str(self.mean), "std": str(self.std),
            "output": "probs", "precision": self.precision, "lr": str(self.lr).lower(),
        }
        return {PREFIX + k: v for k, v in meta.items()} | dict(self.extra)

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: str | Path) -> "ModelInfo":
        need = ["decoder", "charset", "input_height", "input_width"]
        missing = [PREFIX + k for k in need if PREFIX + k not in meta]
        if missing:
            raise InputError(f"{path}: metadata lacks {missing}; not a recognizer exported by python -m compress.export")
        known = {PREFIX + k for k in ("model_name", "decoder", "charset", "max_len", "input_height", "input_width",
                                      "channel_order", "layout", "resize", "mean", "std", "output", "precision", "lr")}
        try:
            return cls(meta.get(PREFIX + "model_name", "?"), meta[PREFIX + "decoder"], meta[PREFIX + "charset"],
                       int(meta[PREFIX + "input_height"]), int(meta[PREFIX + "input_width"]),
                       float(meta.get(PREFIX + "mean", 0.5)), float(meta.get(PREFIX + "std", 0.5)),
                       meta.get(PREFIX + "precision", "fp32"), meta.get(PREFIX + "lr", "false") == "true",
                       int(meta.get(PREFIX + "max_len", 25)),
                       {k: v for k, v in meta.items() if k.startswith(PREFIX) and k not in known})
        except ValueError as e:
            raise InputError(f"{path}: malformed tinytext metadata ({e})") from None


def sidecar_path(engine: str | Path) -> Path:
    """Where a TensorRT engine's metadata lives: ``model.int8.engine.json``."""
    return Path(str(engine) + ".json")


def read_metadata(path: str | Path) -> dict[str, str]:
    """All metadata of a model file: the ONNX ``metadata_props``, or a TensorRT engine's JSON sidecar."""
    fmt = format_for(path)
    if fmt is not None and fmt.backend == "tensorrt":
        side = sidecar_path(path)
        if not side.is_file():
            raise InputError(f"{side}: the engine's metadata sidecar is missing (compress.build_engine writes it "
                             f"beside the engine)")
        try:
            return json.loads(side.read_text())
        except ValueError as e:
            raise InputError(f"{side}: not JSON ({e})") from None
    from .onnxfile import read_metadata as onnx_metadata

    return onnx_metadata(str(path))


def model_info(path: str | Path) -> ModelInfo:
    """What a model file declares about itself, without opening a session."""
    return ModelInfo.from_metadata(read_metadata(path), path)


def write_sidecar(engine: str | Path, meta: dict[str, str]) -> Path:
    """The engine's metadata as JSON beside it, written atomically."""
    from .files import write_json_atomic

    side = sidecar_path(engine)
    write_json_atomic(meta, side)
    return side
