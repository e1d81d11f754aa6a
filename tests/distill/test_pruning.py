"""A narrower student (distill.models.pruning): which conv pairs are feed-forward pairs, how their hidden channels
are cut and refitted, and a pruned PP-OCRv6 student that rebuilds from its checkpoint's spec."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import needs_wheel
from distill.models import build_model, make_onnx_student
from distill.models.onnx_net import strip_weights
from distill.models.pruning import ffn_pairs, prune_ffn, prune_ffn_refit, resolve_keep


def _ffn_net(dup: bool) -> bytes:
    """stem 3x3 (3 -> 4) -> [1x1 4 -> 8, bias, GELU as exporters write it, 1x1 8 -> 4] + residual -> squeeze-excitation
    (4 -> 2 -> 4, a bottleneck, not a pair) -> 1x1 4 -> 4. ``dup``: hidden channels 4-7 repeat 0-3 with a tenth of
    the weight out, so half the channels carry all the information."""
    rng = np.random.default_rng(0)
    we = rng.normal(0, 0.5, (8, 4, 1, 1)).astype(np.float32)
    be = rng.normal(0, 0.2, (1, 8, 1, 1)).astype(np.float32)
    wp = rng.normal(0, 0.5, (4, 8, 1, 1)).astype(np.float32)
    if dup:
        we[4:], be[:, 4:], wp[:, 4:] = we[:4], be[:, :4], 0.1 * wp[:, :4]
    arrays = {"ws": rng.normal(0, 0.5, (4, 3, 3, 3)), "we": we, "be": be, "wp": wp,
              "wq": rng.normal(0, 0.5, (2, 4, 1, 1)), "wr": rng.normal(0, 0.5, (4, 2, 1, 1)),
              "wo": rng.normal(0, 0.5, (4, 4, 1, 1)), "sqrt2": np.array(np.sqrt(2.0)), "one": np.array(1.0),
              "half": np.array(0.5)}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items()]
    n = helper.make_node
    nodes = [n("Conv", ["x", "ws"], ["s"], name="stem", pads=[1, 1, 1, 1]),
             n("Conv", ["s", "we"], ["e"], name="expand"), n("Add", ["e", "be"], ["eb"], name="bias"),
             n("Div", ["eb", "sqrt2"], ["d"], name="div"), n("Erf", ["d"], ["f"], name="erf"),
             n("Add", ["f", "one"], ["f1"], name="add1"), n("Mul", ["eb", "f1"], ["g0"], name="mul_x"),
             n("Mul", ["g0", "half"], ["g"], name="mul_half"),
             n("Conv", ["g", "wp"], ["p"], name="project"), n("Add", ["s", "p"], ["r"], name="residual"),
             n("ReduceMean", ["r"], ["m"], name="mean", axes=[2, 3], keepdims=1),
             n("Conv", ["m", "wq"], ["q"], name="se_down"), n("Relu", ["q"], ["q1"], name="se_relu"),
             n("Conv", ["q1", "wr"], ["q2"], name="se_up"), n("Sigmoid", ["q2"], ["q3"], name="se_gate"),
             n("Mul", ["r", "q3"], ["r2"], name="se_mul"), n("Conv", ["r2", "wo"], ["y"], name="out")]
    g = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def _run(graph: bytes, weights: dict, x: np.ndarray, names=("y",)) -> dict:
    import onnxruntime as ort

    m = onnx.load_from_string(graph)
    for t in m.graph.initializer:
        if t.name in weights:
            t.CopyFrom(numpy_helper.from_array(weights[t.name].astype(np.float32), t.name))
    for name in names:
        if name not in [o.name for o in m.graph.output]:
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return dict(zip(names, ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        list(names), {"x": x})))


def test_ffn_pairs_finds_the_widening_pair_not_the_bottleneck():
    pairs = ffn_pairs(_ffn_net(False))
    assert [(p.expand, p.project, p.hidden, p.per_channel, p.activation) for p in pairs] == \
        [("expand", "project", 8, ["be"], "g")]
    assert resolve_keep(pairs, 0.5) == {"expand": 8}  # rounded to a multiple of 8, at least 8
    with pytest.raises(ValueError, match=r"no feed-forward pair starts at \['stem'\]"):
        resolve_keep(pairs, {"stem": 0.5})
    with pytest.raises(ValueError, match="kept fraction must be in"):
        resolve_keep(pairs, 1.5)
    m = onnx.load_from_string(_ffn_net(False))  # a hidden tensor the graph also returns: cutting it changes an output
    m.graph.output.append(helper.make_tensor_value_info("eb", TensorProto.FLOAT, None))
    assert ffn_pairs(m.SerializeToString()) == []


def test_refit_keeps_the_output_when_the_cut_channels_repeat_kept_ones():
    """Half the hidden channels repeat the other half: cut and refitted, the network computes what it did (the
    projection takes over their share); cut without the refit, it does not."""
    graph, weights = strip_weights(_ffn_net(True), keep_small=1)
    x = np.random.default_rng(1).normal(0, 1, (16, 3, 8, 16)).astype(np.float32)
    pairs = ffn_pairs(graph)
    ref = _run(graph, weights, x)["y"]

    def run(g, w, names):
        return _run(g, w, x, names)

    g2, w2 = prune_ffn_refit(graph, weights, pairs, {"expand": 4}, run)
    assert w2["we"].shape == (4, 4, 1, 1) and w2["wp"].shape == (4, 4, 1, 1) and w2["be"].shape == (1, 4, 1, 1)
    assert weights["we"].shape == (8, 4, 1, 1)  # the input dict is left as it was
    assert [list(t.dims) for t in onnx.load_from_string(g2).graph.initializer if t.name == "wp"] == [[4, 4, 1, 1]]
    assert np.abs(_run(g2, w2, x)["y"] - ref).max() < 5e-3 * np.abs(ref).max()  # the ridge term shrinks a little
    g3, w3 = prune_ffn(graph, weights, pairs, {"expand": 4}, {"expand": np.arange(8, 0, -1.0)})
    assert np.abs(_run(g3, w3, x)["y"] - ref).max() > 0.05 * np.abs(ref).max()


@needs_wheel("ppocrv6")
def test_pruned_ppocrv6_student_rebuilds_from_its_spec():
    """PP-OCRv6 small has 13 feed-forward pairs (the squeeze-excitation bottlenecks are not); its stage-4 pairs cut
    to half: fewer parameters, same 16 frames, and the checkpoint's spec rebuilds the narrower model."""
    from distill.onnx_teacher import OnnxTeacher
    from runtime.charset import CHARSETS
    from runtime.ppocr import resolve_recognizer

    path = resolve_recognizer("ppocrv6")
    pairs = ffn_pairs(open(path, "rb").read())
    assert len(pairs) == 13 and {p.hidden for p in pairs} == {192, 384, 768}
    t = OnnxTeacher("ppocrv6", CHARSETS["94"], 16)
    kw = dict(overrides={"Conv.0": {"strides": [1, 1]}}, input_scale=[1.5, 1])
    _, full, _ = make_onnx_student(path, "94", 25, t.classes, **kw)
    calib = torch.rand(4, 3, 16, 64)
    spec, model, _ = make_onnx_student(path, "94", 25, t.classes, **kw, ffn_keep={"Conv.49": 0.5, "Conv.52": 0.5},
                                       calib=calib)
    n_full, n = (sum(p.numel() for p in m.parameters()) for m in (full, model))
    assert n_full - n == 2 * 384 * 384 * 2 + 2 * 384  # two pairs, 384 of 768 hidden channels each, and their biases
    again = build_model(spec)
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        a, b = model.eval()(calib), again.eval()(calib)
    assert a.shape == (4, 16, 95) and torch.allclose(a, b)


def test_residual_branches_and_dropping_one():
    from distill.models.pruning import drop_branches, residual_branches

    graph = _ffn_net(dup=False)
    branches = residual_branches(graph)
    assert [(b.add, b.skip, b.branch) for b in branches] == [("residual", "s", "p")]  # the SE Mul is no Add
    shallow = drop_branches(graph, ["residual"])
    m = onnx.load_from_string(shallow)
    assert {"expand", "project", "residual", "erf"}.isdisjoint(n.name for n in m.graph.node)
    assert {"we", "wp", "be"}.isdisjoint(t.name for t in m.graph.initializer)  # weights nothing reads are gone
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 16)).astype(np.float32)
    full = _run(graph, {}, x, ("y", "s"))
    # without the branch, the block passes s on: the SE and output convs read s where they read s + p
    import onnxruntime as ort

    y = ort.InferenceSession(shallow, providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    ref = onnx.load_from_string(graph)
    for n in ref.graph.node:
        if n.name in ("mean", "se_mul"):
            n.input[0] = "s"
    ref_y = ort.InferenceSession(ref.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    assert not np.allclose(y, full["y"], atol=1e-3)
    with pytest.raises(ValueError, match="no residual Add named"):
        drop_branches(graph, ["se_mul"])
