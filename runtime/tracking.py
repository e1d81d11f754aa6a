"""Tracking words between detections, and fusing each track's readings over frames.

Detection is slow and runs at its own rate; recognition runs on every frame. Between detections a track's box
moves with the velocity measured between its last two detections (constant-velocity prediction), corrected on
every frame by finding the word's crop of the previous frame again (``Tracker.follow``). Detections are
associated with tracks greedily by IoU of the predicted box. Each reading of a track adds evidence to its
candidate strings (``Vote``); the track's text is the best supported one, so one sharp frame outweighs several
unsure blurry ones and a word read over many frames is right more often than any single frame.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

__all__ = ["Track", "Tracker", "iou_matrix", "coverage", "Vote"]


def _intersections(a, b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, M) intersection areas of N and M (x0, y0, x1, y1) boxes, and each side's areas."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    return inter, (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter, area_a, area_b = _intersections(a, b)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def coverage(truth: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, M): the share of each of N true boxes' area that each of M boxes covers (how the benchmarks match a true
    word to an output box: a detector's box is larger than the glyphs' tight box, which IoU would punish)."""
    inter, area, _ = _intersections(truth, boxes)
    return inter / np.maximum(area[:, None], 1e-9)


@dataclass
class Vote:
    """A track's readings fused over frames.

    Each reading adds evidence to candidate strings: for a CTC recognizer (``add`` given the read's output
    columns), the probability the read gives each candidate (``runtime.fusion``), so a read of "BAJAS" that also
    gives "REBAJAS" a fair chance counts for both; otherwise its confidence, to its own string. The fused text is
    the candidate with the most evidence. Its confidence is that evidence over the reads' total weight plus
    ``PRIOR``, a pseudo-read of doubt: one read at 0.15 gives 0.12, one at 0.99 gives 0.79, three agreeing reads at
    0.99 give 0.91 (two give 0.88), two reads that disagree at 0.9 give 0.40. So a word is only as certain as its reads were sure
    and agree, however few they are. An empty read adds no candidate but counts as a read: the word did not show.
    """

    totals: dict[str, float] = field(default_factory=dict)  # evidence per candidate string
    readings: int = 0  # reads with text
    weight: float = 0.0  # the reads' total weight (1 a read; scaled by forget)
    # the last MAX_KEPT reads' output columns and weights, to score a candidate first met later
    kept: deque = field(default_factory=lambda: deque(maxlen=Vote.MAX_KEPT))
    ids: dict[str, list[int]] = field(default_factory=dict)  # candidate -> class ids (CTC reads)

    PRIOR = 0.25
    MAX_KEPT = 32
    MAX_CANDIDATES = 8

    def add(self, text: str, conf: float, probs: np.ndarray | None = None,
            encode: Callable[[str], list[int]] | None = None) -> None:
        """One reading: its greedy ``text`` and ``conf``; with ``probs`` (its (T, C) CTC output columns) and
        ``encode`` (a string's class ids), its probability for every candidate."""
        self.weight += 1.0
        if text:
            self.readings += 1
        if probs is None or encode is None:
            if text:
                self.totals[text] = self.totals.get(text, 0.0) + max(float(conf), 0.0)
            return
        from .fusion import ctc_string_probs

        if text and text not in self.totals:
            self.ids[text] = encode(text)
            # what the kept earlier reads said of the new candidate
            past = (ctc_string_probs(np.stack([p for p, _ in self.kept]), [self.ids[text]])[:, 0]
                    if self.kept else np.zeros(0))
            self.totals[text] = float(sum(w * v for (_, w), v in zip(self.kept, past)))
        cands = list(self.totals)
        if cands:
            now = ctc_string_probs(probs[None], [self.ids[c] for c in cands])[0]
            for c, v in zip(cands, now):
                self.totals[c] += float(v)
        self.kept.append((np.asarray(probs, np.float32), 1.0))
        if len(self.totals) > self.MAX_CANDIDATES:  # the weakest candidates go; a later read may bring one back
            for c in sorted(self.totals, key=self.totals.get)[:len(self.totals) - self.MAX_CANDIDATES]:
                del self.totals[c], self.ids[c]

    def forget(self, factor: float) -> None:
        """Scale the evidence gathered so far (the scheduler calls it when the crop's content changed)."""
        self.totals = {k: v * factor for k, v in self.totals.items()}
        self.weight *= factor
        self.kept = deque(((p, w * factor) for p, w in self.kept), maxlen=self.MAX_KEPT)

    @property
    def best(self) -> tuple[str, float]:
        """(fused text, its confidence: its evidence / (the reads' weight + PRIOR))."""
        if not self.totals:
            return "", 0.0
        text = max(self.totals, key=self.totals.get)
        return text, min(1.0, self.totals[text] / (self.weight + self.PRIOR))


