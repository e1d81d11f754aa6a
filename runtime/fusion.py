"""How likely a CTC read makes each candidate string: the probability the recognizer's output columns give a
string summed over every alignment (the CTC forward algorithm), for R reads and K candidates at once.

The camera pipeline fuses a track's reads with it (``runtime.tracking.Vote``): each read adds P(candidate | read)
to every candidate string, not only its confidence to its own greedy string. A read of "BAJAS" that also gives
"REBAJAS" a fair chance then counts for both, and the fused text is the string the reads support most in sum.
(Summed probabilities, not summed log-probabilities: one shaken crop that drops a letter would veto the true
string in a product of likelihoods. Measured on real-crop scenes: docs/runtime.md.)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["ctc_string_probs"]


def ctc_string_probs(probs: np.ndarray, labels: Sequence[Sequence[int]], blank: int = 0) -> np.ndarray:
    """(R, T, C) per-column class probabilities of R reads, K label id sequences -> (R, K) float64: the
    probability of each label under each read. An empty label is the all-blank path."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 3:
        raise ValueError(f"ctc_string_probs: expected (R, T, C) probabilities, got shape {p.shape}")
    R, T, C = p.shape
    K = len(labels)
    if not K or not R:
        return np.zeros((R, K))
    logp = np.log(np.maximum(p, 1e-30))
    L = 2 * max(len(lb) for lb in labels) + 1
    # the extended labels (blank, c1, blank, c2, ..., blank), padded with blanks past each label's end
    ext = np.full((K, L), blank, np.int64)
    ends = np.zeros(K, np.int64)
    for k, lb in enumerate(labels):
        if any(not 0 <= c < C for c in lb):
            raise ValueError(f"ctc_string_probs: label {k} has a class id outside the {C} classes")
        ext[k, 1:2 * len(lb):2] = lb
        ends[k] = 2 * len(lb)  # index of the final blank
    skip = np.zeros((K, L), bool)  # a transition s-2 -> s is allowed between two different characters
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])
    valid = np.arange(L)[None, :] <= ends[:, None]
    e = logp[:, :, ext]  # (R, T, K, L)
    alpha = np.full((R, K, L), -np.inf)
    alpha[:, :, 0] = e[:, 0, :, 0]
    if L > 1:
        alpha[:, :, 1] = np.where(ends > 0, e[:, 0, :, 1], -np.inf)
    neg = np.full((R, K, 1), -np.inf)
    for t in range(1, T):
        a1 = np.concatenate([neg, alpha[:, :, :-1]], 2)
        a2 = np.concatenate([neg, neg, alpha[:, :, :-2]], 2)
        a2 = np.where(skip[None], a2, -np.inf)
        alpha = np.logaddexp(np.logaddexp(alpha, a1), a2) + e[:, t]
        alpha = np.where(valid[None], alpha, -np.inf)
    rows = np.arange(K)
    last = alpha[:, rows, ends]
    last_char = np.where(ends > 0, alpha[:, rows, np.maximum(ends - 1, 0)], -np.inf)
    return np.exp(np.logaddexp(last, last_char))
