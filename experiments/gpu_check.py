"""``python -m experiments.gpu_check [--out DIR] [--work DIR] [--budget-s S] [--real DIR] [--smoke]``

The default student's recipe with every real crop (``configs/ppocrv6_student_ic15.yaml``) at GPU scale, in one
prepared run that fits a short GPU slot. Stages, in order, each added to ``DIR/gpu_check.md`` and ``DIR/gpu_check.json`` as it ends (a run cut
short by its slot still returns the stages it finished; a failed stage is recorded with its error):

1. ``probe``: GPU, driver, torch and CUDA versions, bf16, CPU cores, what is importable;
2. ``data``: ``ic15_train`` split as the recipe splits it (1,000 held out, seed 0), the synthetic words;
3. ``teacher``: PP-OCRv6 small's targets for every training crop, by ONNX Runtime on the CPU cores or by its graph
   on the GPU (``onnx_teacher.runner: torch``), whichever read a sample of crops faster (both rates reported);
4. ``speed``: a few steps of the recipe at the GPU batch in bf16, eager and under ``torch.compile``; the faster
   trains (compile time counted);
5. ``train``: the recipe with all real crops (``iiit5k_train``, ``svt_train``, ``ic15_train`` less its held-out
   part) and the synthetic words for as many steps as the budget leaves (at least 10x the CPU recipe's images
   when the GPU allows): images/s, step time and where it goes (data, forward, backward), peak GPU memory;
6. ``evaluate``: the trained student (``wise.pt``) beside the shipped one on ``svt_test``, ``vn_plates_valid`` and
   the held-out ``ic15_train`` part, lr16 and lr16blur.

``--smoke`` runs the same code at toy size on the CPU (a few crops per source, a few steps) in about a minute: the
test suite runs it through ``scripts/gpu_check.sh``."""
from __future__ import annotations

import argparse
import csv
import importlib
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from distill.config import Config, load_config
from runtime.cli import InputError, positive
from runtime.files import write_bytes_atomic, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "ppocrv6_student_ic15.yaml"  # its data paths replaced by this machine's
SHIPPED = ROOT / "weights" / "ppocrv6-student-lr.pt"
CPU_RECIPE_IMAGES = 400 * 48  # the CPU recipe: 400 steps of 48
GPU_BATCH = 512
EVAL_S = 60.0  # kept back from the budget for the evaluation stage
MODULES = ("numpy", "cv2", "onnx", "onnxruntime", "lmdb", "yaml", "PIL", "tqdm", "timm")


def compact_lmdb(src: str, dst: str, quality: int = 95) -> None:
    """A copy of an STR lmdb for the payload: PNG crops re-encoded as JPEG at ``quality`` (ic15_train's 41 MB of PNG
    become about a quarter), other images and every label as stored, the same keys and order (the same split)."""
    import cv2
    import numpy as np

    from distill.data import copy_samples, str_samples

    def recode(img: bytes) -> bytes:
        a = cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR) if img[:4] == b"\x89PNG" else None
        if a is None:
            return img
        return cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])[1].tobytes()  # full chroma: tiny crops

    with str_samples(src) as (txn, n):
        copy_samples(txn, range(1, n + 1), dst, overwrite=True, recode=recode)


def probe() -> dict:
    """What this machine is and has."""
    info: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "cpu_cores": os.cpu_count(),
                  "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}", bf16=torch.cuda.is_bf16_supported())
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = None
    mods = {}
    for name in MODULES:
        try:
            mods[name] = getattr(importlib.import_module(name), "__version__", "yes")
        except Exception as e:  # noqa: BLE001 - a module that fails to import for any reason is reported as such
            mods[name] = f"no ({type(e).__name__})"
    info["modules"] = mods
    if not mods["onnxruntime"].startswith("no"):
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
    return info


def prepare_data(real: Path, work: Path, smoke: bool) -> dict[str, str]:
    """Paths of the recipe's data on this machine: the real sets under ``real``, ``ic15_train`` split in two."""
    from distill.data import split_lmdb

    names = ("iiit5k_train", "svt_train", "ic15_train", "svt_test", "vn_plates_valid")
    missing = [n for n in names if not (real / n / "data.mdb").exists()]
    if missing:
        raise InputError(f"--real {real}: lacks {', '.join(missing)} (the payload carries them: --payload)")
    paths = {n: str(real / n) for n in names}
    split = work / "data" / "ic15"
    if not (split / "heldout" / "data.mdb").exists():
        split_lmdb(real / "ic15_train", split, 1000, seed=0, overwrite=True)  # the recipe's split
    paths.update(ic15_train=str(split / "train"), ic15_heldout=str(split / "heldout"))
    return paths


