"""``python -m apps.camera --source SRC [--model M] [--roi x,y,w,h ... | --detector D.onnx]``: read small text from
a live camera (or a file, stream, GStreamer pipeline) in real time.

With a display: overlay (boxes, fused text, confidence), HUD (FPS, per-stage ms); keys q quit, p pause,
s snapshot (PNG + JSON). ``--headless`` for servers and tests: ``--out annotated.mp4``, ``--jsonl results.jsonl``
(one line per frame: timestamp, boxes, strings, confidences, per-stage latency), ``--max-frames N``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from runtime.cli import InputError, check_writable, console_script, non_negative, positive
from runtime.files import write_bytes_atomic, write_json_atomic
from runtime.pipeline import FrameResult, parse_roi
from runtime.scheduler import HEADROOM, ScheduleCfg
from runtime.sources import parse_source
from runtime.weights import model_or_default

from .live_view import LiveView, parse_address


__all__ = ["main", "contact_sheet", "draw_overlay", "build_parser", "add_schedule_args", "schedule_from_args"]


def contact_sheet(frame: np.ndarray, res: FrameResult, height: int = 40, cols: int = 4) -> np.ndarray:
    """Each word of a frame result as its crop (``height`` px high) above its fused reading, in a grid: what the
    recognizer saw and what it said, at a glance."""
    cells = []
    H, W = frame.shape[:2]
    for w in res.words:
        x0, y0, x1, y1 = (int(round(v)) for v in w.box)
        crop = frame[max(0, y0 - 2):min(H, y1 + 2), max(0, x0 - 2):min(W, x1 + 2)]
        if crop.size == 0:
            continue
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * height / crop.shape[0])), height),
                          interpolation=cv2.INTER_CUBIC)[:, :200]
        cell = np.full((height + 22, 200, 3), 255, np.uint8)
        cell[:height, :crop.shape[1]] = crop
        cv2.putText(cell, f"{w.text} {w.confidence:.2f}", (2, height + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 0, 200), 1, cv2.LINE_AA)
        cells.append(cell)
    if not cells:
        return np.full((height + 22, 200, 3), 255, np.uint8)
    cells += [np.full_like(cells[0], 255)] * (-len(cells) % cols)
    rows = [np.hstack(cells[i:i + cols]) for i in range(0, len(cells), cols)]
    return np.vstack(rows)


def draw_overlay(frame: np.ndarray, res: FrameResult, fps: float) -> np.ndarray:
    out = frame.copy()
    for w in res.words:
        x0, y0, x1, y1 = (int(round(v)) for v in w.box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 200, 0), 1)
        label = f"{w.text} {w.confidence:.2f}"
        cv2.putText(out, label, (x0, max(10, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 255), 1, cv2.LINE_AA)
    hud = f"{fps:5.1f} FPS  reads {res.reads}/{res.reads + res.skipped}  " + "  ".join(f"{k} {v:.1f}" for k, v in res.ms.items()) + f"  e2e {res.latency_ms:.1f} ms"
    cv2.rectangle(out, (0, 0), (min(out.shape[1], 8 * len(hud)), 18), (0, 0, 0), -1)
    cv2.putText(out, hud, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def add_schedule_args(p: argparse.ArgumentParser) -> None:
    """The read scheduler's options (``runtime.scheduler``), shared with ``apps.benchmark pipeline``."""
    d = ScheduleCfg()
    p.add_argument("--read-every-frame", action="store_true",
                   help="read every tracked word on every frame (no scheduling; default: scheduled)")
    p.add_argument("--target-fps", type=float, default=0.0,
                   help=f"frame rate to keep: each frame reads what its period leaves after the rest of the loop "
                        f"(0: the source's frame rate x {HEADROOM}, 36 for 30 FPS sources)")
    p.add_argument("--max-reads", type=int, default=d.max_reads,
                   help="words read per frame at most (0: as many as the frame's time allows)")
    p.add_argument("--read-budget-ms", type=float, default=d.budget_ms,
                   help="fixed recognition milliseconds per frame (0: what the frame period leaves)")
    p.add_argument("--reread-after", type=int, default=d.max_age,
                   help="frames after which a word is read again even if nothing changed")
    p.add_argument("--reread-confidence", type=float, default=d.confidence,
                   help="fused confidence below which a word keeps being read")
    p.add_argument("--change", type=float, default=d.change,
                   help="least crop change (mean |difference| of normalised 4x16 grey signatures) that triggers a read")
    p.add_argument("--noise", type=float, default=d.noise,
                   help="a change must also exceed this many times the word's own frame-to-frame jitter")
    p.add_argument("--new-reads", type=int, default=d.new_reads,
                   help="new words read on the frame they appear, beyond the budget (0: they wait their turn)")


