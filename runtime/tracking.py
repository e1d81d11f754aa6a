"""Tracking words between detections, and fusing each track's readings over frames.

Detection is slow and runs at its own rate; recognition runs on every frame. Between detections a track's box
moves with the velocity measured between its last two detections (constant-velocity prediction). Detections are
associated with tracks greedily by IoU of the predicted box. Every frame's reading of a track adds its
confidence to that string's vote; the track's text is the string with the largest total, so one sharp frame
outweighs several unsure blurry ones and a word read over many frames is right more often than any single frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
    """Confidence-weighted voting over a track's readings."""

    totals: dict[str, float] = field(default_factory=dict)
    readings: int = 0

    def add(self, text: str, conf: float) -> None:
        if not text:
            return  # an empty read says nothing about which word it is
        self.totals[text] = self.totals.get(text, 0.0) + max(float(conf), 0.0)
        self.readings += 1

    def forget(self, factor: float) -> None:
        """Scale the evidence gathered so far (the scheduler calls it when the crop's content changed)."""
        self.totals = {k: v * factor for k, v in self.totals.items()}

    @property
    def best(self) -> tuple[str, float]:
        """(text, share of the total confidence it holds)."""
        if not self.totals:
            return "", 0.0
        text = max(self.totals, key=self.totals.get)
        total = sum(self.totals.values())
        return text, (self.totals[text] / total if total > 0 else 0.0)


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

    def predict(self, frame: int) -> np.ndarray:
        return self.box + self.velocity * (frame - self.frame)

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
                t.box, t.frame = boxes[di].copy(), frame
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

    def boxes(self, frame: int) -> np.ndarray:
        """Predicted boxes of all live tracks at ``frame``."""
        return np.stack([t.predict(frame) for t in self.tracks]) if self.tracks else np.zeros((0, 4))
