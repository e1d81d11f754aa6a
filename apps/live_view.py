"""``apps.camera --serve HOST:PORT``: a live view for a box without a screen. One page shows the annotated frames
(each newest one fetched as the last is shown, ``/frame.jpg``) and the current readings (server-sent events,
``/events``); ``/stream.mjpg`` is the annotated video for MJPEG players; ``/readings.json`` the latest frame's
result, as one line of the JSONL. The camera loop only hands over references to the newest frame and result: drawing and JPEG encoding
happen in the viewer's own thread, at the viewer's pace, so a page nobody watches costs nothing and a watched one
costs the pipeline only the CPU it shares.
"""
from __future__ import annotations

import html
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from runtime.cli import InputError

from .mjpeg import BOUNDARY, mjpeg_part

__all__ = ["LiveView", "parse_address", "PAGE"]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>tinytext live view</title>
<style>body{{font-family:sans-serif;margin:12px;background:#111;color:#eee}}img{{max-width:100%;border:1px solid #444}}
table{{border-collapse:collapse;margin-top:8px}}td,th{{padding:2px 10px;text-align:left}}</style></head>
<body><h3>tinytext: <span id="status">{status}</span></h3>
<img id="view" src="/frame.jpg" alt="annotated frames">
<table><thead><tr><th>track</th><th>text</th><th>confidence</th></tr></thead><tbody id="words">{rows}</tbody></table>
<script>
window.onload = function () {{
  // the newest annotated frame, fetched again 66 ms after the last one is shown: 15 pictures a second at most, at
  // the viewer's own pace (MJPEG players take /stream.mjpg instead)
  var view = document.getElementById("view");
  view.onload = view.onerror = function () {{ setTimeout(function () {{ view.src = "/frame.jpg?" + Date.now(); }}, 66); }};
  view.src = "/frame.jpg?" + Date.now();
  var events = new EventSource("/events");
  events.onmessage = function (e) {{
    var r = JSON.parse(e.data), rows = "";
    r.words.forEach(function (w) {{
      rows += "<tr><td>" + w.track + "</td><td class='text'>" + w.text.replace(/[<>&]/g, "") + "</td><td>" +
              w.confidence.toFixed(2) + "</td></tr>";
    }});
    document.getElementById("words").innerHTML = rows;
    document.getElementById("status").textContent = "frame " + r.frame + ", " + r.words.length + " words";
  }};
}};
</script></body></html>
"""


def parse_address(text: str) -> tuple[str, int]:
    """``--serve`` ``HOST:PORT`` (or ``PORT``: the loopback address) -> (host, port)."""
    host, _, port = text.rpartition(":")
    try:
        p = int(port)
    except ValueError:
        raise InputError(f"--serve {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080") from None
    if not 0 < p < 65536:
        raise InputError(f"--serve {text!r}: the port must be 1..65535")
    return host or "127.0.0.1", p


class LiveView:
    """The page's server, in a thread. ``publish(frame, result, draw)`` after each frame; ``close()`` at the end."""

    def __init__(self, host: str, port: int, quality: int = 80, max_events_per_s: float = 10.0,
                 max_fps: float = 15.0) -> None:
        """``max_fps``: pictures a viewer gets per second at most (each costs a JPEG encoding beside the pipeline;
        a person watching needs no more)."""
        self._cv = threading.Condition()
        self._item: tuple[int, np.ndarray, object, object] | None = None  # (seq, frame, result, draw)
        self._seq = 0
        self._closed = False
        self.viewers = 0
        view = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                path = self.path.split("?")[0]
                try:
                    if path == "/":  # the readings so far in the page itself; the events update them
                        self._send(200, "text/html; charset=utf-8", view._page().encode())
                    elif path == "/readings.json":
                        item = view._latest()
                        body = json.dumps(item[2].to_dict() if item else {}).encode()
                        self._send(200, "application/json", body)
                    elif path == "/frame.jpg":
                        item = view._next(-1)
                        if item is None:
                            self._send(503, "text/plain", b"closed")
                        else:
                            self._send(200, "image/jpeg", view._jpeg(item, quality))
                    elif path == "/stream.mjpg":
                        self._stream(quality)
                    elif path == "/events":
                        self._events(max_events_per_s)
                    else:
                        self._send(404, "text/plain", b"not found")
                except (BrokenPipeError, ConnectionResetError):
                    return

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                self.wfile.write(body)

            def _stream(self, q: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=" + BOUNDARY.decode())
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                with view._cv:
                    view.viewers += 1
                try:
                    seq = -1
                    while True:
                        item = view._next(seq)
                        if item is None:
                            return
                        seq = item[0]
                        t = time.monotonic()
                        self.wfile.write(mjpeg_part(view._jpeg(item, q)))
                        time.sleep(max(0.0, t + 1.0 / max_fps - time.monotonic()))
                finally:
                    with view._cv:
                        view.viewers -= 1

            def _events(self, rate: float) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                seq = -1
                while True:
                    item = view._next(seq)
                    if item is None:
                        return
                    seq, _, result, _ = item
                    self.wfile.write(b"data: " + json.dumps(result.to_dict()).encode() + b"\n\n")
                    self.wfile.flush()
                    time.sleep(1.0 / rate)

            def log_message(self, *args) -> None:
                pass

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise InputError(f"--serve {host}:{port}: cannot listen there ({e.strerror})") from None
        self.server.daemon_threads = True
        self.address = f"http://{host}:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, name="live-view", daemon=True)
        self._thread.start()

    def publish(self, frame: np.ndarray, result, draw) -> None:
        """The newest frame and its result; ``draw(frame, result)`` makes the annotated picture when a viewer
        asks for it."""
        with self._cv:
            self._seq += 1
            self._item = (self._seq, frame, result, draw)
            self._cv.notify_all()

    def _page(self) -> str:
        item = self._latest()
        if item is None:
            return PAGE.format(status="waiting for frames", rows="")
        r = item[2].to_dict()
        rows = "".join(f"<tr><td>{w['track']}</td><td class=\"text\">{html.escape(w['text'])}</td>"
                       f"<td>{w['confidence']:.2f}</td></tr>" for w in r["words"])
        return PAGE.format(status=f"frame {r['frame']}, {len(r['words'])} words", rows=rows)

    @staticmethod
    def _jpeg(item, quality: int) -> bytes:
        _, frame, result, draw = item
        return cv2.imencode(".jpg", draw(frame, result), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()

    def _latest(self):
        with self._cv:
            return self._item

    def _next(self, seq: int):
        """The first item newer than ``seq`` (waits for it); None once closed."""
        with self._cv:
            while not self._closed and (self._item is None or self._item[0] == seq):
                self._cv.wait(1.0)
            return None if self._closed else self._item

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self.server.shutdown()
        self.server.server_close()
