"""runtime.detector, runtime.tracking and runtime.pipeline: small words found whole-frame and tiled, tracks
that predict and forget, confidence voting over frames, detection in its own thread."""
import threading
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

    release = threading.Event()

    class SlowDetector:  # busy until the test releases it: no timing involved
        def __call__(self, frame, roi=None):
            release.wait(10)
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
    res = [p.process(frame, i) for i in range(3)]
    assert not any(r.detected for r in res)  # the frames went on while the detector was still busy
    release.set()
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


def test_the_frame_period_less_the_loops_own_work_is_the_read_budget(monkeypatch):
    """The scheduler reads what the frame period leaves: the caller's work between frames counts, the time spent
    waiting for the next frame does not. A fake clock makes the arithmetic exact: only the recognizer (2 ms a crop)
    and the caller (8 ms a frame) advance it, so the loop's own stages cost nothing."""
    from runtime import pipeline as pl
    from runtime.charset import CTCTokenizer
    from runtime.scheduler import ScheduleCfg

    now = [100.0]
    monkeypatch.setattr(pl, "time", types.SimpleNamespace(monotonic=lambda: now[0], perf_counter=lambda: now[0]))

    class Rec:
        size, input_dtype = (16, 64), np.float32
        info = types.SimpleNamespace(mean=0.5, std=0.5)
        tokenizer = CTCTokenizer("ab")

        def run(self, x):
            now[0] += 0.002 * len(x)  # 2 ms a crop
            p = np.zeros((len(x), 4, 3), np.float32)
            p[:, :, 1], p[:, :, 2] = 0.55, 0.45  # an unsure "a": every word stays due
            return p

    rois = [(i * 20, 0, 16, 12) for i in range(16)]
    frame = np.random.default_rng(0).integers(0, 255, (32, 320, 3), dtype=np.uint8)
    p = pl.Pipeline(Rec(), rois=rois, schedule=ScheduleCfg(fps=50.0, new_reads=0))  # a 20 ms period
    assert p.read_budget_ms() is None  # nothing measured yet
    for i in range(100):  # the overhead is a moving average: 100 frames settle it
        now[0] += 0.008  # the caller's own work: 8 ms a frame
        r = p.process(frame, i)
    busy, busy_reads = p.read_budget_ms(), r.reads
    assert busy == pytest.approx(12.0, abs=0.01) and busy_reads >= 1, (busy, busy_reads)  # 20 - 8 ms
    q = pl.Pipeline(Rec(), rois=rois, schedule=ScheduleCfg(fps=50.0, new_reads=0))
    for i in range(100):
        now[0] += 0.008  # waiting for a camera's frame: captured after the wait
        r = q.process(frame, i, now[0])
    assert q.read_budget_ms() == pytest.approx(20.0, abs=0.01)  # the wait is not the loop's work: the whole period is left
    assert r.reads > busy_reads, (busy_reads, r.reads)


def test_each_read_goes_to_its_own_word_whatever_order_the_scheduler_picks():
    """The scheduler returns the most urgent first; when it picks every word in another order, each reading must
    still land on the word it read (regression: the whole batch was run unpermuted)."""
    from runtime.charset import CTCTokenizer
    from runtime.pipeline import Pipeline
    from runtime.scheduler import ScheduleCfg

    class Rec:  # reads a crop's brightness as one letter: dark "a", mid "b", bright "c"
        size, input_dtype = (16, 64), np.float32
        info = types.SimpleNamespace(mean=0.5, std=0.5)
        tokenizer = CTCTokenizer("abc")

        def run(self, x):
            level = np.clip(((x.mean((1, 2, 3)) + 1) * 1.5).astype(int), 0, 2)
            p = np.zeros((len(x), 4, 4), np.float32)
            p[np.arange(len(x)), :, level + 1] = 1.0
            return p

    frame = np.zeros((20, 90, 3), np.uint8)
    for k, v in enumerate((20, 128, 235)):
        frame[:, k * 30:(k + 1) * 30] = v
    p = Pipeline(Rec(), rois=[(k * 30 + 2, 2, 26, 16) for k in range(3)], schedule=ScheduleCfg(max_reads=3))
    p.scheduler.choose = lambda frame, tracks, x, partial=None, budget_ms=None: ([2, 0, 1], np.zeros((3, 4, 16)))
    r = p.process(frame, 0)
    assert [w.frame_text for w in r.words] == ["a", "b", "c"] and all(w.read for w in r.words)


def test_tracks_follow_their_word_between_detections():
    """Shake and a change of speed between two detections: each track finds its word's crop again on the next frame
    (a flat region keeps its prediction), and the next detection takes over."""
    rng = np.random.default_rng(0)
    prev = np.full((120, 200), 128, np.uint8)
    prev[40:60, 50:110] = rng.integers(0, 255, (20, 60))  # a textured word
    cur = np.roll(prev, (-2, 3), axis=(0, 1))  # the camera shook: 3 px right, 2 px up
    tr = Tracker()
    tr.update(np.array([[50, 40, 110, 60], [140, 80, 180, 100]]), frame=0)  # the second box is on flat wall
    tr.follow(prev, cur, 0, 1)
    np.testing.assert_allclose(tr.tracks[0].predict(1), [53, 38, 113, 58])
    np.testing.assert_allclose(tr.tracks[1].predict(1), [140, 80, 180, 100])
    tr.update(np.array([[52, 40, 112, 60]]), frame=5)  # a detection: its box, the following's offset gone
    np.testing.assert_allclose(tr.tracks[0].predict(5), [52, 40, 112, 60])
