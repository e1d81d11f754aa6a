"""experiments.residual_drop: the shipped tiny student read with each residual branch dropped, on real crops."""
import json

from conftest import ROOT, run_module

MODEL = ROOT / "weights" / "ppocrv6-tiny-student-lr.onnx"


def test_each_branch_dropped_reads_worse_and_saves_its_multiply_adds(tmp_path, shared_real):
    out = tmp_path / "rows.json"
    r = run_module(["experiments.residual_drop", str(MODEL), "--data", str(shared_real / "svt_train"),
                    "--max-samples", "24", "--drop", "/Add_8,/Add_13", "--json", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())
    full, singles, together = rows[0], rows[1:-1], rows[-1]
    assert full["dropped"] == "" and len(singles) >= 5 and together["dropped"] == "/Add_8,/Add_13"
    assert full["accuracy"]["svt_train/lr16"] > 50
    for row in singles + [together]:
        assert row["mmacs"] < full["mmacs"]  # the branch's convolutions are gone from the graph
        assert row["accuracy"]["svt_train/lr16"] <= full["accuracy"]["svt_train/lr16"]
    assert full["mmacs"] - together["mmacs"] > max(full["mmacs"] - s["mmacs"] for s in singles[:2]) - 1e-6
    assert "| (full model) |" in r.stdout


def test_bad_options_are_one_line(tmp_path, shared_real):
    for args, needle in [(["--conditions", "lr9"], "--conditions"), (["--drop", "/Nope"], "--drop"),
                         (["--json", str(tmp_path / "none" / "x.json")], "--json")]:
        r = run_module(["experiments.residual_drop", str(MODEL), "--data", str(shared_real / "svt_train"),
                        "--max-samples", "2", *args])
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
