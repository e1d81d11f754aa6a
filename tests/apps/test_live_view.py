"""apps.camera --serve: the live view in a real headless browser (Debian's chromium): the annotated picture and the
readings appear; /readings.json and /stream.mjpg answer; only 127.0.0.1 is used. The screenshot is kept in the
test's output folder."""
import json
import shutil
import subprocess
import sys
import time
import urllib.request

import cv2
import pytest

from apps.synthetic_video import render_video, rois
from conftest import CNN_INT8, ROOT

CHROMIUM = shutil.which("chromium")
HEADLESS = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_serve_address_defaults_to_the_loopback_and_refuses_a_bad_one():
    from apps.live_view import parse_address
    from runtime.cli import InputError

    assert parse_address("8080") == ("127.0.0.1", 8080) and parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    for bad in ("localhost:http", "127.0.0.1:70000"):
        with pytest.raises(InputError, match="--serve"):
            parse_address(bad)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it)")
@pytest.mark.skipif(not CNN_INT8.is_file(), reason="shipped weights missing")
def test_the_live_view_shows_the_picture_and_the_readings_in_a_real_browser(tmp_path):
    import socket

    video = tmp_path / "words.avi"
    truth = render_video(str(video), n_words=6, size=(360, 640), frames=240, font_px=20, speed=0.0)[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    roi_args = sum([["--roi", ",".join(map(str, r))] for r in rois(truth)], [])
    app = subprocess.Popen([sys.executable, "-m", "apps.camera", "--source", str(video), "--realtime", "--headless",
                            "--model", str(CNN_INT8), "--serve", f"127.0.0.1:{port}", *roi_args], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = app.stderr.readline()
        assert f"live view on http://127.0.0.1:{port}/" in line, line + app.stderr.read()
        url = f"http://127.0.0.1:{port}/"
        for _ in range(100):  # the first frames read
            words = json.loads(urllib.request.urlopen(url + "readings.json", timeout=5).read()).get("words", [])
            if sum(w["text"] == t["text"] for w, t in zip(words, truth)) >= 5:
                break
            time.sleep(0.1)
        assert sum(w["text"] == t["text"] for w, t in zip(words, truth)) >= 5, words
        with urllib.request.urlopen(url + "stream.mjpg", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace") and r.read(7) == b"--frame"
        shot = tmp_path / "live_view.png"
        subprocess.run(HEADLESS + [f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,800",
                                   f"--screenshot={shot}", url], capture_output=True, timeout=60)
        page = cv2.imread(str(shot))
        assert page is not None and page.shape[:2] == (800, 900)
        # the picture: the light rendered scene under the page's dark header, with the readings' table below
        picture = page[60:420, 10:650]
        assert (picture.mean(2) > 150).mean() > 0.5, picture.mean()
        dom = subprocess.run(HEADLESS + [f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=60).stdout
        shown = [t["text"] for t in truth if f"<td class=\"text\">{t['text']}</td>" in dom]
        assert len(shown) >= 5 and 'id="view"' in dom, dom[-2000:]
    finally:
        out, err = app.communicate(timeout=60)
    assert app.returncode == 0, err
