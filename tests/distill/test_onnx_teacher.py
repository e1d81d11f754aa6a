"""distill.onnx_teacher and distill.unlabeled: an ONNX recognizer as teacher (charset mapping, frame resampling,
the target cache), unlabeled sources, and training runs with PP-OCR as teacher."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from conftest import REC, needs_ppocr, real_lmdb, run_module, str_items, tiny_ctc_onnx, write_lmdb
from distill.config import ConfigError, load_config
from distill.models import make_onnx_student
from distill.models.lr_surgery import PPOCR_LR_OVERRIDES
from distill.models.onnx_net import OnnxNet
from distill.onnx_teacher import (OnnxTeacher, TeacherCache, charset_mapping, frames_read, resample_frames,
                                  resample_peaks)
from distill.unlabeled import UnlabeledFolder, UnlabeledLmdb, open_unlabeled, video_regions_to_lmdb
from runtime.charset import CHARSETS
from runtime.datasets import DataError, open_dataset


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
    p = tiny_ctc_onnx(tmp_path / "logits.onnx", softmax=False)
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
    map; a map with rows cut to the crop's columns; the cache keeps them; the student module returns its own head
    input as char_feats."""
    p = tiny_ctc_onnx(tmp_path / "t.onnx")
    d = str(_dict_file(tmp_path))
    crops = [np.random.default_rng(i).integers(0, 255, (20 + 5 * i, 60 + 20 * i, 3), dtype=np.uint8) for i in range(3)]
    t = OnnxTeacher(str(p), "abc", 12, dictionary=d, feature="head")
    assert t.feature == "t"  # the MatMul classifier's input in tiny_ctc_onnx
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
    with pytest.raises(ValueError, match="feature tensor 's2' has shape"):
        OnnxTeacher(str(p), "abc", 12, dictionary=d, feature="s2").targets(crops)  # (N, D, T): not frames
    # a map with rows, (N, 8, 24, W), the teacher's input at one width (PP-OCR's 320): kept as a map, its columns
    # over the crop stretched to the map's width
    from runtime.ppocr import Letterbox

    maps = OnnxTeacher(str(p), "abc", 12, Letterbox(48, 320, 320), dictionary=d, feature="r").targets(crops)
    with torch.no_grad():
        ref_r = net.run(torch.from_numpy(x), ("r",))["r"].numpy()
    C, H, W = ref_r.shape[1:]
    assert W == 160 and all(valid < W)  # every crop is padded in the teacher's 320-wide batch
    for i, g in enumerate(maps):
        assert g.feats.shape == (C, H, W) and g.feats.dtype == np.float16
        cols = valid[i]  # the columns over the crop: this graph's map is as wide as its output
        want = resample_frames(ref_r[i, :, :, :cols].reshape(C * H, cols).T, W).T.reshape(C, H, W)
        assert np.abs(g.feats.astype(np.float32) - want).max() < 2e-2 * max(1.0, np.abs(want).max())
        assert not np.allclose(g.feats.astype(np.float32), ref_r[i], atol=1e-2)  # the padding's columns are gone
    data = write_lmdb(tmp_path / "words", str_items(["ab", "ca", "bb"]))
    reader = open_dataset(data)
    cache = TeacherCache(data, t.fingerprint())
    cache.build(t, reader, progress=False)
    got, direct = cache.get(reader.keys[1]), t.targets([reader[1].image])[0]
    assert np.array_equal(got.feats, direct.feats) and np.array_equal(got.probs, direct.probs)
    assert TeacherCache(data, plain.fingerprint()).path != cache.path  # targets without features: another cache
    mt = OnnxTeacher(str(p), "abc", 12, Letterbox(48, 320, 320), dictionary=d, feature="r")
    mcache = TeacherCache(data, mt.fingerprint())
    mcache.build(mt, reader, progress=False)
    assert mcache.path != cache.path
    assert np.array_equal(mcache.get(reader.keys[1]).feats, mt.targets([reader[1].image])[0].feats)  # a map, whole
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
    p = tiny_ctc_onnx(tmp_path / "t.onnx")
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


