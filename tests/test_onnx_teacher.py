"""An ONNX recognizer as teacher (issue 8): the graph as a trainable module, the LR student made from it, charset
mapping, frame resampling, the target cache, unlabeled sources, and a training run with PP-OCRv4 as teacher."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from apps.peers import ppocr_model
from distill.checkpoint import load_checkpoint
from distill.config import ConfigError, load_config
from distill.models import build_model, make_onnx_student
from distill.models.onnx_net import PPOCR_LR_OVERRIDES, OnnxNet, strip_weights, upsample_halved_strides
from distill.onnx_teacher import (OnnxTeacher, TeacherCache, charset_mapping, frames_read, resample_frames,
                                  resample_peaks)
from distill.unlabeled import UnlabeledFolder, UnlabeledLmdb, open_unlabeled, video_regions_to_lmdb
from runtime.charset import CHARSETS
from runtime.datasets import DataError, open_dataset

from conftest import run_module, str_items, write_lmdb, needs_exact_int8

REC = ppocr_model("rec")
needs_ppocr = pytest.mark.skipif(REC is None, reason="rapidocr-onnxruntime (PP-OCRv4 recognizer) not installed")


def _tiny_ctc_onnx(path, n_chars: int = 5, softmax: bool = True, op: str = "Relu", bn: bool = False):
    """A small CTC recognizer graph: conv (stride 2) [-> BatchNorm] -> op -> mean over height -> MatMul + bias
    [-> Softmax]."""
    rng = np.random.default_rng(0)
    C = n_chars + 2  # blank + chars + space
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], rng.normal(0, 0.3, 216).astype(np.float32).tolist())
    fc = helper.make_tensor("fc", TensorProto.FLOAT, [8, C], rng.normal(0, 0.5, 8 * C).astype(np.float32).tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [C], rng.normal(0, 0.1, C).astype(np.float32).tolist())
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [0, 8, -1])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv0", strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node(op, ["c"], ["r"], name="act"),
        helper.make_node("ReduceMean", ["r"], ["m"], name="pool", axes=[2], keepdims=1),
        helper.make_node("Squeeze", ["m", "axes"], ["s"], name="sq"),
        helper.make_node("Reshape", ["s", "shape"], ["s2"], name="rs"),
        helper.make_node("Transpose", ["s2"], ["t"], perm=[0, 2, 1], name="tr"),
        helper.make_node("MatMul", ["t", "fc"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "b"], ["logits"], name="bias"),
    ]
    extra = []
    if bn:  # conv -> BatchNormalization -> op
        nodes[0].output[0] = "c0"
        nodes.insert(1, helper.make_node("BatchNormalization", ["c0", "g", "be", "mu", "var"], ["c"], name="bn"))
        extra = [helper.make_tensor(n, TensorProto.FLOAT, [8], v.tolist()) for n, v in
                 (("g", np.ones(8)), ("be", np.zeros(8)), ("mu", rng.normal(0, 1, 8)), ("var", np.ones(8)))]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=2, name="sm"))
        out = "probs"
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", "T", C])],
                          [w, fc, b, axes, shape, *extra])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(m, str(path))
    return path


# -- the graph as a module ----------------------------------------------------------------------------------------
def test_onnx_net_matches_onnxruntime_on_a_small_graph(tmp_path):
    p = _tiny_ctc_onnx(tmp_path / "tiny.onnx")
    graph, arrays = strip_weights(p.read_bytes(), keep_small=4)
    assert set(arrays) == {"w", "fc", "b"} and len(graph) < p.stat().st_size
    net = OnnxNet(7, 25, img_size=(32, 128), graph=graph, weights=arrays).eval()
    x = np.random.default_rng(1).uniform(-1, 1, (3, 3, 32, 96)).astype(np.float32)
    ref = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape == (3, 48, 7)
    assert np.abs(got - ref).max() < 1e-5
    # weights are parameters (trainable), the structural constants are not
    names = {n for n, _ in net.named_parameters()}
    assert names == {"params.w", "params.fc", "params.b"}


def test_onnx_net_errors_name_the_problem(tmp_path):
    p = _tiny_ctc_onnx(tmp_path / "tiny.onnx", op="Selu")
    with pytest.raises(ValueError, match=r"not supported here: \['Selu'\]"):
        OnnxNet(7, graph=p.read_bytes())
    p = _tiny_ctc_onnx(tmp_path / "ok.onnx")
    with pytest.raises(ValueError, match=r"no node named \['nope'\]"):
        OnnxNet(7, graph=p.read_bytes(), overrides={"nope": {"strides": [1, 1]}})
    with pytest.raises(ValueError, match="gives 7 classes, the charset needs 5"):
        OnnxNet(5, graph=p.read_bytes())
    with pytest.raises(ValueError, match="graph is empty"):
        OnnxNet(5)


@needs_exact_int8
def test_fake_quant_simulates_the_int8_export(tmp_path):
    """train.qat's simulation of INT8 reads like ONNX Runtime's quantized model, calibrated on the same images."""
    from compress.quantize import quantize_int8
    from distill.models.fake_quant import FakeQuant, fake_quant_weight

    p = _tiny_ctc_onnx(tmp_path / "tiny.onnx", op="Sigmoid", softmax=False)  # logits: the sharpest comparison
    x = np.random.default_rng(3).uniform(-1, 1, (16, 3, 32, 96)).astype(np.float32)
    q = quantize_int8(str(p), str(tmp_path / "tiny.int8.onnx"), x, "minmax", batch=16)  # one calibration batch
    ref = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    int8 = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    net = OnnxNet(7, 25, img_size=(32, 128), graph=p.read_bytes()).eval()
    assert net.enable_fake_quant(momentum=1.0) == 2  # the conv's input and output
    with torch.no_grad():
        net.fake_quant.observing = True  # calibrate on the float network, as ONNX Runtime's calibrator does
        plain = net.decode_logits(torch.from_numpy(x)).numpy()
        net.fake_quant.observing = False
        sim = net.decode_logits(torch.from_numpy(x)).numpy()
    assert np.abs(plain - ref).max() < 1e-5
    gap = np.abs(int8 - ref).max()
    assert gap > 1e-3  # quantization does change the logits here
    assert np.abs(sim - int8).max() < 0.1 * gap, (np.abs(sim - int8).max(), gap)  # measured: 7 % of it
    net.disable_fake_quant()
    with torch.no_grad():
        assert np.abs(net.decode_logits(torch.from_numpy(x)).numpy() - ref).max() < 1e-5
    # weights: per output channel on the int8 grid of max|w| / 127, gradients straight through
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    wq = fake_quant_weight(w)
    s = w.detach().abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    assert torch.allclose(wq / s, (wq / s).round(), atol=1e-3) and ((wq - w).abs() <= s / 2 + 1e-6).all()
    wq.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    # activations: the first training batch sets the range, later ones move it by the momentum; eval keeps it
    fq = FakeQuant({"a"}, momentum=0.5)
    fq.activation("a", torch.tensor([1.0, 3.0]), training=True)
    fq.activation("a", torch.tensor([-1.0, 5.0]), training=True)
    assert fq.ranges["a"].tolist() == [0.0, 4.0]
    y = fq.activation("a", torch.tensor([-2.0, 2.0, 9.0]), training=False)
    assert fq.ranges["a"].tolist() == [0.0, 4.0]  # fixed in eval; 0 stays in the range; outside it is clipped
    assert torch.allclose(y, torch.tensor([0.0, 2.0, 4.0]), atol=2 / 255 + 1e-6)
    assert torch.allclose(y * 255 / 4, (y * 255 / 4).round(), atol=1e-4)  # on the uint8 grid of the range
    with pytest.raises(ValueError, match="momentum must be in"):
        FakeQuant(set(), momentum=0)


@pytest.mark.parametrize("scale, size, frames", [(2.0, (128, 32), 64), ([1.5, 1], (64, 24), 32)])
def test_input_scale_upsamples_before_the_graph_and_exports(tmp_path, scale, size, frames):
    """input_scale 2: the graph reads the 2x bilinear (half-pixel) upsampled input, in PyTorch and in the export;
    [1.5, 1] (height, width): the height alone, the text's scale for the weights, and the same columns."""
    p = _tiny_ctc_onnx(tmp_path / "tiny.onnx")
    net = OnnxNet(7, 25, img_size=(16, 64), graph=p.read_bytes(), input_scale=scale).eval()
    x = np.random.default_rng(2).uniform(-1, 1, (3, 3, 16, 64)).astype(np.float32)
    up = np.stack([cv2.resize(im.transpose(1, 2, 0), size, interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
                   for im in x])  # OpenCV's bilinear is half-pixel too: an independent reference
    ref = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": up})[0]
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape == (3, frames, 7)
    assert np.abs(got - ref).max() < 1e-4
    path = tmp_path / "scaled.onnx"
    torch.onnx.export(net, (torch.from_numpy(x[:2]),), str(path), input_names=["images"], output_names=["probs"],
                      dynamic_axes={"images": {0: "b"}, "probs": {0: "b"}}, opset_version=17, dynamo=False)
    assert "Resize" in {n.op_type for n in onnx.load(str(path)).graph.node}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        assert np.abs(sess.run(None, {"images": x[:n]})[0] - got[:n]).max() < 1e-5
    for bad, shown in ((0.5, "0.5"), ([2, 0.5], r"\[2, 0.5\]"), ([2], r"\[2\]")):
        with pytest.raises(ValueError, match=r"input_scale must be a factor >= 1 or \[height, width\] factors >= 1, "
                                             rf"got {shown}"):
            OnnxNet(7, graph=p.read_bytes(), input_scale=bad)


def test_bn_statistics_stay_frozen_while_training_unless_asked(tmp_path):
    """freeze_bn_stats (the default, onnx_teacher.freeze_bn): training mode normalises with the graph's running
    statistics and leaves them alone; off: batch statistics, running averages updated."""
    p = _tiny_ctc_onnx(tmp_path / "bn.onnx", bn=True)
    net = OnnxNet(7, 25, img_size=(16, 64), graph=p.read_bytes())
    x = torch.randn(4, 3, 16, 64) * 3 + 1
    mu = dict(net.stats.named_buffers())
    before = {k: v.clone() for k, v in mu.items()}
    with torch.no_grad():
        train_out = net.train()(x)
        eval_out = net.eval()(x)
    assert torch.allclose(train_out, eval_out) and all(torch.equal(before[k], v) for k, v in mu.items())
    net.freeze_bn_stats = False
    with torch.no_grad():
        assert not torch.allclose(net.train()(x), eval_out, atol=1e-4)
    assert any(not torch.equal(before[k], v) for k, v in dict(net.stats.named_buffers()).items())
    assert len(before) == 2  # running mean and variance


def test_halved_stride_kernels_read_the_input_as_the_original_reads_it_upsampled():
    """stride_init upsample: a 3x3 stride-2 kernel becomes the stride-1 kernel whose output on x equals the original
    on x upsampled x2 (bilinear, half-pixel) away from the border; per axis ([2, 1] strides, depthwise too); a
    kernel the composition does not fit (1x1) and strides not halved are left alone."""
    rng = np.random.default_rng(3)
    ws = {"wa": rng.normal(0, 1, (4, 3, 3, 3)), "wb": rng.normal(0, 1, (4, 3, 1, 1)),
          "wc": rng.normal(0, 1, (3, 1, 3, 3)), "wd": rng.normal(0, 1, (4, 3, 3, 3))}
    ws = {k: v.astype(np.float32) for k, v in ws.items()}
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="a", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wb"], ["b"], name="b", strides=[2, 2]),
             helper.make_node("Conv", ["x", "wc"], ["c"], name="c", strides=[2, 1], pads=[1, 1, 1, 1], group=3),
             helper.make_node("Conv", ["x", "wd"], ["d"], name="d", strides=[2, 2], pads=[1, 1, 1, 1])]
    inits = [helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.ravel().tolist()) for k, v in ws.items()]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in "abcd"], inits)
    graph = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    weights = {"wa": ws["wa"].copy()}  # a stripped weight; the others still sit in the graph
    overrides = {"a": {"strides": [1, 1]}, "b": {"strides": [1, 1]}, "c": {"strides": [1, 1]},
                 "d": {"strides": [2, 2]}}
    done = upsample_halved_strides(graph, weights, overrides)
    assert done == ["a", "c"] and set(weights) == {"wa", "wc"}  # b: 1x1 does not fit, d: stride not halved

    x = torch.from_numpy(rng.normal(0, 1, (2, 3, 12, 20)).astype(np.float32))
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    ref = F.conv2d(up, torch.from_numpy(ws["wa"]), stride=2, padding=1)
    got = F.conv2d(x, torch.from_numpy(weights["wa"]), stride=1, padding=1)
    assert got.shape == ref.shape == (2, 4, 12, 20)
    assert (got - ref)[..., 1:-1, 1:-1].abs().max() < 1e-5
    assert (got - ref).abs().max() > 1e-3  # the border differs (zero padding vs edge replication): a real change
    copied = F.conv2d(x, torch.from_numpy(ws["wa"]), stride=1, padding=1)
    assert (copied - ref)[..., 1:-1, 1:-1].abs().max() > 0.1
    up_h = F.interpolate(x, scale_factor=(2, 1), mode="bilinear", align_corners=False)  # height only
    ref = F.conv2d(up_h, torch.from_numpy(ws["wc"]), stride=(2, 1), padding=1, groups=3)
    got = F.conv2d(x, torch.from_numpy(weights["wc"]), stride=1, padding=1, groups=3)
    assert (got - ref)[..., 1:-1, :].abs().max() < 1e-5


