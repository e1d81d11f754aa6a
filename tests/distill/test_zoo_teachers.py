"""PP-OCR teachers by zoo name (distill.onnx_teacher): dictionaries, PP-OCR preprocessing, and a smoke-size
student of PP-OCRv6 small trained from its teacher."""
import numpy as np
import pytest
import torch

from conftest import have_wheel, needs_wheel, real_lmdb, run_module
from runtime import zoo


REC_CLASSES = {"ppocrv6": 18710, "ppocrv6-tiny": 6906, "ppocrv4": 6625}


@pytest.mark.parametrize("name", ["ppocrv6", "ppocrv6-tiny", "ppocrv4"])
def test_teacher_dictionary_maps_every_student_character(name):
    if not have_wheel(name):
        pytest.skip(f"{zoo.find(name).pip} not installed")
    from distill.onnx_teacher import OnnxTeacher
    from runtime.charset import CHARSETS

    t = OnnxTeacher(name, CHARSETS["94"], 16)
    assert len(t.classes) == REC_CLASSES[name] and t.classes[0] == "<blank>" and t.classes[-1] == " "
    r = t.report
    assert r["mapped_exact"] == 94 and r["student_chars_without_teacher_class"] == ""
    # each student class k + 1 receives exactly the teacher class of its own character
    for k, c in enumerate(CHARSETS["94"]):
        assert t.classes[int(np.flatnonzero(t.map == k + 1)[0])] == c


@needs_wheel("ppocrv6")
def test_ppocr_preprocessing_bgr_48_high_padded_to_320():
    from distill.onnx_teacher import OnnxTeacher
    from runtime.charset import CHARSETS

    t = OnnxTeacher("ppocrv6", CHARSETS["94"], 16)
    crop = np.zeros((24, 60, 3), np.uint8)
    crop[..., 0] = 255  # pure red in RGB
    x, widths = t.batch([crop, np.full((10, 200, 3), 128, np.uint8)])
    assert x.shape == (2, 3, 48, 960) and list(widths) == [120, 960]  # the batch is as wide as its widest crop
    assert x[0, 2, :, :120].min() == pytest.approx(1.0) and x[0, 0, :, :120].max() == pytest.approx(-1.0)
    assert np.all(x[0, :, :, 120:] == 0)  # padding is 0 after normalisation


@needs_wheel("ppocrv6")
def test_ppocrv6_student_trains_from_its_teacher(tmp_path, shared_real):
    """Smoke size: the PP-OCRv6 small student (stem at stride 1, 16x64 read as 24x64) learns from the teacher's
    targets for 2 steps, and its checkpoint rebuilds the model with 16 frames over the 94 characters."""
    words = real_lmdb(shared_real / "svt_train", tmp_path / "words", 16)
    res = run_module(["distill.train", "--config", "configs/ppocrv6_student.yaml",
                      "--set", f"data.train=[{{path: {words}}}]", "--set", f"data.val={words}",
                      "--set", "data.batch_size=4", "--set", "data.epoch_size=8", "--set", "optim.steps=2",
                      "--set", "train.val_every=2", "--set", "train.ckpt_every=2", "--set", "train.log_every=1",
                      "--set", "data.max_val_samples=8", "--set", f"train.out_dir={tmp_path / 's'}",
                      "--set", f"onnx_teacher.cache_dir={tmp_path / 'cache'}"], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "PP-OCRv6_rec_small.onnx" in res.stdout and "16 frames" in res.stdout
    assert "94 exact" in res.stdout and "kernels composed with x2 upsampling: Conv.0" in res.stdout
    from distill.checkpoint import load_model

    model, tok, ck = load_model(tmp_path / "s" / "wise.pt")
    assert ck["model_spec"]["kwargs"]["overrides"] == {"Conv.0": {"strides": [1, 1]}}
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 16, 64)).shape == (2, 16, 95)


@needs_wheel("ppocrv6")
@needs_wheel("ppocrv6-tiny")
def test_a_smaller_graph_learns_from_ppocrv6_small(tmp_path, shared_real):
    """onnx_teacher.student_graph: PP-OCRv6 tiny's graph, its classifier cut by its own dictionary, learns from
    PP-OCRv6 small's targets; a name that is no recognizer is one line naming the key."""
    words = real_lmdb(shared_real / "svt_train", tmp_path / "words", 16)
    args = ["distill.train", "--config", "configs/ppocrv6_student.yaml",
            "--set", f"data.train=[{{path: {words}}}]", "--set", f"data.val={words}",
            "--set", "data.batch_size=4", "--set", "data.epoch_size=8", "--set", "optim.steps=2",
            "--set", "train.val_every=2", "--set", "train.ckpt_every=2", "--set", "data.max_val_samples=8",
            "--set", f"train.out_dir={tmp_path / 's'}", "--set", f"onnx_teacher.cache_dir={tmp_path / 'cache'}"]
    res = run_module(args + ["--set", "onnx_teacher.student_graph=ppocrv6-tiny"], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "onnx-ctc student from" in res.stdout and "ppocrv6/tiny/rec/rec.onnx" in res.stdout
    assert "16 frames" in res.stdout and "94 exact" in res.stdout and "18615 dropped" in res.stdout  # small's classes
    from distill.checkpoint import load_model

    model, tok, ck = load_model(tmp_path / "s" / "wise.pt")
    assert sum(p.numel() for p in model.parameters()) < 1_000_000  # tiny's 0.55M, not small's 3.0M
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 16, 64)).shape == (2, 16, 95)
    res = run_module(args + ["--set", "onnx_teacher.student_graph=ppocrv9", "--set",
                             f"train.out_dir={tmp_path / 'bad'}"], timeout=600)
    assert res.returncode == 2 and "onnx_teacher.student_graph" in res.stderr, res.stderr[-2000:]
    assert len(res.stderr.strip().splitlines()) == 1


