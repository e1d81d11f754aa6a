import json

import pytest

from runtime.metrics import TEXTZOOM_TEST_SIZES, EvalReport, edit_distance, reports_to_markdown, score_split, weighted_average


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("same", "same") == 0


def test_score_split_normalises_like_textzoom():
    r = score_split("easy", ["Hello!", "w0rld", ""], ["hello", "world", "x"])
    assert r.n == 3 and r.correct == 1
    assert r.accuracy == pytest.approx(100 / 3)
    assert r.ned == pytest.approx((0 + 1 / 5 + 1) / 3)
    with pytest.raises(ValueError):
        score_split("x", ["a"], ["a", "b"])


def test_weighted_average_by_counts_and_by_textzoom_sizes():
    e = score_split("easy", ["a"] * 10, ["a"] * 10)  # 100%
    h = score_split("hard", ["a"] * 30, ["b"] * 30)  # 0%
    assert weighted_average([e, h]).accuracy == pytest.approx(25.0)
    w = {k: TEXTZOOM_TEST_SIZES[k] for k in ("easy", "hard")}
    assert weighted_average([e, h], w).accuracy == pytest.approx(100 * 1619 / (1619 + 1343))


def test_report_markdown_and_json_roundtrip():
    rep = EvalReport("student", "LR", [score_split("easy", ["ab"], ["ab"]), score_split("hard", ["a"], ["b"])]).finalize()
    md = reports_to_markdown([rep])
    assert md.splitlines()[0].startswith("| model | condition | easy | hard | average")
    assert "| student | LR | 100.00 | 0.00 | 50.00 |" in md
    again = EvalReport.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert again.average.accuracy == pytest.approx(50.0)
