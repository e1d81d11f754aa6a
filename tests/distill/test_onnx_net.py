"""distill.models.onnx_net: any ONNX recognizer as a trainable module (parity with ONNX Runtime, errors, fake
quantization, input scaling, frozen BN, halved strides), the PP-OCR LR student and its export, affine folding."""
from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from conftest import REC, needs_exact_int8, needs_ppocr, tiny_ctc_onnx
from distill.models import build_model, make_onnx_student
from compress.fusion import fuse_for_inference
from distill.models.lr_surgery import PPOCR_LR_OVERRIDES, upsample_halved_strides
from distill.models.onnx_net import OnnxNet, strip_weights
from distill.onnx_teacher import OnnxTeacher
from runtime.charset import CHARSETS


def test_onnx_net_matches_onnxruntime_on_a_small_graph(tmp_path):
    p = tiny_ctc_onnx(tmp_path / "tiny.onnx")
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


def test_onnx_net_runs_constant_pad_as_onnxruntime_does(tmp_path):
    """Pad with its pads as an input (opset 11+), uneven and with a fill value: PP-OCRv6's stem writes one."""
    m = onnx.load(str(tiny_ctc_onnx(tmp_path / "tiny.onnx")))
    m.graph.initializer.extend([onnx.numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 0, 1], np.int64), "pads"),
                                onnx.numpy_helper.from_array(np.array(0.5, np.float32), "fill")])
    m.graph.node.insert(0, helper.make_node("Pad", ["x", "pads", "fill"], ["xp"], name="pad", mode="constant"))
    m.graph.node[1].input[0] = "xp"
    x = np.random.default_rng(4).uniform(-1, 1, (2, 3, 16, 64)).astype(np.float32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        got = OnnxNet(7, graph=m.SerializeToString()).eval()(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape == (2, 34, 7) and np.abs(got - ref).max() < 1e-5


def test_onnx_net_errors_name_the_problem(tmp_path):
    p = tiny_ctc_onnx(tmp_path / "tiny.onnx", op="Selu")
    with pytest.raises(ValueError, match=r"not supported here: \['Selu'\]"):
        OnnxNet(7, graph=p.read_bytes())
    p = tiny_ctc_onnx(tmp_path / "ok.onnx")
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

    p = tiny_ctc_onnx(tmp_path / "tiny.onnx", op="Sigmoid", softmax=False)  # logits: the sharpest comparison
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
    p = tiny_ctc_onnx(tmp_path / "tiny.onnx")
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
    back = OnnxNet(7, 25, img_size=(16, 64), graph=path.read_bytes()).eval()  # its Resize read back
    with torch.no_grad():
        assert np.abs(back(torch.from_numpy(x)).numpy() - got).max() < 1e-5
    for bad, shown in ((0.5, "0.5"), ([2, 0.5], r"\[2, 0.5\]"), ([2], r"\[2\]")):
        with pytest.raises(ValueError, match=r"input_scale must be a factor >= 1 or \[height, width\] factors >= 1, "
                                             rf"got {shown}"):
            OnnxNet(7, graph=p.read_bytes(), input_scale=bad)


def test_bn_statistics_stay_frozen_while_training_unless_asked(tmp_path):
    """freeze_bn_stats (the default, onnx_teacher.freeze_bn): training mode normalises with the graph's running
    statistics and leaves them alone; off: batch statistics, running averages updated."""
    p = tiny_ctc_onnx(tmp_path / "bn.onnx", bn=True)
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
    fused = fuse_for_inference(net)  # what compress.export does: fewer elementwise passes, same outputs
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
    counts = fuse_for_inference(net)
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
