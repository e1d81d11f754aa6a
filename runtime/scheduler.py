"""Which tracked words to read on this frame: the recognizer's time goes where the answer can still change.

Every frame the pipeline packs all live tracks (the C path does it in well under a millisecond), so each track's
LR tensor is at hand. From it the scheduler keeps a signature: the tensor's grey levels pooled to 4x16 and
normalised to zero mean and unit spread, so that exposure drift and gain do not count as change. A track is *due*
for a read when

* it is new (never read),
* its crop changed since its last read: the mean absolute difference of the signatures is above ``change`` and
  above ``noise`` times the track's own frame-to-frame jitter (a moving average of the difference between
  consecutive frames: sensor noise, shake and codec flicker on a 10-px word move a signature as much as a new
  text does on a clean one),
* its fused confidence (``runtime.tracking.Vote``: how sure its reads were and how many agree) is below
  ``confidence``,
* or it has not been read for ``max_age`` frames.

A track whose box is cut by the frame's edge (a word entering or leaving the view) is due only while it has never
been read: its crop holds part of the word, and reading it would vote for a fragment ("orth" for "north"). A track
first read cut is due as soon as its box is whole, and that read replaces the fragment's votes.

Due tracks are read most urgent first, as many as the frame's budget allows, in one batch: ``budget_ms`` of
recognition (given by the pipeline each frame: what is left of the frame period after the rest of the loop, or
fixed by the config), at the cost per crop measured as it runs (what is left, less than a crop, stays unspent:
headroom); ``max_reads`` caps the count when > 0. New tracks
are read on the frame they appear, beyond that budget, up to ``new_reads`` of them: a word shows no text until its
first read. Urgency is ``frames since the last read x (1 - fused confidence + change / threshold)``: every due
track gains urgency while it waits, in proportion to how uncertain it is, so a word that stays unreadable gets a
larger share of the reads but never all of them; a new track comes before every other.

When a confident read (``forget_confidence``) of a crop that changed since the previous read disagrees with the
track's fused text, and the next confident read says the same, the vote's old evidence is scaled by ``forget``
before that reading is added: a sign that turns from OPEN to CLOSED is then read as CLOSED after a few reads
instead of having to outvote every earlier frame. One such read alone forgets nothing: on a moving scene it is
most often a box that slid onto the next word for a frame. Nor does a read that is part of the fused text ("seve"
for "seven"): a box that slid off the word between two detections, not a new text; it only adds its vote.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ScheduleCfg", "ReadScheduler", "signature", "HEADROOM"]

SIG_SHAPE = (4, 16)
# The frame rate the scheduler keeps, over the source's: headroom for jitter, so that a pipeline reading a 30 FPS
# camera is done with a frame before the next arrives (36 FPS for 30 FPS sources).
HEADROOM = 1.2


@dataclass
class ScheduleCfg:
    max_reads: int = 0  # crops read per frame at most (0: no limit by count; the time budget decides)
    budget_ms: float = 0.0  # fixed recognition milliseconds per frame (0: what the frame period leaves, see fps)
    fps: float = HEADROOM * 30.0  # frame rate to keep: 30 FPS cameras + headroom (0 with budget_ms 0: max_reads only)
    change: float = 0.25  # least signature difference that makes a crop due (normalised signature units)
    noise: float = 3.0  # ... and at least this many times the track's frame-to-frame jitter
    forget: float = 0.25  # factor on the old vote totals when a changed crop reads differently, twice in a row
    forget_confidence: float = 0.5  # least confidence of a read that may forget old evidence
    confidence: float = 0.8  # fused confidence below which a track stays due (two agreeing reads at 0.95 settle)
    max_age: int = 30  # frames without a read before a track is due anyway
    new_reads: int = 16  # new tracks read on their first frame beyond the budget, at most (0: they share it)

    def validate(self) -> "ScheduleCfg":
        if self.max_reads < 0 or self.budget_ms < 0 or self.fps < 0:
            raise ValueError(f"schedule: max_reads ({self.max_reads}), budget_ms ({self.budget_ms}) and fps "
                             f"({self.fps}) must be >= 0")
        if self.max_reads == 0 and self.budget_ms == 0 and self.fps == 0:
            raise ValueError("schedule: give a budget (max_reads > 0, budget_ms > 0 or fps > 0); read every frame "
                             "instead with --read-every-frame")
        if not (self.change > 0 and self.noise >= 0 and 0 <= self.forget <= 1 and 0 <= self.forget_confidence <= 1
                and 0 < self.confidence <= 1 and self.max_age >= 1 and self.new_reads >= 0):
            raise ValueError(f"schedule: need change > 0, noise >= 0, forget and forget_confidence in [0, 1], "
                             f"confidence in (0, 1], max_age >= 1, new_reads >= 0; got {self}")
        return self


def signature(x: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) packed LR tensors -> (N, 4, 16) float32 grey levels pooled by area (H, W multiples not
    required: the last rows and columns fold into the nearest cell), each normalised to zero mean and unit spread
    (a flat crop stays near zero)."""
    g = np.asarray(x, np.float32).mean(1)
    n, h, w = g.shape
    sh, sw = SIG_SHAPE
    rows = np.minimum((np.arange(h) * sh) // h, sh - 1)
    cols = np.minimum((np.arange(w) * sw) // w, sw - 1)
    out = np.zeros((n, sh, sw), np.float32)
    np.add.at(out, (slice(None), rows[:, None], cols[None, :]), g)
    counts = np.zeros((sh, sw), np.float32)
    np.add.at(counts, (rows[:, None], cols[None, :]), 1.0)
    out /= counts
    out -= out.mean((1, 2), keepdims=True)
    # the floor keeps a flat crop's signature flat instead of blowing its noise up to unit spread
    out /= out.std((1, 2), keepdims=True) + 0.05
    return out


@dataclass
class _State:
    sig: np.ndarray | None = None  # signature at the last read
    prev: np.ndarray | None = None  # signature on the previous frame
    jitter: float = 0.0  # moving average of the frame-to-frame signature difference
    last_read: int = -1  # frame index of the last read
    change: float = 0.0  # signature difference since the last read, as measured by choose() on this frame
    changed: bool = False  # whether that difference counts as a change (above both thresholds)
    cut: bool = False  # whether the box is cut by the frame's edge on this frame (set by choose())
    read_cut: bool = False  # whether the last read was of a cut box
    pending: str = ""  # a confident reading of a changed crop that disagreed with the vote, until the next read


class ReadScheduler:
    """``choose(frame, tracks, x)`` -> indices of ``tracks`` to read now; ``observe(...)`` before each reading is
    voted; ``record(ms, n)`` after each recognizer call."""

    def __init__(self, cfg: ScheduleCfg | None = None) -> None:
        self.cfg = (cfg or ScheduleCfg()).validate()
        self._state: dict[int, _State] = {}
        self._ms_per_crop: float | None = None

    def threshold(self, st: _State) -> float:
        """The signature difference that counts as a change for this track."""
        return max(self.cfg.change, self.cfg.noise * st.jitter)

    def choose(self, frame: int, tracks: list, x: np.ndarray, partial: np.ndarray | None = None,
               budget_ms: float | None = None) -> tuple[list[int], np.ndarray]:
        """(indices to read, most urgent first; every track's signature). ``tracks`` carry ``id`` and ``vote``;
        ``x`` is their packed batch, in the same order; ``partial[i]``: track i's box is cut by the frame's edge;
        ``budget_ms``: recognition time this frame may spend (None: the config's ``budget_ms``)."""
        c = self.cfg
        sigs = signature(x) if len(x) else np.zeros((0,) + SIG_SHAPE, np.float32)
        live = {t.id for t in tracks}
        self._state = {k: v for k, v in self._state.items() if k in live}
        due: list[tuple[float, int]] = []
        new: list[int] = []
        for i, t in enumerate(tracks):
            st = self._state.setdefault(t.id, _State())
            if st.prev is not None:
                d = float(np.abs(sigs[i] - st.prev).mean())
                # a jump (a new text, a box that slid) is not jitter: clip it before it enters the average
                d = min(d, 2 * st.jitter + c.change / max(c.noise, 1.0))
                st.jitter = 0.9 * st.jitter + 0.1 * d
            st.prev = sigs[i]
            st.cut = bool(partial is not None and partial[i])
            if st.sig is None:
                new.append(i)
                continue
            if st.cut:
                continue
            if st.read_cut:  # whole now: read it before anything but new tracks
                due.append((float("inf"), i))
                continue
            thr = self.threshold(st)
            change = st.change = float(np.abs(sigs[i] - st.sig).mean())
            st.changed = change > thr
            age = frame - st.last_read
            conf = t.vote.best[1]
            if st.changed or conf < c.confidence or age >= c.max_age:
                due.append((age * (1.0 - conf + change / thr), i))
        due.sort(key=lambda d: (-d[0], tracks[d[1]].id))
        new.sort(key=lambda i: tracks[i].id)
        extra = new[:c.new_reads]  # read now, beyond the budget
        due = [(float("inf"), i) for i in new[len(extra):]] + due
        n = len(due)
        if c.max_reads:
            n = min(n, c.max_reads)
        budget = c.budget_ms if budget_ms is None or c.budget_ms else budget_ms
        if budget and self._ms_per_crop:
            n = min(n, max(1, int(budget // self._ms_per_crop)))
        return extra + [i for _, i in due[:n]], sigs

    def observe(self, frame: int, track, sig: np.ndarray, text: str, confidence: float = 1.0) -> None:
        """Track ``track`` was read as ``text`` (at ``confidence``) on ``frame`` with signature ``sig``; call before
        its vote adds the reading. A confident reading that is neither the fused text nor part of it, of a crop that
        changed since the last read (as choose() measured it on this frame), is a candidate new text; old evidence
        is forgotten when the next confident reading says the same."""
        st = self._state.setdefault(track.id, _State())
        sure = bool(text) and confidence >= self.cfg.forget_confidence and text not in track.vote.best[0]
        if text and st.read_cut and not st.cut:
            track.vote.forget(0.0)  # the earlier reads saw part of the word
        elif sure and st.pending == text:
            track.vote.forget(self.cfg.forget)
        st.pending = text if sure and st.sig is not None and st.changed and st.pending != text else ""
        st.sig, st.last_read, st.change, st.changed, st.read_cut = sig, frame, 0.0, False, st.cut

    def record(self, ms: float, crops: int) -> None:
        """The measured cost of one recognizer call of ``crops`` crops (a moving average per crop)."""
        if crops <= 0:
            return
        per = ms / crops
        self._ms_per_crop = per if self._ms_per_crop is None else 0.8 * self._ms_per_crop + 0.2 * per
