"""The real-time reading pipeline, camera-agnostic: frame in, tracked words with fused strings out.

Per frame: boxes (fixed regions of interest, or tracks predicted between detections and found again on the frame)
-> one packed batch straight from the frame (C path) -> the read scheduler picks the tracks worth reading within
what the frame period leaves (``runtime.scheduler``; or all of them with ``schedule=None``) -> recognizer ->
decode -> each read fused into its track (``runtime.tracking.Vote``). Detection runs at its own rate: every
``detect_every`` frames inline, or (``async_detect``) in a background thread on the newest frame, so a slow
detector never stalls recognition; its results are associated with the tracks when they arrive.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import cv2
import numpy as np

from . import fastpath
from .cli import InputError
from .detector import DBDetector
from .recognizer import Recognizer
from .scheduler import ReadScheduler, ScheduleCfg
from .tracking import Tracker

__all__ = ["Pipeline", "FrameResult", "WordResult", "parse_roi"]

STAGES = ("detect", "pack", "schedule", "recognize", "decode", "track")


@dataclass
class WordResult:
    """A tracked word on one frame."""

    track: int
    box: list[float]  # x0, y0, x1, y1 in frame pixels
    text: str  # fused over the track's reads (runtime.tracking.Vote)
    confidence: float  # the fused text's confidence: how sure the reads were and how many agree
    frame_text: str  # the latest reading (this frame's when ``read``)
    frame_confidence: float
    read: bool = True  # whether the recognizer read this word on this frame
    quad: list[list[float]] | None = None  # the detector's corners at its last detection (None: axis-aligned box)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["box"] = [round(v, 1) for v in self.box]
        d["confidence"] = round(self.confidence, 4)
        d["frame_confidence"] = round(self.frame_confidence, 4)
        if self.quad is None:
            del d["quad"]
        return d


@dataclass
class FrameResult:
    """One frame's tracked words (``TextReader.track`` and ``stream``, ``apps.camera --jsonl``)."""

    frame: int
    timestamp: float  # capture time, seconds (time.monotonic)
    words: list[WordResult]
    ms: dict[str, float] = field(default_factory=dict)  # per-stage milliseconds
    detected: bool = False  # whether detection results were folded in on this frame
    latency_ms: float = 0.0  # capture -> result
    reads: int = 0  # words read by the recognizer on this frame
    skipped: int = 0  # tracked words the scheduler did not read (their text is the fused one so far)
    image: np.ndarray | None = field(default=None, repr=False, compare=False)  # the frame (set by stream)

    def to_dict(self) -> dict:
        """The JSON form (without the image), one line of ``apps.camera --jsonl``."""
        return {"frame": self.frame, "timestamp": self.timestamp, "words": [w.to_dict() for w in self.words],
                "ms": {k: round(v, 3) for k, v in self.ms.items()}, "detected": self.detected,
                "latency_ms": round(self.latency_ms, 3), "reads": self.reads, "skipped": self.skipped}


def parse_roi(text: str) -> tuple[int, int, int, int]:
    """``x,y,w,h`` -> ints; a clear error naming the argument otherwise."""
    try:
        x, y, w, h = (int(float(v)) for v in text.split(","))
    except ValueError:
        raise InputError(f"--roi {text!r}: expected x,y,w,h in pixels") from None
    if w <= 0 or h <= 0:
        raise InputError(f"--roi {text!r}: width and height must be > 0")
    return x, y, w, h


