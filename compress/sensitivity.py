"""``python -m compress.sensitivity MODEL.onnx --calib DATA[,DATA] --eval DATA[,DATA] --out DIR``

Which layers cost the INT8 file its accuracy, and the fewest to keep float. Three passes on LR inputs made from the
``--eval`` crops by each condition (crops disjoint from the calibration set: the scan chooses on them):

1. every quantizable layer alone in INT8 (one file per layer, the calibrated ranges computed once and reused):
   its accuracy loss and the KL divergence of its frame distributions from FP32's, the ranking (KL first: it
   separates layers that one crop more or less cannot);
2. the whole model in INT8 with the K most sensitive layers kept float, for each K of ``--keep-float``:
   accuracy per condition and milliseconds per crop at batch 32 (what each float island costs);
3. the smallest K within ``--tolerance`` points of FP32 on every condition (else the K that comes closest, said
   so), printed as the ``--int8-float-nodes`` option of ``compress.ship`` that builds it.

Writes ``DIR/sensitivity.md`` and ``DIR/sensitivity.json`` (rewritten after each pass)."""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from runtime.cli import InputError, positive
from runtime.evaluation import input_sets
from runtime.files import write_bytes_atomic, write_json_atomic
from runtime.metrics import score_split
from runtime.onnxfile import ort_session
from runtime.recognizer import OnnxRecognizer
from runtime.timing import sigma_clipped_times

from .calibration import add_calib_n_arg, add_conditions_arg, calibration_tensors, data_paths, resolve_calib_path
from .quantize import (CALIBRATORS, INT8_TARGETS, float_kept_nodes, head_nodes, prepare_for_quantization,
                       quantize_int8, quantized_op_types)

__all__ = ["LayerRow", "KeepRow", "Sensitivity", "quantizable_layers", "scan", "main"]


@dataclass
class LayerRow:
    node: str
    op: str
    kl: float  # mean over frames of KL(FP32 || this file), nats
    loss: dict[str, float]  # condition -> FP32 accuracy minus this file's, points


@dataclass
class KeepRow:
    keep_float: int
    accuracy: dict[str, float]  # condition -> word accuracy, %
    ms_per_crop: float  # batch 32, median of timed runs
    nodes: list[str] = field(default_factory=list)


@dataclass
class Sensitivity:
    model: str
    target: str
    calibrator: str
    calib: str
    eval: str
    n_eval: int
    fp32: dict[str, float]
    fp32_ms_per_crop: float
    layers: list[LayerRow] = field(default_factory=list)
    keep: list[KeepRow] = field(default_factory=list)
    chosen: int | None = None
    within_tolerance: bool = False  # False: no K reached the tolerance; chosen is the K that came closest

    def worst(self, row: KeepRow) -> float:
        """The row's accuracy minus FP32's on its worst condition, points."""
        return min(row.accuracy[c] - self.fp32[c] for c in self.fp32)

    def to_markdown(self, top: int = 15) -> str:
        conds = list(self.fp32)
        lines = [f"# INT8 sensitivity of `{Path(self.model).name}` ({self.target}, {self.calibrator})", "",
                 f"Calibration: `{self.calib}`. Chosen on {self.n_eval} crops of `{self.eval}` per condition. "
                 f"FP32: " + ", ".join(f"{c} {a:.2f}" for c, a in self.fp32.items())
                 + f"; {self.fp32_ms_per_crop:.3f} ms a crop at batch 32.", ""]
        if self.layers:
            lines += [f"## Each layer alone in INT8 (the {min(top, len(self.layers))} most sensitive of "
                      f"{len(self.layers)})", "",
                      "| rank | node | op | frame KL | " + " | ".join(f"{c} loss" for c in conds) + " |",
                      "|---:|---|---|---:|" + "---:|" * len(conds)]
            for i, r in enumerate(self.layers[:top], 1):
                lines.append(f"| {i} | `{r.node}` | {r.op} | {r.kl:.5f} | "
                             + " | ".join(f"{r.loss[c]:+.2f}" for c in conds) + " |")
            lines.append("")
        if self.keep:
            lines += ["## The whole model in INT8, the K most sensitive layers float", "",
                      "| K float | " + " | ".join(f"{c}" for c in conds) + " | worst vs FP32 | ms a crop (b32) |",
                      "|---:|" + "---:|" * len(conds) + "---:|---:|"]
            for r in self.keep:
                mark = " (chosen)" if r.keep_float == self.chosen else ""
                lines.append(f"| {r.keep_float}{mark} | " + " | ".join(f"{r.accuracy[c]:.2f}" for c in conds)
                             + f" | {self.worst(r):+.2f} | {r.ms_per_crop:.3f} |")
            lines.append("")
        if self.chosen is not None:
            if not self.within_tolerance:
                lines += [f"No K is within the tolerance of FP32 on every condition; K = {self.chosen} comes "
                          "closest.", ""]
            nodes = next(r.nodes for r in self.keep if r.keep_float == self.chosen)
            lines += [f"Build it: `--int8-float-nodes {','.join(nodes) or ''}`" if nodes else
                      "Build it: no float layers needed.", ""]
        return "\n".join(lines)


