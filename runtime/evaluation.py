"""One evaluation for every tool: data x conditions -> input sets; a reader x an input set -> a ``SplitResult``.

``distill.evaluate`` (checkpoints, teacher rows), ``compress.gate`` (exported models against FP32) and
``apps.benchmark`` (every format and the peers) all build their inputs with ``input_sets`` and score a reader
with ``evaluate``; the protocol (TextZoom label normalisation, word accuracy, NED) is ``runtime.metrics``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .conditions import apply_condition
from .datasets import LabelPolicy, detect_layout, usable_samples
from .metrics import SplitResult, score_split

__all__ = ["InputSet", "expand_splits", "input_sets", "evaluate", "POLICY"]

# Every evaluation reads labels the TextZoom way (lowercase alphanumerics; no length limit).
POLICY = LabelPolicy(normalize="textzoom", max_len=0)

# A reader: N RGB crops -> N readings, each a string, a (text, confidence) pair, or an object with .text and
# .confidence (runtime.charset.Decoded).
Reader = Callable[[list[np.ndarray]], Sequence]


@dataclass
class InputSet:
    split: str  # data split name
    condition: str  # "HR" (the crops as stored), "LR" (the stored LR of TextZoom pairs), or an LR condition name
    images: list[np.ndarray]
    labels: list[str]


def expand_splits(paths: Sequence[str | Path]) -> list[tuple[str, Path]]:
    """[(split name, lmdb path)]: a synthetic root expands to its test splits (easy, medium, hard)."""
    out: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        test = p / "test"
        if test.is_dir() and any((test / s).is_dir() for s in ("easy", "medium", "hard")):
            out += [(s, test / s) for s in ("easy", "medium", "hard") if (test / s).is_dir()]
        else:
            out.append((p.name, p))
    return out


def input_sets(paths: Sequence[str | Path], conditions: Sequence[str] = ("lr16", "lr16blur"), hr: bool = True,
               lr_from_hr: bool = False, max_samples: int = 0, who: str = "evaluate") -> list[InputSet]:
    """Per split, first the LR inputs, then (``hr``) the crops as stored. LR inputs exist when ``conditions`` is
    not empty: TextZoom pairs give their stored LR ("LR") unless ``lr_from_hr``; other data (and ``lr_from_hr``)
    one set per condition, made from the HR crop. ``who`` names the tool in the skip report."""
    sets: list[InputSet] = []
    for split, path in expand_splits(paths):
        samples = usable_samples(path, POLICY, max_samples, who)
        labels = [s.label for s in samples]
        if conditions and detect_layout(path) == "textzoom" and not lr_from_hr:
            sets.append(InputSet(split, "LR", [s.lr for s in samples], labels))
        elif conditions:
            sets += [InputSet(split, c, [apply_condition(c, s.image) for s in samples], labels) for c in conditions]
        if hr:
            sets.append(InputSet(split, "HR", [s.image for s in samples], labels))
    return sets


def _text_conf(d) -> tuple[str, float | None]:
    if isinstance(d, str):
        return d, None
    if isinstance(d, tuple):
        return d[0], d[1]
    return d.text, d.confidence


def evaluate(read: Reader, inputs: InputSet, batch: int = 64,
             transform: Callable[[np.ndarray], np.ndarray] | None = None, name: str | None = None,
             on_batch: Callable[[int], object] | None = None) -> SplitResult:
    """Score ``read`` on one input set, ``batch`` crops per call (``transform`` maps each crop first, e.g. bicubic
    upsampling); ``name``: the result's split name (default the set's); ``on_batch(n)`` after each call of n crops
    (a progress bar's ``update``)."""
    preds: list[str] = []
    confs: list[float | None] = []
    for i in range(0, len(inputs.images), batch):
        imgs = inputs.images[i : i + batch]
        for d in read([transform(im) for im in imgs] if transform else imgs):
            text, conf = _text_conf(d)
            preds.append(text)
            confs.append(conf)
        if on_batch is not None:
            on_batch(len(imgs))
    known = all(c is not None for c in confs)
    return score_split(name or inputs.split, preds, inputs.labels, confs if known and confs else None)
