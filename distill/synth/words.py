"""What the synthesizer writes: English words, numbers, codes (plate- and price-like) and random strings."""
from __future__ import annotations

import string
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from runtime.charset import resolve_charset

__all__ = ["WordSampler", "load_wordlist", "DEFAULT_WORDLIST"]

DEFAULT_WORDLIST = Path(__file__).resolve().parent.parent / "assets" / "words_en.txt"


@lru_cache(maxsize=4)
def load_wordlist(path: str = str(DEFAULT_WORDLIST)) -> tuple[str, ...]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"word list {p} not found")
    words = tuple(w.strip() for w in p.read_text(encoding="utf-8").splitlines() if w.strip() and not w.startswith("#"))
    if not words:
        raise ValueError(f"word list {p} holds no words")
    return words


_U, _L, _D = string.ascii_uppercase, string.ascii_lowercase, string.digits


def _pick(rng: np.random.Generator, chars: str, n: int) -> str:
    return "".join(chars[i] for i in rng.integers(0, len(chars), n))


def _number(rng: np.random.Generator) -> str:
    k = rng.integers(0, 7)
    if k == 0:
        return str(rng.integers(0, 10 ** rng.integers(1, 7)))
    if k == 1:
        return f"{rng.integers(0, 1000)}.{rng.integers(0, 100):02d}"
    if k == 2:
        return f"{rng.integers(1, 1000)},{rng.integers(0, 1000):03d}"
    if k == 3:
        return f"{rng.integers(0, 101)}%"
    if k == 4:
        return f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}"
    if k == 5:
        return f"{rng.integers(1, 32):02d}/{rng.integers(1, 13):02d}/{rng.integers(0, 100):02d}"
    return f"{rng.integers(0, 100000):05d}"  # meter-like, leading zeros


def _code(rng: np.random.Generator) -> str:
    k = rng.integers(0, 7)
    if k == 0:  # EU-style plate
        return f"{_pick(rng, _U, 2)}-{rng.integers(10, 1000)}-{_pick(rng, _U, 2)}"
    if k == 1:  # Vietnamese/Indian-style plate
        return f"{rng.integers(10, 100)}{_pick(rng, _U, 1)}{rng.integers(10000, 100000)}"
    if k == 2:
        return f"{_pick(rng, _U, 3)}{rng.integers(100, 10000)}"
    if k == 3:  # price
        return f"${rng.integers(0, 1000)}.{rng.integers(0, 100):02d}"
    if k == 4:
        return f"{rng.integers(0, 100)}.{rng.integers(0, 100):02d}"
    if k == 5:  # serial / part number
        return f"SN-{_pick(rng, _U + _D, int(rng.integers(4, 8)))}"
    return f"{_pick(rng, _U, 2)}{rng.integers(100, 1000)}-{_pick(rng, _U + _D, 2)}"


@dataclass
class WordSampler:
    """Draws strings; every character is in ``charset`` and the length is in [min_len, max_len]."""

    charset: str = "94"
    min_len: int = 1
    max_len: int = 16
    mix: dict[str, float] = field(default_factory=lambda: {"word": 0.55, "number": 0.15, "code": 0.15, "random": 0.15})
    wordlist: str = str(DEFAULT_WORDLIST)

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"word lengths: need 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        bad = set(self.mix) - {"word", "number", "code", "random"}
        if bad:
            raise ValueError(f"word mix: unknown kinds {sorted(bad)}; expected word, number, code, random")
        total = sum(self.mix.values())
        if total <= 0:
            raise ValueError("word mix: weights must sum to > 0")
        self._kinds = list(self.mix)
        self._p = np.array([self.mix[k] for k in self._kinds], dtype=np.float64) / total
        self._chars = resolve_charset(self.charset)
        self._set = frozenset(self._chars)
        self._words = load_wordlist(self.wordlist)
        self._alnum = "".join(c for c in self._chars if c.isalnum()) or self._chars
        self._has_upper = any(c.isupper() for c in self._chars)

    def _word(self, rng: np.random.Generator) -> str:
        # Log-uniform rank: frequent words come often, rare words still appear.
        n = len(self._words)
        i = min(n - 1, int(np.exp(rng.uniform(0, np.log(n)))) - 1)
        w = self._words[i]
        r = rng.random()
        if self._has_upper:
            w = w.capitalize() if r < 0.3 else w.upper() if r < 0.5 else w
        if rng.random() < 0.08:
            w += [".", ",", "!", "?", ":", "'s"][rng.integers(0, 6)]
        return w

    def sample(self, rng: np.random.Generator) -> str:
        for _ in range(100):
            kind = self._kinds[rng.choice(len(self._kinds), p=self._p)]
            if kind == "word":
                s = self._word(rng)
            elif kind == "number":
                s = _number(rng)
            elif kind == "code":
                s = _code(rng)
            else:
                s = _pick(rng, self._alnum, int(rng.integers(self.min_len, min(self.max_len, 10) + 1)))
            if not self._has_upper:
                s = s.lower()
            s = "".join(c for c in s if c in self._set)
            if self.min_len <= len(s) <= self.max_len:
                return s
        # The charset/length settings leave little room (e.g. digits only): random strings always fit.
        return _pick(rng, self._alnum, int(rng.integers(self.min_len, self.max_len + 1)))
