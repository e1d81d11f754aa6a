"""Charsets, label normalisation and the tokenizer family (attention and CTC style).

Torch-free: tokenizers encode to Python lists / NumPy arrays and decode NumPy probability arrays, so the
same class serves training (``distill`` wraps the arrays into tensors) and inference (``runtime``).
"""
from __future__ import annotations

import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from . import fastpath

__all__ = [
    "CHARSETS",
    "resolve_charset",
    "normalize_textzoom",
    "OOVError",
    "Decoded",
    "Tokenizer",
    "AttnTokenizer",
    "CTCTokenizer",
    "make_tokenizer",
]

_DIGITS = string.digits
_LOWER = string.ascii_lowercase
_UPPER = string.ascii_uppercase
# 94 printable ASCII characters without space: the "94" charset of the STR literature (PARSeq's charset_train).
_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"

CHARSETS: dict[str, str] = {
    "36": _DIGITS + _LOWER,  # TextZoom evaluation protocol
    "62": _DIGITS + _LOWER + _UPPER,
    "94": _DIGITS + _LOWER + _UPPER + _PUNCT,
}


def resolve_charset(spec: str) -> str:
    """A built-in charset name ('36', '62', '94') or a literal string of characters (no duplicates)."""
    if spec in CHARSETS:
        return CHARSETS[spec]
    if not spec:
        raise ValueError("charset: empty charset")
    dup = [c for c, n in Counter(spec).items() if n > 1]
    if dup:
        raise ValueError(f"charset: duplicate characters {''.join(dup)!r}")
    return spec


_TZ_KEEP = frozenset(CHARSETS["36"])


def normalize_textzoom(label: str) -> str:
    """The TextZoom / STR benchmark protocol: lowercase, keep only [0-9a-z]."""
    return "".join(c for c in label.lower() if c in _TZ_KEEP)


class OOVError(ValueError):
    """A label holds characters outside the tokenizer's charset and the policy is ``error``."""


@dataclass
class Decoded:
    text: str
    confidence: float  # product of the per-character confidences (and the EOS for attention decoders)
    char_confidences: list[float] = field(default_factory=list)