@dataclass
class Track:
    id: int
    box: np.ndarray  # (x0, y0, x1, y1) at the last detection
    frame: int  # frame index of the last detection
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # per frame
    hits: int = 1
    misses: int = 0
    measured: bool = False  # whether velocity has been measured yet
    vote: Vote = field(default_factory=Vote)
    quad: np.ndarray | None = None
    last_read: tuple[str, float] = ("", 0.0)  # the latest reading (text, confidence), whichever frame it was
    offset: np.ndarray = field(default_factory=lambda: np.zeros(4))  # frame-to-frame following since the detection

    def predict(self, frame: int) -> np.ndarray:
        return self.box + self.velocity * (frame - self.frame) + self.offset

    @property
    def text(self) -> str:
        return self.vote.best[0]


class Tracker:
    def __init__(self, iou: float = 0.15, max_misses: int = 2, smoothing: float = 0.5, min_dt: int = 3) -> None:
        """``iou``: least IoU of a predicted box and a detection to match (small words drift between slow
        detections); ``max_misses``: detection rounds a track survives unmatched; ``smoothing``: weight of a new
        velocity measurement; ``min_dt``: frames between two detections needed to measure velocity (over fewer,
        the detector's pixel jitter would dominate)."""
        self.iou, self.max_misses, self.smoothing, self.min_dt = iou, max_misses, smoothing, min_dt
        self.tracks: list[Track] = []
        self._next = 1

    def update(self, boxes: np.ndarray, frame: int, quads: np.ndarray | None = None) -> list[Track]:
        """Associate a detection round (boxes (N, 4) seen at ``frame``) with the tracks; returns the live tracks."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        pred = np.stack([t.predict(frame) for t in self.tracks]) if self.tracks else np.zeros((0, 4))
        iou = iou_matrix(pred, boxes) if len(pred) and len(boxes) else np.zeros((len(pred), len(boxes)))
        matched_t: set[int] = set()
        matched_d: set[int] = set()
        # greedy by IoU, best pairs first
        for flat in np.argsort(-iou, axis=None):
            ti, di = divmod(int(flat), len(boxes))
            if iou[ti, di] < self.iou:
                break
            if ti in matched_t or di in matched_d:
                continue
            matched_t.add(ti)
            matched_d.add(di)
            t = self.tracks[ti]
            dt = frame - t.frame
            if dt >= self.min_dt:
                v = (boxes[di] - t.box) / dt
                t.velocity = self.smoothing * v + (1 - self.smoothing) * t.velocity if t.measured else v
                t.measured = True
            if dt > 0 or t.hits == 1:
                t.box, t.frame, t.offset = boxes[di].copy(), frame, np.zeros(4)
            t.hits, t.misses = t.hits + 1, 0
            t.quad = None if quads is None else quads[di]
        for ti, t in enumerate(self.tracks):
            if ti not in matched_t:
                t.misses += 1
        self.tracks = [t for t in self.tracks if t.misses <= self.max_misses]
        for di in range(len(boxes)):
            if di not in matched_d:
                self.tracks.append(Track(self._next, boxes[di].copy(), frame,
                                         quad=None if quads is None else quads[di]))
                self._next += 1
        return self.tracks

    def follow(self, prev: np.ndarray, cur: np.ndarray, prev_frame: int, frame: int, margin: int = 6,
               min_score: float = 0.6) -> None:
        """Between detections, move each track by what its word did from grey frame ``prev`` (at ``prev_frame``)
        to ``cur`` (at ``frame``): its crop on ``prev`` is found on ``cur`` within ``margin`` px of the prediction
        (normalised cross-correlation at least ``min_score``; a flat crop or a poor match keeps the prediction).
        Camera shake and a velocity that changed between detections are then followed every frame, so the crop
        the recognizer reads stays on its word."""
        H, W = cur.shape[:2]
        for t in self.tracks:
            x0, y0, x1, y1 = np.round(t.predict(prev_frame)).astype(int)
            if x0 < 0 or y0 < 0 or x1 > W or y1 > H or x1 - x0 < 4 or y1 - y0 < 4:
                continue
            tpl = prev[y0:y1, x0:x1]
            if tpl.std() < 4.0:
                continue
            p = np.round(t.predict(frame) - t.predict(prev_frame)).astype(int)  # the prediction's own move
            sx0, sy0 = x0 + p[0] - margin, y0 + p[1] - margin
            sx1, sy1 = x1 + p[0] + margin, y1 + p[1] + margin
            if sx0 < 0 or sy0 < 0 or sx1 > W or sy1 > H:
                continue
            res = cv2.matchTemplate(cur[sy0:sy1, sx0:sx1], tpl, cv2.TM_CCOEFF_NORMED)
            _, score, _, (mx, my) = cv2.minMaxLoc(res)
            if score >= min_score:
                t.offset = t.offset + np.array([mx - margin, my - margin] * 2, np.float64)

    def boxes(self, frame: int) -> np.ndarray:
        """Predicted boxes of all live tracks at ``frame``."""
        return np.stack([t.predict(frame) for t in self.tracks]) if self.tracks else np.zeros((0, 4))