def recipe_config(paths: dict[str, str], work: Path, smoke: bool, batch: int) -> Config:
    """The recipe with this machine's paths, the GPU batch and every synthetic word (not the CPU recipe's 6,000)."""
    lim = ", limit: 24" if smoke else ""
    train = (f"[{{path: {paths['ic15_train']}, weight: 0.35, clean: 0.4{lim}}}, "
             f"{{path: {paths['iiit5k_train']}, weight: 0.3, clean: 0.4{lim}}}, "
             f"{{path: {paths['svt_train']}, weight: 0.1, clean: 0.4{lim}}}]")
    sets = [f"data.train={train}", f"data.val={paths['ic15_heldout']}", f"data.batch_size={batch}",
            f"data.synth.n={240 if smoke else 40000}", "data.synth.seed=1", f"data.synth.dir={work / 'synth'}",
            "data.synth.weight=0.25", "data.synth.split_sizes=train=0.9,val=0.025,test=0.075",
            f"onnx_teacher.cache_dir={work / 'teacher-cache'}", f"train.out_dir={work / 'student'}",
            "train.progress=false", "train.time_parts=true", "train.log_every=5"]
    if smoke:
        sets += ["train.device=cpu", "data.workers=0", "data.max_val_samples=16", "data.epoch_size=96",
                 "onnx_teacher.workers=1"]
    else:
        # workers: each loader process makes ~250 camera-chain LR crops a second; leave cores for the teacher
        sets += [f"data.workers={max(2, (os.cpu_count() or 4) - 2)}", "data.max_val_samples=1000",
                 f"data.epoch_size={batch * 50}", "onnx_teacher.batch=64", "onnx_teacher.workers=4"]
    cfg = load_config(str(RECIPE), sets)
    # the fine-tune's rate grows with the square root of the batch (48 -> 512: x3.3), not linearly: the recipe's
    # notes found 1e-4 at batch 48 already trading blurred street words for plain ones
    cfg.optim.lr *= (batch / 48) ** 0.5
    return cfg


def teacher_rates(teacher, crops: list, batch: int, device: str) -> dict[str, float]:
    """Crops a second for the targets of ``teacher`` (the recipe's ``OnnxTeacher``): through its ONNX Runtime
    session on the CPU cores, then through its graph on ``device``. It is left with the faster."""
    from distill.onnx_teacher import TorchSession

    sessions = {"onnxruntime": teacher.session, "torch": TorchSession(teacher.path, len(teacher.classes), device)}
    rates = {}
    for runner, session in sessions.items():
        teacher.session = session
        teacher.targets(crops[:batch])  # warm-up
        s = time.perf_counter()
        for i in range(0, len(crops), batch):
            teacher.targets(crops[i:i + batch])
        rates[runner] = len(crops) / (time.perf_counter() - s)
    teacher.session = sessions[max(rates, key=rates.get)]
    return rates


def log_rows(run: Path) -> list[dict]:
    path = run / "log.csv"
    return [r for r in csv.DictReader(path.open()) if r.get("images_per_s")] if path.exists() else []


def run_figures(run: Path) -> dict:
    """images/s and the step's parts (ms) from a run's log, its first logged row (warm-up) left out."""
    rows = log_rows(run)
    rows = rows[1:] or rows
    if not rows:
        return {}
    ips = sum(float(r["images_per_s"]) for r in rows) / len(rows)
    parts: dict[str, list[float]] = {}
    for r in rows:
        for kv in (r.get("parts") or "").split():
            k, v = kv.split("=")
            if k.endswith("_ms"):
                parts.setdefault(k, []).append(float(v))
    return {"images_per_s": round(ips, 1), **{k: round(sum(v) / len(v), 1) for k, v in parts.items()}}


