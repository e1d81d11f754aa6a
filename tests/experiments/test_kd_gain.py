"""experiments.kd_gain: the gain table (KD-LTR vs labels alone vs the teacher on bicubic), seeds aggregated and
finished runs kept, the CLIP-OCR rows and the ONNX-teacher contender."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, needs_ppocr, overrides, real_lmdb, run_module
from distill.checkpoint import load_checkpoint
from distill.config import load_config
from distill.train import train


def test_kd_gain_tiny(synth, tmp_path, shared_real):
    t = tmp_path / "t"
    train(load_config("configs/smoke.yaml", overrides(synth, t, "cnn-ctc")))
    r = subprocess.run([sys.executable, "-m", "experiments.kd_gain", "--steps", "3", "--out", str(tmp_path / "g"),
                        "--teacher", str(t / "last.pt"), "--max-samples", "12", "--eval-batch", "5", "--real", str(shared_real / "svt_test"),
                        *sum([["--set", o] for o in overrides(synth, t, "cnn-ctc")[:-1]], [])],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "g" / "kd_gain.json").read_text())
    assert res["steps"] == 3 and res["fixed_steps"]
    for who in ("student", "baseline"):  # --steps fixes the step count of both contenders
        assert load_checkpoint(tmp_path / "g" / who / "last.pt")["step"] == 3
    names = [row["contender"] for row in res["rows"]]
    assert names == ["teacher (HR input, reference)", "teacher on bicubic(LR)", "baseline student (LR only)", "KD-LTR student"]
    assert set(res["ahead"]) == {"easy", "medium", "hard", "svt_test_lr16", "svt_test_lr16blur"}
    assert "| KD-LTR student |" in (tmp_path / "g" / "kd_gain.md").read_text()


def test_kd_gain_seeds_are_aggregated_and_finished_runs_kept(synth, tmp_path, shared_real, monkeypatch, capsys):
    import statistics

    from experiments.kd_gain import main as kd_gain

    monkeypatch.chdir(ROOT)
    t = tmp_path / "t"
    train(load_config("configs/smoke.yaml", overrides(synth, t, "cnn-ctc")))
    g = tmp_path / "g"
    argv = ["--steps", "2", "--seeds", "0,1", "--out", str(g), "--teacher", str(t / "last.pt"), "--max-samples", "12",
            "--real", str(shared_real / "svt_test"),
            *sum([["--set", o] for o in overrides(synth, t, "cnn-ctc")[:-1]], [])]
    assert kd_gain(argv) == 0
    agg = json.loads((g / "kd_gain.json").read_text())
    per_seed = [json.loads((g / f"seed-{s}" / "kd_gain.json").read_text()) for s in (0, 1)]
    assert agg["seeds"] == [0, 1] and [r["seed"] for r in per_seed] == [0, 1]
    # the seed reaches training: same start, same step count, different data order -> different weights
    w0, w1 = (load_checkpoint(g / f"seed-{s}" / "student" / "last.pt") for s in (0, 1))
    assert w0["step"] == w1["step"] == 2 and w0["config"]["train"]["seed"] == 0 and w1["config"]["train"]["seed"] == 1
    assert any(not torch.equal(w0["model"][k], w1["model"][k]) for k in w0["model"] if w0["model"][k].is_floating_point())
    for row in agg["rows"]:  # every cell is the mean (and sample sd) of the seeds' cells
        cells = [next(r for r in run["rows"] if r["contender"] == row["contender"]) for run in per_seed]
        for k in ("easy", "hard", "svt_test_lr16blur"):
            vals = [c[k] for c in cells]
            assert row[k]["values"] == vals
            assert row[k]["mean"] == pytest.approx(statistics.fmean(vals))
            assert row[k]["sd"] == pytest.approx(statistics.stdev(vals))
    kd = [next(r for r in run["rows"] if r["model"] == "student") for run in per_seed]
    bl = [next(r for r in run["rows"] if r["model"] == "baseline") for run in per_seed]
    diff = agg["paired_differences"]["student - baseline"]["hard"]
    assert diff["values"] == pytest.approx([k["hard"] - b["hard"] for k, b in zip(kd, bl)])
    assert agg["ahead_per_seed"] == {str(r["seed"]): sum(r["ahead"].values()) for r in per_seed}
    md = (g / "kd_gain.md").read_text()
    assert "over 2 seeds" in md and "student minus baseline, paired by seed" in md and "| seed 1: student" in md

    # Run again: every finished contender is kept, not retrained, and the table is the same.
    stamp = (g / "seed-1" / "baseline" / "last.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert kd_gain(argv) == 0
    assert capsys.readouterr().out.count("already trained") == 4
    assert (g / "seed-1" / "baseline" / "last.pt").stat().st_mtime_ns == stamp
    assert json.loads((g / "kd_gain.json").read_text())["rows"] == agg["rows"]
    # A finished run without its best.pt resumes at its last step, which only writes best.pt again.
    (g / "seed-0" / "student" / "best.pt").unlink()
    assert kd_gain(argv) == 0
    assert "kdltr resumes from" in capsys.readouterr().out
    assert load_checkpoint(g / "seed-0" / "student" / "best.pt")["step"] == 2
    # Another config over the same directory is refused, naming the key, and nothing there is touched.
    assert kd_gain(argv + ["--set", "optim.lr=0.0123"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "0.0123" in err and "seed-0" in err
    assert (g / "seed-1" / "baseline" / "last.pt").stat().st_mtime_ns == stamp


def test_a_run_written_before_a_config_key_existed_is_the_same_config():
    from experiments.kd_gain import _config_diff, stored_config

    cfg = load_config(str(ROOT / "configs" / "ppocrv6_student.yaml"))
    old = cfg.to_dict()
    for src in old["data"]["train"]:
        del src["at_lr_height"]  # written before the key existed: it had the default's effect
    assert _config_diff(old, cfg.to_dict())  # compared as written, the list of sources differs
    assert _config_diff(stored_config({"config": old}), cfg.to_dict()) == []
    old["data"]["train"][0]["clean"] = 0.9
    assert [d[0] for d in _config_diff(stored_config({"config": old}), cfg.to_dict())] == ["data.train"]
    assert stored_config({"config": {"nonsense": 1}}) == {"nonsense": 1}  # unknown keys: compared as written


def test_kd_gain_refuses_bad_seeds(tmp_path, capsys):
    from experiments.kd_gain import main as kd_gain

    for seeds, msg in (("0,x", "comma-separated integers"), ("1,1", "listed twice")):
        assert kd_gain(["--steps", "2", "--seeds", seeds, "--out", str(tmp_path)]) == 2
        assert msg in capsys.readouterr().err


def test_kd_gain_needs_one_budget(tmp_path):
    for budget in ([], ["--minutes", "1", "--steps", "5"]):
        r = subprocess.run([sys.executable, "-m", "experiments.kd_gain", "--out", str(tmp_path), *budget],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2 and "exactly one of --minutes and --steps" in r.stderr
    r = subprocess.run([sys.executable, "-m", "experiments.kd_gain", "--out", str(tmp_path), "--steps", "2",
                        "--eval-batch", "0"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "--eval-batch: must be >= 1" in r.stderr


def test_kd_gain_has_clipocr_rows(clip_setup, tmp_path, shared_real):
    import json
    import subprocess
    import sys

    
    d, base = clip_setup
    sets = sum([["--set", o] for o in base], [])
    r = subprocess.run([sys.executable, "-m", "experiments.kd_gain", "--config", "configs/clipocr_smoke.yaml", "--minutes",
                        "0.001", "--min-steps", "2", "--out", str(tmp_path), "--teacher", str(d / "teacher" / "last.pt"),
                        "--clip", str(d / "clip" / "last.pt"), "--contenders", "kdltr,baseline,clipocr,kdltr+clipocr",
                        "--max-samples", "8", "--real", str(shared_real / "svt_test"), *sets], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "kd_gain.json").read_text())
    rows = res["rows"]
    names = [row["contender"] for row in rows]
    assert "CLIP-OCR student" in names and "KD-LTR + CLIP-OCR student" in names
    assert all(row["easy"] is not None for row in rows)
    # each CLIP-OCR row is judged against the baseline and the KD-LTR student, split by split, from its own cells
    by = {row["model"]: row for row in rows}
    md = (tmp_path / "kd_gain.md").read_text()
    for model in ("clipocr", "kdltr+clipocr"):
        for who, ref in (("baseline", "baseline"), ("kdltr", "student")):
            got = res["clipocr_ahead"][model][who]
            assert set(got) == {"easy", "medium", "hard", "svt_test_lr16", "svt_test_lr16blur"}
            assert got == {k: by[model][k] > by[ref][k] for k in got}
        n = sum(res["clipocr_ahead"][model]["baseline"].values())
        assert f"{by[model]['contender']} ahead of the LR-only baseline on {n}/5" in md


def test_clipocr_summary_lines_name_the_splits_behind():
    from experiments.kd_gain import _clipocr_lines

    def row(model, label, easy, hard, real):
        return {"contender": label, "model": model, "easy": easy, "hard": hard, "synthetic_avg": None, "svt_lr16": real}

    rows = [row("baseline", "baseline student (LR only)", 50.0, 20.0, 30.0), row("student", "KD-LTR student", 52.0, 19.0, 31.0),
            row("clipocr", "CLIP-OCR student", 51.0, 21.0, 30.0)]
    lines, res = _clipocr_lines(rows, "svt")
    assert res == {"clipocr": {"baseline": {"easy": True, "hard": True, "svt_lr16": False},
                               "kdltr": {"easy": False, "hard": True, "svt_lr16": False}}}
    assert lines == ["CLIP-OCR student ahead of the LR-only baseline on 2/3 (not on svt_lr16) and of the KD-LTR "
                     "student on 1/3 (not on easy, svt_lr16) test splits"]


@needs_ppocr
def test_kd_gain_onnx_teacher_contender(tmp_path, shared_real):
    words = real_lmdb(shared_real / "svt_train", tmp_path / "words", 16)
    real = real_lmdb(shared_real / "svt_test", tmp_path / "real", 12)
    sets = ["model.name=onnx-ctc", "model.charset='36'", f"data.train=[{{path: {words}}}]", f"data.val={words}",
            "data.batch_size=8", "data.workers=0", "data.max_val_samples=8", f"onnx_teacher.cache_dir={tmp_path / 'c'}"]
    res = run_module(["experiments.kd_gain", "--contenders", "onnx-teacher", "--minutes", "0.01", "--min-steps", "2",
                      "--seeds", "5", "--out", str(tmp_path / "kg"), "--real", str(real), "--max-samples", "12",
                      "--onnx-config", "configs/ppocr_student.yaml", *[a for s in sets for a in ("--set", s)]],
                     timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    d = json.loads((tmp_path / "kg" / "kd_gain.json").read_text())
    assert d["seed"] == 5 and d["steps"] >= 2  # one seed: one run in --out, trained with that train.seed
    assert load_checkpoint(tmp_path / "kg" / "onnx-student" / "last.pt")["config"]["train"]["seed"] == 5
    models = {r["model"] for r in d["rows"]}
    assert models == {"onnx-teacher", "onnx-student", "onnx-baseline"}
    # the recipe sets train.wise_alpha: the pair is scored as it ships, by its weight-space averages
    assert sorted(Path(c).name for c in d["checkpoints"].values()) == ["wise.pt", "wise.pt"]
    teacher_hr = next(r for r in d["rows"] if r["contender"].startswith("ONNX teacher (HR"))
    assert teacher_hr["real_lr16"] > 40  # the HR reference column: PP-OCR reads real HR crops
    md = (tmp_path / "kg" / "kd_gain.md").read_text()
    assert "student distilled from the ONNX teacher" in md and "ahead of its LR-only baseline" in md