class Tokenizer:
    """Base class: maps characters to class ids and back.

    ``unknown`` is the policy for characters the charset lacks after case adaptation: ``drop`` removes them,
    ``error`` raises :class:`OOVError`. Either way they are counted in :attr:`oov_counts`.
    Case adaptation follows the usual practice: a charset without upper-case letters lowercases labels, one
    without lower-case letters uppercases them.
    """

    kind = "base"

    def __init__(self, charset: str = "36", unknown: str = "drop") -> None:
        if unknown not in ("drop", "error"):
            raise ValueError(f"unknown: expected 'drop' or 'error', got {unknown!r}")
        self.charset_spec = charset
        self.charset = resolve_charset(charset)
        self.unknown = unknown
        self.oov_counts: Counter[str] = Counter()
        self.oov_labels = 0
        has_lower = any(c.islower() for c in self.charset)
        has_upper = any(c.isupper() for c in self.charset)
        self._case = "lower" if (has_lower and not has_upper) else "upper" if (has_upper and not has_lower) else None
        self._build_vocab()

    # -- vocabulary ------------------------------------------------------------------------------------
    def _build_vocab(self) -> None:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.itos)

    def adapt(self, label: str) -> str:
        """Case-adapt a label to the charset and apply the unknown-character policy."""
        if self._case == "lower":
            label = label.lower()
        elif self._case == "upper":
            label = label.upper()
        bad = [c for c in label if c not in self._char_set]
        if not bad:
            return label
        self.oov_counts.update(bad)
        self.oov_labels += 1
        if self.unknown == "error":
            raise OOVError(f"label {label!r} has characters outside charset {self.charset_spec!r}: {''.join(sorted(set(bad)))!r}")
        return "".join(c for c in label if c in self._char_set)

    def char_ids(self, label: str) -> list[int]:
        return [self.stoi[c] for c in self.adapt(label)]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "charset": self.charset, "unknown": self.unknown}

    # -- decoding ----------------------------------------------------------------------------------------
    def decode(self, probs: np.ndarray) -> list[Decoded]:
        """Greedy decoding of an (N, T, C) array of probabilities (softmax already applied)."""
        raise NotImplementedError

    def decode_ids(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def _strings(self, d: "fastpath.DecodedBatch") -> list[Decoded]:
        itos = self.itos
        out = []
        for ids, conf, n, seq in zip(d.ids, d.conf, d.lengths.tolist(), d.seq_conf.tolist()):
            out.append(Decoded("".join([itos[i] for i in ids[:n].tolist()]), seq, conf[:n].tolist()))
        return out

    @staticmethod
    def _check_probs(probs: np.ndarray, num_classes: int) -> np.ndarray:
        probs = np.asarray(probs)
        if probs.ndim != 3:
            raise ValueError(f"decode: expected (N, T, C) probabilities, got shape {probs.shape}")
        if probs.shape[2] != num_classes:
            raise ValueError(f"decode: last dimension {probs.shape[2]} != number of classes {num_classes}")
        return probs


class AttnTokenizer(Tokenizer):
    """Attention style (PARSeq layout): [EOS] + charset + [BOS] + [PAD]. EOS is 0; the head predicts
    ``len(charset) + 1`` classes (EOS and characters), BOS and PAD are inputs only."""

    kind = "attn"
    EOS, BOS, PAD = "[E]", "[B]", "[P]"

    def _build_vocab(self) -> None:
        self.itos = [self.EOS] + list(self.charset) + [self.BOS, self.PAD]
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self._char_set = frozenset(self.charset)
        self.eos_id, self.bos_id, self.pad_id = 0, len(self.itos) - 2, len(self.itos) - 1

    @property
    def num_output_classes(self) -> int:
        return len(self.charset) + 1  # EOS + characters

    def encode(self, labels: Iterable[str], max_len: int | None = None) -> np.ndarray:
        """Returns int64 (N, L+2): BOS, chars, EOS, PAD... with L the longest label (or ``max_len``)."""
        seqs = [self.char_ids(lb) for lb in labels]
        if max_len is not None:
            seqs = [s[:max_len] for s in seqs]
        L = max((len(s) for s in seqs), default=0) if max_len is None else max_len
        out = np.full((len(seqs), L + 2), self.pad_id, dtype=np.int64)
        for i, s in enumerate(seqs):
            out[i, 0] = self.bos_id
            out[i, 1 : 1 + len(s)] = s
            out[i, 1 + len(s)] = self.eos_id
        return out

    def decode_ids(self, ids: Sequence[int]) -> str:
        chars = []
        for i in ids:
            if i == self.eos_id:
                break
            if 0 < i <= len(self.charset):
                chars.append(self.itos[i])
        return "".join(chars)

    def decode(self, probs: np.ndarray) -> list[Decoded]:
        probs = self._check_probs(probs, self.num_output_classes)
        # Sequence confidence includes the EOS decision, as PARSeq does: a string that never ends is unsure.
        return self._strings(fastpath.decode(probs, "eos", self.eos_id))


class CTCTokenizer(Tokenizer):
    """CTC style: [blank] + charset; blank is 0."""

    kind = "ctc"
    BLANK = "[B]"

    def _build_vocab(self) -> None:
        self.itos = [self.BLANK] + list(self.charset)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self._char_set = frozenset(self.charset)
        self.blank_id = 0

    @property
    def num_output_classes(self) -> int:
        return len(self.itos)

    def encode(self, labels: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Returns (targets concatenated int64, lengths int64), the layout ``ctc_loss`` takes."""
        seqs = [self.char_ids(lb) for lb in labels]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        flat = np.array([i for s in seqs for i in s], dtype=np.int64)
        return flat, lengths

    def decode_ids(self, ids: Sequence[int]) -> str:
        chars, prev = [], -1
        for i in ids:
            if i != prev and i != self.blank_id:
                chars.append(self.itos[i])
            prev = i
        return "".join(chars)

    def decode(self, probs: np.ndarray) -> list[Decoded]:
        probs = self._check_probs(probs, self.num_output_classes)
        # A character held over several frames keeps its most confident frame; an empty read is as sure as its
        # least sure blank frame.
        return self._strings(fastpath.decode(probs, "ctc", self.blank_id))


def make_tokenizer(kind: str, charset: str = "36", unknown: str = "drop") -> Tokenizer:
    kinds = {"attn": AttnTokenizer, "ctc": CTCTokenizer}
    if kind not in kinds:
        raise ValueError(f"tokenizer kind: expected one of {sorted(kinds)}, got {kind!r}")
    return kinds[kind](charset, unknown)
