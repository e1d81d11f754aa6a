"""Network cameras for real: a video served as MJPEG over HTTP by a real server on 127.0.0.1 (``apps.mjpeg``), and
as H.264 over RTSP by GStreamer's RTSP server (``rtsp_server.py`` beside this file), read by apps.camera and by
TextReader.stream; the server killed mid-stream and started again (the app says so, reconnects and goes on), or
never back (a bounded wait ends with exit status 1, the JSONL intact). Nothing leaves 127.0.0.1."""
import json
import socket
import subprocess
import sys
import time

import pytest

from apps.synthetic_video import render_video, rois
from conftest import CNN_INT8, ROOT

pytestmark = pytest.mark.skipif(not CNN_INT8.is_file(), reason="shipped weights missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A streaming server in its own process on a fixed loopback port, started and killed at will: ``python -m
    apps.mjpeg`` (MJPEG over HTTP) by default."""

    def __init__(self, video, port: int) -> None:
        self.video, self.port, self.proc = video, port, None
        self.cmd = [sys.executable, "-m", "apps.mjpeg", str(video), "--port", str(port)]
        self.url = f"http://127.0.0.1:{port}/stream.mjpg"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert "serving" in line, (line, self.proc.stderr.read() if self.proc.poll() is not None else "")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


GST_PYTHON = "/usr/bin/python3"  # Debian's python3-gi belongs to the system interpreter


def _system_python_lacks(probe: str) -> str:
    """Why ``probe`` fails under the system python3 ("" when it runs): Debian's python3-gi and python3-opencv
    belong to that interpreter, not to .venv."""
    try:
        r = subprocess.run([GST_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return f"no {GST_PYTHON}"
    return "" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]


# GStreamer's RTSP server with x264, and an OpenCV built with GStreamer
NO_RTSP_SERVER = _system_python_lacks(
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
    "from gi.repository import Gst, GstRtspServer; Gst.init(None); assert Gst.ElementFactory.find('x264enc'), "
    "'no x264enc'")
NO_GSTREAMER_OPENCV = _system_python_lacks(
    "import cv2; g = [l for l in cv2.getBuildInformation().splitlines() if l.strip().startswith('GStreamer:')]; "
    "assert g and 'YES' in g[0], 'OpenCV without GStreamer'")


@pytest.fixture()
def scene(tmp_path):
    video = tmp_path / "words.avi"
    truth = render_video(str(video), n_words=4, size=(240, 640), frames=30, font_px=20, speed=0.0)
    roi_args = sum([["--roi", ",".join(map(str, r))] for r in rois(truth[0])], [])
    server = Server(video, _free_port())
    server.start()
    yield server, truth[0], roi_args
    if server.proc.poll() is None:
        server.kill()


def _camera(server, roi_args, jsonl, *extra):
    return subprocess.Popen([sys.executable, "-m", "apps.camera", "--source", server.url, "--model", str(CNN_INT8),
                             "--headless", "--jsonl", str(jsonl), *roi_args, *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_frames(jsonl, n: int = 10, timeout: float = 60.0) -> None:
    """Until the app has written ``n`` frames (start-up takes a second or two, more on a busy machine)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{jsonl}: fewer than {n} frames after {timeout} s")


def _right(line: dict, truth: list) -> int:
    return sum(w["text"] == t["text"] for w, t in zip(line["words"], truth))


def test_a_killed_and_restarted_server_is_reconnected_and_read_on(scene, tmp_path):
    server, truth, roi_args = scene
    app = _camera(server, roi_args, tmp_path / "r.jsonl", "--max-frames", "120")
    _wait_for_frames(tmp_path / "r.jsonl")
    server.kill()
    down = time.monotonic()
    time.sleep(3.0)
    server.start()
    up = time.monotonic()
    out, err = app.communicate(timeout=120)
    assert app.returncode == 0, err
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(lines) == 120 and _right(lines[-1], truth) >= 3
    assert "lost; reconnecting" in err and "back after" in err and len(err.splitlines()) <= 6, err
    gaps = [b["timestamp"] - a["timestamp"] for a, b in zip(lines, lines[1:])]
    assert max(gaps) >= up - down - 0.5  # the outage is in the record: nothing read while the server was down


def test_a_server_that_never_comes_back_ends_the_run_with_an_error_and_the_jsonl_intact(scene, tmp_path):
    server, truth, roi_args = scene
    app = _camera(server, roi_args, tmp_path / "r.jsonl", "--reconnect-for", "2")
    _wait_for_frames(tmp_path / "r.jsonl")
    server.kill()
    out, err = app.communicate(timeout=60)
    assert app.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and server.url in last and "--reconnect-for 2" in last, err
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]  # every line whole
    assert lines and _right(lines[-1], truth) >= 3
    assert "FATAL" not in err and "Traceback" not in err


