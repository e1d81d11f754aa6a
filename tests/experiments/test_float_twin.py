"""experiments.float_twin: the shipped FP32 graph with the shipped INT8 file's weights."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import ROOT, run_module

W = ROOT / "weights"
FP32, INT8 = W / "ppocrv6-student-lr.onnx", W / "ppocrv6-student-lr.int8.onnx"


def _probs(path, x):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def test_twin_holds_the_int8_weights_and_reads_closer_to_the_int8_file(tmp_path):
    out = tmp_path / "twin.onnx"
    r = run_module(["experiments.float_twin", str(FP32), str(INT8), "--out", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    twin = onnx.load(str(out))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in twin.graph.node)  # float graph
    meta = {p.key: p.value for p in twin.metadata_props}
    assert meta == {p.key: p.value for p in onnx.load(str(FP32)).metadata_props}  # the FP32 file's, not INT8's
    # a quantized convolution's weight lies on its int8 grid: code x scale, the scale max|w| / 127 per channel
    q = onnx.load(str(INT8))
    qi = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    codes = [k for k, v in qi.items() if v.dtype == np.int8 and v.ndim == 4]
    assert codes
    ti = {t.name: numpy_helper.to_array(t) for t in twin.graph.initializer}
    on_grid = 0
    for w in ti.values():
        if w.ndim == 4 and w.shape[0] > 1 and w.dtype == np.float32:
            s = np.abs(w).reshape(w.shape[0], -1).max(1) / 127
            if (s > 0).all() and np.allclose(w / s[:, None, None, None], np.round(w / s[:, None, None, None]),
                                             atol=1e-3):
                on_grid += 1
    assert on_grid >= len(codes) - 2, (on_grid, len(codes))  # the FP32 file: 5 of 58
    # with the same weights, the twin's outputs sit nearer the INT8 file's than the FP32 file's do
    x = np.random.default_rng(0).uniform(-1, 1, (8, 3, 16, 64)).astype(np.float32)
    p_fp32, p_twin, p_int8 = _probs(FP32, x), _probs(out, x), _probs(INT8, x)
    assert np.abs(p_twin - p_int8).mean() < 0.8 * np.abs(p_fp32 - p_int8).mean()


@pytest.mark.parametrize("args, needle", [
    (lambda t: [str(FP32), str(FP32), "--out", str(t / "x.onnx")], "not an INT8 file made from it"),
    (lambda t: [str(t / "none.onnx"), str(INT8), "--out", str(t / "x.onnx")], "no such model file"),
    (lambda t: [str(FP32), str(INT8), "--out", str(t / "no" / "x.onnx")], "--out"),
])
def test_bad_input_is_one_line(tmp_path, args, needle):
    r = run_module(["experiments.float_twin", *args(tmp_path)])
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x.onnx").exists()
