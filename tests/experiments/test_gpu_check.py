"""The GPU check's smoke mode: the same script (experiments/gpu_check.py through scripts/gpu_check.sh) at toy size
on the CPU, so that it is known to run end to end before GPU time is spent on it."""
import json
import os
import subprocess

import pytest

from conftest import ROOT, SHARED_REAL


@pytest.mark.skipif(not (SHARED_REAL / "ic15_train").is_dir(), reason="the recipe's real sets are not here")
def test_gpu_check_smoke_runs_every_stage_and_writes_the_tables(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"))
    r = subprocess.run(["bash", "scripts/gpu_check.sh", "--smoke", "--work", str(tmp_path / "work"),
                        "--real", str(SHARED_REAL)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    stages = {s["stage"]: s for s in res["stages"]}
    assert list(stages) == ["probe", "data", "teacher", "speed", "train", "evaluate"]
    assert not [s for s in stages.values() if "error" in s], stages
    assert stages["probe"]["result"]["modules"]["lmdb"] != "no" and stages["probe"]["result"]["cpu_cores"] >= 1
    t = stages["teacher"]["result"]
    assert set(t["crops_per_s"]) == {"onnxruntime", "torch"} and t["runner"] in t["crops_per_s"]
    tr = stages["train"]["result"]
    assert tr["steps"] == 4 and tr["images_per_s"] > 0 and {"data_ms", "forward_ms", "backward_ms"} <= set(tr)
    ev = stages["evaluate"]["result"]
    assert {r["model"] for r in ev} == {"shipped", "trained on this GPU"}
    assert {r["set"] for r in ev} == {"svt_test", "vn_plates_valid", "ic15_train held out"}
    assert {r["condition"] for r in ev} == {"lr16", "lr16blur"} and all(0 <= r["accuracy"] <= 100 for r in ev)
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| stage | wall s | result |" in md and "| shipped | svt_test |" in md and "Training plan: 4 steps" in md


def test_gpu_check_payload_mode_names_the_missing_file(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), GPU_PAYLOAD=str(tmp_path / "none.tar.xz"))
    r = subprocess.run(["bash", "scripts/gpu_check.sh", "--payload", "--smoke"], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=60)
    assert r.returncode == 2 and "none.tar.xz: missing" in r.stderr and "--pack" in r.stderr
    assert not (tmp_path / "out").exists()


def test_the_payload_copy_of_a_real_set_keeps_keys_labels_and_order(tmp_path):
    from experiments.gpu_check import compact_lmdb
    from runtime.datasets import LabelPolicy, open_dataset

    src = SHARED_REAL / "ic15_train"
    if not src.is_dir():
        pytest.skip("ic15_train is not here")
    from distill.data import split_lmdb

    split_lmdb(src, tmp_path / "part", 4400, seed=0)  # 68 crops: a small PNG set to compact
    compact_lmdb(str(tmp_path / "part" / "train"), str(tmp_path / "c"))
    a = open_dataset(tmp_path / "part" / "train", LabelPolicy(max_len=0))
    b = open_dataset(tmp_path / "c", LabelPolicy(max_len=0))
    assert a.keys == b.keys and a.raw_labels == b.raw_labels and len(a) == 68
    for i in range(len(a)):
        x, y = a[i].image, b[i].image
        assert x.shape == y.shape and abs(x.astype(int) - y.astype(int)).mean() < 3  # JPEG at 95: near the PNG
    size = lambda p: sum(f.stat().st_size for f in p.iterdir())  # noqa: E731
    assert size(tmp_path / "c") < size(tmp_path / "part" / "train")
