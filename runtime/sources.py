"""Video sources for ``TextReader.stream`` and the camera app: what ``--source`` accepts, and a capture thread that keeps only the newest frame.

- ``0``, ``1``...: a camera index (OpenCV's default backend).
- ``usb://N``: /dev/videoN through V4L2 with MJPEG; on a Jetson (GStreamer available) a pipeline with the
  hardware JPEG decoder (``nvv4l2decoder mjpeg=1``).
- ``csi://N``: a Jetson CSI camera through ``nvarguscamerasrc`` (GStreamer).
- ``rtsp://``, ``http(s)://``: network streams (FFmpeg backend).
- a string containing ``!`` (optionally prefixed ``gst:``): a raw GStreamer pipeline ending in ``appsink``.
- anything else: a video file.

The OpenCV wheels on PyPI are built without GStreamer; asking for a GStreamer source there fails with a sentence
saying so and pointing to JetPack's OpenCV.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .cli import InputError
from .video import VideoFrames

__all__ = ["SourceSpec", "parse_source", "open_capture", "gstreamer_available", "LatestFrameReader", "FileReader",
           "SourceError"]


class SourceError(InputError, RuntimeError):
    pass


# how long opening or reading a network stream may wait before it counts as lost
NET_TIMEOUT_MS = 5000


@dataclass
class SourceSpec:
    kind: str  # index | usb | csi | url | gstreamer | file
    target: str | int  # what cv2.VideoCapture gets
    live: bool  # live sources drop stale frames and reconnect; files are read frame by frame
    api: int = cv2.CAP_ANY
    width: int = 1280
    height: int = 720
    fps: int = 30


def gstreamer_available() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def _csi_pipeline(n: int, w: int, h: int, fps: int) -> str:
    return (f"nvarguscamerasrc sensor-id={n} ! video/x-raw(memory:NVMM),width={w},height={h},framerate={fps}/1 ! "
            f"nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
            f"appsink drop=true max-buffers=1 sync=false")


def _usb_jetson_pipeline(n: int, w: int, h: int, fps: int) -> str:
    return (f"v4l2src device=/dev/video{n} io-mode=2 ! image/jpeg,width={w},height={h},framerate={fps}/1 ! "
            f"nvv4l2decoder mjpeg=1 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
            f"video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")


def parse_source(src: str, width: int = 1280, height: int = 720, fps: int = 30, gst: bool | None = None) -> SourceSpec:
    gst = gstreamer_available() if gst is None else gst
    s = str(src).strip()
    if s.isdigit():
        return SourceSpec("index", int(s), True, cv2.CAP_ANY, width, height, fps)
    for scheme, kind in (("csi://", "csi"), ("usb://", "usb")):
        if s.startswith(scheme):
            num = s[len(scheme):]
            if not num.isdigit():
                raise SourceError(f"--source {s!r}: expected {scheme}N with N a device number")
            n = int(num)
            if kind == "csi":
                return SourceSpec("csi", _csi_pipeline(n, width, height, fps), True, cv2.CAP_GSTREAMER, width, height, fps)
            if gst:  # Jetson: MJPEG decoded by the hardware decoder
                return SourceSpec("usb", _usb_jetson_pipeline(n, width, height, fps), True, cv2.CAP_GSTREAMER,
                                  width, height, fps)
            return SourceSpec("usb", n, True, cv2.CAP_V4L2, width, height, fps)
    if s.startswith(("rtsp://", "rtmp://", "http://", "https://")):
        return SourceSpec("url", s, True, cv2.CAP_FFMPEG, width, height, fps)
    if s.startswith("gst:") or "!" in s:
        return SourceSpec("gstreamer", s[4:] if s.startswith("gst:") else s, True, cv2.CAP_GSTREAMER, width, height, fps)
    if not Path(s).is_file():
        raise SourceError(f"--source {s!r}: no such video file (and not a camera index, usb://N, csi://N, URL or "
                          f"GStreamer pipeline)")
    return SourceSpec("file", s, False, cv2.CAP_ANY, width, height, fps)


def open_capture(spec: SourceSpec) -> cv2.VideoCapture:
    if spec.api == cv2.CAP_GSTREAMER and not gstreamer_available():
        raise SourceError(f"{spec.kind} source needs GStreamer, but this OpenCV build has none (the PyPI "
                          f"opencv-python wheels are built without it). On a Jetson use JetPack's OpenCV "
                          f"(sudo apt install python3-opencv, and uninstall the pip opencv wheels), or give a camera "
                          f"index / usb://N through V4L2.")
    if spec.kind == "url":  # a dead server must not hold a read (or the capture thread at exit) for FFmpeg's 30 s
        cap = cv2.VideoCapture(spec.target, spec.api, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NET_TIMEOUT_MS,
                                                       cv2.CAP_PROP_READ_TIMEOUT_MSEC, NET_TIMEOUT_MS])
    else:
        cap = cv2.VideoCapture(spec.target, spec.api)
    if spec.kind in ("index", "usb") and spec.api != cv2.CAP_GSTREAMER:
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, spec.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, spec.height)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # we want the newest frame, not a queue
    if not cap.isOpened():
        raise SourceError(f"could not open {spec.kind} source {spec.target!r}")
    return cap


class FileReader:
    """A video file, frame by frame (nothing dropped: files are not live)."""

    def __init__(self, spec: SourceSpec, opener=open_capture) -> None:
        self.cap = opener(spec)
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 30.0
        self.frames = VideoFrames(self.cap)  # a damaged frame in the middle is skipped and counted, not the end
        self.dropped = 0
        self.reconnects = 0
        self.index = -1

    @property
    def damaged(self) -> int:
        return self.frames.damaged

    def read(self, timeout: float = 5.0):
        t = time.monotonic()  # a file's frame is captured when it is asked for: its decoding counts as latency
        frame = self.frames.read()
        if frame is None:
            return None
        self.index += 1
        return self.index, t, frame

    def close(self) -> None:
        self.cap.release()


class LatestFrameReader:
    """Capture thread for live sources: keeps only the newest frame (older ones are dropped and counted), so
    processing never works on stale frames and never blocks capture.

    A lost stream (a camera rebooting, a server restarting) is reopened with exponential backoff (``backoff`` ..
    ``max_backoff`` seconds) for ``reconnect_for`` seconds (None: for as long as the process runs); meanwhile
    ``read`` waits. Each event (lost, back, given up) is one line through ``on_event``. When the bound passes,
    ``failed`` says why and ``read`` returns None."""

    def __init__(self, spec: SourceSpec, opener=open_capture, backoff: float = 0.5, max_backoff: float = 4.0,
                 reconnect_for: float | None = None, on_event=None) -> None:
        self.spec, self.opener = spec, opener
        self.backoff, self.max_backoff, self.reconnect_for = backoff, max_backoff, reconnect_for
        self.on_event = on_event or (lambda line: None)
        self.cap = opener(spec)
        self.dropped = 0
        self.damaged = 0  # a live stream's failed reads end in a reconnect, not a skip
        self.reconnects = 0  # times the stream came back
        self.attempts = 0  # reopenings tried
        self.index = -1
        self.failed: str | None = None
        self.ended = False  # a --realtime file reached its end
        self._latest: tuple[int, float, np.ndarray] | None = None
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="capture", daemon=True)
        self._thread.start()

    def _reconnect(self) -> bool:
        lost = time.monotonic()
        bound = "" if self.reconnect_for is None else f" for up to {self.reconnect_for:g} s"
        self.on_event(f"stream {self.spec.target!r} lost; reconnecting every {self.backoff:g}-{self.max_backoff:g} s"
                      f"{bound}")
        delay = self.backoff
        while not self._stop:
            left = None if self.reconnect_for is None else lost + self.reconnect_for - time.monotonic()
            if left is not None and left <= 0:
                return False
            time.sleep(delay if left is None else min(delay, left))
            if self._stop:
                return False
            self.attempts += 1
            try:
                self.cap.release()
                self.cap = self.opener(self.spec)
            except SourceError:
                delay = min(delay * 2, self.max_backoff)
                continue
            self.reconnects += 1
            back = time.monotonic()
            self.on_event(f"stream {self.spec.target!r} back after {back - lost:.1f} s ({self.attempts} attempts)")
            return True
        return False

    def _loop(self) -> None:
        # a file read like a camera (--realtime) delivers its frames at its own frame rate and ends at its end
        file_fps = (self.cap.get(cv2.CAP_PROP_FPS) or 30.0) if self.spec.kind == "file" else 0.0
        t0 = time.monotonic()
        while not self._stop:
            if file_fps:
                time.sleep(max(0.0, t0 + (self.index + 1) / file_fps - time.monotonic()))
            ok, frame = self.cap.read()
            if self._stop:
                return
            if not ok and file_fps:
                with self._cv:
                    self.ended = True
                    self._cv.notify_all()
                return
            if not ok:
                if not self._reconnect():
                    with self._cv:
                        if not self._stop:
                            self.failed = (f"stream {self.spec.target!r} lost and not back within --reconnect-for "
                                           f"{self.reconnect_for:g} s ({self.attempts} attempts)")
                            self.on_event(self.failed)
                        self._cv.notify_all()
                    return
                continue
            with self._cv:
                self.index += 1
                if self._latest is not None:
                    self.dropped += 1  # never processed: a newer frame replaced it
                self._latest = (self.index, time.monotonic(), frame)
                self._cv.notify_all()

    def read(self, timeout: float | None = None):
        """The newest frame not yet returned; waits for one (through reconnections: as long as ``reconnect_for``
        allows, or ``timeout`` seconds when given); None when the stream is gone or the reader closed."""
        with self._cv:
            end = None if timeout is None else time.monotonic() + timeout
            while self._latest is None and self.failed is None and not self._stop and not self.ended:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cv.wait(left if left is not None else 1.0)
            item, self._latest = self._latest, None
            return item

    def close(self) -> None:
        """Stops the capture thread before the capture is released (an interpreter that exits while the thread
        is inside OpenCV aborts)."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=15)
        if not self._thread.is_alive():
            self.cap.release()
