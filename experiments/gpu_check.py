"""``python -m experiments.gpu_check --out DIR [--work DIR] [--budget-s S] [--real SVT] [--smoke]``

The KD-LTR and CLIP-OCR gain rows in one prepared run that fits a short GPU slot: synthesize TextZoom-style pairs on
the host's cores, train the PARSeq teacher, the CLIP stage, then the KD-LTR student, the LR-only baseline, the
CLIP-OCR and KD-LTR + CLIP-OCR students from it (one step count for all four), each stage for a fixed share of the
training budget, and evaluate every row with ``experiments.kd_gain`` on the synthetic test splits and on the real
``--real`` crops (lr16 / lr16blur). Writes ``DIR/gpu_check.md`` and ``DIR/gpu_check.json``: per stage the steps,
wall seconds, training images/s and peak GPU memory, then the gain table, and ``DIR/teacher_log.csv``. They are
rewritten after every stage, and a stage that fails is recorded with its error while the others go on, so a run cut
short by its slot still returns what it finished.

Step counts come from the teacher's speed measured on the device (a 12-step probe) and each stage's cost relative
to the teacher (``COST``, measured on the CPU runs of configs/clipocr_cpu.yaml); before each stage the plan is
shrunk if the time already spent leaves less than planned. ``--smoke`` runs the same code at toy size on the CPU
(configs/clipocr_smoke.yaml) in well under two minutes: the test suite runs it.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

from distill.config import load_config
from experiments.kd_gain import _contender_config, train_or_reuse
from experiments.kd_gain import main as kd_gain_main
from runtime.cli import InputError, positive
from runtime.files import write_bytes_atomic, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
# Seconds per step relative to the teacher's (2-core CPU runs of configs/clipocr_cpu.yaml, s/step: teacher 1.1,
# baseline 1.05, KD-LTR 1.4, CLIP 0.8, CLIP-OCR 1.8, KD-LTR + CLIP-OCR 2.4)
COST = {"teacher": 1.0, "clip": 0.75, "baseline": 0.95, "kdltr": 1.3, "clipocr": 1.65, "kdltr+clipocr": 2.2}
# Of the training budget. The teacher gets most: a PARSeq from scratch sits on its language-model plateau for its
# first thousands of steps, and rows distilled from a teacher that does not read say nothing.
SHARE = {"teacher": 0.6, "clip": 0.1, "students": 0.3}
STUDENTS = ("kdltr", "baseline", "clipocr", "kdltr+clipocr")


def _peak_mb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _images_per_s(run_dir: Path) -> float | None:
    """Mean of the logged training throughput of a run (log.csv), the first row (warm-up) left out."""
    path = run_dir / "log.csv"
    if not path.exists():
        return None
    rows = [float(r["images_per_s"]) for r in csv.DictReader(path.open()) if r.get("images_per_s")]
    rows = rows[1:] or rows
    return sum(rows) / len(rows) if rows else None


def _failure(e: Exception) -> str:
    traceback.print_exc()
    return f"{type(e).__name__}: {e}"[:300]


def _stage(name: str, cfg, stats: list[dict], report) -> bool:
    """Train one stage (or reuse its finished run) and log its figures. A failure is recorded, not raised: one broken
    stage on a short GPU slot should still leave the others' figures (and the error) in the report."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    row = {"stage": name, "steps": cfg.optim.steps, "batch": cfg.data.batch_size}
    try:
        train_or_reuse(cfg, name)
    except Exception as e:  # noqa: BLE001 - reported with its traceback, then the run goes on without it
        row["error"] = _failure(e)
    row.update(wall_s=round(time.perf_counter() - t, 1), images_per_s=_images_per_s(Path(cfg.train.out_dir)),
               peak_gpu_mb=_peak_mb())
    stats.append(row)
    print(f"gpu_check: {name}: {row}", flush=True)
    report()
    return "error" not in row


