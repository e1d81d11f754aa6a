"""Text localisation, tracking + voting, the camera app end to end on a rendered video, sources, and the TensorRT
backend's code around the hardware (fake tensorrt / pycuda modules)."""
import json
import subprocess
import sys
import threading
import time
import types

import cv2
import numpy as np
import pytest

from apps.peers import ppocr_model
from apps.synthetic_video import render_video
from conftest import ROOT
from runtime.tracking import Tracker, Vote, iou_matrix

MODEL = ROOT / "weights" / "ctc-student-lr.int8.onnx"
DET = ppocr_model("det")
needs_det = pytest.mark.skipif(DET is None, reason="rapidocr-onnxruntime (PP-OCR detector) not installed")


def _first_frame(path):
    cap = cv2.VideoCapture(str(path))
    ok, f = cap.read()
    cap.release()
    assert ok
    return f


@needs_det
def test_db_detector_finds_small_words_whole_frame_and_tiled(tmp_path):
    from runtime.detector import DBDetector

    truth = render_video(str(tmp_path / "v.mp4"), n_words=8, size=(360, 640), frames=1, font_px=14)[0]
    frame = _first_frame(tmp_path / "v.mp4")
    for tiles in ((1, 1), (2, 2)):
        dets = DBDetector(str(DET), max_side=640, tiles=tiles)(frame)
        boxes = np.stack([d.box for d in dets])
        iou = iou_matrix(np.array([t["box"] for t in truth]), boxes)
        assert (iou.max(1) > 0.3).mean() >= 0.75, (tiles, iou.max(1))
        assert len(dets) <= len(truth) + 2  # tile duplicates were merged
    # a region of interest: only the words inside it, in frame coordinates
    x0, y0, x1, y1 = truth[0]["box"]
    roi = (int(x0) - 20, int(y0) - 15, int(x1 - x0) + 40, int(y1 - y0) + 30)
    dets = DBDetector(str(DET), max_side=640)(frame, roi)
    assert len(dets) == 1 and iou_matrix(np.array([truth[0]["box"]]), dets[0].box[None])[0, 0] > 0.3


def test_tracker_associates_predicts_and_forgets():
    tr = Tracker(iou=0.3, max_misses=1)
    tr.update(np.array([[0, 0, 20, 10], [100, 100, 140, 120]]), frame=0)
    tr.update(np.array([[5, 0, 25, 10], [100, 100, 140, 120]]), frame=5)  # first moves 1 px / frame
    assert [t.id for t in tr.tracks] == [1, 2] and [t.hits for t in tr.tracks] == [2, 2]
    np.testing.assert_allclose(tr.tracks[0].predict(10), [10, 0, 30, 10])
    tr.update(np.array([[10, 0, 30, 10]]), frame=10)  # second word missed once: kept
    assert len(tr.tracks) == 2
    tr.update(np.array([[15, 0, 35, 10], [300, 300, 320, 310]]), frame=15)  # missed twice: dropped; a new word
    assert sorted(t.id for t in tr.tracks) == [1, 3]


def test_vote_weighs_confidence():
    v = Vote()
    for text, c in [("he1lo", 0.3), ("hello", 0.9), ("he1lo", 0.35), ("", 0.99)]:
        v.add(text, c)
    assert v.best[0] == "hello" and v.readings == 3


@pytest.mark.skipif(not MODEL.is_file(), reason="shipped weights missing")
def test_voting_over_blurry_frames_beats_single_frames():
    """One word seen over several degraded frames: the fused string is right more often than single frames."""
    from runtime.recognizer import OnnxRecognizer
    from runtime.tracking import Vote

    rec = OnnxRecognizer(str(MODEL))
    rng = np.random.default_rng(0)
    from apps.synthetic_video import WORDS, _font
    from PIL import Image, ImageDraw

    font = _font(16)
    single, fused = [], []
    for w in WORDS:
        im = Image.new("RGB", (90, 28), (215, 215, 210))
        ImageDraw.Draw(im).text((6, 4), w, fill=(30, 30, 30), font=font)
        base = np.asarray(im)
        v = Vote()
        for _ in range(7):
            img = cv2.GaussianBlur(base, (0, 0), rng.uniform(0.8, 1.6))
            img = np.clip(img + rng.normal(0, 18, img.shape), 0, 255).astype(np.uint8)
            img = cv2.resize(cv2.resize(img, (40, 12), interpolation=cv2.INTER_AREA), (90, 28))
            r = rec([img])[0]
            single.append(r.text == w)
            v.add(r.text, r.confidence)
        fused.append(v.best[0] == w)
    assert np.mean(fused) >= np.mean(single), (np.mean(fused), np.mean(single))


