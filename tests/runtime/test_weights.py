"""runtime.weights: the shipped default is the first of DEFAULT_MODELS that a weights folder holds."""
import pytest

from runtime import weights
from runtime.cli import InputError


def test_the_default_falls_back_most_accurate_first(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "weight_dirs", lambda: [tmp_path])
    with pytest.raises(InputError, match="--model not given and no shipped weights found"):
        weights.model_or_default(None)
    for name in reversed(weights.DEFAULT_MODELS):  # add the files from the last fallback up
        (tmp_path / name).write_bytes(b"onnx")
        assert weights.default_model() == str(tmp_path / name)
    assert weights.DEFAULT_MODELS[0] == "ppocrv6-student-lr.onnx"
    assert weights.DEFAULT_MODELS.index("ppocrv6-tiny-student-lr.int8.onnx") < \
        weights.DEFAULT_MODELS.index("ctc-student-lr.int8.onnx")  # the README table: more accurate
    assert weights.model_or_default("mine.onnx") == "mine.onnx"