def _probe_teacher(base, work: Path, steps: int = 12) -> float:
    """Seconds per teacher step on this device: a short run (its first steps include the warm-up, so the rate is
    taken from the logged throughput of the later ones)."""
    cfg = copy.deepcopy(base)
    cfg.train.stage, cfg.train.out_dir, cfg.optim.steps = "teacher", str(work / "probe"), steps
    cfg.train.log_every, cfg.train.val_every, cfg.train.ckpt_every = 4, steps, steps
    cfg.data.max_val_samples = 32
    from distill.train import train

    train(cfg)
    ips = _images_per_s(work / "probe")
    return cfg.data.batch_size / ips if ips else 1.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check",
                   help="where gpu_check.md/json go (default: $OUT, else runs/gpu_check)")
    p.add_argument("--work", default=None, help="data and runs (default: <out>/work; on the device use local disk)")
    p.add_argument("--budget-s", type=float, default=420.0, help="seconds of training over all stages")
    p.add_argument("--real", default=str(ROOT.parent / "shared" / "data" / "real" / "svt_test"),
                   help="real HR crops for the lr16 / lr16blur rows (skipped when missing)")
    p.add_argument("--max-samples", type=int, default=0, help="per evaluation split (0: all)")
    p.add_argument("--smoke", action="store_true", help="toy size on the CPU (the test suite's run)")
    args = p.parse_args(argv)
    positive("--budget-s", args.budget_s)
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "work"
    config = "configs/clipocr_smoke.yaml" if args.smoke else "configs/gpu_check.yaml"
    sets = [f"data.synth.dir={work / 'data'}", "train.progress=false"]
    if args.smoke:
        sets += ["train.device=cpu", "data.synth.n=240", "data.workers=0", "data.max_val_samples=16"]
        args.max_samples = args.max_samples or 16
    elif not torch.cuda.is_available():
        raise InputError("no CUDA device: run on a GPU, or give --smoke for the CPU-size check")
    base = load_config(str(ROOT / config), sets)
    t_start = time.perf_counter()
    stats: list[dict] = []
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (smoke)"
    steps: dict[str, int] = {}
    gain_dir = work / "gain"

    def report() -> None:
        """gpu_check.md / .json from what has run so far: written after every stage, so that a run cut short by its
        slot still returns the stages it finished."""
        f = lambda v, d=0: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        lines = [f"# GPU check on {device} (torch {torch.__version__}, {time.perf_counter() - t_start:.0f} s in all)",
                 "", "| stage | steps | batch | wall s | train images/s | peak GPU MiB |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {s['stage']} | {s['steps']} | {s['batch'] or '-'} | {s['wall_s']:.0f} | "
                  f"{f(s['images_per_s'])} | {f(s['peak_gpu_mb'])} |" for s in stats]
        lines += [f"\n{s['stage']} failed: {s['error']}" for s in stats if s.get("error")]
        gain_md, gain = gain_dir / "kd_gain.md", {}
        text = "\n".join(lines) + "\n"
        if gain_md.exists() and stats[-1]["stage"] == "evaluate":
            text += "\n" + gain_md.read_text()
            gain = json.loads((gain_dir / "kd_gain.json").read_text())
        out.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(text.encode(), out / "gpu_check.md")
        write_json_atomic({"device": device, "torch": torch.__version__, "stages": stats, "steps": steps,
                           "gain": {k: gain[k] for k in ("rows", "ahead", "clipocr_ahead", "steps") if k in gain}},
                          out / "gpu_check.json")

    from distill.train import prepare_synth

    t = time.perf_counter()
    prepare_synth(base)
    stats.append({"stage": "synthesize", "steps": 0, "wall_s": round(time.perf_counter() - t, 1),
                  "images_per_s": None, "peak_gpu_mb": None, "batch": None})
    report()

    if args.smoke:
        steps.update(teacher=6, clip=4, students=3)
    else:
        sec = _probe_teacher(base, work)
        budget = args.budget_s
        steps.update(teacher=int(SHARE["teacher"] * budget / sec),
                     clip=int(SHARE["clip"] * budget / (sec * COST["clip"])),
                     students=int(SHARE["students"] * budget / (sec * sum(COST[s] for s in STUDENTS))))
        print(f"gpu_check: teacher {sec * 1000:.0f} ms/step at batch {base.data.batch_size} -> steps {steps}")

    def shrink(planned_s: float) -> float:
        """A factor <= 1 for the steps of the next stage when the time left is short."""
        left = args.budget_s * 1.15 - (time.perf_counter() - t_start)
        return 1.0 if args.smoke or planned_s <= 0 else max(0.2, min(1.0, left / planned_s))

    tcfg = copy.deepcopy(base)
    tcfg.train.stage, tcfg.train.out_dir, tcfg.optim.steps = "teacher", str(gain_dir / "teacher"), steps["teacher"]
    ok = _stage("teacher", tcfg, stats, report)
    if (gain_dir / "teacher" / "log.csv").exists():  # its loss curve: did it leave the plateau, and when
        shutil.copyfile(gain_dir / "teacher" / "log.csv", out / "teacher_log.csv")
    if not ok:
        return 1
    teacher = str(gain_dir / "teacher" / "best.pt")

    ccfg = copy.deepcopy(base)
    ccfg.train.stage, ccfg.train.out_dir = "clip", str(gain_dir / "clip")
    ccfg.optim.steps = max(2, int(steps["clip"] * shrink(SHARE["clip"] * args.budget_s)))
    ccfg.train.val_every = ccfg.train.ckpt_every = max(1, ccfg.optim.steps // 4)
    # without a CLIP stage the two CLIP-OCR students are left out; KD-LTR and the baseline still run
    students = list(STUDENTS) if _stage("clip", ccfg, stats, report) else ["kdltr", "baseline"]
    clip = str(gain_dir / "clip" / "last.pt")

    n = max(2, int(steps["students"] * shrink(SHARE["students"] * args.budget_s)))
    for name in list(students):  # the configs kd_gain builds, so that its evaluation below reuses these runs
        stage = "baseline" if name == "baseline" else "student"
        cfg = _contender_config(base, stage, gain_dir / ("student" if name == "kdltr" else name), n)
        cfg.train.teacher_ckpt = teacher
        if stage == "student":
            cfg.distill.method, cfg.train.clip_ckpt = name, clip
        if not _stage(name, cfg, stats, report):
            if name in ("kdltr", "baseline"):  # the gain table needs both
                return 1
            students.remove(name)

    t = time.perf_counter()
    kd = ["--config", str(ROOT / config), "--teacher", teacher, "--steps", str(n), "--contenders",
          ",".join(students), "--out", str(gain_dir), "--real", args.real, "--max-samples", str(args.max_samples)]
    if not args.smoke:
        kd += ["--eval-batch", "512"]
    if "clipocr" in students or "kdltr+clipocr" in students:
        kd += ["--clip", clip]
    for s in sets:
        kd += ["--set", s]
    row = {"stage": "evaluate", "steps": 0, "images_per_s": None, "batch": None}
    try:
        code = kd_gain_main(kd)
    except Exception as e:  # noqa: BLE001 - the stages' figures are reported all the same
        code, row["error"] = 1, _failure(e)
    if code and "error" not in row:
        row["error"] = f"experiments.kd_gain exited {code} (its error line is above)"
    row.update(wall_s=round(time.perf_counter() - t, 1), peak_gpu_mb=_peak_mb())
    stats.append(row)
    report()
    print((out / "gpu_check.md").read_text())
    return code


if __name__ == "__main__":
    from runtime.cli import run

    sys.exit(run(main))
