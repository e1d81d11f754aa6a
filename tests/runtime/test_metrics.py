import json

import pytest

from runtime.metrics import (TEXTZOOM_TEST_SIZES, EvalReport, edit_distance, paired_difference, reports_to_markdown,
                             score_split, weighted_average)


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


def test_paired_difference_counts_the_samples_each_model_alone_reads():
    gts = ["a", "b", "c", "d", "e"]
    ref = score_split("x", ["a", "b", "c", "?", "?"], gts)
    other = score_split("x", ["a", "?", "c", "d", "e"], gts)
    assert ref.hits == "11100" and other.hits == "10111"
    d = paired_difference(ref.hits, other.hits)
    assert (d.n, d.gained, d.lost) == (5, 2, 1)
    assert d.points == pytest.approx(other.accuracy - ref.accuracy) == pytest.approx(20.0)
    # 95 % half-width of the paired difference: 1.96 sqrt((3/5 - 0.2^2) / 5), in points
    assert d.half_width == pytest.approx(100 * 1.96 * ((3 / 5 - 0.04) / 5) ** 0.5)
    assert str(d) == f"+20.00 ±{d.half_width:.2f} (+2/-1)"
    assert paired_difference(ref.hits, ref.hits).half_width == 0.0  # the same reads: no doubt
    with pytest.raises(ValueError, match="5 and 4 samples"):
        paired_difference(ref.hits, other.hits[:4])