class _AsyncDetector:
    """Runs the detector in a thread on the newest submitted frame; results are picked up when ready."""

    def __init__(self, detect) -> None:
        self.detector = detect
        self._cv = threading.Condition()
        self._job: tuple[int, np.ndarray] | None = None
        self._result: tuple[int, list, float] | None = None
        self._busy = False
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="detector", daemon=True)
        self._thread.start()

    def submit(self, frame_idx: int, frame: np.ndarray) -> None:
        with self._cv:
            if not self._busy and self._job is None:
                self._job = (frame_idx, frame.copy())
                self._cv.notify()

    def poll(self):
        with self._cv:
            r, self._result = self._result, None
            return r

    def _loop(self) -> None:
        while True:
            with self._cv:
                while self._job is None and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                idx, frame = self._job
                self._job, self._busy = None, True
            t = time.perf_counter()
            dets = self.detector(frame)
            ms = (time.perf_counter() - t) * 1000
            with self._cv:
                self._result, self._busy = (idx, dets, ms), False

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=5)


class Pipeline:
    def __init__(self, recognizer: Recognizer, detector: DBDetector | None = None,
                 rois: Sequence[tuple[int, int, int, int]] = (), detect_every: int = 5, async_detect: bool = False,
                 tracker: Tracker | None = None, min_box: float = 4.0,
                 schedule: ScheduleCfg | None = None, follow: bool = True) -> None:
        """``schedule``: how to spend the recognizer on the tracks (``runtime.scheduler``); None reads every track
        on every frame. ``follow``: between detections, find each tracked word's crop again on every frame
        (``Tracker.follow``), so shake does not carry the box off its word."""
        if detector is None and not rois:
            raise InputError("pipeline: give regions of interest (--roi) or a detector (--detector)")
        self.rec, self.detector, self.min_box = recognizer, detector, min_box
        self.rois = np.array([[x, y, x + w, y + h] for x, y, w, h in rois], np.float64).reshape(-1, 4)
        self.detect_every = max(1, int(detect_every))
        self.tracker = tracker or Tracker()
        self.scheduler = ReadScheduler(schedule) if schedule is not None else None
        self._async = _AsyncDetector(self._detect) if detector is not None and async_detect else None
        # the loop's cost per frame outside recognition (this method's other stages and the caller's work between
        # two calls, time spent waiting for a frame aside), a moving average: what the frame period leaves to read
        self._overhead_ms: float | None = None
        self.follow = follow
        self._prev: tuple[int, np.ndarray] | None = None  # the last frame, grey, for following words between detections
        self._t_end: float | None = None
        # CTC reads fuse by each candidate's probability under every read (runtime.fusion)
        self._ctc = getattr(recognizer.tokenizer, "kind", "") == "ctc"
        if detector is None:  # fixed regions: one permanent track per region, read every frame
            self.tracker.update(self.rois, 0)
            self.tracker.max_misses = 1 << 30

    def _detect(self, frame: np.ndarray) -> list:
        """The detector on the whole frame, or only inside the regions of interest when both are given."""
        if not len(self.rois):
            return self.detector(frame)
        return [d for x0, y0, x1, y1 in self.rois for d in self.detector(frame, (x0, y0, x1 - x0, y1 - y0))]

    def _fold(self, dets, frame_idx: int) -> None:
        boxes = np.stack([d.box for d in dets]) if dets else np.zeros((0, 4))
        quads = np.stack([d.quad for d in dets]) if dets else None
        self.tracker.update(boxes, frame_idx, quads)

    def read_budget_ms(self) -> float | None:
        """Recognition milliseconds the next frame may spend: the frame period (``ScheduleCfg.fps``) less the loop's
        measured overhead; None before anything is measured or without a frame rate."""
        fps = self.scheduler.cfg.fps if self.scheduler is not None else 0.0
        if not fps or self._overhead_ms is None:
            return None
        return max(0.0, 1000.0 / fps - self._overhead_ms)

    def process(self, frame: np.ndarray, frame_idx: int, t_capture: float | None = None) -> FrameResult:
        t_start = time.monotonic()
        # the caller's work since the last frame; the time until the frame was captured was spent waiting for it
        outside = 0.0 if self._t_end is None else t_start - self._t_end
        if t_capture is not None and self._t_end is not None:
            outside -= min(outside, max(0.0, t_capture - self._t_end))
        t_capture = t_start if t_capture is None else t_capture
        ms = dict.fromkeys(STAGES, 0.0)
        detected = False
        if self.detector is not None:
            if self._async is not None:
                got = self._async.poll()
                if got is not None:
                    idx, dets, det_ms = got
                    ms["detect"] = det_ms
                    t = time.perf_counter()
                    self._fold(dets, idx)
                    ms["track"] += (time.perf_counter() - t) * 1000
                    detected = True
                self._async.submit(frame_idx, frame)
            elif frame_idx % self.detect_every == 0:
                t = time.perf_counter()
                dets = self._detect(frame)
                ms["detect"] = (time.perf_counter() - t) * 1000
                t = time.perf_counter()
                self._fold(dets, frame_idx)
                ms["track"] += (time.perf_counter() - t) * 1000
                detected = True
        if self.follow and self.detector is not None and self.tracker.tracks:
            t = time.perf_counter()
            grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            if self._prev is not None:
                self.tracker.follow(self._prev[1], grey, self._prev[0], frame_idx)
            self._prev = (frame_idx, grey)
            ms["track"] += (time.perf_counter() - t) * 1000
        tracks = list(self.tracker.tracks)
        words: list[WordResult] = []
        n_read = 0
        if tracks:
            H, W = frame.shape[:2]
            raw = self.tracker.boxes(frame_idx)
            boxes, ok = fastpath.clip_boxes(raw, W, H, self.min_box)
            live = [t for t, k in zip(tracks, ok) if k]
            t = time.perf_counter()
            x = fastpath.pack(frame, boxes[ok], self.rec.size, self.rec.info.mean, self.rec.info.std,
                              swap_rb=True, dtype=self.rec.input_dtype)
            ms["pack"] = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            if self.scheduler is None:
                pick, sigs = list(range(len(live))), None
            else:
                # cut by the frame's edge by more than a pixel: the crop holds part of the word
                partial = (np.abs(boxes - raw) > 1.0).any(1)[ok]
                pick, sigs = self.scheduler.choose(frame_idx, live, x, partial, self.read_budget_ms())
            ms["schedule"] = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            # the picked crops in the order picked (most urgent first); all of them in order need no copy
            probs = self.rec.run(x if pick == list(range(len(x))) else x[pick]) if pick else None
            ms["recognize"] = (time.perf_counter() - t) * 1000
            if self.scheduler is not None:
                self.scheduler.record(ms["recognize"], len(pick))
            t = time.perf_counter()
            reads = self.rec.tokenizer.decode(probs) if pick else []
            ms["decode"] = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            for k, (i, r) in enumerate(zip(pick, reads)):
                tr = live[i]
                if sigs is not None:
                    self.scheduler.observe(frame_idx, tr, sigs[i], r.text, r.confidence)
                tr.vote.add(r.text, r.confidence, probs[k] if self._ctc else None, self.rec.tokenizer.char_ids)
                tr.last_read = (r.text, r.confidence)
            picked = set(pick)
            for i, (tr, b) in enumerate(zip(live, boxes[ok])):
                text, share = tr.vote.best
                quad = None if tr.quad is None else (np.asarray(tr.quad, np.float64) +
                                                     (tr.predict(frame_idx) - tr.box)[:2]).round(1).tolist()
                words.append(WordResult(tr.id, [float(v) for v in b], text, share, *tr.last_read, read=i in picked,
                                        quad=quad))
            n_read = len(pick)
            ms["track"] += (time.perf_counter() - t) * 1000
        res = FrameResult(frame_idx, t_capture, words, ms, detected)
        res.reads = n_read
        res.skipped = len(words) - n_read
        self._t_end = time.monotonic()
        res.latency_ms = (self._t_end - t_capture) * 1000
        over = outside * 1000 + (self._t_end - t_start) * 1000 - ms["recognize"]
        self._overhead_ms = over if self._overhead_ms is None else 0.9 * self._overhead_ms + 0.1 * over
        return res

    def close(self) -> None:
        if self._async is not None:
            self._async.close()
