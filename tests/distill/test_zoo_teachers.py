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