@needs_ppocr
def test_ppocr_graph_parity_and_lr_student_export(tmp_path):
    """PP-OCRv4 through OnnxNet equals ONNX Runtime; its LR student rebuilds from the spec and re-exports with a
    dynamic batch."""
    data = open(REC, "rb").read()
    graph, arrays = strip_weights(data)
    net = OnnxNet(6625, 25, img_size=(48, 320), graph=graph, weights=arrays).eval()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 48, 320)).astype(np.float32)
    ref = ort.InferenceSession(str(REC), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        assert np.abs(net(torch.from_numpy(x)).numpy() - ref).max() < 1e-4
    n = len(net.nodes)
    fused = net.fuse_for_inference()  # what compress.export does: fewer elementwise passes, same outputs
    assert fused["conv_affine"] >= 20 and fused["hardswish"] >= 20 and fused["affine_into_conv"] >= 10
    assert len(net.nodes) < n - 100
    with torch.no_grad():
        assert np.abs(net(torch.from_numpy(x)).numpy() - ref).max() < 1e-4

    t = OnnxTeacher("ppocr", CHARSETS["36"], 32)
    spec, student, _ = make_onnx_student(str(REC), "36", 25, t.classes, PPOCR_LR_OVERRIDES)
    student.eval()
    xs = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (5, 3, 16, 64)).astype(np.float32))
    with torch.no_grad():
        probs = student(xs)
    assert probs.shape == (5, 32, 37)
    # classifier columns: blank, then each character's own (lower-case here) teacher class
    assert spec["kwargs"]["keep_classes"][:2] == [0, t.classes.index("0")]
    again = build_model(spec)  # from the checkpoint's spec alone: structure, then the state dict
    again.load_state_dict(student.state_dict())
    with torch.no_grad():
        assert torch.allclose(again.eval()(xs), probs, atol=1e-6)
    # RGB input: the first convolution's input channels were reversed from PP-OCR's BGR
    w0 = next(n for n in onnx.load(str(REC)).graph.node if n.op_type == "Conv").input[1]
    stem = student.params[w0.replace(".", "_")].detach().numpy()
    assert np.array_equal(stem, arrays[w0][:, ::-1])
    path = tmp_path / "s.onnx"
    torch.onnx.export(student, (xs[:2],), str(path), input_names=["images"], output_names=["probs"],
                      dynamic_axes={"images": {0: "b"}, "probs": {0: "b"}}, opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        got = sess.run(None, {"images": xs[:n].numpy()})[0]
        assert np.abs(got - probs[:n].numpy()).max() < 1e-4
    # compress.export's rewrite of PP-LCNetV3's learnable affines (torch writes their scalars as Constant nodes)
    from compress.graph_rewrites import scalar_affine_to_conv

    m = onnx.load(str(path))
    ops = [n.op_type for n in m.graph.node]
    k = scalar_affine_to_conv(m)
    assert k >= 15
    after = [n.op_type for n in m.graph.node]
    assert ops.count("Mul") - after.count("Mul") == k and after.count("Conv") - ops.count("Conv") == k
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, {"images": xs.numpy()})[0] - probs.numpy()).max() < 1e-4