def train_stage(cfg: Config, steps: int, out_dir: Path, compile_: bool, val: bool = True) -> dict:
    """One training run of ``steps``; its figures (wall s, images/s, step parts, peak GPU memory)."""
    from distill.train import train

    cfg.optim.steps, cfg.train.out_dir, cfg.train.compile = steps, str(out_dir), compile_
    cfg.train.val_every = cfg.train.ckpt_every = max(1, steps // 4) if val else 10**9
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    res = train(cfg)
    wall = time.perf_counter() - t
    fig = run_figures(out_dir)
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"steps": steps, "batch": cfg.data.batch_size, "wall_s": round(wall, 1), "compile": compile_,
            "best_val": res.get("best_acc"), "peak_gpu_mib": None if peak is None else round(peak), **fig}


def evaluate_stage(paths: dict[str, str], student: Path, smoke: bool) -> list[dict]:
    """Word accuracy of the trained and the shipped student, per set and condition."""
    from distill.evaluate import evaluate_models

    sets = [paths["svt_test"], paths["vn_plates_valid"], paths["ic15_heldout"]]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    reports = evaluate_models(str(student), sets, lr_from_hr=True, max_samples=16 if smoke else 0, batch=256,
                              extra_students={"shipped": str(SHIPPED)}, device=dev)
    names = {"heldout": "ic15_train held out"}  # the split's folder name says less than this
    return [{"model": "trained on this GPU" if r.model == "student" else "shipped", "set": names.get(s.split, s.split),
             "condition": r.condition, "n": s.n, "accuracy": round(s.accuracy, 2)}
            for r in reports for s in r.splits]


