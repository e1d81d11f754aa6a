"""The model-file schema and format table (runtime.modelfile): names, round trips, and the shipped files."""
import json

import pytest

from conftest import ROOT
from runtime.modelfile import (FORMATS, ModelInfo, format_for, model_info, path_for, read_metadata, sidecar_path,
                               write_sidecar)


@pytest.mark.parametrize("name, fmt", [("m.pt", "pytorch"), ("m.onnx", "onnx"), ("m.int8.onnx", "onnx-int8"),
                                       ("m.int8-trt.onnx", "onnx-int8-trt"), ("m.fp16.onnx", "onnx-fp16"),
                                       ("m.int8.engine", "engine-int8"), ("m.engine", "engine"), ("m.plan", "plan")])
def test_format_by_longest_ending(name, fmt):
    assert format_for(name).name == fmt


def test_unknown_ending_has_no_format():
    assert format_for("m.tflite") is None


def test_derived_names_keep_the_stem_and_go_to_the_folder(tmp_path):
    assert path_for("a/m.v2.onnx", "onnx-int8").as_posix() == "a/m.v2.int8.onnx"
    assert path_for("a/m.int8-trt.onnx", "engine-int8", tmp_path) == tmp_path / "m.int8.engine"
    assert path_for("m.fp16.onnx", "engine-fp16").name == "m.fp16.engine"
    assert len({f.suffix for f in FORMATS}) == len(FORMATS)


def test_metadata_round_trip_keeps_extra_keys_in_order():
    info = ModelInfo("x", "ctc", "abc", 24, 96, 0.4, 0.6, "int8", True, 30,
                     {"tinytext.b": "2", "tinytext.a": "1"})
    meta = info.to_metadata()
    assert list(meta)[-2:] == ["tinytext.b", "tinytext.a"]
    assert ModelInfo.from_metadata(meta, "x.onnx") == info


def test_missing_or_malformed_keys_name_the_file():
    with pytest.raises(ValueError, match=r"m\.onnx: metadata lacks"):
        ModelInfo.from_metadata({"tinytext.decoder": "ctc"}, "m.onnx")
    meta = ModelInfo("x", "ctc", "abc", 16, 64).to_metadata() | {"tinytext.input_height": "tall"}
    with pytest.raises(ValueError, match=r"m\.onnx: malformed"):
        ModelInfo.from_metadata(meta, "m.onnx")


def test_engine_metadata_comes_from_its_sidecar(tmp_path):
    engine = tmp_path / "m.int8.engine"
    engine.write_bytes(b"")
    with pytest.raises(ValueError, match="sidecar"):
        read_metadata(engine)
    meta = ModelInfo("x", "attn", "ab", 16, 64, precision="int8").to_metadata()
    assert write_sidecar(engine, meta) == sidecar_path(engine)
    assert json.loads(sidecar_path(engine).read_text()) == meta and model_info(engine).precision == "int8"


@pytest.mark.parametrize("name", ["ppocrv6-student-lr", "ctc-student-lr"])
def test_shipped_models_declare_their_input_size_and_precision(name):
    f = ROOT / "weights" / f"{name}.onnx"
    if not f.is_file():
        pytest.skip("shipped weights missing")
    info = model_info(f)
    assert (info.height, info.width, info.lr, info.precision) == (16, 64, True, "fp32")
    assert "tinytext.source_sha256" in info.extra
    assert model_info(path_for(f, "onnx-int8")).precision == "int8"