def _affine_chain_onnx(path):
    """conv0 (3x3, padded) -> Relu -> *s+t -> conv1 (1x1) -> Relu -> s2*+t2 -> depthwise 3x3 (padded) -> mean ->
    classifier."""
    rng = np.random.default_rng(3)

    def t(name, shape, scale=0.3):
        return helper.make_tensor(name, TensorProto.FLOAT, shape, rng.normal(0, scale, int(np.prod(shape))).tolist())

    scalars = [helper.make_tensor(n, TensorProto.FLOAT, [1], [v]) for n, v in
               (("s", 1.7), ("t", -0.4), ("s2", 0.6), ("t2", 0.9))]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="act0"),
        helper.make_node("Mul", ["s", "r0"], ["m0"], name="mul0"),  # the scalar first
        helper.make_node("Add", ["m0", "t"], ["a0"], name="add0"),
        helper.make_node("Conv", ["a0", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="act1"),
        helper.make_node("Mul", ["r1", "s2"], ["m1"], name="mul1"),
        helper.make_node("Add", ["m1", "t2"], ["a1"], name="add1"),
        helper.make_node("Conv", ["a1", "w2"], ["c2"], name="dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c2"], ["p"], name="pool", axes=[2], keepdims=1),
        helper.make_node("Squeeze", ["p", "axes"], ["sq"], name="sq"),
        helper.make_node("Transpose", ["sq"], ["tr"], perm=[0, 2, 1], name="tr"),
        helper.make_node("MatMul", ["tr", "fc"], ["logits"], name="fc"),
    ]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 32])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 16, 7])],
                          [t("w0", [8, 3, 3, 3]), t("w1", [8, 8, 1, 1]), t("b1", [8], 0.1), t("w2", [8, 1, 3, 3]),
                           t("fc", [8, 7]), axes, *scalars])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_fuse_folds_scalar_affines_into_unpadded_convs_only(tmp_path):
    p = _affine_chain_onnx(tmp_path / "chain.onnx")
    net = OnnxNet(7, graph=p.read_bytes()).eval()
    x = np.random.default_rng(4).uniform(-1, 1, (2, 3, 16, 32)).astype(np.float32)
    ref = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    counts = net.fuse_for_inference()
    # the affine before the 1x1 conv is folded; the one before the padded depthwise conv stays (its zero border
    # would change)
    assert counts["affine_into_conv"] == 1
    ops = [n[0] for n in net.nodes]
    assert ops.count("Mul") == 1 and ops.count("Add") == 1
    assert next(n for n in net.nodes if n[4] == "conv1")[1][0] == "r0"
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()  # forward() adds the softmax the graph lacks
    assert np.abs(got - torch.from_numpy(ref).softmax(-1).numpy()).max() < 1e-5
    path = tmp_path / "fused.onnx"
    torch.onnx.export(net, (torch.from_numpy(x),), str(path), input_names=["x"], output_names=["probs"],
                      opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, {"x": x})[0] - got).max() < 1e-5