def test_a_feature_map_needs_one_teacher_width_and_the_students_grid(tmp_path):
    """A map feature is matched cell by cell: the teacher must read every crop at one width, and the student must
    compute the map on the teacher's grid; both are checked before any training."""
    from distill.train import check_feature_grid
    from runtime.ppocr import Letterbox

    p = tiny_ctc_onnx(tmp_path / "t.onnx")
    d = str(_dict_file(tmp_path))
    crop = np.random.default_rng(0).integers(0, 255, (20, 50, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="maps need the teacher's input at one width"):
        OnnxTeacher(str(p), "abc", 12, dictionary=d, feature="r").targets([crop])  # PP-OCR's 320..1600
    fixed = Letterbox(48, 128, 128)
    t = OnnxTeacher(str(p), "abc", 12, fixed, dictionary=d, feature="r")
    assert t.targets([crop])[0].feats.shape == (8, 24, 64)
    for scale, ok in (((3, 2), True), ((1, 1), False)):  # 16x64 read as 48x128 by the graph, or as it is
        net = OnnxNet(7, graph=p.read_bytes(), input_scale=scale)
        net.set_feature_tap("r")
        if ok:
            check_feature_grid(t, net)
        else:
            with pytest.raises(ValueError, match="the teacher's is 1536 positions x 8 channels, the student's 256 x 8"):
                check_feature_grid(t, net)
        assert net.training  # left in training mode either way


# -- training with PP-OCRv4 as teacher ---------------------------------------------------------------------------------

@needs_ppocr
def test_train_student_and_baseline_from_ppocr(tmp_path, shared_real):
    words = real_lmdb(shared_real / "svt_train", tmp_path / "words", 24)
    unl = real_lmdb(shared_real / "iiit5k_train", tmp_path / "unl", 16, labels=False)
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
    with pytest.raises(ConfigError, match="onnx_teacher.student_graph: another graph as the student needs an ONNX "
                                          "teacher"):  # a torch teacher would ignore it silently
        load_config(None, ["train.stage=student", f"train.teacher_ckpt={tmp_path}/t.pt", "data.synth.n=10",
                           "onnx_teacher.student_graph=ppocrv6-tiny"])
    for bad in ("0", "1.5", "true", "{Conv.22: 0}", "'x'"):
        with pytest.raises(ConfigError, match=r"onnx_teacher.student_ffn_keep: expected a fraction in \(0, 1\]"):
            load_config(None, ["train.stage=student", "train.teacher_ckpt=ppocr", "model.name=onnx-ctc",
                               "data.synth.n=10", f"onnx_teacher.student_ffn_keep={bad}"])
    res = run_module(["distill.train", "--set", "train.stage=student", "--set", "train.teacher_ckpt=ppocr",
                      "--set", "model.name=onnx-ctc", "--set", "onnx_teacher.student_ffn_keep=0.5",
                      "--set", "data.synth.n=10", "--set", f"train.out_dir={tmp_path / 'o'}"])
    assert res.returncode == 2 and "student_ffn_keep: the refit reads LR crops of data.train's first source" in res.stderr
    config = load_config("configs/ppocrv6_narrow.yaml", [])
    assert config.onnx_teacher.student_ffn_keep["Conv.52"] == 0.5
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
    with pytest.raises(ConfigError, match="train.lr_teacher: teaches an onnx-ctc student .* got stage 'baseline'"):
        load_config(None, ["train.stage=baseline", "train.teacher_ckpt=ppocr", "model.name=onnx-ctc",
                           "data.synth.n=10", "train.lr_teacher=weights/ppocrv6-student-lr.onnx"])
    with pytest.raises(ConfigError, match="train.lr_teacher: .* and teacher 't.pt'"):  # it would be ignored
        load_config(None, ["train.stage=student", "train.teacher_ckpt=t.pt", "model.name=onnx-ctc",
                           "data.synth.n=10", "train.lr_teacher=weights/ppocrv6-student-lr.onnx"])
    with pytest.raises(ConfigError, match=r"data.train\[0\].unlabeled: pseudo-labels come from the HR teacher"):
        load_config(None, ["train.stage=student", "train.teacher_ckpt=ppocr", "model.name=onnx-ctc",
                           "train.lr_teacher=weights/ppocrv6-student-lr.onnx",
                           "data.train=[{path: x, unlabeled: true}]"])


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


def test_the_teacher_on_torch_gives_onnx_runtimes_targets(tmp_path):
    """onnx_teacher.runner torch: the graph as an OnnxNet behind the session's run gives the same targets."""
    from distill.onnx_teacher import TorchSession

    p = tiny_ctc_onnx(tmp_path / "t.onnx")
    crops = [np.random.default_rng(i).integers(0, 255, (20 + 5 * i, 60, 3), dtype=np.uint8) for i in range(4)]
    t = OnnxTeacher(str(p), "abc", 12, dictionary=str(_dict_file(tmp_path)), threads=1)
    ref = t.targets(crops)
    t.session = TorchSession(str(p), len(t.classes), "cpu")
    got = t.targets(crops)
    assert [g.text for g in got] == [r.text for r in ref]
    assert max(float(np.abs(g.probs.astype(np.float32) - r.probs.astype(np.float32)).max())
               for g, r in zip(got, ref)) < 2e-3
    with pytest.raises(ConfigError, match="onnx_teacher.runner"):
        load_config(None, ["data.synth.n=10", "onnx_teacher.runner=gpu"])
    with pytest.raises(ConfigError, match="feature needs onnxruntime"):
        load_config(None, ["data.synth.n=10", "onnx_teacher.runner=torch", "onnx_teacher.feature=head"])
