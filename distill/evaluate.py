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
from typing import Callable

import numpy as np

from runtime.conditions import CONDITIONS, parse_conditions
from runtime.cli import check_writable, non_negative, positive
from runtime.evaluation import evaluate, input_sets
from runtime.files import write_json_atomic
from runtime.metrics import EvalReport, reports_to_markdown
from runtime.preprocess import HR_SIZE, resize

from .checkpoint import load_model
from .config import is_onnx_teacher
from .predict import predict_arrays

__all__ = ["evaluate_models", "main"]


def _bicubic_up(img: np.ndarray) -> np.ndarray:
    return resize(img, HR_SIZE, "bicubic")


def evaluate_models(student_ckpt: str | None, data: list[str], teacher_ckpt: str | None = None,
                    lr_from_hr: bool = False, conditions: tuple[str, ...] = ("lr16", "lr16blur"),
                    max_samples: int = 0, batch: int = 64, extra_students: dict[str, str] | None = None,
                    onnx_teachers: dict[str, str] | None = None, device: str = "cpu") -> list[EvalReport]:
    """Reports for every model x input condition over every split (``runtime.evaluation``). ``extra_students``:
    name -> checkpoint, more LR models read the same inputs (kd_gain uses it for the baseline). ``onnx_teachers``:
    name -> ONNX recognizer (or a zoo name) read through its own preprocessing, on HR and on the LR inputs (its
    resize upsamples them). ``device``: where the checkpoints run."""
    readers: dict[str, Callable] = {}  # LR students
    for name, ck in ([("student", student_ckpt)] if student_ckpt else []) + list((extra_students or {}).items()):
        readers[name] = _torch_reader(ck, batch, device)
    teacher = _torch_reader(teacher_ckpt, batch, device) if teacher_ckpt else None
    onnx = {}
    if onnx_teachers:
        from runtime.ppocr import LetterboxRecognizer

        onnx = {name: LetterboxRecognizer(spec).read for name, spec in onnx_teachers.items()}
    reports: dict[tuple[str, str], EvalReport] = {}

    def add(model_name: str, cond: str, result) -> None:
        reports.setdefault((model_name, cond), EvalReport(model_name, cond)).splits.append(result)

    for s in input_sets(data, conditions, hr=True, lr_from_hr=lr_from_hr, max_samples=max_samples):
        if s.condition == "HR":
            if teacher is not None:
                add("teacher", "HR", evaluate(teacher, s, batch))
            for name, read in onnx.items():
                add(name, "HR", evaluate(read, s, 16))  # PP-OCR pads a batch to its widest crop: keep batches small
            continue
        for name, read in readers.items():
            add(name, s.condition, evaluate(read, s, batch))
        if teacher is not None:
            add("teacher", f"bicubic({s.condition})", evaluate(teacher, s, batch, _bicubic_up))
        for name, read in onnx.items():
            add(name, s.condition, evaluate(read, s, 16))
    return [r.finalize() for r in reports.values()]


def _torch_reader(ckpt: str, batch: int, device: str = "cpu") -> Callable:
    model, tok = load_model(ckpt, device)[:2]
    return lambda imgs: predict_arrays(model, tok, imgs, batch)


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
    conds = parse_conditions(args.conditions)
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