def quantizable_layers(fp32_path: str, target: str = "cpu") -> list[tuple[str, str]]:
    """(name, op type) of the nodes the INT8 flavour quantizes, in graph order: its op types, less the head and
    the nodes that always stay float (``quantize.head_nodes``, ``float_kept_nodes``)."""
    with tempfile.TemporaryDirectory() as td:
        _, m = prepare_for_quantization(fp32_path, td, target)
    skip = set(head_nodes(m)) | set(float_kept_nodes(m))
    ops = set(quantized_op_types(target))
    return [(n.name, n.op_type) for n in m.graph.node if n.op_type in ops and n.name and n.name not in skip]


class _Scorer:
    """A file's accuracy per condition and frame KL from FP32 on fixed LR inputs."""

    def __init__(self, fp32_path: str, eval_data: str, conditions: Sequence[str], n: int) -> None:
        self.rec = OnnxRecognizer(fp32_path)
        sets = input_sets(data_paths(eval_data), conditions, hr=False, lr_from_hr=True, max_samples=n,
                          who="sensitivity")
        self.x: dict[str, np.ndarray] = {}
        self.labels: dict[str, list[str]] = {}
        for s in sets:  # one input per crop and condition, all eval datasets together
            self.x.setdefault(s.condition, []).append(self.rec.preprocess(s.images))
            self.labels.setdefault(s.condition, []).extend(s.labels)
        self.x = {c: np.concatenate(v) for c, v in self.x.items()}
        self.n = min(len(v) for v in self.labels.values())
        self.ref = {c: self._probs(self.rec.session, x) for c, x in self.x.items()}
        self.fp32 = {c: self._accuracy(c, p) for c, p in self.ref.items()}

    def _probs(self, session, x: np.ndarray) -> np.ndarray:
        name = session.get_inputs()[0].name
        return np.concatenate([session.run(None, {name: x[i:i + 64]})[0] for i in range(0, len(x), 64)])

    def _accuracy(self, cond: str, probs: np.ndarray) -> float:
        preds = [d.text for d in self.rec.tokenizer.decode(probs.astype(np.float32))]
        return score_split(cond, preds, self.labels[cond]).accuracy

    def score(self, session) -> tuple[dict[str, float], float]:
        acc, kls = {}, []
        for c, x in self.x.items():
            p = self._probs(session, x)
            acc[c] = self._accuracy(c, p)
            ref = np.clip(self.ref[c], 1e-8, 1.0)
            kls.append(float(np.mean(np.sum(ref * (np.log(ref) - np.log(np.clip(p, 1e-8, 1.0))), axis=-1))))
        return acc, float(np.mean(kls))


def ms_per_crop(s, x: np.ndarray, runs: int = 10) -> float:
    """Median milliseconds a crop at batch 32 through session ``s`` (``runtime.timing.sigma_clipped_times``)."""
    name, b = s.get_inputs()[0].name, x[:32]
    return float(np.median(sigma_clipped_times(lambda: s.run(None, {name: b}), warmup=1, runs=runs,
                                                min_seconds=0.0))) / len(b)