class Report:
    """gpu_check.md / .json, rewritten after every stage."""

    def __init__(self, out: Path) -> None:
        self.out, self.t0, self.data = out, time.perf_counter(), {"stages": []}

    def stage(self, name: str, fn, *args, **kw):
        """Run one stage; its result or its error goes in the report, which is then rewritten."""
        t = time.perf_counter()
        row: dict = {"stage": name}
        try:
            result = fn(*args, **kw)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - recorded with its traceback; later stages decide if they can go on
            traceback.print_exc()
            row["error"], result = f"{type(e).__name__}: {e}"[:300], None
        row["wall_s"] = round(time.perf_counter() - t, 1)
        if result is not None:
            row["result"] = result
        self.data["stages"].append(row)
        self.write()
        return result

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.data["total_s"] = round(time.perf_counter() - self.t0, 1)
        write_json_atomic(self.data, self.out / "gpu_check.json")
        write_bytes_atomic(self.markdown().encode(), self.out / "gpu_check.md")

    def markdown(self) -> str:
        st = {s["stage"]: s for s in self.data["stages"]}
        p = (st.get("probe") or {}).get("result") or {}
        lines = [f"# GPU check: the default student's recipe on {p.get('gpu', 'CPU (smoke)')} "
                 f"({self.data['total_s']:.0f} s in all)", "",
                 f"torch {p.get('torch')}, CUDA {p.get('cuda')}, driver {p.get('driver')}, bf16 {p.get('bf16')}, "
                 f"{p.get('cpu_cores')} CPU cores; modules: "
                 + ", ".join(f"{k} {v}" for k, v in (p.get("modules") or {}).items()), "",
                 "| stage | wall s | result |", "|---|---:|---|"]
        for s in self.data["stages"]:
            r = s.get("result")
            what = s.get("error") or ("" if r is None or s["stage"] in ("probe", "data", "evaluate") else
                                      ", ".join(f"{k} {v}" for k, v in r.items()) if isinstance(r, dict) else str(r))
            lines.append(f"| {s['stage']} | {s['wall_s']:.0f} | {what} |")
        plan = self.data.get("plan")
        if plan:
            lines += ["", f"Training plan: {plan['steps']} steps of {plan['batch']} ({plan['images']:,} images, "
                      f"{plan['x_cpu_recipe_images']}x the CPU recipe's), lr {plan['lr']:.2e}, "
                      f"torch.compile {'on' if plan['compile'] else 'off'}."]
        rows = (st.get("evaluate") or {}).get("result") or []
        if rows:
            conds = sorted({r["condition"] for r in rows})
            lines += ["", "| model | set | " + " | ".join(conds) + " |", "|---|---|" + "---:|" * len(conds)]
            for model in ("shipped", "trained on this GPU"):
                for name in dict.fromkeys(r["set"] for r in rows):
                    acc = {r["condition"]: r["accuracy"] for r in rows if r["model"] == model and r["set"] == name}
                    lines.append(f"| {model} | {name} | " + " | ".join(f"{acc.get(c, '-')}" for c in conds) + " |")
        return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check",
                   help="where gpu_check.md/json go (default: $OUT, else runs/gpu_check)")
    p.add_argument("--work", default=None, help="data, caches and runs (default: <out>/work; on the device use "
                   "local disk)")
    p.add_argument("--budget-s", type=float, default=480.0, help="seconds for the whole run, all stages")
    p.add_argument("--real", default=str(ROOT.parent / "shared" / "data" / "real"),
                   help="folder of the real sets (iiit5k_train, svt_train, ic15_train, svt_test, vn_plates_valid)")
    p.add_argument("--smoke", action="store_true", help="toy size on the CPU (the test suite's run)")
    args = p.parse_args(argv)
    positive("--budget-s", args.budget_s)
    if not args.smoke and not torch.cuda.is_available():
        raise InputError("no CUDA device: run on a GPU, or give --smoke for the CPU-size check")
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "work"
    rep = Report(out)
    rep.stage("probe", probe)
    paths = rep.stage("data", prepare_data, Path(args.real), work, args.smoke)
    batch = 8 if args.smoke else GPU_BATCH
    cfg = recipe_config(paths, work, args.smoke, batch)

    def teacher() -> dict:
        from runtime.datasets import LabelPolicy, open_dataset

        r = open_dataset(paths["ic15_train"], LabelPolicy(max_len=0))
        crops = [r[i].image for i in range(min(len(r), 32 if args.smoke else 1024))]
        from distill.train import build_data, build_models, setup_devices

        m = build_models(cfg, True)  # the recipe's student and teacher, the teacher on ONNX Runtime
        rates = teacher_rates(m.onnx_teacher, crops, cfg.onnx_teacher.batch, "cpu" if args.smoke else "cuda")
        cfg.onnx_teacher.runner = max(rates, key=rates.get)  # the training runs' own teacher reads the same way
        t = time.perf_counter()
        build_data(cfg, m, setup_devices(cfg))  # builds every source's cache with it, and the synthetic words
        return {"crops_per_s": {k: round(v) for k, v in rates.items()}, "runner": cfg.onnx_teacher.runner,
                "caches_s": round(time.perf_counter() - t, 1)}

    rep.stage("teacher", teacher)

    def speed() -> dict:
        n = 3 if args.smoke else 12
        modes = {"eager": train_stage(cfg, n, work / "speed-eager", False, val=False)}
        if not args.smoke:  # torch.compile on the CPU smoke would only cost the test suite minutes
            try:
                modes["compile"] = train_stage(cfg, n, work / "speed-compile", True, val=False)
            except Exception as e:  # noqa: BLE001 - a graph compile cannot take is a finding; eager trains
                traceback.print_exc()
                modes["compile"] = {"error": f"{type(e).__name__}: {e}"[:200]}
        return modes

    modes = rep.stage("speed", speed) or {}
    use_compile = bool(modes.get("compile") and modes["compile"].get("images_per_s", 0)
                       > 1.05 * modes["eager"].get("images_per_s", 0))
    ips = (modes.get("compile" if use_compile else "eager") or {}).get("images_per_s") or 0
    left = args.budget_s - (time.perf_counter() - rep.t0) - EVAL_S - (modes.get("compile", {}).get("wall_s", 0)
                                                                       if use_compile else 0)
    steps = 4 if args.smoke else max(20, int(0.85 * left * ips / batch))  # 15 % for start-up, val and checkpoints
    rep.data["plan"] = {"steps": steps, "batch": batch, "lr": cfg.optim.lr, "images": steps * batch,
                        "compile": use_compile,
                        "x_cpu_recipe_images": round(steps * batch / CPU_RECIPE_IMAGES, 1)}
    cfg.optim.warmup_pct = 0.05
    trained = rep.stage("train", train_stage, cfg, steps, work / "student", use_compile)
    if trained:
        rep.stage("evaluate", evaluate_stage, paths, work / "student" / "wise.pt", args.smoke)
    print((out / "gpu_check.md").read_text())
    return 0 if all("error" not in s for s in rep.data["stages"]) else 1


if __name__ == "__main__":
    from runtime.cli import run

    sys.exit(run(main))