def schedule_from_args(args: argparse.Namespace) -> ScheduleCfg | None:
    """The ScheduleCfg of the parsed options (None with --read-every-frame); without --target-fps it keeps a 30 FPS
    source's rate (``TextReader.stream`` sets its own source's); InputError names a bad option."""
    if args.read_every_frame:
        return None
    cfg = ScheduleCfg(max_reads=args.max_reads, budget_ms=args.read_budget_ms, fps=args.target_fps or ScheduleCfg.fps,
                      change=args.change, noise=args.noise, confidence=args.reread_confidence,
                      max_age=args.reread_after, new_reads=args.new_reads)
    try:
        return cfg.validate()
    except ValueError as e:
        raise InputError("--target-fps/--max-reads/--read-budget-ms/--reread-after/--reread-confidence/--change/"
                         f"--noise/--new-reads: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m apps.camera", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", required=True,
                   help="camera index, usb://N, csi://N, rtsp/http URL, GStreamer pipeline, or a video file")
    p.add_argument("--model", default=None,
                   help="recognizer .onnx or .engine (default: the shipped PP-OCRv6 student, weights/MODEL_CARD.md)")
    p.add_argument("--roi", action="append", default=[], help="fixed region x,y,w,h (repeatable)")
    p.add_argument("--roi-file", default=None, help="file with one x,y,w,h per line")
    p.add_argument("--detector", default=None,
                   help="DB-style text detector: an ONNX file or a model name (ppocrv6-det, ppocrv6-tiny-det, "
                        "ppocrv4-det alias ppocr), found in its installed wheel; unset: ppocrv6-tiny-det, or none "
                        "when --roi is given (then it searches only inside the regions)")
    p.add_argument("--det-side", type=int, default=960, help="detector input: longest side in pixels")
    p.add_argument("--det-tiles", default="1,1", help="detector tiles rows,cols (full resolution per tile)")
    p.add_argument("--det-threads", type=int, default=1, help="ONNX Runtime threads of the detector")
    p.add_argument("--rec-threads", type=int, default=0,
                   help="ONNX Runtime threads of the recognizer (0: the cores the detector's threads leave, all of "
                        "them without a detector)")
    p.add_argument("--detect-every", type=int, default=5, help="frames between detections (synchronous mode)")
    p.add_argument("--async-detect", action="store_true",
                   help="run detection in a background thread on the newest frame (default for live sources)")
    p.add_argument("--sync-detect", action="store_true", help="detect inline every --detect-every frames")
    p.add_argument("--headless", action="store_true", help="no window (servers, tests)")
    p.add_argument("--out", default=None, help="write the annotated video here (.mp4)")
    p.add_argument("--jsonl", default=None, help="write one JSON line per frame here")
    p.add_argument("--contact-sheet", default=None,
                   help="write the last frame's words (crop + fused reading) as a PNG grid here; unset: not written")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: until the source ends)")
    p.add_argument("--width", type=int, default=1280, help="capture width (cameras)")
    p.add_argument("--height", type=int, default=720, help="capture height (cameras)")
    p.add_argument("--fps", type=int, default=30, help="capture frame rate (cameras)")
    p.add_argument("--realtime", action="store_true", help="treat a file like a live source (drop stale frames)")
    p.add_argument("--reconnect-for", type=float, default=0.0,
                   help="seconds a lost live stream is retried before the app gives up with exit status 1 (0: for "
                        "as long as it takes)")
    p.add_argument("--snapshots", default="snapshots", help="directory for the s key's PNG + JSON")
    p.add_argument("--serve", default=None,
                   help="serve a live view (annotated frames and readings, /readings.json) at HOST:PORT, e.g. "
                        "127.0.0.1:8080 (a bare PORT binds the loopback address); unset: none")
    add_schedule_args(p)
    return p


def _tiles(text: str) -> tuple[int, int]:
    try:
        r, c = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--det-tiles {text!r}: expected rows,cols, e.g. 2,2") from None
    if r < 1 or c < 1:
        raise InputError(f"--det-tiles {text!r}: rows and cols must be >= 1")
    return r, c


