"""The GPU check's smoke mode: the same script (experiments/gpu_check.py through scripts/gpu_check.sh) at toy size
on the CPU, so that it is known to run end to end before GPU time is spent on it."""
import json
import os
import subprocess

from conftest import ROOT, SHARED_REAL


def test_gpu_check_smoke_runs_every_stage_and_writes_the_tables(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"))
    r = subprocess.run(["bash", "scripts/gpu_check.sh", "--smoke", "--work", str(tmp_path / "work"),
                        "--real", str(SHARED_REAL / "svt_test")], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    stages = [s["stage"] for s in res["stages"]]
    assert stages == ["synthesize", "teacher", "clip", "kdltr", "baseline", "clipocr", "kdltr+clipocr", "evaluate"]
    trained = [s for s in res["stages"] if s["steps"]]
    assert all(s["images_per_s"] and s["images_per_s"] > 0 for s in trained), trained
    rows = [row["contender"] for row in res["gain"]["rows"]]
    assert len(rows) == 6 and rows[0].startswith("teacher (HR") and rows[-1].startswith("KD-LTR + CLIP-OCR")
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| stage | steps | batch | wall s | train images/s | peak GPU MiB |" in md and "| contender |" in md
    if SHARED_REAL.is_dir():
        assert "svt_test_lr16blur" in res["gain"]["rows"][0]


def test_gpu_check_payload_mode_names_the_missing_file(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), GPU_PAYLOAD=str(tmp_path / "none.tar.xz"))
    r = subprocess.run(["bash", "scripts/gpu_check.sh", "--payload", "--smoke"], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=60)
    assert r.returncode == 2 and "none.tar.xz: missing" in r.stderr and "--pack" in r.stderr
    assert not (tmp_path / "out").exists()