def test_a_usage_error_on_a_live_source_is_exit_2_without_an_abort(scene):
    server, _, _ = scene
    r = subprocess.run([sys.executable, "-m", "apps.camera", "--source", server.url, "--model", str(CNN_INT8),
                        "--headless", "--roi", "1,2,3"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: --roi '1,2,3': expected x,y,w,h in pixels"]
    r = subprocess.run([sys.executable, "-m", "apps.camera", "--source", server.url, "--model", str(CNN_INT8),
                        "--headless", "--roi", "5000,2,30,10", "--max-frames", "5"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --roi 5000,2,30,10: outside")
    assert "FATAL" not in r.stderr


def test_the_python_api_streams_the_network_camera(scene):
    from runtime import TextReader

    server, truth, _ = scene
    with TextReader(str(CNN_INT8), rois=rois([{"box": t["box"]} for t in truth])) as reader:
        results = list(reader.stream(server.url, max_frames=20))
    assert len(results) == 20 and _right(results[-1].to_dict(), truth) >= 3


@pytest.mark.skipif(bool(NO_RTSP_SERVER), reason="GStreamer's RTSP server is not installed (scripts/setup.sh "
                    "installs gir1.2-gst-rtsp-server-1.0, python3-gi, gstreamer1.0-plugins-ugly): " + NO_RTSP_SERVER)
def test_an_rtsp_h264_camera_is_read_and_reconnected(tmp_path):
    import cv2

    video = tmp_path / "words.avi"
    truth = render_video(str(video), n_words=4, size=(240, 640), frames=30, font_px=20, speed=0.0)[0]
    frames = tmp_path / "frames"
    frames.mkdir()
    cap = cv2.VideoCapture(str(video))
    for i in range(30):
        cv2.imwrite(str(frames / f"{i:04d}.jpg"), cap.read()[1])
    port = _free_port()
    server = Server(video, port)
    server.cmd = [GST_PYTHON, str(ROOT / "tests" / "apps" / "rtsp_server.py"), str(frames), str(port)]
    server.url = f"rtsp://127.0.0.1:{port}/live"
    server.start()
    try:
        roi_args = sum([["--roi", ",".join(map(str, r))] for r in rois(truth)], [])
        app = _camera(server, roi_args, tmp_path / "r.jsonl", "--max-frames", "150")
        _wait_for_frames(tmp_path / "r.jsonl")
        server.kill()
        time.sleep(3.0)
        server.start()
        out, err = app.communicate(timeout=120)
    finally:
        if server.proc.poll() is None:
            server.kill()
    assert app.returncode == 0, err
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(lines) == 150 and _right(lines[-1], truth) >= 3, lines[-1]
    assert "lost; reconnecting" in err and "back after" in err, err


@pytest.mark.skipif(bool(NO_GSTREAMER_OPENCV), reason="no OpenCV built with GStreamer (the PyPI wheels have none; "
                    "scripts/setup.sh installs Debian's python3-opencv for the system python3): " + NO_GSTREAMER_OPENCV)
def test_gstreamer_pipelines_are_read_end_to_end_where_opencv_has_gstreamer(tmp_path):
    """The source path of csi://, usb:// on a Jetson and gst: pipelines: runtime.sources under an OpenCV with
    GStreamer (the system python3's), a videotestsrc pipeline and a filesrc pipeline of a rendered video."""
    import cv2

    video = tmp_path / "words.avi"
    render_video(str(video), n_words=4, size=(240, 640), frames=20, font_px=20, speed=0.0)
    first = cv2.VideoCapture(str(video)).read()[1]
    np_path = tmp_path / "first.npy"
    script = f"""
import json, sys
import numpy as np
sys.path.insert(0, {str(ROOT)!r})
from runtime.sources import LatestFrameReader, parse_source, gstreamer_available
assert gstreamer_available()
out = {{}}
for name, pipe in [("test", "videotestsrc pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! "
                            "videoconvert ! video/x-raw,format=BGR ! appsink"),
                   ("file", "gst:filesrc location={video} ! decodebin ! videoconvert ! video/x-raw,format=BGR ! "
                            "appsink")]:
    spec = parse_source(pipe)
    rd = LatestFrameReader(spec, reconnect_for=1.0)
    frames = []
    while len(frames) < 10:
        item = rd.read(timeout=20)
        if item is None:
            break
        frames.append(item[2])
    rd.close()
    out[name] = [spec.kind, len(frames), list(frames[0].shape) if frames else None]
    if name == "file" and frames:
        np.save({str(np_path)!r}, frames[0])
print(json.dumps(out))
"""
    r = subprocess.run([GST_PYTHON, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["test"] == ["gstreamer", 10, [240, 320, 3]] and out["file"] == ["gstreamer", 10, [240, 640, 3]], out
    import numpy as np

    assert np.abs(np.load(np_path).astype(int) - first.astype(int)).mean() < 3  # the file's picture (a static scene)
