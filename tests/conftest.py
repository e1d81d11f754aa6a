"""Shared fixtures: paths to the real data beside the checkout, writers of small hostile lmdbs, the tiny synthetic
data and models the training tests share."""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_REAL = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data")) / "real"


# The real models the tests run: the shipped CNN student (INT8, the fastest) and PP-OCRv4's detector and recognizer
# from the peers' wheel (None when rapidocr-onnxruntime is missing; tests that need them skip with needs_det and
# needs_ppocr).
CNN_INT8 = ROOT / "weights" / "ctc-student-lr.int8.onnx"


def _ppocr(kind: str):
    from apps.peers import ppocr_model

    return ppocr_model(kind)


DET, REC = _ppocr("det"), _ppocr("rec")
needs_det = pytest.mark.skipif(DET is None, reason="rapidocr-onnxruntime (PP-OCR detector) not installed")
needs_ppocr = pytest.mark.skipif(REC is None, reason="rapidocr-onnxruntime (PP-OCRv4 recognizer) not installed")


def have_wheel(name: str) -> bool:
    """Whether zoo model ``name``'s wheel is installed."""
    from runtime import zoo

    try:
        zoo.resolve(name)
        return True
    except FileNotFoundError:
        return False


def needs_wheel(name: str):
    """Skip unless zoo model ``name``'s wheel is installed (the reason names the pip package)."""
    from runtime import zoo

    return pytest.mark.skipif(not have_wheel(name), reason=f"the wheel of {name} ({zoo.find(name).pip}) is not installed")


def png_bytes(h: int = 20, w: int = 60, value: int = 128, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(rng.normal(value, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(h: int = 20, w: int = 60, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_lmdb(path: Path, items: dict[bytes, bytes]) -> Path:
    """A raw lmdb with exactly these keys (no lock file left), for hostile-input tests."""
    path.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v)
    env.close()
    (path / "lock.mdb").unlink(missing_ok=True)
    return path


def textzoom_items(labels: list[str], hr=(32, 128), lr=(16, 64)) -> dict[bytes, bytes]:
    items: dict[bytes, bytes] = {b"num-samples": str(len(labels)).encode()}
    for i, lb in enumerate(labels, 1):
        items[b"image_hr-%09d" % i] = png_bytes(*hr, seed=i)
        items[b"image_lr-%09d" % i] = png_bytes(*lr, seed=1000 + i)
        items[b"label-%09d" % i] = lb.encode()
    return items


def str_items(labels: list[str]) -> dict[bytes, bytes]:
    items: dict[bytes, bytes] = {b"num-samples": str(len(labels)).encode()}
    for i, lb in enumerate(labels, 1):
        items[b"image-%09d" % i] = png_bytes(30, 90, seed=i)
        items[b"label-%09d" % i] = lb.encode()
    return items


@pytest.fixture
def shared_real() -> Path:
    if not SHARED_REAL.is_dir():
        pytest.skip(f"shared real data not found at {SHARED_REAL}")
    return SHARED_REAL


def run_module(args: list[str], **kw):
    import subprocess

    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, **kw)


def _int8_kernels_exact() -> bool:
    """Whether ONNX Runtime's x86 U8S8 int8 kernels are exact here: with VNNI (or AMX) they are; on AVX2/AVX-512
    without VNNI they sum pairs of u8 x s8 products in saturating int16 (vpmaddubsw) and can clip. Other
    architectures: assumed exact."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return True
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


# Tests that compare ONNX Runtime's INT8 results with an exact simulation or float: not meaningful where its
# kernels saturate (CI's 2-core AMD EPYC has AVX2 only). The saturation itself is a known ONNX Runtime limit.
needs_exact_int8 = pytest.mark.skipif(not _int8_kernels_exact(),
                                      reason="ONNX Runtime's U8S8 kernels saturate on this CPU (AVX2 without VNNI)")


# tiny models of each family: training tests run them for a few steps
TINY = {
    "parseq-tiny": "{depth: 1, dim: 48, heads: 2, dec_heads: 2}",
    "cnn-attn": "{widths: [8, 8, 16, 16, 16]}",
    "cnn-ctc": "{widths: [8, 8, 16, 16, 16], hidden: 32}",
}


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """160 synthetic LR/HR pairs (train 100, val 20, test 40), shared by the training tests."""
    from distill.synth.generate import main as synth_main

    d = tmp_path_factory.mktemp("synth")
    synth_main(["--out", str(d), "--n", "160", "--seed", "2", "--workers", "1", "--no-progress",
                "--split-sizes", "train=100,val=20,test=40", "--overwrite"])
    return d


def overrides(synth: Path, out: Path, model: str, *extra: str) -> list[str]:
    """--set overrides for a few-step run of a TINY ``model`` on the ``synth`` pairs into ``out``."""
    return [f"model.name={model}", f"model.kwargs={TINY[model]}", "model.max_len=12",
            f"data.synth.dir={synth}", "data.synth.n=160", "data.batch_size=8", "data.workers=0",
            "data.max_val_samples=16", "optim.steps=4", "train.val_every=2", "train.ckpt_every=2", "train.log_every=1",
            "train.progress=false", f"train.out_dir={out}", *extra]


@pytest.fixture(scope="session")
def clip_setup(tmp_path_factory):
    """Synthetic pairs, a CLIP and an HR teacher trained 3 steps by configs/clipocr_smoke.yaml: (folder, overrides)."""
    from distill.config import load_config
    from distill.synth.generate import main as synth_main
    from distill.train import train

    d = tmp_path_factory.mktemp("clipocr")
    synth_main(["--out", str(d / "synth"), "--n", "120", "--seed", "3", "--workers", "1", "--no-progress",
                "--split-sizes", "train=90,val=20,test=10"])
    base = [f"data.synth.dir={d / 'synth'}", "data.synth.n=120", "data.batch_size=8", "data.workers=0",
            "data.max_val_samples=16", "optim.steps=3", "train.val_every=3", "train.ckpt_every=3", "train.progress=false"]
    train(load_config("configs/clipocr_smoke.yaml", base + ["train.stage=clip", f"train.out_dir={d / 'clip'}"]))
    train(load_config("configs/clipocr_smoke.yaml", base + [f"train.out_dir={d / 'teacher'}"]))
    return d, base


def tiny_ctc_onnx(path, n_chars: int = 5, softmax: bool = True, op: str = "Relu", bn: bool = False):
    """A small CTC recognizer graph: conv (stride 2) [-> BatchNorm] -> op -> mean over height -> MatMul + bias
    [-> Softmax]."""
    import onnx
    from onnx import TensorProto, helper

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


def real_lmdb(src, out, n, labels=True):
    """An STR lmdb of the first ``n`` crops of ``src`` (labels blanked with ``labels=False``)."""
    import cv2

    from runtime.datasets import open_dataset

    r = open_dataset(src)
    items = {b"num-samples": str(n).encode()}
    for i in range(n):
        s = r[i]
        ok, buf = cv2.imencode(".png", s.image[..., ::-1])
        items[b"image-%09d" % (i + 1)] = buf.tobytes()
        items[b"label-%09d" % (i + 1)] = (s.label if labels else "").encode()
    return write_lmdb(out, items)
