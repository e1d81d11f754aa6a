"""runtime.detector, runtime.tracking and runtime.pipeline: small words found whole-frame and tiled, tracks
that predict and forget, confidence voting over frames, detection in its own thread."""
import time
import types

import cv2
import numpy as np
import pytest

from apps.synthetic_video import render_video
from conftest import CNN_INT8, DET, needs_det
from runtime.tracking import Tracker, Vote, iou_matrix


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


@pytest.mark.skipif(not CNN_INT8.is_file(), reason="shipped weights missing")
def test_voting_over_blurry_frames_beats_single_frames():
    """One word seen over several degraded frames: the fused string is right more often than single frames."""
    from runtime.recognizer import OnnxRecognizer
    from runtime.tracking import Vote

    rec = OnnxRecognizer(str(CNN_INT8))
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


def test_coverage_is_the_share_of_the_true_box_inside_each_box():
    from runtime.tracking import coverage

    truth = [[0, 0, 10, 10]]
    c = coverage(truth, [[5, 0, 15, 10], [-5, -5, 20, 20], [20, 20, 30, 30]])
    assert c.tolist() == [[0.5, 1.0, 0.0]]
    assert iou_matrix(truth, [[-5, -5, 20, 20]])[0, 0] == 100 / 625  # a larger box: low IoU, full coverage
