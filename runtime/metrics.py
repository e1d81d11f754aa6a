"""The evaluation protocol the field reports: word accuracy and normalised edit distance after TextZoom
normalisation, per split and the sample-weighted average, as dataclasses printed as Markdown and JSON."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

from .charset import normalize_textzoom

__all__ = [
    "TEXTZOOM_TEST_SIZES",
    "edit_distance",
    "SplitResult",
    "PairedDifference",
    "paired_difference",
    "EvalReport",
    "score_split",
    "weighted_average",
]

# The TextZoom test split sizes; the benchmark's "average" is weighted by these.
TEXTZOOM_TEST_SIZES = {"easy": 1619, "medium": 1411, "hard": 1343}


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@dataclass
class SplitResult:
    split: str
    n: int
    correct: int
    accuracy: float  # percent of words read exactly (after normalisation)
    ned: float  # mean normalised edit distance, edit / max(len(gt), len(pred)); lower is better
    mean_confidence: float | None = None
    hits: str = ""  # one character per sample in order, "1": read right; what paired comparisons count

    @property
    def one_minus_ned(self) -> float:
        return 1.0 - self.ned


def score_split(
    split: str,
    preds: Sequence[str],
    gts: Sequence[str],
    confidences: Sequence[float] | None = None,
    normalize: Callable[[str], str] = normalize_textzoom,
) -> SplitResult:
    if len(preds) != len(gts):
        raise ValueError(f"score_split({split!r}): {len(preds)} predictions for {len(gts)} labels")
    correct = 0
    ned_sum = 0.0
    hits = []
    for p, g in zip(preds, gts):
        p, g = normalize(p), normalize(g)
        correct += p == g
        hits.append("1" if p == g else "0")
        m = max(len(p), len(g))
        ned_sum += edit_distance(p, g) / m if m else 0.0
    n = len(gts)
    conf = (sum(confidences) / len(confidences)) if confidences else None
    return SplitResult(split, n, correct, 100.0 * correct / n if n else 0.0, ned_sum / n if n else 0.0, conf,
                       "".join(hits))


@dataclass
class PairedDifference:
    """One model against a reference on the same samples: the accuracy difference in points, its 95 % interval's
    half-width, and the samples behind it (only this model reads them: ``gained``; only the reference: ``lost``).
    Two models that agree on most samples differ by far less noise than two independent accuracies suggest, and
    by more than a single point estimate shows."""

    n: int
    gained: int
    lost: int

    @property
    def points(self) -> float:
        return 100.0 * (self.gained - self.lost) / self.n if self.n else 0.0

    @property
    def half_width(self) -> float:
        """95 % half-width of ``points`` (normal approximation of the paired difference, as McNemar's test)."""
        if not self.n:
            return 0.0
        d = (self.gained - self.lost) / self.n
        var = max((self.gained + self.lost) / self.n - d * d, 0.0) / self.n
        return 100.0 * 1.96 * var ** 0.5

    def __str__(self) -> str:
        return f"{self.points:+.2f} ±{self.half_width:.2f} (+{self.gained}/-{self.lost})"


def paired_difference(reference: str, other: str) -> PairedDifference:
    """``other`` against ``reference``, sample by sample: two ``SplitResult.hits`` of the same samples in the same
    order."""
    a, b = reference, other
    if not a or len(a) != len(b):
        raise ValueError(f"paired_difference: per-sample hits of {len(a)} and {len(b)} samples")
    return PairedDifference(len(a), sum(x == "0" and y == "1" for x, y in zip(a, b)),
                            sum(x == "1" and y == "0" for x, y in zip(a, b)))


def weighted_average(results: Iterable[SplitResult], weights: dict[str, float] | None = None) -> SplitResult:
    """Sample-weighted average. ``weights`` maps split name -> weight (e.g. :data:`TEXTZOOM_TEST_SIZES` when the
    splits were subsampled); by default each split weighs its own sample count."""
    results = list(results)
    if not results:
        raise ValueError("weighted_average: no splits")
    w = [float(weights[r.split]) if weights is not None else float(r.n) for r in results]
    total = sum(w)
    if total <= 0:
        return SplitResult("average", 0, 0, 0.0, 0.0)
    acc = sum(wi * r.accuracy for wi, r in zip(w, results)) / total
    ned = sum(wi * r.ned for wi, r in zip(w, results)) / total
    confs = [(wi, r.mean_confidence) for wi, r in zip(w, results) if r.mean_confidence is not None]
    conf = sum(wi * c for wi, c in confs) / sum(wi for wi, _ in confs) if confs else None
    return SplitResult("average", sum(r.n for r in results), sum(r.correct for r in results), acc, ned, conf)


@dataclass
class EvalReport:
    """One model under one condition over several splits."""

    model: str
    condition: str  # e.g. "LR", "HR", "bicubic(LR)", "lr16", "lr16blur"
    splits: list[SplitResult] = field(default_factory=list)
    average: SplitResult | None = None
    extra: dict = field(default_factory=dict)

    def finalize(self, weights: dict[str, float] | None = None) -> "EvalReport":
        if self.splits:
            self.average = weighted_average(self.splits, weights)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EvalReport":
        splits = [SplitResult(**s) for s in d.get("splits", [])]
        avg = SplitResult(**d["average"]) if d.get("average") else None
        return cls(d["model"], d["condition"], splits, avg, d.get("extra", {}))


def reports_to_markdown(reports: Sequence[EvalReport], metric: str = "accuracy") -> str:
    """One row per report, one column per split plus the weighted average. ``metric``: accuracy or ned."""
    split_names: list[str] = []
    for r in reports:
        for s in r.splits:
            if s.split not in split_names:
                split_names.append(s.split)
    head = ["model", "condition"] + split_names + ["average", "NED (avg)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in reports:
        by = {s.split: s for s in r.splits}
        cells = [r.model, r.condition]
        for name in split_names:
            s = by.get(name)
            cells.append("" if s is None else f"{getattr(s, metric):.2f}" if metric == "accuracy" else f"{s.ned:.4f}")
        cells.append(f"{r.average.accuracy:.2f}" if r.average else "")
        cells.append(f"{r.average.ned:.4f}" if r.average else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
