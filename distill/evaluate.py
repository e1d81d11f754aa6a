"""``python -m distill.evaluate --ckpt CKPT --data PATH [PATH ...] [--teacher CKPT] [--lr-from-hr] [--json OUT]``

TextZoom-layout data: the student reads the stored LR image; with ``--teacher`` the teacher also reads HR and
bicubic-upsampled LR. STR lmdbs / folders of HR crops (or ``--lr-from-hr``): LR inputs are made by the named
conditions (``lr16``, ``lr16blur`` by default); the teacher reads the original crop and the bicubic-upsampled LR.
A directory holding ``test/easy|medium|hard`` (the synthetic layout) is expanded to those splits.
Results: a Markdown table per condition and JSON, per split and the sample-weighted average.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.conditions import CONDITIONS, apply_condition
from runtime.cli import InputError, check_writable, non_negative, positive
from runtime.datasets import LabelPolicy, detect_layout, usable_samples
from runtime.files import write_json_atomic
from runtime.metrics import EvalReport, reports_to_markdown
from runtime.preprocess import HR_SIZE, resize

from .checkpoint import load_model
from .config import is_onnx_teacher
from .predict import score_samples

__all__ = ["expand_splits", "evaluate_models", "main"]


def expand_splits(paths: list[str]) -> list[tuple[str, Path]]:
    """[(split name, lmdb path)]: a synthetic root expands to its test splits."""
    out: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        test = p / "test"
        if test.is_dir() and any((test / s).is_dir() for s in ("easy", "medium", "hard")):
            out += [(s, test / s) for s in ("easy", "medium", "hard") if (test / s).is_dir()]
        else:
            out.append((p.name, p))
    return out


def _bicubic_up(img: np.ndarray) -> np.ndarray:
    return resize(img, HR_SIZE, "bicubic")


def evaluate_models(student_ckpt: str | None, data: list[str], teacher_ckpt: str | None = None,
                    lr_from_hr: bool = False, conditions: tuple[str, ...] = ("lr16", "lr16blur"),
                    max_samples: int = 0, batch: int = 64, extra_students: dict[str, str] | None = None,
                    onnx_teachers: dict[str, str] | None = None) -> list[EvalReport]:
    """Reports for every model x input condition over every split. ``extra_students``: name -> checkpoint, more LR
    models read the same inputs (kd_gain uses it for the baseline). ``onnx_teachers``: name -> ONNX recognizer
    (or ``ppocr``) read through its own preprocessing, on HR and on the LR inputs (its resize upsamples them)."""
    students: dict[str, tuple] = {}
    if student_ckpt:
        students["student"] = load_model(student_ckpt)[:2]
    for name, ck in (extra_students or {}).items():
        students[name] = load_model(ck)[:2]
    teacher = load_model(teacher_ckpt)[:2] if teacher_ckpt else None
    policy = LabelPolicy(normalize="textzoom", max_len=0)
    reports: dict[tuple[str, str], EvalReport] = {}
    onnx = {}
    if onnx_teachers:
        from runtime.charset import CHARSETS

        from .onnx_teacher import OnnxTeacher, teacher_dictionary

        onnx = {name: OnnxTeacher(spec, CHARSETS["94"], 1, dictionary=teacher_dictionary(spec, ""))
                for name, spec in onnx_teachers.items()}

    def add_onnx(model_name: str, cond: str, split: str, t, samples) -> None:
        from runtime.metrics import score_split

        key = (model_name, cond)
        if key not in reports:
            reports[key] = EvalReport(model_name, cond)
        preds = []
        for k in range(0, len(samples), 16):
            preds += [text for text, _ in t.read([img for img, _ in samples[k : k + 16]])]
        reports[key].splits.append(score_split(split, preds, [lab for _, lab in samples]))

    def add(model_name: str, cond: str, split: str, model_tok, samples, transform: Callable | None) -> None:
        key = (model_name, cond)
        if key not in reports:
            reports[key] = EvalReport(model_name, cond)
        res = score_samples(model_tok[0], model_tok[1], samples, split, batch, transform)
        reports[key].splits.append(res)

    for split, path in expand_splits(data):
        samples = usable_samples(path, policy, max_samples, "evaluate")
        pairs = detect_layout(path) == "textzoom" and not lr_from_hr
        conds = ("LR",) if pairs else conditions
        for cond in conds:
            if pairs:
                lr_imgs = [(s.lr, s.label) for s in samples]
            else:
                lr_imgs = [(apply_condition(cond, s.image), s.label) for s in samples]
            for name, mt in students.items():
                add(name, cond, split, mt, lr_imgs, None)
            if teacher is not None:
                add("teacher", f"bicubic({cond})", split, teacher, lr_imgs, _bicubic_up)
            for name, t in onnx.items():
                add_onnx(name, cond, split, t, lr_imgs)
        if teacher is not None:
            add("teacher", "HR", split, teacher, [(s.image, s.label) for s in samples], None)
        for name, t in onnx.items():
            add_onnx(name, "HR", split, t, [(s.image, s.label) for s in samples])
    return [r.finalize() for r in reports.values()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distill.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", required=True, help="LR student (or any) checkpoint")
    p.add_argument("--data", nargs="+", required=True, help="TextZoom lmdb, STR lmdb, folder, or a synthetic root")
    p.add_argument("--teacher", default=None,
                   help="HR teacher checkpoint: adds teacher-on-HR and teacher-on-bicubic rows; or an ONNX recognizer "
                        "(X.onnx, ppocr): teacher-on-HR and teacher-on-LR through its own preprocessing; unset: no "
                        "teacher rows")
    p.add_argument("--lr-from-hr", action="store_true",
                   help="make LR from HR with the named conditions even for TextZoom-layout data")
    p.add_argument("--conditions", default="lr16,lr16blur", help=f"LR conditions for HR crops, from {sorted(CONDITIONS)}")
    p.add_argument("--max-samples", type=int, default=0, help="per split; 0 = all")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--json", default=None, help="write the reports as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    conds = tuple(c for c in args.conditions.split(",") if c)
    bad = [c for c in conds if c not in CONDITIONS]
    if bad or not conds:
        raise InputError(f"--conditions: unknown {bad or [args.conditions]}; known {sorted(CONDITIONS)}")
    non_negative("--max-samples", args.max_samples)
    positive("--batch", args.batch)
    check_writable(args.json, "--json")
    onnx = args.teacher and is_onnx_teacher(args.teacher)  # an ONNX recognizer: read through its own preprocessing
    reports = evaluate_models(args.ckpt, args.data, None if onnx else args.teacher, args.lr_from_hr, conds,
                              args.max_samples, args.batch, onnx_teachers={"teacher": args.teacher} if onnx else None)
    print(reports_to_markdown(reports))
    if args.json:
        write_json_atomic([r.to_dict() for r in reports], args.json)
        print(f"evaluate: wrote {args.json}")
    return 0


if __name__ == "__main__":
    from runtime.cli import run

    sys.exit(run(main))