@needs_det
@pytest.mark.skipif(not MODEL.is_file(), reason="shipped weights missing")
def test_camera_app_headless_on_a_rendered_video(tmp_path):
    video = tmp_path / "words.mp4"
    truth = render_video(str(video), n_words=8, size=(360, 640), frames=24, font_px=18, speed=1.0)
    r = subprocess.run([sys.executable, "-m", "apps.camera", "--source", str(video), "--detector", str(DET),
                        "--det-side", "640", "--headless", "--sync-detect", "--detect-every", "4",
                        "--jsonl", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "annotated.mp4")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(lines) == 24 and [ln["frame"] for ln in lines] == list(range(24))
    assert set(lines[0]["ms"]) == {"detect", "pack", "schedule", "recognize", "decode", "track"}
    assert sum(ln["detected"] for ln in lines) == 6  # frames 0, 4, ..., 20
    last, true_last = lines[-1], truth[-1]
    out_boxes = np.array([w["box"] for w in last["words"]])
    iou = iou_matrix(np.array([t["box"] for t in true_last]), out_boxes)
    right = 0
    for i, t in enumerate(true_last):
        j = int(iou[i].argmax())
        assert iou[i, j] > 0.3, f"{t['text']} not tracked to its position (IoU {iou[i, j]:.2f})"
        right += last["words"][j]["text"] == t["text"]
    assert right >= 6, [w["text"] for w in last["words"]]
    cap = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 24
    cap.release()


@pytest.mark.skipif(not MODEL.is_file(), reason="shipped weights missing")
def test_camera_app_fixed_rois_and_bad_arguments(tmp_path):
    video = tmp_path / "still.avi"
    truth = render_video(str(video), n_words=4, size=(240, 480), frames=6, font_px=20, speed=0.0)
    x0, y0, x1, y1 = truth[0][1]["box"]
    roi = f"{int(x0) - 4},{int(y0) - 4},{int(x1 - x0) + 8},{int(y1 - y0) + 8}"
    r = subprocess.run([sys.executable, "-m", "apps.camera", "--source", str(video), "--roi", roi, "--headless",
                        "--jsonl", str(tmp_path / "r.jsonl"), "--max-frames", "4"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(len(ln["words"]) == 1 for ln in lines)
    assert lines[-1]["words"][0]["text"] == truth[0][1]["text"]
    for args, msg in [(["--roi", "1,2,3"], "--roi"), (["--roi", "0,0,10,10", "--source", "nope.mp4"], "no such video"),
                      (["--source", "csi://0", "--roi", "0,0,5,5"], "GStreamer")]:
        argv = ["--source", str(video)] + args if "--source" not in args else args
        r = subprocess.run([sys.executable, "-m", "apps.camera", "--headless", *argv], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
        if msg == "GStreamer":
            from apps.sources import gstreamer_available

            if gstreamer_available():
                continue
        assert r.returncode == 2 and msg in r.stderr, r.stderr


def test_parse_source_kinds():
    from apps.sources import SourceError, parse_source

    assert parse_source("0").kind == "index"
    assert parse_source("usb://2", gst=False).target == 2
    assert "nvv4l2decoder mjpeg=1" in parse_source("usb://1", gst=True).target
    assert "nvarguscamerasrc sensor-id=0" in parse_source("csi://0").target
    assert parse_source("rtsp://cam/stream").kind == "url"
    assert parse_source("videotestsrc ! appsink").kind == "gstreamer"
    with pytest.raises(SourceError, match="usb://N"):
        parse_source("usb://x")


class _FlakyCamera:
    """A camera stand-in (no hardware here): yields frames fast, then fails once to exercise the reconnect."""

    def __init__(self, fail_after: int):
        self.n, self.fail_after = 0, fail_after

    def read(self):
        time.sleep(0.002)
        self.n += 1
        if self.n == self.fail_after:
            return False, None
        return True, np.full((8, 8, 3), self.n % 255, np.uint8)

    def release(self):
        pass


def test_live_reader_keeps_newest_frame_and_reconnects():
    from apps.sources import LatestFrameReader, SourceSpec

    opened = []

    def opener(spec):
        opened.append(1)
        return _FlakyCamera(fail_after=20 if len(opened) == 1 else 10 ** 9)

    rd = LatestFrameReader(SourceSpec("index", 0, True), opener=opener, backoff=0.01)
    seen = []
    for _ in range(10):
        item = rd.read(timeout=2)
        assert item is not None
        seen.append(item[0])
        time.sleep(0.03)  # slow processing: the capture thread must drop, not queue
    rd.close()
    assert seen == sorted(seen) and rd.dropped > 0 and rd.reconnects == 1 and len(opened) == 2


def test_async_detection_never_blocks_recognition():
    from runtime.detector import Detection
    from runtime.pipeline import Pipeline

    class SlowDetector:
        def __call__(self, frame, roi=None):
            time.sleep(0.2)
            return [Detection(np.array([[2, 2], [40, 2], [40, 14], [2, 14]], np.float32), 0.9)]

    class Rec:
        size, input_dtype = (16, 64), np.float32
        info = types.SimpleNamespace(mean=0.5, std=0.5)

        def run(self, x):
            p = np.zeros((len(x), 4, 3), np.float32)
            p[:, :, 1] = 1
            return p

        from runtime.charset import CTCTokenizer

        tokenizer = CTCTokenizer("ab")

    p = Pipeline(Rec(), SlowDetector(), async_detect=True)
    frame = np.zeros((32, 64, 3), np.uint8)
    t = time.perf_counter()
    res = [p.process(frame, i) for i in range(3)]
    assert time.perf_counter() - t < 0.15  # the detector's 0.2 s did not stall the frames
    for _ in range(50):
        time.sleep(0.02)
        r = p.process(frame, 3)
        if r.detected:
            break
    p.close()
    assert r.detected and r.words[0].text == "a" and not res[0].words


def test_tensorrt_recognizer_with_fake_tensorrt_and_pycuda(tmp_path, monkeypatch):
    """No TensorRT or GPU here: fake modules stand in so the backend's own code (sidecar, shapes, buffers, copies,
    batching) runs. The fake engine returns a fixed distribution that decodes to 'ab'."""
    from runtime import trt_backend

    (tmp_path / "m.engine").write_bytes(b"engine")
    meta = {"tinytext.decoder": "ctc", "tinytext.charset": "ab", "tinytext.input_height": "16",
            "tinytext.input_width": "64", "tinytext.batch_max": "4"}
    (tmp_path / "m.engine.json").write_text(json.dumps(meta))
    mem = {}

    class Drv:
        class Stream:
            handle = 7

            def synchronize(self):
                pass

        @staticmethod
        def mem_alloc(n):
            mem[len(mem) + 1] = bytearray(n)
            return len(mem)

        @staticmethod
        def memcpy_htod_async(ptr, host, stream):
            mem[ptr][: host.nbytes] = host.tobytes()

        @staticmethod
        def memcpy_dtoh_async(host, ptr, stream):
            host.view(np.uint8).reshape(-1)[:] = np.frombuffer(bytes(mem[ptr][: host.nbytes]), np.uint8)

    class Ctx:
        def set_input_shape(self, name, shape):
            self.shape = shape

        def get_tensor_shape(self, name):
            return (self.shape[0], 4, 3)

        def set_tensor_address(self, name, ptr):
            setattr(self, name, ptr)

        def execute_async_v3(self, stream):
            out = np.zeros((self.shape[0], 4, 3), np.float32)
            out[:, 0, 1] = out[:, 1, 0] = out[:, 2, 2] = out[:, 3, 0] = 1  # frames: a, blank, b, blank
            mem[self.probs][: out.nbytes] = out.tobytes()
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["images", "probs"][i]

        def get_tensor_mode(self, n):
            return "in" if n == "images" else "out"

        def get_tensor_dtype(self, n):
            return "f32"

        def create_execution_context(self):
            return Ctx()

    trt = types.SimpleNamespace(
        Logger=type("L", (), {"WARNING": 1, "__init__": lambda self, lvl: None}),
        Runtime=lambda log: types.SimpleNamespace(deserialize_cuda_engine=lambda b: Engine()),
        TensorIOMode=types.SimpleNamespace(INPUT="in"), float32="f32", float16="f16", int32="i32", int8="i8")
    rec = trt_backend.TensorRTRecognizer(str(tmp_path / "m.engine"), trt=trt, api=("pycuda", Drv))
    out = rec([np.zeros((10, 30, 3), np.uint8)] * 6)  # 6 > max batch 4: split
    assert [o.text for o in out] == ["ab"] * 6
    frame = np.zeros((40, 80, 3), np.uint8)
    assert [o.text for o in rec.read_boxes(frame, [[0, 0, 40, 20], [10, 10, 70, 30]])] == ["ab", "ab"]
    (tmp_path / "m.engine.json").unlink()
    with pytest.raises(ValueError, match="sidecar"):
        trt_backend.TensorRTRecognizer(str(tmp_path / "m.engine"), trt=trt, api=("pycuda", Drv))
