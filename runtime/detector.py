"""Text localisation: a DB-style (Differentiable Binarization) detector from any ONNX file whose output is a text
probability map, e.g. the PP-OCR detector that the ``rapidocr-onnxruntime`` wheel carries offline.

Small text is the point: the detector's input is a multiple of 32 no larger than ``max_side``; a frame larger
than that is either shrunk (small words vanish) or, with ``tiles=(rows, cols)``, cut into overlapping tiles that
each run at full resolution in one batch. Postprocessing follows DB: threshold, contours, minimum-area rectangle,
box score (mean probability inside the box), unclip (offset by area * ratio / perimeter), scale back.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .tracking import iou_matrix

__all__ = ["Detection", "DBDetector", "order_quad", "nms"]


@dataclass
class Detection:
    quad: np.ndarray  # (4, 2) float32: top-left, top-right, bottom-right, bottom-left, frame pixels
    score: float

    @property
    def box(self) -> np.ndarray:
        """Axis-aligned (x0, y0, x1, y1)."""
        return np.array([*self.quad.min(0), *self.quad.max(0)], np.float64)


def order_quad(pts: np.ndarray) -> np.ndarray:
    """Four points -> top-left, top-right, bottom-right, bottom-left."""
    pts = np.asarray(pts, np.float32).reshape(4, 2)
    by_x = pts[np.argsort(pts[:, 0], kind="stable")]
    left, right = by_x[:2], by_x[2:]
    tl, bl = left[np.argsort(left[:, 1], kind="stable")]
    tr, br = right[np.argsort(right[:, 1], kind="stable")]
    return np.stack([tl, tr, br, bl])


def nms(dets: list[Detection], iou: float = 0.3, contain: float = 0.6) -> list[Detection]:
    """Greedy non-maximum suppression on axis-aligned boxes (merges the duplicates of overlapping tiles): a box
    overlapping a kept one at IoU >= ``iou`` goes; so does the smaller of two boxes when ``contain`` of it lies inside
    the other (a tile's edge cuts a word into a fragment beside the whole word of the next tile)."""
    if not dets:
        return []
    from .tracking import coverage

    dets = sorted(dets, key=lambda d: -d.score)
    boxes = np.stack([d.box for d in dets])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    for i in range(len(dets)):
        if keep and iou_matrix(boxes[i : i + 1], boxes[keep]).max() >= iou:
            continue
        inside = coverage(boxes[i : i + 1], boxes[keep])[0] if keep else np.zeros(0)  # share of i in each kept
        holds = coverage(boxes[keep], boxes[i : i + 1])[:, 0] if keep else np.zeros(0)  # share of each kept in i
        j = next((k for k, (a, b) in enumerate(zip(inside, holds)) if max(a, b) >= contain), None)
        if j is None:
            keep.append(i)
        elif area[i] > area[keep[j]]:
            keep[j] = i  # the whole word replaces its fragment
    return [dets[i] for i in sorted(keep)]


class DBDetector:
    """``DBDetector("ch_PP-OCRv4_det_infer.onnx")(frame_bgr) -> [Detection]``."""

    def __init__(self, path: str, max_side: int = 960, tiles: tuple[int, int] = (1, 1), thresh: float = 0.3,
                 box_thresh: float = 0.5, unclip_ratio: float = 1.6, min_size: float = 3.0, max_candidates: int = 500,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), bgr: bool = True, threads: int = 0) -> None:
        from .cli import InputError
        from .onnxfile import ort_session

        if not Path(path).is_file():
            raise InputError(f"{path}: no such detector model")
        if len(tiles) != 2 or tiles[0] < 1 or tiles[1] < 1:
            raise InputError(f"detector tiles: expected rows,cols >= 1, got {tiles}")
        if max_side < 32 or threads < 0:
            raise InputError(f"detector: max_side must be >= 32 and threads >= 0, got {max_side} and {threads}")
        self.session = ort_session(path, threads, what="detector")
        inp, outs = self.session.get_inputs()[0], self.session.get_outputs()
        # a DB detector: one image in (N, 3, H, W), one probability map out (N, 1, H, W)
        if len(inp.shape) != 4 or inp.shape[1] not in (3, "3") or len(outs) != 1 or len(outs[0].shape) != 4:
            raise InputError(f"{path}: not a DB text detector (input {inp.shape}, outputs "
                             f"{[o.shape for o in outs]}; expected (N, 3, H, W) in and one (N, 1, H, W) map out)")
        self.input_name = inp.name
        self.path, self.max_side, self.tiles = str(path), int(max_side), tuple(tiles)
        self.thresh, self.box_thresh, self.unclip_ratio = thresh, box_thresh, unclip_ratio
        self.min_size, self.max_candidates = min_size, max_candidates
        self.mean = np.asarray(mean, np.float32).reshape(1, 1, 3)
        self.std = np.asarray(std, np.float32).reshape(1, 1, 3)
        self.bgr = bgr

    # -- preprocessing ---------------------------------------------------------------------------------------
    def _input_size(self, h: int, w: int) -> tuple[int, int]:
        r = min(1.0, self.max_side / max(h, w))
        return max(32, int(round(h * r / 32)) * 32), max(32, int(round(w * r / 32)) * 32)

    def _tiles(self, h: int, w: int, tiles: tuple[int, int] | None = None,
               overlap: int = 32) -> list[tuple[int, int, int, int]]:
        rows, cols = tiles or self.tiles
        th, tw = -(-h // rows), -(-w // cols)
        out = []
        for r in range(rows):
            for c in range(cols):
                y0, x0 = max(0, r * th - overlap), max(0, c * tw - overlap)
                y1, x1 = min(h, (r + 1) * th + overlap), min(w, (c + 1) * tw + overlap)
                out.append((x0, y0, x1, y1))
        return out

    def __call__(self, frame: np.ndarray, roi: tuple[int, int, int, int] | None = None,
                 tiles: tuple[int, int] | None = None) -> list[Detection]:
        """Detect in a BGR frame (or in ``roi`` = x, y, w, h of it; in ``tiles`` rows, cols instead of the
        detector's own); quads in frame coordinates."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"detector: expected an HxWx3 uint8 frame, got {frame.shape} {frame.dtype}")
        ox, oy = 0, 0
        if roi is not None:
            x, y, w, h = (int(v) for v in roi)
            frame, ox, oy = frame[max(0, y) : y + h, max(0, x) : x + w], max(0, x), max(0, y)
        H, W = frame.shape[:2]
        regions = self._tiles(H, W, tiles)
        ih, iw = self._input_size(regions[0][3] - regions[0][1], regions[0][2] - regions[0][0])
        batch = np.empty((len(regions), 3, ih, iw), np.float32)
        for i, (x0, y0, x1, y1) in enumerate(regions):
            img = cv2.resize(frame[y0:y1, x0:x1], (iw, ih), interpolation=cv2.INTER_LINEAR)
            if not self.bgr:
                img = img[..., ::-1]
            batch[i] = ((img.astype(np.float32) * (1 / 255.0) - self.mean) / self.std).transpose(2, 0, 1)
        prob = self.session.run(None, {self.input_name: batch})[0]
        dets: list[Detection] = []
        for i, (x0, y0, x1, y1) in enumerate(regions):
            sx, sy = (x1 - x0) / iw, (y1 - y0) / ih
            for q, s in self.boxes_from_map(prob[i].reshape(ih, iw)):
                dets.append(Detection((q * [sx, sy] + [x0 + ox, y0 + oy]).astype(np.float32), s))
        return nms(dets) if len(regions) > 1 else dets

    # -- postprocessing --------------------------------------------------------------------------------------
    def boxes_from_map(self, prob: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """A (h, w) probability map -> [(quad in map pixels, score)]."""
        bitmap = (prob > self.thresh).astype(np.uint8)
        bitmap = cv2.dilate(bitmap, np.ones((2, 2), np.uint8))  # reconnects thin strokes of small text
        contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        out = []
        for cnt in contours[: self.max_candidates]:
            rect = cv2.minAreaRect(cnt)
            if min(rect[1]) < self.min_size:
                continue
            quad = order_quad(cv2.boxPoints(rect))
            score = self._score(prob, quad)
            if score < self.box_thresh:
                continue
            rect = self._unclip(rect)
            if min(rect[1]) < self.min_size + 2:
                continue
            quad = order_quad(cv2.boxPoints(rect))
            quad[:, 0] = quad[:, 0].clip(0, prob.shape[1])
            quad[:, 1] = quad[:, 1].clip(0, prob.shape[0])
            out.append((quad, float(score)))
        return out

    @staticmethod
    def _score(prob: np.ndarray, quad: np.ndarray) -> float:
        h, w = prob.shape
        x0, x1 = int(np.clip(np.floor(quad[:, 0].min()), 0, w - 1)), int(np.clip(np.ceil(quad[:, 0].max()), 0, w - 1))
        y0, y1 = int(np.clip(np.floor(quad[:, 1].min()), 0, h - 1)), int(np.clip(np.ceil(quad[:, 1].max()), 0, h - 1))
        mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
        cv2.fillPoly(mask, [(quad - [x0, y0]).astype(np.int32)], 1)
        return float(cv2.mean(prob[y0 : y1 + 1, x0 : x1 + 1], mask)[0])

    def _unclip(self, rect):
        """DB's unclip for a rectangle: offset every side by d = area * ratio / perimeter (the offset polygon of a
        rectangle with round joins has exactly this minimum-area rectangle)."""
        (cx, cy), (w, h), ang = rect
        d = w * h * self.unclip_ratio / max(2 * (w + h), 1e-6)
        return (cx, cy), (w + 2 * d, h + 2 * d), ang
