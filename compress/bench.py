"""``python -m compress.bench --models A.onnx B.int8.onnx [...] --data PATH``: accuracy, latency and size of
ONNX artifacts on this CPU, with ratios against the first (FP32) model measured in the same run.

Latency: median of repeated runs per batch size after a warm-up (ms per batch and per image)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from runtime.recognizer import OnnxRecognizer

from .gate import evaluate_onnx

__all__ = ["time_model", "main", "machine_name"]


def machine_name() -> str:
    """CPU model, cores and GPU (if nvidia-smi names one): the header of every benchmark table."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "no GPU"
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                           timeout=10)
        if r.returncode == 0 and r.stdout.strip():
            gpu = r.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {gpu}"


def time_model(rec: OnnxRecognizer, batch: int, runs: int = 30, warmup: int = 5) -> float:
    """Median ms per batch of the network call alone (preprocessing excluded)."""
    x = rec.preprocess([np.random.default_rng(0).integers(0, 255, (rec.info.height, rec.info.width, 3), np.uint8)] * batch)
    for _ in range(warmup):
        rec.run(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        rec.run(x)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compress.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="ONNX files; the first is the reference (FP32)")
    p.add_argument("--data", required=True, help="validation data (TextZoom/STR lmdb, folder, synthetic root)")
    p.add_argument("--batches", default="1,32", help="batch sizes to time")
    p.add_argument("--runs", type=int, default=30, help="timed runs per batch size")
    p.add_argument("--max-samples", type=int, default=1000, help="validation samples")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for m in args.models:
        rec = OnnxRecognizer(m)
        acc = evaluate_onnx(m, args.data, args.max_samples)
        lat = {b: time_model(rec, b, args.runs) for b in batches}
        rows.append({"model": Path(m).name, "precision": rec.info.precision, "size_mb": Path(m).stat().st_size / 1e6,
                     "accuracy": acc.result.accuracy, "ned": acc.result.ned,
                     **{f"ms_b{b}": lat[b] for b in batches}})
    ref = rows[0]
    print(f"Machine: {machine_name()}; data: {args.data} ({args.max_samples} max); median of {args.runs} runs\n")
    head = ["model", "precision", "size MB", "size ratio", "accuracy", "Δ acc"] + \
           [f"ms/batch b{b}" for b in batches] + [f"latency ratio b{b}" for b in batches]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        cells = [r["model"], r["precision"], f"{r['size_mb']:.2f}", f"{r['size_mb'] / ref['size_mb']:.2f}x",
                 f"{r['accuracy']:.2f}", f"{r['accuracy'] - ref['accuracy']:+.2f}"]
        cells += [f"{r[f'ms_b{b}']:.2f}" for b in batches]
        cells += [f"{r[f'ms_b{b}'] / ref[f'ms_b{b}']:.2f}x" for b in batches]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_name(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    from runtime.cli import run

    sys.exit(run(main))
