"""``python -m apps.mjpeg VIDEO [--host 127.0.0.1] [--port 8090]``: a network camera made of a video file: its frames,
looped, served over HTTP as MJPEG (``multipart/x-mixed-replace``, what many IP cameras serve) at the file's frame
rate. The tests read it with ``apps.camera --source http://127.0.0.1:PORT/stream.mjpg`` and kill and restart it
to check reconnection; it binds to the loopback address unless told otherwise.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2

from runtime.cli import InputError, console_script, positive

__all__ = ["main", "serve_frames", "BOUNDARY"]

BOUNDARY = b"frame"


def mjpeg_part(jpeg: bytes) -> bytes:
    """One part of a ``multipart/x-mixed-replace`` MJPEG stream."""
    return (b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode() +
            b"\r\n\r\n" + jpeg + b"\r\n")


def serve_frames(jpegs: list[bytes], fps: float, host: str = "127.0.0.1", port: int = 8090) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving: call ``serve_forever``) that streams ``jpegs`` in a loop at ``fps`` to
    every client, each from the frame the stream has reached (a live camera's clock, not each client's)."""
    t0 = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=" + BOUNDARY.decode())
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            last = -1
            try:
                while True:
                    i = int((time.monotonic() - t0) * fps)
                    if i == last:
                        time.sleep(max(0.0, t0 + (i + 1) / fps - time.monotonic()))
                        continue
                    last = i
                    self.wfile.write(mjpeg_part(jpegs[i % len(jpegs)]))
            except (BrokenPipeError, ConnectionResetError):
                return

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m apps.mjpeg", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("video", help="video file whose frames are served, looped")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (the loopback address: this machine only)")
    p.add_argument("--port", type=int, default=8090, help="TCP port")
    p.add_argument("--fps", type=float, default=0.0, help="frame rate served (0: the file's)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    args = p.parse_args(argv)
    positive("--port", args.port)
    cap = cv2.VideoCapture(args.video)
    if not cap.isOpened():
        raise InputError(f"{args.video}: not a video OpenCV can open")
    fps = args.fps or cap.get(cv2.CAP_PROP_FPS) or 30.0
    jpegs = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        jpegs.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, args.quality])[1].tobytes())
    cap.release()
    if not jpegs:
        raise InputError(f"{args.video}: no frames")
    try:
        server = serve_frames(jpegs, fps, args.host, args.port)
    except OSError as e:
        raise InputError(f"--port {args.port}: cannot listen on {args.host} ({e.strerror})") from None
    print(f"mjpeg: serving {len(jpegs)} frames of {args.video} at {fps:g} FPS on "
          f"http://{args.host}:{args.port}/stream.mjpg", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()
    return 0


console = console_script(main)

if __name__ == "__main__":
    sys.exit(console())
