"""The one timing helper of every benchmark, and the machine line that heads every table of figures."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from typing import Callable

import numpy as np

__all__ = ["sigma_clipped_times", "machine_name"]


def sigma_clipped_times(fn: Callable[[], object], warmup: int = 3, runs: int = 30, min_seconds: float = 0.5,
                        max_runs: int = 300) -> list[float]:
    """Milliseconds per call after a warm-up: at least ``runs`` calls and ``min_seconds``, then 3-sigma clipping
    (a shared CPU's hiccups would otherwise set the tail)."""
    for _ in range(warmup):
        fn()
    t_all, t0 = [], time.perf_counter()
    while (len(t_all) < runs or time.perf_counter() - t0 < min_seconds) and len(t_all) < max_runs:
        t = time.perf_counter()
        fn()
        t_all.append((time.perf_counter() - t) * 1000)
    a = np.array(t_all)
    for _ in range(3):
        m, s = a.mean(), a.std()
        keep = np.abs(a - m) <= 3 * s if s > 0 else np.ones_like(a, bool)
        if keep.all():
            break
        a = a[keep]
    return a.tolist()


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
