"""compress: ONNX export with metadata and parity, INT8 Q/DQ with calibration cache, FP16, TensorRT paths."""
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import ROOT, needs_exact_int8
from distill.config import load_config
from distill.synth.generate import main as synth_main
from distill.train import train

TINY_CTC = ["model.name=cnn-ctc", "model.kwargs={widths: [8, 8, 16, 16, 16], hidden: 32}", "model.max_len=12",
            "data.batch_size=8", "data.workers=0", "data.max_val_samples=8", "optim.steps=2", "train.val_every=2",
            "train.ckpt_every=2", "train.progress=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("compress")
    synth_main(["--out", str(d / "synth"), "--n", "120", "--seed", "4", "--workers", "1", "--no-progress",
                "--split-sizes", "train=80,val=20,test=20"])
    ov = TINY_CTC + [f"data.synth.dir={d / 'synth'}", "data.synth.n=120"]
    train(load_config("configs/smoke.yaml", ov + [f"train.out_dir={d / 't'}"]))
    train(load_config("configs/smoke.yaml", ov + [f"train.out_dir={d / 's'}", "train.stage=student",
                                                  f"train.teacher_ckpt={d / 't' / 'last.pt'}"]))
    return d


def test_export_metadata_batches_and_parity(trained, tmp_path):
    from compress.export import export_onnx
    from runtime.recognizer import OnnxRecognizer

    p = export_onnx(str(trained / "s" / "last.pt"), str(tmp_path))
    meta = {m.key: m.value for m in onnx.load(str(p)).metadata_props}
    assert meta["tinytext.decoder"] == "ctc" and meta["tinytext.input_height"] == "16"
    assert meta["tinytext.charset"] == "0123456789abcdefghijklmnopqrstuvwxyz" and len(meta["tinytext.source_sha256"]) == 64
    rec = OnnxRecognizer(str(p))
    crops = [np.full((20, 70, 3), v, np.uint8) for v in (0, 128, 255)]
    a = rec(crops)
    b = rec(crops[:1])
    assert len(a) == 3 and a[0].text == b[0].text
    import onnxruntime as ort

    s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    dim = s.get_inputs()[0].shape[0]
    assert isinstance(dim, str)  # dynamic batch survived tracing and simplification


def test_parity_gate_fails_on_a_different_model(trained, tmp_path):
    from compress.export import export_onnx
    from compress.parity import ParityError, parity_check, parity_images
    from distill.checkpoint import load_model

    p = export_onnx(str(trained / "s" / "last.pt"), str(tmp_path))
    teacher_as_student, tok, _ = load_model(trained / "t" / "last.pt")
    other, _, _ = load_model(trained / "s" / "last.pt")
    for prm in other.parameters():
        prm.data.add_(0.5)
    with pytest.raises(ParityError, match="parity failed"):
        parity_check(other, tok, str(p), parity_images(None, True, 16, (16, 64)))


def test_calibration_conditions_make_lr_from_hr_crops_in_turn(tmp_path):
    """HR crops of an STR lmdb become LR calibration inputs by the named conditions in turn (default: plain and
    blurred-and-compressed 16x64), each choice cached under its own key; unknown names are refused by name."""
    from compress.calibration import (CALIB_CONDITIONS, CalibrationError, calibration_tensors, conditions_arg,
                                      finetune_tensors)
    from runtime.conditions import apply_condition
    from runtime.datasets import open_dataset
    from runtime.preprocess import prepare

    from conftest import str_items, write_lmdb

    data = write_lmdb(tmp_path / "str", str_items([f"w{i}" for i in range(8)]))
    crops = [s.image for s in open_dataset(data).iter_valid()]
    assert CALIB_CONDITIONS == ("lr16", "lr16blur")
    x = calibration_tensors(str(data), (16, 64), True, 8, 1, tmp_path / "c")
    want = [prepare(apply_condition(CALIB_CONDITIONS[i % 2], im), (16, 64)) for i, im in enumerate(crops)]
    assert np.array_equal(x, np.stack(want))
    plain = calibration_tensors(str(data), (16, 64), True, 8, 1, tmp_path / "c", ("lr16",))
    assert np.array_equal(plain[0], x[0]) and not np.array_equal(plain[1], x[1])  # odd crops: blurred by default
    assert len(list((tmp_path / "c").glob("calib-*.npy"))) == 2
    xf, labels = finetune_tensors(str(data), (16, 64), 5, tmp_path / "c")  # each crop under every condition
    assert labels == ["w0", "w0", "w1", "w1", "w2"] and len(xf) == 5
    assert np.array_equal(xf[0], want[0]) and np.array_equal(xf[1], prepare(apply_condition("lr16blur", crops[0]),
                                                                            (16, 64)))
    again, labels2 = finetune_tensors(str(data), (16, 64), 5, tmp_path / "c")
    assert np.array_equal(again, xf) and labels2 == labels and len(list((tmp_path / "c").glob("finetune-*"))) == 1
    both, _ = finetune_tensors(f"{data},{data}", (16, 64), 100, tmp_path / "c")  # up to an equal share of each
    assert len(both) == 32
    hr, hr_labels = finetune_tensors(str(data), (16, 64), 100, None, lr=False)  # HR models: each crop once
    assert len(hr) == 8 and hr_labels[:2] == ["w0", "w1"] and np.array_equal(hr[1], prepare(crops[1], (16, 64)))
    with pytest.raises(CalibrationError, match="--int8-finetune-data /nope: no such dataset"):
        finetune_tensors("/nope", (16, 64), 8)
    with pytest.raises(CalibrationError, match=r"--calib-conditions: expected LR conditions .* got \['hr'\]"):
        calibration_tensors(str(data), (16, 64), True, 8, 1, None, ("hr",))
    assert conditions_arg("lr16blur, lr16") == ("lr16blur", "lr16")
    res = subprocess.run([sys.executable, "-m", "compress.export", "--ckpt", "x.pt", "--out", str(tmp_path),
                          "--calib-conditions", "lr8"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "--calib-conditions: expected LR conditions" in res.stderr and "'lr8'" in res.stderr


def test_int8_qdq_calibration_cache_and_trt_static_check(trained, tmp_path, capsys):
    from compress.calibration import CalibrationError, calibration_tensors
    from compress.export import export_onnx
    from compress.quantize import quantize_int8
    from compress.trt_check import check_trt_buildable
    from runtime.recognizer import OnnxRecognizer

    p = export_onnx(str(trained / "s" / "last.pt"), str(tmp_path))
    x = calibration_tensors(str(trained / "synth"), (16, 64), True, 64, 8, tmp_path)
    assert x.shape == (64, 3, 16, 64)
    cache = list(tmp_path.glob("calib-*.npy"))
    assert len(cache) == 1
    assert "warning: only 64 images" in capsys.readouterr().err
    np.save(cache[0], x[:32])  # the cache, not the data, is read the second time
    assert len(calibration_tensors(str(trained / "synth"), (16, 64), True, 64, 8, tmp_path)) == 32
    with pytest.raises(CalibrationError, match="fewer than the batch size"):
        calibration_tensors(str(trained / "synth"), (16, 64), True, 4, 8, tmp_path)
    q = quantize_int8(str(p), str(tmp_path / "m.int8-trt.onnx"), x, target="tensorrt")
    m = onnx.load(str(q))
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and not ops & {"QLinearConv", "ConvInteger"}
    chk = check_trt_buildable(str(q), require_qdq=True)
    assert chk.ok, str(chk)
    assert OnnxRecognizer(str(q)).info.precision == "int8"
    assert OnnxRecognizer(str(q))([np.zeros((16, 64, 3), np.uint8)])[0] is not None
    # The CPU flavour: uint8 activations (ONNX Runtime's fast U8S8 kernels), int8 weights; TensorRT refuses it.
    c = quantize_int8(str(p), str(tmp_path / "m.int8.onnx"), x, target="cpu")
    from onnx import numpy_helper

    zps = {numpy_helper.to_array(t).dtype for t in onnx.load(str(c)).graph.initializer if t.name.endswith("zero_point")}
    assert zps == {np.dtype(np.uint8), np.dtype(np.int8)}, zps
    assert not check_trt_buildable(str(c), require_qdq=True).ok
    a = OnnxRecognizer(str(c)).run(x[:8])
    b = OnnxRecognizer(str(p)).run(x[:8])
    assert np.abs(a - b).max() < 0.5 and (a.argmax(-1) == b.argmax(-1)).mean() > 0.8


def test_trt_check_rejects_qoperator_and_asymmetric(trained, tmp_path):
    from compress.export import export_onnx
    from compress.trt_check import check_trt_buildable
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    p = export_onnx(str(trained / "s" / "last.pt"), str(tmp_path))

    class R:
        def __init__(self):
            self.d = [{"images": np.random.default_rng(0).uniform(-1, 1, (4, 3, 16, 64)).astype(np.float32)}]

        def get_next(self):
            return self.d.pop() if self.d else None

    quantize_static(str(p), str(tmp_path / "qop.onnx"), R(), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8)
    chk = check_trt_buildable(str(tmp_path / "qop.onnx"))
    assert not chk.ok and any("QLinearConv" in pr for pr in chk.problems)
    quantize_static(str(p), str(tmp_path / "asym.onnx"), R(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8)
    chk = check_trt_buildable(str(tmp_path / "asym.onnx"))
    assert not chk.ok and any("zero point" in pr for pr in chk.problems)


def test_fp16_export_runs(trained, tmp_path):
    from compress.export import export_onnx
    from compress.quantize import convert_fp16
    from runtime.recognizer import OnnxRecognizer

    p = export_onnx(str(trained / "t" / "last.pt"), str(tmp_path))
    h = convert_fp16(str(p), str(tmp_path / "m.fp16.onnx"))
    rec = OnnxRecognizer(str(h))
    assert rec.info.precision == "fp16" and rec.input_type == "tensor(float)"  # keep_io_types
    assert Path(h).stat().st_size < 0.7 * Path(p).stat().st_size
    rec([np.zeros((32, 128, 3), np.uint8)])


def test_build_engine_without_tensorrt_writes_qdq_and_says_so(trained, tmp_path):
    from compress.trt_check import check_trt_buildable

    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: this test covers machines without it")
    except ImportError:
        pass
    r = subprocess.run([sys.executable, "-m", "compress.build_engine", "--ckpt", str(trained / "s" / "last.pt"),
                        "--int8", "--calib", str(trained / "synth"), "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 4, r.stderr
    assert "TensorRT is not installed" in r.stderr and "build the engine on the target" in r.stderr
    qdq = list(tmp_path.glob("*.int8-trt.onnx")) + list((trained / "s").glob("*.int8-trt.onnx"))
    assert qdq, "the calibrated Q/DQ ONNX must be written even without TensorRT"
    assert check_trt_buildable(str(qdq[0]), require_qdq=True).ok


def test_build_engine_code_path_with_a_fake_tensorrt(trained, tmp_path):
    """TensorRT cannot be installed here; a fake module stands in for it so the code around it is exercised."""
    from compress.build_engine import build_engine
    from compress.export import export_onnx

    p = export_onnx(str(trained / "s" / "last.pt"), str(tmp_path))
    calls = {}

    class Obj:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class Parser:
        num_errors = 0

        def __init__(self, net, log):
            pass

        def parse(self, data):
            calls["parsed"] = len(data)
            return True

    class Profile:
        def set_shape(self, name, a, b, c):
            calls["profile"] = (name, a, b, c)

    class Config:
        def set_memory_pool_limit(self, pool, n):
            calls["workspace"] = n

        def add_optimization_profile(self, p):
            pass

        def create_timing_cache(self, b):
            return Obj(serialize=lambda: b"cache-bytes")

        def set_timing_cache(self, c, ignore_mismatch):
            self.cache = c

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, log):
            pass

        def create_network(self, flags):
            calls["flags"] = flags
            return Obj(get_input=lambda i: Obj(name="images", shape=(-1, 3, 16, 64)))

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, net, cfg):
            return b"engine-bytes"

    fake = types.SimpleNamespace(Logger=type("L", (), {"WARNING": 2, "__init__": lambda s, lv: None}),
                                 Builder=Builder, OnnxParser=Parser,
                                 NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=5),
                                 MemoryPoolType=types.SimpleNamespace(WORKSPACE=0))
    eng = build_engine(str(p), str(tmp_path / "m.engine"), 1, 8, 32, 256, trt=fake)
    assert eng.read_bytes() == b"engine-bytes"
    assert (tmp_path / "m.timing.cache").read_bytes() == b"cache-bytes"
    assert calls["flags"] == 1 << 5 and calls["profile"] == ("images", (1, 3, 16, 64), (8, 3, 16, 64), (32, 3, 16, 64))
    assert calls["workspace"] == 256 << 20


def test_tensorrt_real_build_when_available(trained, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (CPU-only machine); engines are built on the target")
    from compress.build_engine import build_engine
    from compress.export import export_onnx

    p = export_onnx(str(trained / "s" / "last.pt"), str(tmp_path))
    assert build_engine(str(p), str(tmp_path / "m.engine")).stat().st_size > 0


def test_export_cli_gate(trained, tmp_path):
    r = subprocess.run([sys.executable, "-m", "compress.export", "--ckpt", str(trained / "s" / "last.pt"), "--out",
                        str(tmp_path), "--int8", "--fp16", "--calib", f"{trained / 'synth'},{trained / 'synth'}",
                        "--calib-n", "32", "--budget", "100", "--int8-target", "tensorrt"], capture_output=True,
                       text=True, cwd=ROOT)  # two calibration datasets: the gate and parity read the first
    assert r.returncode == 0, r.stderr
    assert "| artifact | precision |" in r.stdout and "int8" in r.stdout and "TensorRT static check: OK" in r.stdout
    assert (tmp_path / "last.int8-trt.onnx").is_file() and not (tmp_path / "last.int8.onnx").exists()


def test_ship_writes_both_flavours_with_their_own_float_convolutions(trained, tmp_path):
    out = tmp_path / "w"
    base = [sys.executable, "-m", "compress.ship", "--student", str(trained / "s" / "last.pt"), "--name", "tiny",
            "--out", str(out), "--calib", str(trained / "synth"), "--calib-n", "16"]
    r = subprocess.run(base + ["--int8-float-convs", "1", "--trt-float-convs", "3"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    kept = {f: {p.key: p.value for p in onnx.load(str(out / f)).metadata_props}.get("tinytext.int8_float_convs")
            for f in ("tiny-student-lr.int8.onnx", "tiny-student-lr.int8-trt.onnx")}
    assert kept == {"tiny-student-lr.int8.onnx": "1", "tiny-student-lr.int8-trt.onnx": "3"}
    assert (out / "tiny-student-lr.pt").is_file() and not (out / ".calib-cache").exists()
    r = subprocess.run(base + ["--trt-float-convs", "-1"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: --trt-float-convs: must be >= 0, got -1"]


def _activation_net(path):
    """PP-LCNetV3's activations between convolutions: HardSwish as an op followed by a scalar affine, HardSwish as
    the exporters write it (x * HardSigmoid(x)), and a squeeze-excitation block (mean over H, W -> 1x1 conv ->
    Clip(0, 1) gate)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shapes = (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (16, 8, 1, 1)), ("b2", (16,)), ("wd", (16, 1, 3, 3)),
              ("bd", (16,)), ("ws", (16, 16, 1, 1)), ("bs", (16,)), ("w3", (4, 16, 3, 3)), ("b3", (4,)))
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, s).astype(np.float32), n) for n, s in shapes]
    inits += [numpy_helper.from_array(np.array(v, np.float32), n)
              for n, v in (("zero", 0.0), ("one", 1.0), ("s", 1.3), ("t", 0.4))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c1"], ["h1"], name="hs1"),
             helper.make_node("Mul", ["h1", "s"], ["a0"], name="affine_mul"),  # PP-LCNetV3's learnable affine
             helper.make_node("Add", ["a0", "t"], ["a1"], name="affine_add"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("HardSigmoid", ["c2"], ["s2"], name="hsig2", alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["c2", "s2"], ["h2"], name="hs2"),
             helper.make_node("Conv", ["h2", "wd", "bd"], ["d"], name="depthwise", group=16, pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["d"], ["m"], name="se_mean", axes=[2, 3], keepdims=1),
             helper.make_node("Conv", ["m", "ws", "bs"], ["e"], name="se_conv"),
             helper.make_node("Clip", ["e", "zero", "one"], ["gate"], name="se_clip"),
             helper.make_node("Mul", ["d", "gate"], ["h3"], name="se_mul"),
             helper.make_node("Conv", ["h3", "w3", "b3"], ["y"], name="conv3", pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "act", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 16])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@needs_exact_int8
def test_int8_activations_run_in_integer_kernels_as_accurately_as_float_islands(tmp_path):
    """The cpu flavour's HardSwish (both spellings), squeeze-excitation mean and gate run in ONNX Runtime's integer
    kernels (no float HardSigmoid, Clip or ReduceMean left after its graph optimisation), the affine after a
    HardSwish goes into its QLinearMul, and the result is as close to FP32 as the float islands it replaces."""
    import onnxruntime as ort

    from compress.graph_rewrites import scalar_affine_to_conv
    from compress.quantize import quantize_int8

    m = onnx.load(str(_activation_net(tmp_path / "act.onnx")))
    assert scalar_affine_to_conv(m) == 1  # as compress.export writes it
    src = tmp_path / "act_conv.onnx"
    onnx.save(m, str(src))
    x = np.random.default_rng(1).normal(0, 1.5, (64, 3, 8, 16)).astype(np.float32)

    def run(p, opt_path):
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(opt_path)
        return ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    ref = run(src, tmp_path / "opt_fp32.onnx")
    out, ops, meta = {}, {}, {}
    for integer in (False, True):
        q = quantize_int8(str(src), str(tmp_path / f"q{integer}.onnx"), x, integer_activations=integer)
        out[integer] = run(q, tmp_path / f"opt{integer}.onnx")
        ops[integer] = [n.op_type for n in onnx.load(str(tmp_path / f"opt{integer}.onnx")).graph.node]
        meta[integer] = {p.key: p.value for p in onnx.load(str(q)).metadata_props}
    float_ops = {"HardSwish", "HardSigmoid", "Clip", "ReduceMean"}
    assert float_ops & set(ops[False]) and not float_ops & set(ops[True])
    assert {"QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool"} <= set(ops[True])
    assert (ops[False].count("QLinearConv"), ops[True].count("QLinearConv")) == (6, 5)  # the affine's conv is gone
    assert "tinytext.int8_integer_activations" not in meta[False]
    assert meta[True]["tinytext.int8_integer_activations"] == "hardswish 2, gelu 0, gate 1, squeeze 1, affine 1"
    qm = onnx.load(str(tmp_path / "qTrue.onnx"))
    read = {i for n in qm.graph.node for i in n.input}
    assert [t.name for t in qm.graph.initializer if t.name not in read] == []  # nothing the rewrites replaced is left
    err = {k: np.abs(v - ref).mean() for k, v in out.items()}
    assert err[True] < 0.1 * np.abs(ref).mean()  # five random layers: both flavours sit near 7 %
    assert err[True] < 1.25 * err[False], err
    # int8 activations (the TensorRT flavour) keep their float HardSwish and gate: the rewrite's grids are uint8
    from compress.graph_rewrites import qdq_integer_activations

    qt = onnx.load(str(quantize_int8(str(src), str(tmp_path / "qt.onnx"), x, target="tensorrt")))
    assert "HardSigmoid" in [n.op_type for n in qt.graph.node]  # HardSwish as the pre-processing inlines it
    counts = qdq_integer_activations(qt)
    assert counts["hardswish"] == counts["gate"] == counts["affine"] == 0


def test_int8_float_convs_keeps_the_first_layers_float(tmp_path):
    """float_convs=N: the first N convolutions and the activations before the next stay float (ONNX Runtime runs
    them as float Conv), the rest is INT8; the count is recorded and a negative one refused."""
    import onnxruntime as ort

    from compress.quantize import float_prefix, quantize_int8

    src = _activation_net(tmp_path / "act.onnx")
    assert float_prefix(onnx.load(str(src)), 2) == ["conv1", "hs1", "affine_mul", "affine_add", "conv2", "hsig2",
                                                     "hs2"]
    x = np.random.default_rng(1).normal(0, 1.5, (32, 3, 8, 16)).astype(np.float32)
    q = quantize_int8(str(src), str(tmp_path / "q.onnx"), x, float_convs=2)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("QLinearConv") == 3  # depthwise, squeeze-excitation and last conv; conv1 and conv2 float
    assert {p.key: p.value for p in onnx.load(str(q)).metadata_props}["tinytext.int8_float_convs"] == "2"
    with pytest.raises(ValueError, match="--int8-float-convs"):
        quantize_int8(str(src), str(tmp_path / "q2.onnx"), x, float_convs=-1)


def test_fitted_gelu_gate_gives_the_exact_codes_better_than_the_textbook_sigmoid():
    """On a fine output grid with mostly negative inputs (GELU's usual INT8 case), the gate fitted to the input
    histogram misses exact GELU's output codes less than x * sigmoid(1.702 x), found by the same simulation; its
    zero-point shift keeps the zero point a uint8."""
    from math import erf

    from compress.graph_rewrites import fit_gelu_gate

    s_x, z_x, s_y, z_y = 0.02, 160, 0.005, 40
    x = (np.arange(256) - z_x) * s_x
    hist = np.exp(-0.5 * ((x + 0.8) / 0.7) ** 2)  # mostly negative inputs
    exact = np.clip(np.rint(0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2))) / s_y) + z_y, 0, 255)
    textbook = np.clip(np.rint(x * np.rint(255 / (1 + np.exp(-1.702 * x))) / 255 / s_y) + z_y, 0, 255)
    mse_textbook = float((hist / hist.sum() * (textbook - exact) ** 2).sum())
    a, k, mse = fit_gelu_gate(s_x, z_x, s_y, z_y, hist)
    assert mse < 0.85 * mse_textbook and 0 <= z_x - k <= 255 and 1.4 <= a <= 2.2, (a, k, mse, mse_textbook)


def test_too_many_calibration_images_for_memory_is_one_error_naming_calib_n(tmp_path, monkeypatch):
    """ONNX Runtime's minmax calibrator (a moving average over batches, so one pass) keeps every image's
    activations: more than memory holds is a CalibrationError naming --calib-n and the count that fits, before
    calibrating, and no output file is written."""
    import compress.quantize as qz
    from compress.calibration import CalibrationError

    src = _activation_net(tmp_path / "act.onnx")
    per = qz._activation_bytes(onnx.load(str(src)))
    assert per >= 4 * 8 * 16 * 8  # at least conv1's output (8 channels x 8 x 16 floats)
    monkeypatch.setattr(qz, "_available_bytes", lambda: 10 * per / qz._CALIB_MEMORY_SHARE)
    x = np.random.default_rng(0).normal(0, 1, (64, 3, 8, 16)).astype(np.float32)
    with pytest.raises(CalibrationError, match=r"^--calib-n 64: .* use --calib-n (\d+) or fewer$") as e:
        qz.quantize_int8(str(src), str(tmp_path / "q.onnx"), x)
    assert not (tmp_path / "q.onnx").exists()
    fits = int(str(e.value).split("use --calib-n ")[1].split()[0])
    assert 5 <= fits < 64  # about 10 images' worth (the check counts the pre-processed graph's tensors)
    assert qz.quantize_int8(str(src), str(tmp_path / "q.onnx"), x[:fits]).exists()  # the count it names runs


def test_histogram_calibrators_go_in_passes_when_memory_is_short(tmp_path, monkeypatch):
    """Percentile and entropy calibration keep a histogram per tensor: with memory for a few batches they collect
    in equal passes (ONNX Runtime's strided collection) instead of refusing --calib-n, and the ranges they find are
    those of one pass; with memory for less than one batch, one error naming the batch."""
    import onnxruntime.quantization as oq
    from onnx import numpy_helper

    import compress.quantize as qz
    from compress.calibration import CalibrationError

    src = _activation_net(tmp_path / "act.onnx")
    x = np.random.default_rng(0).normal(0, 1, (64, 3, 8, 16)).astype(np.float32)  # 4 batches of 16
    options = []
    real = oq.quantize_static
    monkeypatch.setattr(oq, "quantize_static", lambda *a, **k: (options.append(k["extra_options"]), real(*a, **k))[1])
    one = qz.quantize_int8(str(src), str(tmp_path / "one.onnx"), x, method="percentile")
    assert "CalibStridedMinMax" not in options[-1]
    per = qz._activation_bytes(onnx.load(str(src)))
    monkeypatch.setattr(qz, "_available_bytes", lambda: 40 * per / qz._CALIB_MEMORY_SHARE)  # ~2 batches' worth
    passes = qz.quantize_int8(str(src), str(tmp_path / "passes.onnx"), x, method="percentile")
    assert options[-1]["CalibStridedMinMax"] in (1, 2)

    def act_scales(path):
        return {t.name: float(numpy_helper.to_array(t)) for t in onnx.load(str(path)).graph.initializer
                if t.name.endswith("_scale") and numpy_helper.to_array(t).size == 1}

    a, b = act_scales(one), act_scales(passes)
    assert a.keys() == b.keys() and len(a) >= 4
    assert max(abs(b[k] / a[k] - 1) for k in a) < 0.1, (a, b)
    monkeypatch.setattr(qz, "_available_bytes", lambda: 4 * per / qz._CALIB_MEMORY_SHARE)
    with pytest.raises(CalibrationError, match=r"^calibration: one batch of 16 images keeps"):
        qz.quantize_int8(str(src), str(tmp_path / "q.onnx"), x, method="entropy")
    assert not (tmp_path / "q.onnx").exists()


def _ort_output(model, x: np.ndarray, reference: bool = False) -> np.ndarray:
    """The first output of an in-memory ONNX model with input "x", on ONNX Runtime's CPU provider; ``reference``:
    without graph optimisation, so Q/DQ pairs run as DequantizeLinear, the float op, QuantizeLinear (exact rounding,
    no fused integer kernels)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if reference:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def test_scalar_affine_becomes_a_depthwise_conv_with_identical_outputs(tmp_path):
    """PP-LCNetV3's learnable affine (Mul by a scalar, Add a scalar) between convolutions is rewritten as a depthwise
    1x1 Conv: same outputs, no Mul/Add left where the pattern is exact; a Mul read twice is left alone."""
    from onnx import TensorProto, helper, numpy_helper

    from compress.graph_rewrites import scalar_affine_to_conv

    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, s).astype(np.float32), n)
             for n, s in (("w1", (8, 3, 1, 1)), ("b1", (8,)), ("w2", (8, 1, 3, 3)), ("b2", (8,)))]
    inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("s1", 0.4), ("t1", -0.3),
                                                                               ("s2", [1.7]), ("t2", 0.25))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="pw"),
             helper.make_node("HardSwish", ["c1"], ["h1"], name="hs1"),
             helper.make_node("Mul", ["s1", "h1"], ["m1"], name="lab1_mul"),  # scalar first, as paddle2onnx writes it
             helper.make_node("Add", ["m1", "t1"], ["a1"], name="lab1_add"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c2", "s2"], ["m2"], name="lab2_mul"),
             helper.make_node("Add", ["m2", "t2"], ["a2"], name="lab2_add"),
             helper.make_node("Add", ["a2", "m2"], ["y"], name="reads_m2_too")]  # m2 has two readers: kept
    g = helper.make_graph(nodes, "lab", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.normal(0, 1.5, (4, 3, 8, 16)).astype(np.float32)

    ref = _ort_output(m, x)
    assert scalar_affine_to_conv(m) == 1
    onnx.checker.check_model(m)
    ops = [(n.op_type, n.name) for n in m.graph.node]
    assert ("Mul", "lab1_mul") not in ops and ("Add", "lab1_add") not in ops and ("Mul", "lab2_mul") in ops
    conv = next(n for n in m.graph.node if n.name == "lab1_add.affine_conv")
    assert {a.name: helper.get_attribute_value(a) for a in conv.attribute}["group"] == 8
    assert "s1" not in {t.name for t in m.graph.initializer}  # the scalars it read are gone with it
    assert np.abs(_ort_output(m, x) - ref).max() < 1e-5
    # before INT8 for TensorRT the rewrite is undone: Mul and Add by scalars again, same outputs
    from compress.graph_rewrites import conv_to_scalar_affine

    assert conv_to_scalar_affine(m) == 1
    onnx.checker.check_model(m)
    assert [n.op_type for n in m.graph.node].count("Mul") == 2 and [n.op_type for n in m.graph.node].count("Conv") == 2
    assert np.abs(_ort_output(m, x) - ref).max() < 1e-5


def test_erf_gelu_becomes_one_gelu_node_then_an_integer_sigmoid_gate(tmp_path):
    """GELU as exporters write it (x / sqrt 2, Erf, + 1, then * x and * 0.5 in either order) becomes one
    com.microsoft.Gelu node with the same outputs; a chain that is not GELU (divided by 2) is left alone. The INT8
    cpu flavour without integer activations carries the fused node (its Q/DQ pairs stop ONNX Runtime's own fusion);
    with them (the default) each GELU between DQ and Q runs as ONNX Runtime's QLinearSigmoid and QLinearMul, as
    close to FP32 as the float Gelu island. The TensorRT flavour keeps the standard ops."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from compress.graph_rewrites import erf_gelu_to_gelu
    from compress.quantize import quantize_int8

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (4, 8, 1, 1)).astype(np.float32), "w2")]
    inits += [numpy_helper.from_array(rng.normal(0, 0.4, (8, 8, 1, 1)).astype(np.float32), k) for k in ("wa", "wb")]
    inits += [numpy_helper.from_array(np.array(v, np.float32), k)
              for k, v in (("sqrt2", np.sqrt(2.0)), ("two", 2.0), ("one", 1.0), ("half", 0.5))]
    n = helper.make_node

    def gelu(x, p, div="sqrt2", half_first=False):
        nodes = [n("Div", [x, div], [f"{p}d"], name=f"{p}div"), n("Erf", [f"{p}d"], [f"{p}e"], name=f"{p}erf"),
                 n("Add", [f"{p}e", "one"], [f"{p}a"], name=f"{p}add")]
        if half_first:
            return nodes + [n("Mul", ["half", x], [f"{p}h"], name=f"{p}mh"),
                            n("Mul", [f"{p}h", f"{p}a"], [f"{p}y"], name=f"{p}mx")]
        return nodes + [n("Mul", [x, f"{p}a"], [f"{p}m"], name=f"{p}mx"),
                        n("Mul", [f"{p}m", "half"], [f"{p}y"], name=f"{p}mh")]

    nodes = ([n("Conv", ["x", "w1"], ["c1"], name="conv1")] + gelu("c1", "g1_")
             + [n("Conv", ["g1_y", "wa"], ["ca"], name="conva")] + gelu("ca", "g2_", half_first=True)
             + [n("Conv", ["g2_y", "wb"], ["cb"], name="convb")] + gelu("cb", "g3_", div="two")
             + [n("Conv", ["g3_y", "w2"], ["y"], name="conv2")])
    g = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.normal(0, 1.5, (16, 3, 8, 16)).astype(np.float32)

    ref = _ort_output(m, x)
    src = tmp_path / "gelu.onnx"
    onnx.save(m, str(src))
    assert erf_gelu_to_gelu(m) == 2
    onnx.checker.check_model(m)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Gelu") == 2 and ops.count("Erf") == 1  # the divided-by-2 chain stays
    assert "sqrt2" not in {t.name for t in m.graph.initializer}
    assert np.abs(_ort_output(m, x) - ref).max() < 1e-5
    q = onnx.load(str(quantize_int8(str(src), str(tmp_path / "q.onnx"), x, integer_activations=False)))
    assert [n.op_type for n in q.graph.node].count("Gelu") == 2
    assert {p.key: p.value for p in q.metadata_props}["tinytext.int8_fused_gelu"] == "2"

    out, ops = {}, {}
    for integer, path in ((False, tmp_path / "q.onnx"), (True, quantize_int8(str(src), str(tmp_path / "qi.onnx"), x))):
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / f"opt{integer}.onnx")
        out[integer] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        ops[integer] = [n.op_type for n in onnx.load(str(tmp_path / f"opt{integer}.onnx")).graph.node]
    assert ops[False].count("Gelu") == 2 and "QLinearSigmoid" not in ops[False]
    assert ops[True].count("QLinearSigmoid") == 2 and not {"Gelu", "Sigmoid"} & set(ops[True])
    assert ops[True].count("Mul") == ops[False].count("Mul") == 2  # the divided-by-2 chain's, float in both
    qi = onnx.load(str(tmp_path / "qi.onnx"))
    assert "gelu 2" in {p.key: p.value for p in qi.metadata_props}["tinytext.int8_integer_activations"]
    err = {k: np.abs(v - ref).mean() for k, v in out.items()}
    assert err[True] < 1.25 * err[False], err
    from compress.graph_rewrites import qdq_integer_activations

    assert qdq_integer_activations(q)["gelu"] == 0  # without calibration histograms a GELU stays float
    qt = onnx.load(str(quantize_int8(str(src), str(tmp_path / "qt.onnx"), x, target="tensorrt")))
    assert "Gelu" not in [n.op_type for n in qt.graph.node]


def _deep_ctc_onnx(path, gelu: bool = False):
    """Three convolutions with ReLU (or GELU as exporters write it, erf and four nodes), a mean over the height, a
    MatMul classifier and Softmax: a CTC recognizer small enough to fine-tune in seconds, deep enough for INT8
    rounding noise to add up, with peaked frames. (A constant named "half", an nn.Module method, is read too.)"""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    shapes = (("w1", (16, 3, 3, 3)), ("b1", (16,)), ("w2", (16, 16, 3, 3)), ("b2", (16,)), ("w3", (16, 16, 3, 3)),
              ("b3", (16,)), ("fc", (16, 7)), ("fb", (7,)))
    inits = [numpy_helper.from_array((rng.normal(0, 1, s) / np.sqrt(np.prod(s[1:]) if len(s) > 1 else 10)
                                      * (10 if n == "fc" else 1)).astype(np.float32), n) for n, s in shapes]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "axes"))
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
             n("Relu", ["c1"], ["r1"], name="relu1"),
             n("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             n("Relu", ["c2"], ["r2"], name="relu2"),
             n("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
             n("ReduceMean", ["c3"], ["m"], name="pool", axes=[2], keepdims=1),
             n("Squeeze", ["m", "axes"], ["s"], name="sq"),
             n("Transpose", ["s"], ["t"], perm=[0, 2, 1], name="tr"),
             n("MatMul", ["t", "fc"], ["mm"], name="fc"),
             n("Add", ["mm", "fb"], ["logits"], name="bias"),
             n("Softmax", ["logits"], ["probs"], axis=2, name="sm")]
    if gelu:
        inits += [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in (("sqrt2", np.sqrt(2)), ("one", 1.0),
                                                                                  ("half", 0.5))]
        for i, (x, y) in ((3, ("c2", "r2")), (1, ("c1", "r1"))):  # the later node first: indices stay
            nodes[i:i + 1] = [n("Div", [x, "sqrt2"], [y + "d"], name=y + "div"),
                              n("Erf", [y + "d"], [y + "e"], name=y + "erf"),
                              n("Add", [y + "e", "one"], [y + "a"], name=y + "add"),
                              n("Mul", [x, y + "a"], [y + "m"], name=y + "mul"),
                              n("Mul", [y + "m", "half"], [y], name=y + "half")]
    g = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 64])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 32, 7])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_int8_finetune_through_the_files_own_points_reads_closer_to_fp32(tmp_path):
    """Fine-tuning a Q/DQ file through its own quantization points (same tensors, same activation scales, weights
    re-rounded per channel) brings its INT8 outputs closer to FP32 on inputs it never saw, keeps the file's structure
    and activation scales, and records itself in the metadata. The simulation is the file: it reads like ONNX
    Runtime's reference Q/DQ kernels (and like its integer kernels where those are exact)."""
    from compress.qdq_finetune import finetune_qdq, frame_kl
    from compress.quantize import quantize_int8
    from conftest import _int8_kernels_exact
    from distill.models.fake_quant import QdqPoints

    def logp(model, x, reference=True):
        return np.log(np.clip(_ort_output(model, x, reference), 1e-9, 1))

    src = _deep_ctc_onnx(tmp_path / "deep.onnx")
    fp = onnx.load(str(src))
    rng = np.random.default_rng(2)
    x, held = (rng.normal(0, 1, (n, 3, 16, 64)).astype(np.float32) for n in (256, 128))
    base = quantize_int8(str(src), str(tmp_path / "base.onnx"), x[:64])
    q0, q1 = onnx.load(str(base)), onnx.load(str(base))
    consts = {t.name for t in q0.graph.initializer}
    n_act = sum(1 for n in q0.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in consts)
    points = QdqPoints.from_models(q0, fp)
    assert len(points.points) == n_act > 0 and set(points.weights) == {"w1", "w2", "w3"}  # the head stays float

    before, after = finetune_qdq(fp, q1, x, steps=60, lr=3e-4, progress=False)
    ref = logp(fp, x[:256])
    kl_file = frame_kl(ref, logp(q0, x[:256]))
    assert abs(before - kl_file) < 0.2 * kl_file, (before, kl_file)  # simulated = the file's reference kernels
    assert after < 0.7 * before, (before, after)
    ref_held = logp(fp, held)
    kl0, kl1 = frame_kl(ref_held, logp(q0, held)), frame_kl(ref_held, logp(q1, held))
    assert kl1 < 0.7 * kl0, (kl0, kl1)  # and on inputs the fine-tuning never saw
    if _int8_kernels_exact():  # ONNX Runtime's fused integer kernels agree
        assert frame_kl(ref_held, logp(q1, held, False)) < 0.7 * frame_kl(ref_held, logp(q0, held, False))
    assert [n.op_type for n in q1.graph.node] == [n.op_type for n in q0.graph.node]
    i0 = {t.name: onnx.numpy_helper.to_array(t) for t in q0.graph.initializer}
    i1 = {t.name: onnx.numpy_helper.to_array(t) for t in q1.graph.initializer}
    scales = {n.input[1] for n in q0.graph.node if n.op_type == "QuantizeLinear"}
    assert all(np.array_equal(i0[k], i1[k]) for k in scales)  # the calibrated activation scales stay
    assert i1["w2_quantized"].dtype == np.int8 and not np.array_equal(i0["w2_quantized"], i1["w2_quantized"])

    q = quantize_int8(str(src), str(tmp_path / "ft.onnx"), x[:64], finetune_steps=5, finetune_x=x)
    meta = {p.key: p.value for p in onnx.load(str(q)).metadata_props}
    assert meta["tinytext.int8_finetune"].startswith("5 steps at lr 1e-05 on 256 inputs, simulated frame KL to FP32 ")
    # --int8-finetune-seed: the same run with another batch order ends on other int8 weights, and says so
    runs = [quantize_int8(str(src), str(tmp_path / f"seed{k}.onnx"), x[:64], finetune_steps=5, finetune_x=x,
                          finetune_lr=3e-4, finetune_seed=k) for k in (0, 0, 1)]
    w = [{t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(r)).graph.initializer} for r in runs]
    codes = [k for k, v in w[0].items() if v.dtype == np.int8]
    assert all(np.array_equal(w[0][k], w[1][k]) for k in codes)  # a seed repeats exactly
    assert not all(np.array_equal(w[0][k], w[2][k]) for k in codes)
    meta = [{p.key: p.value for p in onnx.load(str(r)).metadata_props}["tinytext.int8_finetune"] for r in runs]
    assert "seed" not in meta[0] and meta[2].startswith("5 steps at lr 0.0003 on 256 inputs, seed 1, simulated")


def test_int8_finetune_with_ctc_learns_labels_the_float_model_does_not_read(tmp_path):
    """CTC on labels beside the KL steers the fine-tuning towards the labels: with a string the float model never
    reads as every input's label, the CTC-tuned file reads it on most inputs and the KL-only one on none. Labels
    reach the loss through the model's own tokenizer (case adapted, unknown characters dropped) and are recorded in
    the metadata; targets that do not match the inputs one to one are refused."""
    from compress.qdq_finetune import finetune_qdq
    from compress.quantize import ctc_targets, quantize_int8
    from runtime.modelfile import ModelInfo

    src = _deep_ctc_onnx(tmp_path / "deep.onnx")
    m = onnx.load(str(src))
    for k, v in ModelInfo("deep", "ctc", "abcdef", 16, 64, lr=True).to_metadata().items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(m, str(src))
    fp = onnx.load(str(src))
    x = np.random.default_rng(3).normal(0, 1, (128, 3, 16, 64)).astype(np.float32)
    base = quantize_int8(str(src), str(tmp_path / "base.onnx"), x[:64])

    def reads(model) -> list[list[int]]:
        out = []
        for row in _ort_output(model, x, True).argmax(-1):
            ids = [int(c) for i, c in enumerate(row) if c and (i == 0 or c != row[i - 1])]
            out.append(ids)
        return out

    target = [2, 4]
    assert sum(r == target for r in reads(fp)) == 0
    q_kl, q_ctc = onnx.load(str(base)), onnx.load(str(base))
    finetune_qdq(fp, q_kl, x, steps=40, lr=3e-3, progress=False)
    finetune_qdq(fp, q_ctc, x, steps=40, lr=3e-3, progress=False, targets=[target] * len(x), ctc_weight=5.0)
    assert sum(r == target for r in reads(q_kl)) == 0
    assert sum(r == target for r in reads(q_ctc)) > len(x) // 2
    with pytest.raises(ValueError, match="128 inputs but 3 targets"):
        finetune_qdq(fp, onnx.load(str(base)), x, steps=1, progress=False, targets=[target] * 3, ctc_weight=1.0)

    assert ctc_targets(str(src), ["BD", "bzd!"], 2) == [[2, 4], [2, 4]]
    with pytest.raises(ValueError, match="--int8-finetune-ctc: 2 fine-tuning inputs but 1 labels"):
        ctc_targets(str(src), ["bd"], 2)
    q = quantize_int8(str(src), str(tmp_path / "ft.onnx"), x[:64], finetune_steps=2, finetune_x=x,
                      finetune_targets=ctc_targets(str(src), ["bd"] * len(x), len(x)), finetune_ctc=0.5)
    meta = {p.key: p.value for p in onnx.load(str(q)).metadata_props}
    assert meta["tinytext.int8_finetune"].startswith(
        "2 steps at lr 1e-05 on 128 inputs with CTC on their labels at weight 0.5,")


def test_int8_finetune_learns_activation_scales_except_the_gelu_gates(tmp_path):
    """``--int8-finetune-scale-lr``: the activation scales train beside the weights (learned step sizes) and are
    written back, so the file reads as its simulation did (with the calibrated scales put back it reads otherwise);
    the tensors of a fitted integer GELU gate keep their calibrated scales, and scales made equal stay equal; the
    metadata says so; a negative rate is refused by option name."""
    import argparse

    import torch

    from compress.calibration import add_finetune_args, finetune_options
    from compress.graph_rewrites import fitted_gelu_gates, gelu_inputs
    from compress.qdq_finetune import finetune_qdq, frame_kl
    from compress.quantize import _code_histograms, quantize_int8
    from runtime.cli import InputError

    def scales(model) -> dict[str, float]:
        init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        return {n.input[0]: float(init[n.input[1]]) for n in model.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in init}

    def logp(model, x):
        return np.log(np.clip(_ort_output(model, x, True), 1e-9, 1))

    src = _deep_ctc_onnx(tmp_path / "deep.onnx")
    fp = onnx.load(str(src))
    x = np.random.default_rng(2).normal(0, 1, (256, 3, 16, 64)).astype(np.float32)
    base = quantize_int8(str(src), str(tmp_path / "base.onnx"), x[:64])
    q = onnx.load(str(base))
    _, after = finetune_qdq(fp, q, x, steps=60, lr=3e-4, progress=False, scale_lr=3e-2)
    s0, s1 = scales(onnx.load(str(base))), scales(q)
    assert set(s0) == set(s1) and all(abs(s1[k] / s0[k] - 1) > 0.01 for k in s0), (s0, s1)
    ref = logp(fp, x)
    stale = onnx.load(str(base))  # the fine-tuned weights under the calibrated scales
    init = {t.name: t for t in stale.graph.initializer}
    for t in q.graph.initializer:
        if not t.name.endswith("_scale") or t.name[:-6] not in s0:
            init[t.name].CopyFrom(t)
    kl_file, kl_stale = frame_kl(ref, logp(q, x)), frame_kl(ref, logp(stale, x))
    assert abs(kl_file - after) < 0.2 * after and abs(kl_stale - after) > 2 * abs(kl_file - after), \
        (after, kl_file, kl_stale)

    gsrc = _deep_ctc_onnx(tmp_path / "gelu.onnx", gelu=True)
    gfp = onnx.load(str(gsrc))
    island = quantize_int8(str(gsrc), str(tmp_path / "island.onnx"), x[:64], integer_activations=False)
    qg = onnx.load(str(island))
    gates = fitted_gelu_gates(qg, _code_histograms(qg, gelu_inputs(qg), x[:64], 16))
    finetune_qdq(gfp, qg, x, steps=20, lr=3e-4, progress=False, gates=gates, scale_lr=3e-2)
    g0, g1 = scales(onnx.load(str(island))), scales(qg)
    tied = {t for y, (src_, _, _) in gates.items() for t in (y, src_)}
    assert tied == {"c1", "r1", "c2", "r2"} and all(g1[k] == g0[k] for k in tied)
    assert all(g1[k] != g0[k] for k in set(g0) - tied)

    # scales the quantizer made equal (a Transpose between two points: ONNX Runtime drops the Q/DQ pair around it
    # only while they are) learn as one and stay equal
    from distill.models.fake_quant import QdqPoints

    pts = QdqPoints({"a": (0.1, 3, 0, 255), "b": (0.1, 3, 0, 255), "c": (0.1, 0, 0, 255)}, {},
                    scale_names={"a": "a_s", "b": "b_s", "c": "c_s"})
    params = pts.learn_scales()
    assert len(params) == 2
    with torch.no_grad():
        for k, t in enumerate(params):
            t.fill_(0.1 * (k + 1))
    learned = pts.learned_scales()
    assert learned["a_s"] == learned["b_s"] != learned["c_s"] and learned["a_s"] != 0.1

    f = quantize_int8(str(src), str(tmp_path / "ft.onnx"), x[:64], finetune_steps=2, finetune_x=x,
                      finetune_scale_lr=1e-3)
    meta = {p.key: p.value for p in onnx.load(str(f)).metadata_props}["tinytext.int8_finetune"]
    assert meta.startswith("2 steps at lr 1e-05 on 256 inputs, activation scales learned at lr 0.001, simulated")
    parser = argparse.ArgumentParser()
    add_finetune_args(parser)
    assert finetune_options(parser.parse_args([]))["finetune_scale_lr"] == 0.0
    with pytest.raises(InputError, match="--int8-finetune-scale-lr: must be >= 0"):
        finetune_options(parser.parse_args(["--int8-finetune-scale-lr", "-1"]))


def test_int8_finetune_on_fresh_views_reads_targets_as_they_come(tmp_path):
    """``--int8-finetune-views fresh``: every step draws new views of the labelled crops (weights respected, a rerun
    draws the same ones, a crop's view changes from epoch to epoch); the float model reads each batch for the KL
    targets, which brings the file closer to FP32 on inputs it never saw; the metadata names the views; weights
    without fresh views, or of the wrong count, are refused by option name."""
    import argparse

    from compress.calibration import CalibrationError, add_finetune_args, finetune_options
    from compress.finetune_views import FreshViews
    from compress.qdq_finetune import finetune_qdq, frame_kl
    from compress.quantize import quantize_from_data, quantize_int8
    from runtime.modelfile import ModelInfo

    from conftest import str_items, write_lmdb

    a = write_lmdb(tmp_path / "a", str_items([f"a{i}" for i in range(20)]))
    b = write_lmdb(tmp_path / "b", str_items([f"b{i}" for i in range(6)]))
    views = FreshViews(f"{a},{b}", (16, 64), [1, 0], seed=3)
    x0, l0 = views(0, 8)
    assert x0.shape == (8, 3, 16, 64) and x0.dtype == np.float32 and all(lb.startswith("a") for lb in l0)
    again, l_again = FreshViews(f"{a},{b}", (16, 64), [1, 0], seed=3)(0, 8)
    assert np.array_equal(again, x0) and l_again == l0
    seen: dict[str, list[np.ndarray]] = {}
    for step in range(0, 2 * 4096 // 8, 64):  # across the stream's epochs
        x, labels = views(step, 8)
        for xi, lb in zip(x, labels):
            seen.setdefault(lb, []).append(xi)
    assert any(not np.array_equal(v[0], w) for v in seen.values() for w in v[1:])  # new views of one crop
    assert str(views) == "new augmented views at every step of 26 crops (shares 1.00,0.00)"
    with pytest.raises(CalibrationError, match="--int8-finetune-weights: 1 weights for 2 --int8-finetune-data"):
        FreshViews(f"{a},{b}", (16, 64), [1])

    src = _deep_ctc_onnx(tmp_path / "deep.onnx")
    fp = onnx.load(str(src))
    rng = np.random.default_rng(4)
    x, held = (rng.normal(0, 1, (n, 3, 16, 64)).astype(np.float32) for n in (64, 128))
    base = quantize_int8(str(src), str(tmp_path / "base.onnx"), x)
    q0, q1 = onnx.load(str(base)), onnx.load(str(base))
    steps_seen = []

    def stream(step: int, batch: int):  # new inputs at every step, never the measured ones
        steps_seen.append(step)
        return np.random.default_rng(100 + step).normal(0, 1, (batch, 3, 16, 64)).astype(np.float32), []

    finetune_qdq(fp, q1, x, steps=60, lr=3e-4, progress=False, views=stream)
    assert steps_seen == list(range(60))
    ref = np.log(np.clip(_ort_output(fp, held, True), 1e-9, 1))
    kl0 = frame_kl(ref, np.log(np.clip(_ort_output(q0, held, True), 1e-9, 1)))
    kl1 = frame_kl(ref, np.log(np.clip(_ort_output(q1, held, True), 1e-9, 1)))
    assert kl1 < 0.7 * kl0, (kl0, kl1)

    m = onnx.load(str(src))
    for k, v in ModelInfo("deep", "ctc", "ab0123456789", 16, 64, lr=True).to_metadata().items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(m, str(src))
    f, _ = quantize_from_data(str(src), str(tmp_path / "fresh.onnx"), str(a), n=20, cache_dir=tmp_path / "c",
                              finetune_steps=2, finetune_data=f"{a},{b}", finetune_ctc=1.0, finetune_views="fresh",
                              finetune_weights=[0.5, 0.5])
    meta = {p.key: p.value for p in onnx.load(str(f)).metadata_props}["tinytext.int8_finetune"]
    assert meta.startswith("2 steps at lr 1e-05 on new augmented views at every step of 26 crops (shares 0.50,0.50) "
                           "with CTC on their labels at weight 1,")
    parser = argparse.ArgumentParser()
    add_finetune_args(parser)
    opts = finetune_options(parser.parse_args(["--int8-finetune-weights", "2,1"]))
    assert opts["finetune_views"] == "fixed" and opts["finetune_weights"] == [2.0, 1.0]
    with pytest.raises(CalibrationError, match="--int8-finetune-weights: weighs the sources of "
                                               "--int8-finetune-views fresh only"):
        quantize_from_data(str(src), str(tmp_path / "x.onnx"), str(a), n=20, finetune_steps=2, **{
            k: v for k, v in opts.items() if k.startswith("finetune_w")})
    with pytest.raises(CalibrationError, match="--int8-finetune-weights: expected comma-separated numbers"):
        finetune_options(parser.parse_args(["--int8-finetune-weights", "1,x"]))
    with pytest.raises(CalibrationError, match="--int8-finetune-weights: expected shares >= 0"):
        finetune_options(parser.parse_args(["--int8-finetune-weights", "0,-1"]))


def test_int8_finetune_rounding_only_keeps_each_code_next_to_its_fp32_value(tmp_path):
    """``--int8-finetune-rounding``: only the int8 weights learn, each code ending on the floor or the ceiling of its
    FP32 value at the FP32 scale (scales unchanged), float tensors as they were; it still reads closer to FP32 than
    the calibrated file, and the metadata says so."""
    from compress.qdq_finetune import finetune_qdq, frame_kl
    from compress.quantize import quantize_int8
    from distill.models.fake_quant import int8_initializers

    src = _deep_ctc_onnx(tmp_path / "deep.onnx")
    fp = onnx.load(str(src))
    rng = np.random.default_rng(5)
    x, held = (rng.normal(0, 1, (n, 3, 16, 64)).astype(np.float32) for n in (256, 128))
    base = quantize_int8(str(src), str(tmp_path / "base.onnx"), x[:64])
    q0, free, cell = onnx.load(str(base)), onnx.load(str(base)), onnx.load(str(base))
    finetune_qdq(fp, free, x, steps=60, lr=3e-3, progress=False)
    finetune_qdq(fp, cell, x, steps=60, lr=1e-4, progress=False, rounding_only=True)
    w_fp = {t.name: onnx.numpy_helper.to_array(t) for t in fp.graph.initializer}
    i0, i_free, i_cell = ({t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
                          for m in (q0, free, cell))
    moved_far = 0
    for q_name, (s_name, axis) in int8_initializers(q0).items():
        w = w_fp[q_name.removesuffix("_quantized")]
        shape = [1] * w.ndim
        shape[axis] = -1
        exact = w / i0[s_name].reshape(shape)
        assert np.array_equal(i_cell[s_name], i0[s_name])
        codes = i_cell[q_name].astype(np.float64)
        assert np.all((codes == np.floor(exact)) | (codes == np.ceil(exact))), q_name
        moved_far += int(np.abs(i_free[q_name].astype(int) - np.round(exact)).max() > 1)
        assert not np.array_equal(i_cell[q_name], i0[q_name])  # it did learn
    assert moved_far > 0  # unconstrained, some codes leave their cell at this rate
    floats = [k for k, v in i0.items() if v.dtype == np.float32 and k in w_fp]
    assert floats and all(np.array_equal(i_cell[k], i0[k]) for k in floats)
    assert not all(np.array_equal(i_free[k], i0[k]) for k in floats)
    ref = np.log(np.clip(_ort_output(fp, held, True), 1e-9, 1))
    kl0, kl1 = (frame_kl(ref, np.log(np.clip(_ort_output(m, held, True), 1e-9, 1))) for m in (q0, cell))
    assert kl1 < 0.5 * kl0, (kl0, kl1)
    f = quantize_int8(str(src), str(tmp_path / "ft.onnx"), x[:64], finetune_steps=2, finetune_x=x,
                      finetune_rounding=True)
    meta = {p.key: p.value for p in onnx.load(str(f)).metadata_props}["tinytext.int8_finetune"]
    assert meta.startswith("2 steps at lr 1e-05 on 256 inputs, int8 weights within their rounding cells, float "
                           "tensors fixed, simulated")


def test_qdq_points_simulate_the_fitted_integer_gelu_gates(tmp_path):
    """With the gates ``fitted_gelu_gates`` reads off the file before the rewrite, the simulation of a GELU network
    gives what the rewritten cpu-flavour file gives in ONNX Runtime's reference Q/DQ kernels, closer than exact GELU
    between the same points does; a gate on a tensor the file does not quantize is refused by name."""
    import torch

    from compress.graph_rewrites import fitted_gelu_gates, gelu_inputs
    from compress.quantize import _code_histograms, quantize_int8
    from distill.models.fake_quant import QdqPoints
    from distill.models.onnx_net import OnnxNet

    src = _deep_ctc_onnx(tmp_path / "gelu.onnx", gelu=True)
    fp = onnx.load(str(src))
    x = np.random.default_rng(6).normal(0, 1, (64, 3, 16, 64)).astype(np.float32)
    island = onnx.load(str(quantize_int8(str(src), str(tmp_path / "island.onnx"), x, integer_activations=False)))
    gated = onnx.load(str(quantize_int8(str(src), str(tmp_path / "gated.onnx"), x)))
    assert [n.op_type for n in gated.graph.node].count("Sigmoid") == 2
    want = _ort_output(gated, x, reference=True)
    gates = fitted_gelu_gates(island, _code_histograms(island, gelu_inputs(island), x, 16))
    assert set(gates) == {"r1", "r2"} and gates["r1"][0] == "c1"
    err = {}
    for name, g in (("gates", gates), ("exact", None)):
        net = OnnxNet(7, img_size=(16, 64), graph=fp.SerializeToString()).eval()
        net.fake_quant = QdqPoints.from_models(island, fp, g)
        with torch.no_grad():
            err[name] = np.abs(net(torch.from_numpy(x)).numpy() - want).mean()
    assert err["gates"] < 1e-4 and err["gates"] < 0.1 * err["exact"], err
    with pytest.raises(ValueError, match=r"not quantized: \['nope'\]"):
        QdqPoints.from_models(island, fp, {"r1": ("nope", 1.7, 0)})


def test_float_nodes_only_nodes_and_reused_ranges(tmp_path):
    """float_nodes keep the named nodes float; only_nodes quantize those alone; a ranges cache calibrated once
    serves later files (the same scales even when other calibration images are given); unknown names are refused."""
    import onnxruntime as ort

    from compress.quantize import quantize_int8

    def qconvs(q):
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / "opt.onnx")
        ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node].count("QLinearConv")

    src = _activation_net(tmp_path / "act.onnx")
    x = np.random.default_rng(1).normal(0, 1.5, (32, 3, 8, 16)).astype(np.float32)
    ranges = tmp_path / "ranges.json"
    full = quantize_int8(str(src), str(tmp_path / "full.onnx"), x, ranges_cache=str(ranges))
    assert ranges.is_file() and qconvs(full) == 5
    q = quantize_int8(str(src), str(tmp_path / "f.onnx"), x, float_nodes=["conv3", "depthwise"],
                      ranges_cache=str(ranges))
    assert qconvs(q) == 3
    assert {p.key: p.value for p in onnx.load(str(q)).metadata_props}["tinytext.int8_float_nodes"] == "conv3,depthwise"
    one = quantize_int8(str(src), str(tmp_path / "one.onnx"), x * 10, only_nodes=["conv2"], ranges_cache=str(ranges))
    assert qconvs(one) == 1

    def scales(path):  # the activation scales of the file's QuantizeLinear nodes, by their input
        m = onnx.load(str(path))
        init = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
        return {n.input[0]: float(init[n.input[1]]) for n in m.graph.node if n.op_type == "QuantizeLinear"}

    ref, got = scales(full), scales(one)
    assert got and all(got[k] == ref[k] for k in got)  # x * 10 would have given other scales had it calibrated
    with pytest.raises(ValueError, match="--int8-float-nodes: no node named nope"):
        quantize_int8(str(src), str(tmp_path / "bad.onnx"), x, float_nodes=["nope"])


def test_sensitivity_scan_ranks_every_layer_and_chooses_the_fewest_float(trained, tmp_path, shared_real):
    from compress.export import export_onnx
    from compress.sensitivity import main, quantizable_layers

    onnx_path = export_onnx(str(trained / "s" / "last.pt"), str(tmp_path))
    out = tmp_path / "sens"
    assert main([str(onnx_path), "--calib", f"{shared_real / 'svt_train'},{shared_real / 'iiit5k_train'}",
                 "--calib-n", "32", "--eval", str(shared_real / "svt_test"), "--eval-n", "24", "--keep-float",
                 "0,1,2,99", "--tolerance", "100", "--calibrator", "minmax", "--out", str(out)]) == 0
    rep = json.loads((out / "sensitivity.json").read_text())
    layers = quantizable_layers(str(onnx_path))
    assert sorted(r["node"] for r in rep["layers"]) == sorted(n for n, _ in layers) and len(layers) >= 3
    kls = [r["kl"] for r in rep["layers"]]
    assert kls == sorted(kls, reverse=True) and all(k >= 0 for k in kls)
    keep = {r["keep_float"]: r for r in rep["keep"]}
    assert sorted(keep) == [0, 1, 2]  # 99 is more layers than there are: left out
    assert keep[2]["nodes"] == [r["node"] for r in rep["layers"][:2]] and keep[0]["nodes"] == []
    assert rep["chosen"] == 0  # any K is within a 100-point tolerance: the fewest float
    assert set(rep["fp32"]) == {"lr16", "lr16blur"} and rep["n_eval"] == 24
    md = (out / "sensitivity.md").read_text()
    assert "| rank | node | op | frame KL |" in md and "| 0 (chosen) |" in md and "no float layers needed" in md
