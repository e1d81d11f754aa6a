"""Accuracy gate: evaluate ONNX artifacts (FP32, FP16, INT8) on a validation set with the torch-free runtime."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.evaluation import evaluate, input_sets
from runtime.metrics import SplitResult
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
    """The model on the validation data at its own resolution: LR models read the stored LR of TextZoom pairs, or
    lr16 made from HR crops; HR models the crops as stored."""
    rec = OnnxRecognizer(onnx_path)
    sets = input_sets([resolve_val(data)], ("lr16",) if rec.info.lr else (), hr=not rec.info.lr,
                      max_samples=max_samples, who="accuracy gate")
    res = evaluate(rec, sets[0], 32, name=Path(data).name)
    return GateRow(Path(onnx_path).name, rec.info.precision, Path(onnx_path).stat().st_size / 1e6, res)


def gate_table(rows: list[GateRow]) -> str:
    base = next((r for r in rows if r.precision == "fp32"), rows[0])
    lines = ["| artifact | precision | size (MB) | size vs FP32 | accuracy | Δ vs FP32 | NED |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.artifact} | {r.precision} | {r.size_mb:.2f} | {r.size_mb / base.size_mb:.2f}x | "
                     f"{r.result.accuracy:.2f} | {r.result.accuracy - base.result.accuracy:+.2f} | {r.result.ned:.4f} |")
    return "\n".join(lines)
