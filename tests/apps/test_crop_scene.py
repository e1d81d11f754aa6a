"""apps.crop_scene and apps.synthetic_video --crops: a camera scene of real word crops from ../shared (labels,
boxes, the camera's effects, ROI file), and apps.benchmark score reading an apps.camera run against its truth."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import CNN_INT8, ROOT, SHARED_REAL

SETS = [SHARED_REAL / "svt_train", SHARED_REAL / "ic15_train"]
needs_real = pytest.mark.skipif(not all(p.is_dir() for p in SETS), reason="../shared/data/real not beside the checkout")


@needs_real
def test_pick_crops_draws_words_from_each_set_reproducibly():
    from apps.crop_scene import pick_crops
    from runtime.charset import normalize_textzoom

    a = pick_crops(SETS, 8, seed=3)
    b = pick_crops(SETS, 8, seed=3)
    assert [lb for _, lb in a] == [lb for _, lb in b] and len(a) == 8
    assert [lb for _, lb in a] != [lb for _, lb in pick_crops(SETS, 8, seed=4)]
    for img, label in a:
        assert img.ndim == 3 and img.shape[0] >= 16 and " " not in label and 2 <= len(normalize_textzoom(label)) <= 12
    from runtime.datasets import open_dataset

    svt = open_dataset(SETS[0])
    svt_labels = {svt[i].label.strip() for i in range(len(svt))}
    svt.close()
    assert 2 <= sum(lb in svt_labels for _, lb in a) <= 6  # both sets contribute


@needs_real
def test_a_real_crop_scene_has_its_words_where_the_truth_says_under_camera_effects(tmp_path):
    out = tmp_path / "scene.avi"
    r = subprocess.run([sys.executable, "-m", "apps.synthetic_video", str(out), "--crops", *map(str, SETS),
                        "--words", "8", "--frames", "12", "--width", "640", "--height", "360", "--speed", "0",
                        "--rois", str(tmp_path / "rois.txt")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    truth = json.loads((tmp_path / "scene.avi.truth.json").read_text())
    assert len(truth) == 12 and all(len(row) == 8 for row in truth)
    rois = [tuple(map(int, line.split(","))) for line in (tmp_path / "rois.txt").read_text().splitlines()]
    assert len(rois) == 8
    heights = [t["box"][3] - t["box"][1] for t in truth[0]]
    assert all(10 / 0.8 - 0.5 <= h <= 18 / 0.8 + 0.5 for h in heights), heights  # 10-18 px text
    # the camera shakes: a static word's box moves a little between frames, never far
    shift = np.abs(np.array([t["box"] for t in truth[5]]) - np.array([t["box"] for t in truth[0]]))
    assert shift.max() > 0.05 and shift.max() < 8
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f.astype(np.float32))
    assert len(frames) == 12
    # a word crop is not the background: its box holds more detail than the same box one row of cells lower
    f0 = frames[0]
    for t in truth[0]:
        x0, y0, x1, y1 = (int(round(v)) for v in t["box"])
        assert f0[y0:y1, x0:x1].std() > 8
    # sensor noise: two frames of a static scene differ everywhere, by a few grey levels
    d = np.abs(frames[1] - frames[2]).mean()
    assert 1.0 < d < 20.0
    bad = subprocess.run([sys.executable, "-m", "apps.synthetic_video", str(tmp_path / "x.avi"), "--crops",
                          str(SETS[0]), "--jpeg", "101"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "--jpeg" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = subprocess.run([sys.executable, "-m", "apps.synthetic_video", str(tmp_path / "x.avi"), "--crops",
                          str(tmp_path / "nope")], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "nope" in bad.stderr


@needs_real
@pytest.mark.skipif(not CNN_INT8.is_file(), reason="shipped weights missing")
def test_score_reads_a_camera_run_against_the_scene_truth(tmp_path):
    from apps.crop_scene import pick_crops, render_crop_video
    from apps.synthetic_video import rois, score_frames

    video = tmp_path / "s.avi"
    truth = render_crop_video(str(video), pick_crops(SETS, 4, seed=1), (240, 640), frames=8, speed=0.0)
    (tmp_path / "rois.txt").write_text("".join(f"{x},{y},{w},{h}\n" for x, y, w, h in rois(truth[0])))
    r = subprocess.run([sys.executable, "-m", "apps.camera", "--source", str(video), "--roi-file",
                        str(tmp_path / "rois.txt"), "--model", str(CNN_INT8), "--headless", "--jsonl",
                        str(tmp_path / "r.jsonl")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    right, total = score_frames(truth, [[(w["box"], w["text"]) for w in ln["words"]] for ln in lines])
    assert total == 32
    s = subprocess.run([sys.executable, "-m", "apps.benchmark", "score", "--jsonl", str(tmp_path / "r.jsonl"),
                        "--truth", str(video) + ".truth.json", "--json", str(tmp_path / "score.json")],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert s.returncode == 0, s.stderr
    assert f"{100 * right / total:.1f} % right" in s.stdout
    assert json.loads((tmp_path / "score.json").read_text())["right"] == right
    (tmp_path / "bad.jsonl").write_text('{"frame": 99, "words": []}\n')
    s = subprocess.run([sys.executable, "-m", "apps.benchmark", "score", "--jsonl", str(tmp_path / "bad.jsonl"),
                        "--truth", str(video) + ".truth.json"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert s.returncode == 2 and "bad.jsonl" in s.stderr and "frame 99" in s.stderr