# -- mapping and alignment ------------------------------------------------------------------------------------------
def test_charset_mapping_folds_case_and_reports():
    classes = ["<blank>", "a", "B", "b", "中", "1", " "]
    m, rep = charset_mapping(classes, "ab1")
    assert m.tolist() == [0, 1, 2, 2, -1, 3, -1]
    assert rep["merged_case"] == 1 and rep["mapped_exact"] == 3 and rep["dropped"] == 2
    m, rep = charset_mapping(classes, "abB")
    assert m.tolist() == [0, 1, 3, 2, -1, -1, -1] and rep["merged_case"] == 0
    assert rep["student_chars_without_teacher_class"] == ""
    _, rep = charset_mapping(classes, "xa")
    assert rep["student_chars_without_teacher_class"] == "x"


def test_resample_frames_by_area():
    p = np.eye(4, dtype=np.float32)  # frame j certain of class j
    up = resample_frames(p, 8)
    assert up.shape == (8, 4) and np.allclose(up.sum(1), 1)
    assert up.argmax(1).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    down = resample_frames(np.eye(6, dtype=np.float32), 3)
    assert np.allclose(down, np.kron(np.eye(3), [[0.5, 0.5]]))
    uneven = resample_frames(np.eye(5, dtype=np.float32), 2)  # frame 2 straddles both halves
    assert np.allclose(uneven[:, 2], [0.2, 0.2]) and np.allclose(uneven.sum(1), 1)
    assert np.array_equal(resample_frames(p, 4), p)


def test_peak_resampling_keeps_every_character():
    from runtime.fastpath import decode

    # 12 teacher frames reading "a b b c" (classes 1 2 2 3) with a blank between the two b's, downsampled to 5
    seq = [0, 1, 1, 0, 2, 0, 2, 2, 3, 3, 0, 0]
    p = np.full((12, 4), 0.02, np.float32)
    p[np.arange(12), seq] = 0.94
    read = lambda q: decode(np.ascontiguousarray(q[None], np.float32), "ctc", 0).ids[0].tolist()
    assert read(p)[:4] == [1, 2, 2, 3]
    area = resample_frames(p, 5)
    assert read(area)[: decode(area[None].astype(np.float32), "ctc", 0).lengths[0]] != [1, 2, 2, 3]  # merged
    peaks = resample_peaks(p, 5)
    d = decode(peaks[None].astype(np.float32), "ctc", 0)
    assert d.ids[0][: d.lengths[0]].tolist() == [1, 2, 2, 3]  # a blank frame kept between the repeated b's
    assert np.allclose(peaks.sum(1), 1, atol=1e-5)
    assert decode(resample_peaks(p, 3)[None].astype(np.float32), "ctc", 0).lengths[0] <= 3  # what fits, in order
    # the cache's check of its targets: what a student matching them would read
    assert frames_read(p, "abc") == "abbc" and frames_read(peaks, "abc") == "abbc" and frames_read(area, "abc") != "abbc"