class _Recorder:
    """A stand-in LR teacher: gives fixed probabilities and keeps what it was asked to read."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs, self.seen = probs, []

    def run(self, x: np.ndarray) -> np.ndarray:
        self.seen.append(x.copy())
        return self.probs


def test_the_lr_teacher_reads_the_students_own_batch():
    """train.lr_teacher's loss: the teacher is asked about the very tensor the student read, and the KL is zero
    exactly when the student's frames are the teacher's."""
    from distill.config import DistillCfg
    from distill.models import RecOut
    from distill.system import LrTeacher, Step, TrainingSystem
    from runtime.charset import make_tokenizer

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 16, 5, generator=g)
    x = torch.randn(2, 3, 16, 64, generator=g)
    for probs, zero in ((torch.softmax(logits, -1).numpy(), True),
                        (torch.softmax(torch.randn(2, 16, 5, generator=g), -1).numpy(), False)):
        rec = _Recorder(probs)
        sys = TrainingSystem(torch.nn.Linear(1, 1), make_tokenizer("ctc", "abcd"), "student",
                             DistillCfg(temperature=1.0), lr_teacher=rec)
        assert any(isinstance(m, LrTeacher) for m in sys.methods)
        parts = LrTeacher().loss(sys, Step({"lr": x}, RecOut([logits], None, torch.zeros(1))))
        assert np.array_equal(rec.seen[0], x.numpy())
        assert (float(parts["logits"]) < 1e-5) == zero
    assert not any(isinstance(m, LrTeacher) for m in TrainingSystem(
        torch.nn.Linear(1, 1), make_tokenizer("ctc", "abcd"), "baseline", DistillCfg(), lr_teacher=rec).methods)


@needs_wheel("ppocrv6")
@needs_wheel("ppocrv6-tiny")
def test_the_default_student_teaches_the_tiny_graph_on_its_lr_input(tmp_path, shared_real):
    """train.lr_teacher: the shipped FP32 student reads each LR batch for PP-OCRv6 tiny's graph; no HR teacher
    cache is built; a file that cannot read the student's input or give its frames is one line naming the key."""
    words = real_lmdb(shared_real / "svt_train", tmp_path / "words", 16)
    args = ["distill.train", "--config", "configs/ppocrv6_tiny_lr_teacher.yaml",
            "--set", f"data.train=[{{path: {words}}}]", "--set", f"data.val={words}",
            "--set", "data.batch_size=4", "--set", "data.epoch_size=8", "--set", "optim.steps=2",
            "--set", "train.val_every=2", "--set", "train.ckpt_every=2", "--set", "data.max_val_samples=8",
            "--set", "train.log_every=1", "--set", "train.progress=false",
            "--set", f"onnx_teacher.cache_dir={tmp_path / 'cache'}"]
    res = run_module(args + ["--set", f"train.out_dir={tmp_path / 's'}"], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "LR teacher weights/ppocrv6-student-lr.onnx (fp32, 16x64, 16 frames)" in res.stdout
    assert "method=lr teacher" in res.stdout and "weights from weights/ppocrv6-tiny-student-lr.pt" in res.stdout
    assert not (tmp_path / "cache").exists()  # the HR teacher never read the crops
    assert "logits=" in (tmp_path / "s" / "log.csv").read_text()
    from distill.checkpoint import load_model

    model, _, _ = load_model(tmp_path / "s" / "wise.pt")
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    import onnx

    from conftest import tiny_ctc_onnx
    from runtime.charset import CHARSETS
    from runtime.modelfile import ModelInfo

    wide = onnx.load(str(tiny_ctc_onnx(tmp_path / "wide.onnx", n_chars=93)))  # stride 2: 32 frames at 16x64
    onnx.helper.set_model_props(wide, ModelInfo("wide", "ctc", CHARSETS["94"], 16, 64, lr=True).to_metadata())
    onnx.save(wide, str(tmp_path / "wide.onnx"))
    for bad, why in (("weights/ctc-student-lr.onnx", "its charset is"),  # 36 characters, the student 94
                     (str(tmp_path / "wide.onnx"), "gives 32 frames, the student 16"),
                     (str(tmp_path / "none.onnx"), "no such model file")):
        res = run_module(args + ["--set", f"train.lr_teacher={bad}", "--set", f"train.out_dir={tmp_path / 'b'}"],
                         timeout=600)
        assert res.returncode == 2 and f"train.lr_teacher {bad}: " in res.stderr and why in res.stderr, \
            res.stdout[-2000:] + res.stderr[-2000:]
        assert len(res.stderr.strip().splitlines()) == 1
