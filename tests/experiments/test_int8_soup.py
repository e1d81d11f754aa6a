"""experiments.int8_soup: the mean of INT8 files fine-tuned from one calibration."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import ROOT, run_module

W = ROOT / "weights"
FP32, INT8 = W / "ppocrv6-student-lr.onnx", W / "ppocrv6-student-lr.int8.onnx"


def _edit(path, out, change):
    """A copy of ``path`` with ``change(name -> array)`` applied to its initializers."""
    m = onnx.load(str(path))
    arrays = {t.name: numpy_helper.to_array(t).copy() for t in m.graph.initializer}
    for name, v in change(arrays).items():
        next(t for t in m.graph.initializer if t.name == name).CopyFrom(numpy_helper.from_array(v, name))
    onnx.save(m, str(out))
    return arrays


def _inits(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_soup_averages_weights_and_float_tensors(tmp_path):
    base = _inits(INT8)
    code = next(k for k, v in base.items() if v.dtype == np.int8 and v.ndim == 4 and v.shape[0] > 1)
    bias = next(k for k, v in base.items() if k.endswith("_bias") and v.dtype == np.float32)
    small = np.abs(base[code][0]) <= 100  # channel 0's entries below its max: the mean keeps the channel's scale

    def change(a):
        w = a[code].copy()
        w[0][small] += 2
        return {code: w, bias: a[bias] + 0.5}

    _edit(INT8, tmp_path / "b.int8.onnx", change)
    out = tmp_path / "soup.int8.onnx"
    r = run_module(["experiments.int8_soup", str(INT8), str(tmp_path / "b.int8.onnx"), "--out", str(out)])
    assert r.returncode == 0 and "1 int8 weights and 1 float tensors" in r.stdout, r.stderr[-2000:]
    soup = _inits(out)
    want = base[code].copy()
    want[0][small] += 1  # the mean of c and c + 2, rounded at the same scale
    assert np.array_equal(soup[code], want)
    assert np.allclose(soup[bias], base[bias] + 0.25)
    assert all(np.array_equal(soup[k], v) for k, v in base.items() if k not in (code, bias))
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["tinytext.int8_soup"].startswith("mean of 2 files: ")


def test_bad_input_is_one_line(tmp_path):
    q = onnx.load(str(INT8))
    consts = {t.name for t in q.graph.initializer}
    act = next(n.input[1] for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in consts)
    _edit(INT8, tmp_path / "recal.int8.onnx", lambda a: {act: a[act] * 1.1})
    cases = [
        ([str(INT8)], "at least two"),
        ([str(INT8), str(tmp_path / "recal.int8.onnx")], "not one calibration"),
        ([str(INT8), str(FP32)], "not the graph of"),
        ([str(FP32), str(INT8)], "no int8 weights"),
        ([str(INT8), str(tmp_path / "none.onnx")], "no such model file"),
    ]
    for files, needle in cases:
        r = run_module(["experiments.int8_soup", *files, "--out", str(tmp_path / "x.onnx")])
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, (needle, r.stderr)
        assert not (tmp_path / "x.onnx").exists()