def _dict_file(tmp_path, chars="abcde"):
    f = tmp_path / "dict.txt"
    f.write_text("\n".join(chars) + "\n")
    return f


def test_teacher_from_a_dictionary_file_and_logit_outputs(tmp_path):
    p = _tiny_ctc_onnx(tmp_path / "logits.onnx", softmax=False)
    crops = [np.random.default_rng(i).integers(0, 255, (20 + 5 * i, 60, 3), dtype=np.uint8) for i in range(3)]
    t = OnnxTeacher(str(p), "abc", 12, dictionary=str(_dict_file(tmp_path)), threads=1)
    assert t.classes == ["<blank>", "a", "b", "c", "d", "e", " "]
    assert t.report["dropped"] == 3  # d, e, space
    x, widths = t.batch(crops)
    assert x.shape[2] == 48 and x.shape[3] >= 320 and (widths <= x.shape[3]).all()
    probs, valid = t.raw(crops)
    assert np.allclose(probs.sum(-1), 1, atol=1e-5)  # logits were turned into probabilities
    assert (valid >= 1).all() and (valid <= probs.shape[1]).all()
    tg = t.targets(crops)
    assert len(tg) == 3 and all(g.probs.shape == (12, 4) and g.probs.dtype == np.float16 for g in tg)
    assert all(np.allclose(g.probs.astype(np.float32).sum(1), 1, atol=2e-3) for g in tg)
    assert all(set(g.text) <= set("abc") for g in tg) and all(0 <= g.conf <= 1 for g in tg)
    area = {u: OnnxTeacher(str(p), "abc", 12, dictionary=str(_dict_file(tmp_path)), unmapped=u,
                           resample="area").targets(crops) for u in ("blank", "renorm")}
    assert all(b.probs[:, 0].astype(np.float32).mean() >= g.probs[:, 0].astype(np.float32).mean() - 1e-3
               for b, g in zip(area["blank"], area["renorm"]))  # the dropped mass went to the blank
    with pytest.raises(ValueError, match="output classes but the dictionary"):
        OnnxTeacher(str(p), "abc", 12, dictionary=str(_dict_file(tmp_path, "abcdefg")))
    with pytest.raises(ValueError, match="no 'character' in the model metadata"):
        OnnxTeacher(str(p), "abc", 12)
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        OnnxTeacher(str(tmp_path / "missing.onnx"), "abc", 12)


