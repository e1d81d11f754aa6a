"""apps.camera end to end on rendered videos (detector or fixed regions, JSONL, annotated video, bad options) and
runtime.sources (source kinds, the live reader that keeps the newest frame and reconnects)."""
import json
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from apps.synthetic_video import render_video, rois
from conftest import CNN_INT8, DET, ROOT, needs_det
from runtime.tracking import iou_matrix


@needs_det
@pytest.mark.skipif(not CNN_INT8.is_file(), reason="shipped weights missing")
def test_camera_app_headless_on_a_rendered_video(tmp_path):
    video = tmp_path / "words.mp4"
    truth = render_video(str(video), n_words=8, size=(360, 640), frames=24, font_px=18, speed=1.0)
    r = subprocess.run([sys.executable, "-m", "apps.camera", "--source", str(video), "--detector", str(DET),
                        "--det-side", "640", "--headless", "--sync-detect", "--detect-every", "4",
                        "--jsonl", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "annotated.mp4"),
                        "--contact-sheet", str(tmp_path / "sheet.png")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    sheet = cv2.imread(str(tmp_path / "sheet.png"))  # one 200 x 62 px cell per word of the last frame, 4 a row
    n = len(lines[-1]["words"])
    assert n >= 4 and sheet.shape == (62 * -(-n // 4), 200 * 4, 3) and sheet.min() < 100  # crops and text drawn
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


@pytest.mark.skipif(not CNN_INT8.is_file(), reason="shipped weights missing")
def test_camera_app_fixed_rois_and_bad_arguments(tmp_path):
    video = tmp_path / "still.avi"
    truth = render_video(str(video), n_words=4, size=(240, 480), frames=6, font_px=20, speed=0.0)
    roi = ",".join(map(str, rois(truth[0])[1]))
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
            from runtime.sources import gstreamer_available

            if gstreamer_available():
                continue
        assert r.returncode == 2 and msg in r.stderr, r.stderr


def test_parse_source_kinds():
    from runtime.sources import SourceError, parse_source

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
    from runtime.sources import LatestFrameReader, SourceSpec

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