def scan(fp32_path: str, calib: np.ndarray, calib_name: str, eval_data: str, conditions: Sequence[str],
         out: Path, method: str = "percentile", target: str = "cpu", n_eval: int = 400,
         keep: Sequence[int] = (0, 1, 2, 3, 4, 6, 8, 12), tolerance: float = 0.5,
         on_pass: Callable[[Sensitivity], None] | None = None) -> Sensitivity:
    """The three passes (module docstring); ``on_pass(report)`` after each (writes the report)."""
    scorer = _Scorer(fp32_path, eval_data, conditions, n_eval)
    x32 = next(iter(scorer.x.values()))
    rep = Sensitivity(fp32_path, target, method, calib_name, eval_data, scorer.n, scorer.fp32,
                      ms_per_crop(ort_session(fp32_path), x32))  # on the CPU, as every INT8 file
    tmp_dir = out / "work"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    # calibrated once: the key names the model, the calibration inputs, the calibrator and the flavour
    key = hashlib.sha1(Path(fp32_path).read_bytes() + calib.tobytes() + f"{method}|{target}".encode()).hexdigest()
    ranges = tmp_dir / f"ranges-{key[:12]}.json"

    def build(name: str, **kw) -> str:
        path = tmp_dir / f"{name}.onnx"
        quantize_int8(fp32_path, str(path), calib, method, target=target, ranges_cache=str(ranges), **kw)
        return str(path)

    full = build("all")  # calibrates and writes the ranges every later file reuses
    rows = []
    for node, op in tqdm(quantizable_layers(fp32_path, target), desc="layers alone in INT8", leave=False,
                         disable=not sys.stderr.isatty()):
        acc, kl = scorer.score(ort_session(build("layer", only_nodes=[node])))
        rows.append(LayerRow(node, op, kl, {c: scorer.fp32[c] - a for c, a in acc.items()}))
    rep.layers = sorted(rows, key=lambda r: (-r.kl, -sum(r.loss.values())))
    order = [r.node for r in rep.layers]
    if on_pass:
        on_pass(rep)
    for k in keep:
        if k > len(order):
            continue
        nodes = order[:k]
        session = ort_session(full if not nodes else build(f"keep-{k}", float_nodes=nodes))  # scored and timed
        acc, _ = scorer.score(session)
        rep.keep.append(KeepRow(k, acc, ms_per_crop(session, x32), nodes))
        if on_pass:
            on_pass(rep)
    ok = [r.keep_float for r in rep.keep if rep.worst(r) >= -tolerance]
    rep.within_tolerance = bool(ok)
    # none close enough: the K whose worst condition came closest (the fewer float layers on a tie)
    rep.chosen = min(ok) if ok else max(rep.keep, key=lambda r: (rep.worst(r), -r.keep_float)).keep_float
    return rep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compress.sensitivity", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="FP32 ONNX (an LR model: its inputs are made from HR crops)")
    p.add_argument("--calib", required=True, help="INT8 calibration data (lmdbs or folders, comma-separated: an "
                   "equal share of each)")
    add_calib_n_arg(p)
    add_conditions_arg(p)
    p.add_argument("--calibrator", default="percentile", choices=CALIBRATORS, help="INT8 calibrator")
    p.add_argument("--int8-target", default="cpu", choices=INT8_TARGETS, help="INT8 flavour")
    p.add_argument("--eval", required=True, help="crops the scan chooses on, disjoint from --calib "
                   "(comma-separated for several)")
    p.add_argument("--eval-n", type=int, default=400, help="crops per --eval dataset (0: all)")
    p.add_argument("--keep-float", default="0,1,2,3,4,6,8,12", help="the K of pass 2, comma-separated")
    p.add_argument("--tolerance", type=float, default=0.5, help="points below FP32 the chosen file may lose")
    p.add_argument("--out", default="runs/sensitivity", help="report folder")
    args = p.parse_args(argv)
    positive("--calib-n", args.calib_n)
    if args.eval_n < 0:
        raise InputError(f"--eval-n: expected a count >= 0, got {args.eval_n}")
    try:
        keep = sorted({int(k) for k in args.keep_float.split(",") if k.strip()})
    except ValueError:
        raise InputError(f"--keep-float: expected comma-separated counts, got {args.keep_float!r}") from None
    if not Path(args.model).is_file():
        raise InputError(f"{args.model}: no such file")
    for d in data_paths(args.eval):
        if not resolve_calib_path(d).exists():
            raise InputError(f"--eval {d}: no such dataset")
    rec = OnnxRecognizer(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x = calibration_tensors(args.calib, rec.size, rec.info.lr, args.calib_n, 16, out / "work",
                            args.calib_conditions)

    def write(rep: Sensitivity) -> None:
        write_bytes_atomic(rep.to_markdown().encode(), out / "sensitivity.md")
        write_json_atomic(asdict(rep), out / "sensitivity.json")

    rep = scan(args.model, x, args.calib, args.eval, args.calib_conditions, out, args.calibrator,
               args.int8_target, args.eval_n, keep, args.tolerance, on_pass=write)
    write(rep)
    print(rep.to_markdown())
    return 0


if __name__ == "__main__":
    from runtime.cli import run

    sys.exit(run(main))