def test_teacher_features_resampled_cached_and_named(tmp_path):
    """feature 'head': the classifier's input, on the student's frames; the same tensor by name as a (N, D, 1, T)
    map; the cache keeps it; the student module returns its own head input as char_feats."""
    p = _tiny_ctc_onnx(tmp_path / "t.onnx")
    d = str(_dict_file(tmp_path))
    crops = [np.random.default_rng(i).integers(0, 255, (20 + 5 * i, 60 + 20 * i, 3), dtype=np.uint8) for i in range(3)]
    t = OnnxTeacher(str(p), "abc", 12, dictionary=d, feature="head")
    assert t.feature == "t"  # the MatMul classifier's input in _tiny_ctc_onnx
    tg = t.targets(crops)
    assert all(g.feats.shape == (12, 8) and g.feats.dtype == np.float16 for g in tg)
    # independent reference: the graph's own tensor through OnnxNet, cut to the crop's frames, area-resampled
    net = OnnxNet(7, graph=p.read_bytes()).eval()
    x, _ = t.batch(crops)
    _, valid = t.raw(crops)
    with torch.no_grad():
        ref = net.run(torch.from_numpy(x), ("t",))["t"].numpy()
    for i, g in enumerate(tg):
        want = resample_frames(ref[i, : valid[i]], 12)
        assert np.abs(g.feats.astype(np.float32) - want).max() < 2e-2 * max(1.0, np.abs(want).max())
    by_name = OnnxTeacher(str(p), "abc", 12, dictionary=d, feature="m").targets(crops)  # (N, 8, 1, T) before squeeze
    assert all(np.allclose(a.feats, b.feats, atol=1e-3) for a, b in zip(by_name, tg))
    plain = OnnxTeacher(str(p), "abc", 12, dictionary=d)
    assert plain.targets(crops)[0].feats is None and plain.fingerprint() != t.fingerprint()
    with pytest.raises(ValueError, match="feature 'nope': no node of the graph outputs"):
        OnnxTeacher(str(p), "abc", 12, dictionary=d, feature="nope")
    with pytest.raises(ValueError, match="feature tensor 'r' has shape"):
        OnnxTeacher(str(p), "abc", 12, dictionary=d, feature="r").targets(crops)
    data = write_lmdb(tmp_path / "words", str_items(["ab", "ca", "bb"]))
    reader = open_dataset(data)
    cache = TeacherCache(data, t.fingerprint())
    cache.build(t, reader, progress=False)
    got, direct = cache.get(reader.keys[1]), t.targets([reader[1].image])[0]
    assert np.array_equal(got.feats, direct.feats) and np.array_equal(got.probs, direct.probs)
    assert TeacherCache(data, plain.fingerprint()).path != cache.path  # targets without features: another cache
    out = net.forward_train(torch.from_numpy(x))
    assert net.tap_name == t.feature and out.char_feats[0].shape == (3, x.shape[3] // 2, 8)
    net.set_feature_tap("m")  # a teacher feature by name: the student returns its own tensor of that name
    tapped = net.forward_train(torch.from_numpy(x)).char_feats[0]
    assert tapped.shape == (3, 8, 1, x.shape[3] // 2)
    assert torch.allclose(tapped[:, :, 0].transpose(1, 2), out.char_feats[0])
    with pytest.raises(ValueError, match="computes no tensor 'nope'"):
        net.set_feature_tap("nope")


# -- the cache -----------------------------------------------------------------------------------------------------
def test_teacher_cache_builds_once_and_completes_partial_builds(tmp_path):
    p = _tiny_ctc_onnx(tmp_path / "t.onnx")
    t = OnnxTeacher(str(p), "abc", 8, dictionary=str(_dict_file(tmp_path)))
    data = write_lmdb(tmp_path / "words", str_items(["ab", "ca", "bb", "abc", "c", "ba"]))
    reader = open_dataset(data)
    cache = TeacherCache(data, t.fingerprint(), fallback_dir=tmp_path / "fb")
    assert cache.path.parent == tmp_path  # beside the data when writable
    s1 = cache.build(t, reader, n=3, progress=False)
    assert s1["new"] == 3 and s1["samples"] == 3
    s2 = cache.build(t, reader, progress=False)  # an interrupted build is completed, nothing recomputed
    assert s2["new"] == 3 and s2["samples"] == 6
    assert cache.build(t, reader, progress=False)["samples"] == 6
    # the share of crops whose cached frames read the teacher's own string (8 frames: these short words fit)
    texts = [cache.get(k) for k in reader.keys]
    assert s2["frames_agree"] == np.mean([frames_read(x.probs, "abc") == x.text for x in texts[3:]])
    got = cache.get(reader.keys[4])
    direct = t.targets([reader[4].image])[0]
    assert got.text == direct.text and np.array_equal(got.probs, direct.probs)
    assert cache.get("nope") is None
    # an explicit cache_dir wins over the data folder; a changed teacher setting changes the fingerprint
    other = TeacherCache(data, t.fingerprint(), cache_dir=tmp_path / "elsewhere")
    assert other.path.parent == tmp_path / "elsewhere"
    t2 = OnnxTeacher(str(p), "abc", 16, dictionary=str(_dict_file(tmp_path)))
    assert t2.fingerprint() != t.fingerprint()


# -- unlabeled sources -----------------------------------------------------------------------------------------------
def test_unlabeled_sources(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(folder / ("sub" if i else ".") / f"{i}.png"), np.full((20, 50, 3), 40 * i, np.uint8))
    (folder / "notes.txt").write_text("not an image")
    r = open_unlabeled(folder)
    assert isinstance(r, UnlabeledFolder) and len(r) == 3 and r[1].label == "" and r[1].image.shape == (20, 50, 3)
    lm = write_lmdb(tmp_path / "lm", str_items(["x", "y"]))
    r = open_unlabeled(lm)
    assert isinstance(r, UnlabeledLmdb) and len(r) == 2 and r[0].label == "" and r[0].key == "000000001"
    with pytest.raises(DataError, match="no images"):
        UnlabeledFolder(tmp_path / "lm")
    with pytest.raises(DataError, match="expected an lmdb folder"):
        open_unlabeled(tmp_path / "missing")


def test_video_regions_become_an_unlabeled_lmdb(tmp_path):
    video = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    assert w.isOpened()
    for i in range(6):
        f = np.full((120, 160, 3), 200, np.uint8)
        cv2.putText(f, "AB", (20 + 5 * i, 60), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 0, 0), 2)
        w.write(f)
    w.release()
    regions = tmp_path / "r.jsonl"
    regions.write_text("\n".join(json.dumps({"frame": i, "words": [{"box": [15 + 5 * i, 30, 75 + 5 * i, 70]},
                                                                   {"box": [0, 0, 3, 3]}]}) for i in range(6)))
    n = video_regions_to_lmdb(video, regions, tmp_path / "crops", every=2)
    assert n == 3  # frames 0, 2, 4; the 3-px box is skipped
    r = UnlabeledLmdb(tmp_path / "crops")
    assert len(r) == 3 and r[0].image.shape == (40, 60, 3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"frame": 0, "words": [{"box": [1, 2]}]}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: every box needs 4 numbers"):
        video_regions_to_lmdb(video, bad, tmp_path / "x")
    res = run_module(["distill.data", "unlabeled", "--video", str(video), "--regions", str(regions),
                      "--out", str(tmp_path / "cli")])
    assert res.returncode == 0, res.stderr
    assert "wrote 6 crops" in res.stdout


# -- training with PP-OCRv4 as teacher ---------------------------------------------------------------------------------
def _real_lmdb(src, out, n, labels=True):
    r = open_dataset(src)
    items = {b"num-samples": str(n).encode()}
    for i in range(n):
        s = r[i]
        ok, buf = cv2.imencode(".png", s.image[..., ::-1])
        items[b"image-%09d" % (i + 1)] = buf.tobytes()
        items[b"label-%09d" % (i + 1)] = (s.label if labels else "").encode()
    return write_lmdb(out, items)


@needs_ppocr
def test_train_student_and_baseline_from_ppocr(tmp_path, shared_real):
    words = _real_lmdb(shared_real / "svt_train", tmp_path / "words", 24)
    unl = _real_lmdb(shared_real / "iiit5k_train", tmp_path / "unl", 16, labels=False)
    both = ["--set", f"data.train=[{{path: {words}}}, {{path: {unl}, unlabeled: true, weight: 0.5}}]"]
    common = ["--set", "model.name=onnx-ctc", "--set", "model.charset='36'", "--set", "train.teacher_ckpt=ppocr",
              "--set", f"data.val={words}", "--set", "data.batch_size=8", "--set", "data.workers=1",
              "--set", "optim.steps=3", "--set", "train.val_every=3", "--set", "train.log_every=1",
              "--set", "data.max_val_samples=8", "--set", "train.progress=false",
              "--set", f"onnx_teacher.cache_dir={tmp_path / 'cache'}"]
    res = run_module(["distill.train", "--set", "train.stage=student", "--set", f"train.out_dir={tmp_path / 's'}",
                      "--set", "onnx_teacher.feature=head", *common, *both])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "32 frames" in res.stdout and "case-merged" in res.stdout
    assert "its frames read its own string on" in res.stdout  # the cached targets' check, per source
    assert len(list((tmp_path / "cache").glob("*.teacher-*.lmdb"))) == 2  # both sources, none beside the data
    assert not list(tmp_path.glob("words.teacher-*"))
    log = (tmp_path / "s" / "log.csv").read_text()
    assert "logits=" in log and "ce=" in log and "visual=" in log  # the teacher's head features are learned too
    # the unlabeled source's pseudo-labels: PP-OCR reads these crops, most pass the threshold
    found = list((tmp_path / "cache").glob("unl-*.lmdb"))[0]
    cache = TeacherCache(unl, found.name.split(".teacher-")[1][: -len(".lmdb")], cache_dir=tmp_path / "cache")
    assert cache.path == found
    confs = [cache.get(f"{i:09d}").conf for i in range(1, 17)]
    assert np.mean(np.array(confs) >= 0.7) > 0.5
    # baseline: same initialisation (the ONNX weights), no teacher, no unlabeled data allowed
    res = run_module(["distill.train", "--set", "train.stage=baseline", "--set", f"train.out_dir={tmp_path / 'b'}",
                      *common, *both])
    assert res.returncode == 2 and "data.train[1].unlabeled" in res.stderr
    res = run_module(["distill.train", "--set", "train.stage=baseline", "--set", f"train.out_dir={tmp_path / 'b'}",
                      *common, "--set", f"data.train=[{{path: {words}}}]", "--set", "train.wise_alpha=0.25"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "logits=" not in (tmp_path / "b" / "log.csv").read_text()
    assert "train: wise.pt = 0.25 x start + 0.75 x best.pt (val accuracy" in res.stdout
    from distill.checkpoint import load_model

    # wise.pt: a quarter of the weights the run started from (PP-OCRv4's, as the student builds them) and three
    # quarters of best.pt's; BatchNorm statistics stay frozen, so they are the start's
    start = make_onnx_student(str(REC), "36", 25, OnnxTeacher("ppocr", CHARSETS["36"], 32).classes,
                              PPOCR_LR_OVERRIDES)[1].state_dict()
    best, wise = (torch.load(tmp_path / "b" / f, weights_only=False) for f in ("best.pt", "wise.pt"))
    assert wise["wise_alpha"] == 0.25 and wise["val_acc"] is not None
    moved = [k for k in start if not torch.equal(best["model"][k], start[k])]
    assert len(moved) > 50
    for k in start:
        assert torch.allclose(wise["model"][k], 0.25 * start[k] + 0.75 * best["model"][k], atol=1e-6), k
    model, tok, ck = load_model(tmp_path / "b" / "last.pt")
    assert ck["model_spec"]["name"] == "onnx-ctc" and tok.charset == CHARSETS["36"]
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 16, 64)).shape == (1, 32, 37)
    # quantization-aware fine-tuning of that checkpoint: its weights, simulated INT8, ranges kept for a resume
    qat = ["distill.train", "--set", "train.stage=student", "--set", f"train.out_dir={tmp_path / 'q'}",
           "--set", f"train.init_ckpt={tmp_path / 'b' / 'last.pt'}", "--set", "train.qat=true",
           "--set", "train.wise_alpha=0.5", *common, "--set", f"data.train=[{{path: {words}}}]"]
    res = run_module(qat)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"weights from {tmp_path / 'b' / 'last.pt'} (step 3" in res.stdout
    assert "uint8 activations at" in res.stdout
    q = torch.load(tmp_path / "q" / "last.pt", weights_only=False)
    assert len(q["fake_quant"]) > 40 and all(lo <= 0 <= hi or lo < hi for lo, hi in q["fake_quant"].values())
    assert set(q["model"]) == set(ck["model"])  # the fine-tuned model is the plain network: export as usual
    wise = torch.load(tmp_path / "q" / "wise.pt", weights_only=False)["model"]
    res = run_module([*qat, "--resume", str(tmp_path / "q" / "last.pt")])  # the ranges load back
    assert res.returncode == 0 and "resumed from" in res.stdout, res.stderr[-3000:]
    # a resumed run's start is still init_ckpt's weights, not the ONNX file's: the same wise.pt
    again = torch.load(tmp_path / "q" / "wise.pt", weights_only=False)["model"]
    assert all(torch.equal(wise[k], again[k]) for k in wise)
    # a checkpoint of another graph is refused, naming what differs
    res = run_module([*qat, "--set", f"train.out_dir={tmp_path / 'q2'}",
                      "--set", "onnx_teacher.student_overrides={p2o.Conv.0: {strides: [1, 1]}, "
                      "p2o.AveragePool.0: {kernel_shape: [2, 1], strides: [2, 1]}}"])
    assert res.returncode == 2 and "its model differs from the one this config builds in ['kwargs.overrides']" \
        in res.stderr, res.stderr[-2000:]


def test_onnx_teacher_config_errors(tmp_path):
    res = run_module(["distill.train", "--set", "train.stage=student", "--set", "train.teacher_ckpt=ppocr",
                      "--set", "data.synth.n=10"])
    assert res.returncode == 2 and "model.name: an ONNX teacher" in res.stderr
    res = run_module(["distill.train", "--set", "train.stage=student", "--set", f"train.teacher_ckpt={tmp_path}/x.onnx",
                      "--set", "model.name=onnx-ctc", "--set", "data.synth.n=10",
                      "--set", f"train.out_dir={tmp_path / 'o'}"])
    assert res.returncode == 2 and "x.onnx: no such ONNX file" in res.stderr
    res = run_module(["distill.train", "--set", "train.stage=student", "--set", "train.teacher_ckpt=ppocr",
                      "--set", "model.name=onnx-ctc", "--set", "onnx_teacher.student_input_scale=0.5",
                      "--set", "data.synth.n=10", "--set", f"train.out_dir={tmp_path / 'o'}"])
    assert res.returncode == 2 and ("onnx_teacher.student_input_scale: expected a factor >= 1 or [height, width] "
                                    "factors >= 1, got 0.5") in res.stderr
    config = load_config(None, ["train.stage=student", "train.teacher_ckpt=ppocr", "model.name=onnx-ctc",
                                "data.synth.n=10", "onnx_teacher.student_input_scale=[1.5, 1]"])
    assert config.onnx_teacher.student_input_scale == [1.5, 1]
    for bad in ("[1.5]", "[1.5, 0.9]", "[1.5, true]", "'x'"):
        with pytest.raises(ConfigError, match=r"student_input_scale: expected a factor >= 1 or \[height, width\]"):
            load_config(None, ["train.stage=student", "train.teacher_ckpt=ppocr", "model.name=onnx-ctc",
                               "data.synth.n=10", f"onnx_teacher.student_input_scale={bad}"])
    res = run_module(["distill.train", "--set", "train.stage=student", "--set", "train.teacher_ckpt=ppocr",
                      "--set", "model.name=onnx-ctc", "--set", "onnx_teacher.stride_init=bicubic",
                      "--set", "data.synth.n=10", "--set", f"train.out_dir={tmp_path / 'o'}"])
    assert res.returncode == 2 and "onnx_teacher.stride_init: expected upsample or copy, got 'bicubic'" in res.stderr
    res = run_module(["distill.train", "--set", "train.stage=teacher", "--set", "train.wise_alpha=0.5",
                      "--set", "data.synth.n=10"])
    assert res.returncode == 2 and "train.wise_alpha: averages a fine-tuned student with its start" in res.stderr
    res = run_module(["distill.train", "--set", "train.wise_alpha=1", "--set", "data.synth.n=10"])
    assert res.returncode == 2 and "train.wise_alpha: expected a share in [0, 1), got 1.0" in res.stderr
    res = run_module(["distill.train", "--set", "train.stage=student", "--set", "train.teacher_ckpt=t.pt",
                      "--set", "model.name=cnn-ctc", "--set", "train.qat=true", "--set", "data.synth.n=10"])
    assert res.returncode == 2 and "train.qat: simulated INT8 is implemented for onnx-ctc students" in res.stderr


@needs_ppocr
def test_kd_gain_onnx_teacher_contender(tmp_path, shared_real):
    words = _real_lmdb(shared_real / "svt_train", tmp_path / "words", 16)
    real = _real_lmdb(shared_real / "svt_test", tmp_path / "real", 12)
    sets = ["model.name=onnx-ctc", "model.charset='36'", f"data.train=[{{path: {words}}}]", f"data.val={words}",
            "data.batch_size=8", "data.workers=0", "data.max_val_samples=8", f"onnx_teacher.cache_dir={tmp_path / 'c'}"]
    res = run_module(["experiments.kd_gain", "--contenders", "onnx-teacher", "--minutes", "0.01", "--min-steps", "2",
                      "--seeds", "5", "--out", str(tmp_path / "kg"), "--real", str(real), "--max-samples", "12",
                      "--onnx-config", "configs/ppocr_student.yaml", *[a for s in sets for a in ("--set", s)]],
                     timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    d = json.loads((tmp_path / "kg" / "kd_gain.json").read_text())
    assert d["seed"] == 5 and d["steps"] >= 2  # one seed: one run in --out, trained with that train.seed
    assert load_checkpoint(tmp_path / "kg" / "onnx-student" / "last.pt")["config"]["train"]["seed"] == 5
    models = {r["model"] for r in d["rows"]}
    assert models == {"onnx-teacher", "onnx-student", "onnx-baseline"}
    # the recipe sets train.wise_alpha: the pair is scored as it ships, by its weight-space averages
    assert sorted(Path(c).name for c in d["checkpoints"].values()) == ["wise.pt", "wise.pt"]
    teacher_hr = next(r for r in d["rows"] if r["contender"].startswith("ONNX teacher (HR"))
    assert teacher_hr["real_lr16"] > 40  # the HR reference column: PP-OCR reads real HR crops
    md = (tmp_path / "kg" / "kd_gain.md").read_text()
    assert "student distilled from the ONNX teacher" in md and "ahead of its LR-only baseline" in md


def test_photometric_only_augmentation_keeps_characters_in_place():
    """With cached teacher frames the augmentation must not move the text: geometric=False never shears or crops
    (shape and the bright column stay), while the default does both on some draws."""
    from distill.augment import text_augment

    img = np.full((32, 100, 3), 40, np.uint8)
    img[:, 37] = 220  # one bright column: where a character would sit
    def peak(o):  # the column that stands out most, whichever the polarity
        col = o[..., 0].astype(int).mean(0)
        return int(np.argmax(np.abs(col - np.median(col))))

    moved = 0
    for seed in range(60):
        out = text_augment(img.copy(), np.random.default_rng(seed), p=1.0, geometric=False)
        assert out.shape == img.shape and peak(out) == 37
        full = text_augment(img.copy(), np.random.default_rng(seed), p=1.0)
        moved += full.shape != img.shape or peak(full) != 37
    assert moved > 10
