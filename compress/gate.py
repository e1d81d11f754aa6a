"""Accuracy gate: evaluate ONNX artifacts (FP32, FP16, INT8) on a validation set with the torch-free runtime."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.conditions import apply_condition
from runtime.datasets import LabelPolicy, open_dataset
from runtime.metrics import SplitResult, score_split
from runtime.recognizer import OnnxRecognizer

__all__ = ["GateRow", "evaluate_onnx", "resolve_val", "gate_table"]


@dataclass
class GateRow:
    artifact: str
    precision: str
    size_mb: float
    result: SplitResult


def resolve_val(path: str) -> Path:
    p = Path(path)
    return p / "val" if (p / "val" / "data.mdb").exists() else p


def evaluate_onnx(onnx_path: str, data: str, max_samples: int = 1000) -> GateRow:
    rec = OnnxRecognizer(onnx_path)
    reader = open_dataset(resolve_val(data), LabelPolicy(normalize="textzoom", max_len=0))
    imgs, gts = [], []
    for s in reader.iter_valid():
        if rec.info.lr:
            img = s.lr if s.lr is not None else apply_condition("lr16", s.image)
        else:
            img = s.image
        imgs.append(img)
        gts.append(s.label)
        if max_samples and len(gts) >= max_samples:
            break
    reader.close()
    preds = rec(imgs)
    res = score_split(Path(data).name, [d.text for d in preds], gts, [d.confidence for d in preds])
    return GateRow(Path(onnx_path).name, rec.info.precision, Path(onnx_path).stat().st_size / 1e6, res)


def gate_table(rows: list[GateRow]) -> str:
    base = next((r for r in rows if r.precision == "fp32"), rows[0])
    lines = ["| artifact | precision | size (MB) | size vs FP32 | accuracy | Δ vs FP32 | NED |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.artifact} | {r.precision} | {r.size_mb:.2f} | {r.size_mb / base.size_mb:.2f}x | "
                     f"{r.result.accuracy:.2f} | {r.result.accuracy - base.result.accuracy:+.2f} | {r.result.ned:.4f} |")
    return "\n".join(lines)
