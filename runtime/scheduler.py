"""Which tracked words to read on this frame: the recognizer's budget goes where the answer can still change.

Every frame the pipeline packs all live tracks (the C path does it in well under a millisecond), so each track's
LR tensor is at hand. From it the scheduler keeps a signature: the tensor's grey levels pooled to 4x16. A track
is *due* for a read when

* it is new (never read),
* its crop changed since its last read: the mean absolute difference of the signatures, in units of the
  normalised input (about 2/255 per grey level), is above ``change``,
* its fused confidence (the share of the vote its text holds) is below ``confidence``,
* or it has not been read for ``max_age`` frames.

A track whose box is cut by the frame's edge (a word entering or leaving the view) is due only while it has never
been read: its crop holds part of the word, and reading it would vote for a fragment ("orth" for "north"). A track
first read cut is due as soon as its box is whole, and that read replaces the fragment's votes.

Due tracks are read most urgent first, up to the frame's budget: ``max_reads`` crops, and ``budget_ms`` of
recognition measured as it runs (a moving average of the cost per crop at the batch sizes met). New tracks are read
on the frame they appear, beyond that budget, up to ``new_reads`` of them: a word shows no text until its first
read, and 16 words appearing at once would otherwise wait 8 frames at 2 reads per frame. Urgency is
age x (uncertainty + change): ``(1 + age / max_age) * (1 - fused confidence + change / change threshold)``, so a
confident word whose crop changed is not starved by a track that stays uncertain (a false detection, say), and
every due track gains urgency while it waits; a new track comes before every other.

When a read disagrees with the track's fused text and the crop changed since the previous read, the vote's old
evidence is scaled by ``forget`` before the new reading is added: a sign that turns from OPEN to CLOSED is then
read as CLOSED after a few reads instead of having to outvote every earlier frame. (The signature alone cannot
tell a changed text from a box that shifted by a few pixels: both move it by 0.1 to 0.2 on rendered scenes.) A
read that is part of the fused text ("seve" for "seven") forgets nothing: it is a box that slid off the word
between two detections, not a new text, and it only adds its vote.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ScheduleCfg", "ReadScheduler", "signature"]

SIG_SHAPE = (4, 16)


@dataclass
class ScheduleCfg:
    max_reads: int = 1  # crops read per frame at most (0: no limit by count); 1 keeps 50 FPS with the default model
    budget_ms: float = 0.0  # recognition milliseconds per frame at most, measured (0: no limit by time)
    change: float = 0.06  # signature difference that makes a crop due (normalised units; 0.06 ~ 8 grey levels)
    forget: float = 0.25  # factor on the old vote totals when a changed crop reads differently
    confidence: float = 0.9  # fused confidence below which a track stays due
    max_age: int = 30  # frames without a read before a track is due anyway
    new_reads: int = 16  # new tracks read on their first frame beyond the budget, at most (0: they share it)

    def validate(self) -> "ScheduleCfg":
        if self.max_reads < 0 or self.budget_ms < 0:
            raise ValueError(f"schedule: max_reads ({self.max_reads}) and budget_ms ({self.budget_ms}) must be >= 0")
        if self.max_reads == 0 and self.budget_ms == 0:
            raise ValueError("schedule: give a budget (max_reads > 0 or budget_ms > 0); read every frame instead "
                             "with --read-every-frame")
        if not (self.change > 0 and 0 <= self.forget <= 1 and 0 < self.confidence <= 1 and self.max_age >= 1 and
                self.new_reads >= 0):
            raise ValueError(f"schedule: need change > 0, forget in [0, 1], confidence in (0, 1], max_age >= 1, "
                             f"new_reads >= 0; got {self}")
        return self


def signature(x: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) packed LR tensors -> (N, 4, 16) float32 grey levels pooled by area (H, W multiples not
    required: the last rows and columns fold into the nearest cell)."""
    g = np.asarray(x, np.float32).mean(1)
    n, h, w = g.shape
    sh, sw = SIG_SHAPE
    rows = np.minimum((np.arange(h) * sh) // h, sh - 1)
    cols = np.minimum((np.arange(w) * sw) // w, sw - 1)
    out = np.zeros((n, sh, sw), np.float32)
    np.add.at(out, (slice(None), rows[:, None], cols[None, :]), g)
    counts = np.zeros((sh, sw), np.float32)
    np.add.at(counts, (rows[:, None], cols[None, :]), 1.0)
    return out / counts


@dataclass
class _State:
    sig: np.ndarray | None = None  # signature at the last read
    last_read: int = -1  # frame index of the last read
    change: float = 0.0  # signature difference since the last read, as measured by choose() on this frame
    cut: bool = False  # whether the box is cut by the frame's edge on this frame (set by choose())
    read_cut: bool = False  # whether the last read was of a cut box


class ReadScheduler:
    """``choose(frame, tracks, x)`` -> indices of ``tracks`` to read now; ``observe(...)`` before each reading is
    voted; ``record(ms, n)`` after each recognizer call."""

    def __init__(self, cfg: ScheduleCfg | None = None) -> None:
        self.cfg = (cfg or ScheduleCfg()).validate()
        self._state: dict[int, _State] = {}
        self._ms_per_crop: float | None = None

    def choose(self, frame: int, tracks: list, x: np.ndarray,
               partial: np.ndarray | None = None) -> tuple[list[int], np.ndarray]:
        """(indices to read, most urgent first; every track's signature). ``tracks`` carry ``id`` and ``vote``;
        ``x`` is their packed batch, in the same order; ``partial[i]``: track i's box is cut by the frame's edge."""
        c = self.cfg
        sigs = signature(x) if len(x) else np.zeros((0,) + SIG_SHAPE, np.float32)
        live = {t.id for t in tracks}
        self._state = {k: v for k, v in self._state.items() if k in live}
        due: list[tuple[float, int]] = []
        new: list[int] = []
        for i, t in enumerate(tracks):
            st = self._state.setdefault(t.id, _State())
            st.cut = bool(partial is not None and partial[i])
            if st.sig is None:
                new.append(i)
                continue
            if st.cut:
                continue
            if st.read_cut:  # whole now: read it before anything but new tracks
                due.append((float("inf"), i))
                continue
            change = st.change = float(np.abs(sigs[i] - st.sig).mean())
            age = frame - st.last_read
            conf = t.vote.best[1]
            if change > c.change or conf < c.confidence or age >= c.max_age:
                due.append(((1 + age / c.max_age) * (1.0 - conf + change / c.change), i))
        due.sort(key=lambda d: (-d[0], tracks[d[1]].id))
        new.sort(key=lambda i: tracks[i].id)
        extra = new[:c.new_reads]  # read now, beyond the budget
        due = [(float("inf"), i) for i in new[len(extra):]] + due
        n = len(due)
        if c.max_reads:
            n = min(n, c.max_reads)
        if c.budget_ms and self._ms_per_crop:
            n = min(n, max(1, int(c.budget_ms // self._ms_per_crop)))
        return extra + [i for _, i in due[:n]], sigs

    def observe(self, frame: int, track, sig: np.ndarray, text: str) -> None:
        """Track ``track`` was read as ``text`` on ``frame`` with signature ``sig``; call before its vote adds the
        reading. Forgets old evidence when the reading is neither the fused text nor part of it and the crop changed
        since the last read (the change choose() measured on this frame; observe follows choose on the same frame)."""
        st = self._state.setdefault(track.id, _State())
        if text and st.read_cut and not st.cut:
            track.vote.forget(0.0)  # the earlier reads saw part of the word
        elif st.sig is not None and text and text not in track.vote.best[0] and st.change > self.cfg.change:
            track.vote.forget(self.cfg.forget)
        st.sig, st.last_read, st.change, st.read_cut = sig, frame, 0.0, st.cut

    def record(self, ms: float, crops: int) -> None:
        """The measured cost of one recognizer call of ``crops`` crops (a moving average per crop)."""
        if crops <= 0:
            return
        per = ms / crops
        self._ms_per_crop = per if self._ms_per_crop is None else 0.8 * self._ms_per_crop + 0.2 * per
