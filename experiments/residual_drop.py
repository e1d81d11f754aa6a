"""``python -m experiments.residual_drop MODEL.onnx --data LMDB [LMDB ...] [--conditions lr16] [--drop ADD,ADD]``

How much of a recognizer each residual branch carries: for every x + f(x) of the ONNX graph
(``distill.models.pruning.residual_branches``), the model without f (``drop_branches``) reads the data, and the
table shows its accuracy beside the multiply-adds f costs (``apps.profiling``, at the model's input size). A branch
whose removal costs little is a candidate for a shallower student, which training then has to repair; ``--drop``
also reads the model with a set of branches dropped together. MODEL is a file the runtime reads (an exported
student). Prints a Markdown table; ``--json`` writes the rows.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from apps.profiling import profile_model
from distill.models.pruning import drop_branches, residual_branches
from runtime import cli
from runtime.cli import InputError, check_writable, non_negative, positive
from runtime.conditions import parse_conditions
from runtime.evaluation import evaluate, input_sets
from runtime.files import write_json_atomic
from runtime.recognizer import OnnxRecognizer


@dataclass
class DropRow:
    dropped: str  # "" for the full model, else the Add names, comma-separated
    mmacs: float  # multiply-adds per crop, 1e6
    accuracy: dict[str, float] = field(default_factory=dict)  # "split/condition" -> %


def _read(path: Path, sets, threads: int) -> tuple[float, dict[str, float]]:
    rec = OnnxRecognizer(str(path), ["CPUExecutionProvider"], threads)
    mmacs = profile_model(path, batch=1, threads=1, runs=1, size=rec.size).mmacs_per_crop
    return mmacs, {f"{s.split}/{s.condition}": evaluate(rec, s).accuracy for s in sets}


def residual_drop(model: Path, data: list[str], conditions: list[str], max_samples: int = 0,
                  together: list[str] | None = None, threads: int = 2) -> list[DropRow]:
    """The full model's row, one row per residual branch dropped alone, and (``together``) one with those dropped
    at once."""
    raw = model.read_bytes()
    if together:
        try:
            drop_branches(raw, together)  # the names checked before any data is read
        except ValueError as e:
            raise InputError(f"--drop: {model}: {e}") from None
    names = [b.add for b in residual_branches(raw)]
    sets = input_sets(data, conditions, hr=False, lr_from_hr=True, max_samples=max_samples, who="residual_drop")
    plans = [[]] + [[n] for n in names] + ([together] if together else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="tinytext-drop-") as tmp:
        for k, plan in enumerate(plans):
            path = Path(tmp) / "dropped.onnx"
            try:
                path.write_bytes(drop_branches(raw, plan) if plan else raw)
            except ValueError as e:  # a residual Add that is the graph's output has no skip to hand on
                raise InputError(f"{model}: {e}") from None
            mmacs, acc = _read(path, sets, threads)
            rows.append(DropRow(",".join(plan), mmacs, acc))
            print(f"residual_drop: {k + 1}/{len(plans)} {rows[-1].dropped or 'full model'}", file=sys.stderr,
                  flush=True)
    return rows


def to_markdown(rows: list[DropRow]) -> str:
    cols = list(rows[0].accuracy)
    full = rows[0]
    lines = ["| dropped | M multiply-adds saved | " + " | ".join(cols) + " |",
             "|---|---:|" + "---:|" * len(cols)]
    for r in rows:
        cells = [f"{r.accuracy[c]:.2f}" + (f" ({r.accuracy[c] - full.accuracy[c]:+.2f})" if r.dropped else "")
                 for c in cols]
        lines.append(f"| {r.dropped or '(full model)'} | {full.mmacs - r.mmacs:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.residual_drop", description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="an ONNX recognizer the runtime reads (an exported student)")
    ap.add_argument("--data", nargs="+", required=True, help="lmdbs of HR crops; LR made by --conditions")
    ap.add_argument("--conditions", default="lr16", help="comma-separated LR conditions (default: lr16)")
    ap.add_argument("--max-samples", type=int, default=0, help="crops read per set (default: 0, all)")
    ap.add_argument("--drop", default="", help="Add names to drop together for one more row (default: none)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for reading (default: 2)")
    ap.add_argument("--json", default=None, help="write the rows as JSON here (default: not written)")
    args = ap.parse_args(argv)
    model = Path(args.model)
    if not model.is_file():
        raise InputError(f"{model}: no such model file")
    non_negative("--max-samples", args.max_samples)
    positive("--threads", args.threads)
    check_writable(args.json, "--json", (".json",))
    conditions = list(parse_conditions(args.conditions))
    rows = residual_drop(model, args.data, conditions, args.max_samples,
                         [d for d in args.drop.split(",") if d] or None, args.threads)
    print(to_markdown(rows))
    if args.json:
        write_json_atomic([asdict(r) for r in rows], args.json)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