def _quiet_video_logs() -> None:
    """The app says what happens to a stream in its own lines; FFmpeg's and OpenCV's own (a refused connection
    at every retry) would bury them. Set before the first capture opens (FFmpeg reads its level once)."""
    import os

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from runtime.reader import TextReader

    _quiet_video_logs()
    non_negative("--max-frames", args.max_frames)
    non_negative("--reconnect-for", args.reconnect_for)
    for opt in ("det_side", "width", "height", "fps"):
        positive("--" + opt.replace("_", "-"), getattr(args, opt))
    non_negative("--det-threads", args.det_threads)
    non_negative("--rec-threads", args.rec_threads)
    positive("--detect-every", args.detect_every)
    check_writable(args.out, "--out", (".mp4", ".avi", ".mkv"))
    check_writable(args.jsonl, "--jsonl")
    check_writable(args.contact_sheet, "--contact-sheet", (".png",))
    schedule = schedule_from_args(args)  # a bad option is refused before any model or source is opened
    model = model_or_default(args.model)
    rois = [parse_roi(r) for r in args.roi]
    if args.roi_file:
        if not Path(args.roi_file).is_file():
            raise InputError(f"--roi-file {args.roi_file}: no such file")
        rois += [parse_roi(line) for line in Path(args.roi_file).read_text().splitlines() if line.strip()]
    tiles = _tiles(args.det_tiles)
    live = parse_source(args.source, args.width, args.height, args.fps).live or args.realtime
    serve = parse_address(args.serve) if args.serve else None
    # no --roi and no --detector: the default detector (runtime.reader.DEFAULT_DETECTOR)
    reader = TextReader(model, args.detector or "default", rois, threads=args.rec_threads, det_threads=args.det_threads,
                        det_side=args.det_side, det_tiles=tiles, schedule=schedule, target_fps=args.target_fps or None,
                        detect_every=args.detect_every,
                        async_detect=(live or args.async_detect) and not args.sync_detect)
    view = None
    try:
        if serve:
            view = LiveView(*serve)
            print(f"camera: live view on {view.address}", file=sys.stderr, flush=True)
        stream = reader.stream(args.source, args.max_frames, args.realtime, args.width, args.height, args.fps,
                               args.reconnect_for or None, lambda line: print(f"camera: {line}", file=sys.stderr))
    except BaseException:
        if view is not None:
            view.close()
        reader.close()
        raise
    show = not args.headless
    writer = None
    jsonl = open(args.jsonl, "w", buffering=1) if args.jsonl else None  # line by line: whole up to the last frame
    times: deque[float] = deque(maxlen=30)
    n, paused, res, frame = 0, False, None, None
    lat: list[float] = []
    reads = 0
    frames = iter(stream)
    t_start = time.monotonic()
    try:
        while True:
            if not paused:
                got = next(frames, None)
                if got is None:
                    break  # --max-frames, the end of a file, or a live stream that could not be reopened
                res, frame = got, got.image
                times.append(time.monotonic())
                fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
                lat.append(res.latency_ms)
                reads += res.reads
                n += 1
                if jsonl:
                    line = res.to_dict()
                    line["dropped"], line["damaged"] = stream.dropped, stream.damaged
                    jsonl.write(json.dumps(line) + "\n")
                if view is not None:  # drawn and encoded in the viewer's thread, when someone watches
                    view.publish(frame, res, lambda f, r, fps=fps: draw_overlay(f, r, fps))
                if args.out or show:
                    vis = draw_overlay(frame, res, fps)
                    if args.out:
                        if writer is None:
                            fourcc = "MJPG" if args.out.lower().endswith(".avi") else "mp4v"
                            writer = cv2.VideoWriter(args.out, cv2.VideoWriter_fourcc(*fourcc), stream.fps,
                                                     (vis.shape[1], vis.shape[0]))
                            if not writer.isOpened():
                                raise InputError(f"--out {args.out}: OpenCV could not open a {fourcc} video writer")
                        writer.write(vis)
                    if show:
                        cv2.imshow("tinytext", vis)
            if show:
                key = cv2.waitKey(1) & 0xFF
                if key == ord("q"):
                    break
                if key == ord("p"):
                    paused = not paused
                if key == ord("s") and res is not None and frame is not None:
                    d = Path(args.snapshots)
                    d.mkdir(parents=True, exist_ok=True)
                    stem = d / f"frame{res.frame:06d}"
                    ok, png = cv2.imencode(".png", frame)
                    write_bytes_atomic(png.tobytes(), stem.with_suffix(".png"))
                    write_json_atomic(res.to_dict(), stem.with_suffix(".json"))
                    print(f"camera: snapshot {stem}.png / .json")
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()  # the capture thread stops before anything else ends
        if view is not None:
            view.close()
        reader.close()
        if writer is not None:
            writer.release()
        if jsonl:
            jsonl.close()
        if show:
            cv2.destroyAllWindows()
    if args.contact_sheet and res is not None:
        ok, png = cv2.imencode(".png", contact_sheet(frame, res))
        write_bytes_atomic(png.tobytes(), args.contact_sheet)
    if lat:
        wall = time.monotonic() - t_start
        print(f"camera: {n} frames in {wall:.2f} s ({n / max(wall, 1e-9):.1f} FPS), {stream.dropped} dropped, "
              f"{stream.damaged} unreadable skipped, {stream.reconnects} reconnects; {reads / n:.2f} reads / frame; latency p50 "
              f"{np.percentile(lat, 50):.1f} ms, p95 {np.percentile(lat, 95):.1f} ms", file=sys.stderr)
    if stream.failed:  # what was read is written above; the run did not end as asked
        print(f"error: {stream.failed}", file=sys.stderr)
        return 1
    return 0


console = console_script(main)  # tinytext-* (pyproject.toml)

if __name__ == "__main__":
    sys.exit(console())
