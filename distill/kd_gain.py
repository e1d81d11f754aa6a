"""``python -m distill.kd_gain (--minutes M | --steps N) --out DIR [--teacher CKPT] [--config YAML] [--set ...]``

Shows what distillation buys: the KD-LTR student and the baseline student (the same LR model trained on LR alone)
are trained from the same initialisation (the teacher's weights) for the same number of steps, on the same data
order, and evaluated with the teacher-on-bicubic on the synthetic test splits and on a real set of HR crops made LR
by the named conditions (``lr16``, ``lr16blur``). The step count is derived from the time budget: M minutes per
contender at the KD student's measured speed (the slower of the two), so both get identical updates; ``--steps``
fixes it instead, so a run repeats on another machine.

Writes ``DIR/kd_gain.json`` and ``DIR/kd_gain.md``.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from runtime.charset import make_tokenizer
from runtime.metrics import EvalReport, write_json_atomic

from .checkpoint import CheckpointError, load_checkpoint
from .config import Config, ConfigError, load_config
from .evaluate import evaluate_models
from .models import build_model, make_student
from .system import TrainingSystem
from .train import prepare_synth, train

__all__ = ["measure_step_time", "gain_table", "main"]

PAPER = "Paper reference (TextZoom average): ABINet 60.23 bicubic -> 72.45 distilled; PARSeq 75.30 -> 78.23."


def measure_step_time(cfg: Config, teacher_ckpt: str, n: int = 4) -> float:
    """Seconds per optimisation step of the KD student on this machine (synthetic batch, after one warm-up)."""
    tck = load_checkpoint(teacher_ckpt)
    spec, student, _ = make_student(tck["model_spec"], tck["model"])
    teacher = build_model(tck["model_spec"])
    teacher.load_state_dict(tck["model"])
    tok = make_tokenizer(spec["tokenizer"], spec["charset"])
    system = TrainingSystem(student, tok, "student", cfg.distill, teacher).train()
    bs = cfg.data.batch_size
    batch = {"hr": torch.randn(bs, 3, 32, 128), "lr": torch.randn(bs, 3, 16, 64), "label": ["sample"] * bs}
    return _median_step(system, batch, n)


def _median_step(system: TrainingSystem, batch: dict, n: int) -> float:
    """Median seconds of n optimisation steps on one batch, after one warm-up step."""
    opt = torch.optim.AdamW([p for p in system.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for i in range(n + 1):
        t = time.perf_counter()
        loss, _ = system(batch, i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return sorted(times[1:])[len(times[1:]) // 2]


def _row(reports: list[EvalReport], model: str, cond: str) -> EvalReport | None:
    return next((r for r in reports if r.model == model and r.condition == cond), None)


def gain_table(synth_reports: list[EvalReport], real_reports: list[EvalReport], real_name: str) -> tuple[str, list[dict]]:
    """Markdown + rows: one row per contender; synthetic splits, their average, real set under each condition."""
    rows = []
    contenders = [("teacher (HR input, reference)", "teacher", "HR", "HR"),
                  ("teacher on bicubic(LR)", "teacher", "bicubic(LR)", "bicubic({c})"),
                  ("baseline student (LR only)", "baseline", "LR", "{c}"),
                  ("KD-LTR student", "student", "LR", "{c}"),
                  ("CLIP-OCR student", "clipocr", "LR", "{c}"),
                  ("KD-LTR + CLIP-OCR student", "kdltr+clipocr", "LR", "{c}"),
                  ("ONNX teacher (HR input, reference)", "onnx-teacher", "HR", "HR"),
                  ("ONNX teacher on LR (its own resize)", "onnx-teacher", "LR", "{c}"),
                  ("baseline from the ONNX teacher's weights (LR only)", "onnx-baseline", "LR", "{c}"),
                  ("student distilled from the ONNX teacher", "onnx-student", "LR", "{c}")]
    present = {r.model for r in synth_reports + real_reports}
    contenders = [c for c in contenders if c[1] in present]
    conds = sorted({r.condition for r in real_reports if r.model in ("student", "onnx-student")})
    head = ["contender", "easy", "medium", "hard", "synthetic avg"] + [f"{real_name} {c}" for c in conds]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, model, scond, rcond in contenders:
        sr = _row(synth_reports, model, scond)
        row = {"contender": label, "model": model}
        cells = [label]
        for split in ("easy", "medium", "hard"):
            s = next((x for x in (sr.splits if sr else []) if x.split == split), None)
            row[split] = s.accuracy if s else None
            cells.append(f"{s.accuracy:.2f}" if s else "")
        row["synthetic_avg"] = sr.average.accuracy if sr and sr.average else None
        cells.append(f"{row['synthetic_avg']:.2f}" if row["synthetic_avg"] is not None else "")
        for c in conds:
            rr = _row(real_reports, model, rcond.format(c=c))
            v = rr.average.accuracy if rr and rr.average else None
            row[f"{real_name}_{c}"] = v
            cells.append(f"{v:.2f}" if v is not None else "")
        rows.append(row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distill.kd_gain", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--minutes", type=float, default=None,
                   help="training budget per contender (KD and baseline), turned into a step count at the KD "
                        "student's measured speed; default: none, --steps must be given")
    p.add_argument("--steps", type=int, default=0,
                   help="fixed step count per contender instead of a time budget; 0 = from --minutes")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", default="configs/smoke.yaml", help="training config (data, model, distillation)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--teacher", default=None,
                   help="HR teacher checkpoint; default: train one first with the same budget")
    p.add_argument("--real", default="../shared/data/real/svt_test", help="real HR crops evaluated under lr16/lr16blur")
    p.add_argument("--max-samples", type=int, default=0, help="per evaluation split; 0 = all")
    p.add_argument("--min-steps", type=int, default=10, help="lower bound on the derived step count")
    p.add_argument("--contenders", default="kdltr,baseline",
                   help="comma list from kdltr, baseline, clipocr, kdltr+clipocr (clipocr needs a PARSeq teacher with "
                        "a class token and a 4+ layer decoder), onnx-teacher (a student of --onnx-config's ONNX "
                        "teacher and its LR-only baseline, both from the teacher's weights)")
    p.add_argument("--onnx-config", default="configs/ppocr_student.yaml",
                   help="training config of the onnx-teacher contender (its teacher, data and recipe)")
    p.add_argument("--clip", default=None, help="CLIP checkpoint for the clipocr contenders; default: train one "
                                                "(train.stage=clip) with the same step count")
    return p


def _step_count(args, seconds_per_step, who: str) -> int:
    """--steps when given, else --minutes at the measured speed of ``who`` (``seconds_per_step()``, only called
    then)."""
    if args.steps:
        return args.steps
    sec = seconds_per_step()
    steps = max(args.min_steps, int(args.minutes * 60 / sec))
    print(f"kd_gain: {who} step {sec * 1000:.0f} ms -> {steps} steps per contender for {args.minutes} min")
    return steps


def _budget(args) -> str:
    return f"{args.minutes} min budget" if not args.steps else "fixed by --steps"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.minutes is None) == (not args.steps):
        parser.error("give exactly one of --minutes and --steps")
    if args.steps < 0 or (args.minutes is not None and args.minutes <= 0):
        parser.error(f"--steps / --minutes: must be > 0, got {args.steps or args.minutes}")
    out = Path(args.out)
    try:
        wanted = [c.strip() for c in args.contenders.split(",") if c.strip()]
        bad = sorted(set(wanted) - {"kdltr", "baseline", "clipocr", "kdltr+clipocr", "onnx-teacher"})
        cnn = [c for c in wanted if c != "onnx-teacher"]
        if bad or (cnn and ("kdltr" not in cnn or "baseline" not in cnn)) or not wanted:
            raise ConfigError(f"--contenders: need kdltr and baseline, may add clipocr, kdltr+clipocr; or "
                              f"onnx-teacher alone or with them; got {wanted}")
        if not cnn:
            return _onnx_only(args, out)
        base = load_config(args.config, args.overrides + ["train.progress=false"])
        teacher = args.teacher
        if teacher is None:
            tcfg = copy.deepcopy(base)
            tcfg.train.stage, tcfg.train.out_dir = "teacher", str(out / "teacher")
            print(f"kd_gain: no --teacher; training one ({tcfg.optim.steps} steps)")
            train(tcfg)
            teacher = str(out / "teacher" / "best.pt")
        load_checkpoint(teacher)
        steps = _step_count(args, lambda: measure_step_time(base, teacher), "KD student")
        clip_ckpt = args.clip
        if any("clipocr" in c for c in wanted) and clip_ckpt is None:
            ccfg = copy.deepcopy(base)
            ccfg.train.stage, ccfg.train.out_dir, ccfg.optim.steps = "clip", str(out / "clip"), steps
            ccfg.train.val_every = ccfg.train.ckpt_every = max(1, steps // 4)
            print(f"kd_gain: no --clip; training one offline ({steps} steps)")
            train(ccfg)
            clip_ckpt = str(out / "clip" / "last.pt")
        ckpts = {}
        for name in cnn:
            cfg = copy.deepcopy(base)
            stage = "baseline" if name == "baseline" else "student"
            cfg.train.stage, cfg.train.teacher_ckpt = stage, teacher
            if stage == "student":
                cfg.distill.method = name
                cfg.train.clip_ckpt = clip_ckpt or ""
            key = "student" if name == "kdltr" else name
            cfg.train.out_dir = str(out / key)
            cfg.optim.steps = steps
            cfg.train.val_every = cfg.train.ckpt_every = max(1, steps // 4)
            cfg.train.log_every = max(1, steps // 20)
            t0 = time.perf_counter()
            train(cfg)
            print(f"kd_gain: {name} trained in {time.perf_counter() - t0:.0f}s")
            ckpts[key] = str(out / key / "best.pt")
        onnx_teachers = {}
        if "onnx-teacher" in wanted:
            ocfg, oteacher = _train_onnx_pair(args, out)
            ckpts.update(_onnx_pair_ckpts(ocfg, out))
            onnx_teachers["onnx-teacher"] = oteacher
        extra = {k: v for k, v in ckpts.items() if k != "student"}
        synth_dir = prepare_synth(base)
        synth = evaluate_models(ckpts["student"], [str(synth_dir)] if synth_dir else [], teacher,
                                max_samples=args.max_samples, extra_students=extra, onnx_teachers=onnx_teachers)
        real_name = Path(args.real).name
        real = evaluate_models(ckpts["student"], [args.real], teacher, lr_from_hr=True, max_samples=args.max_samples,
                               extra_students=extra, onnx_teachers=onnx_teachers) if Path(args.real).exists() else []
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md, rows = gain_table(synth, real, real_name)
    kd = next(r for r in rows if r["model"] == "student")
    bl = next(r for r in rows if r["model"] == "baseline")
    bic = next(r for r in rows if r["contender"].startswith("teacher on bicubic"))
    keys = [k for k in kd if k in ("easy", "medium", "hard") or k.startswith(real_name)]
    ahead = {k: (kd[k] is not None and bl[k] is not None and bic[k] is not None and kd[k] > bl[k] and kd[k] > bic[k])
             for k in keys}
    summary = (f"KD student ahead of baseline and teacher-on-bicubic on {sum(ahead.values())}/{len(ahead)} test splits"
               f" ({', '.join(k for k, v in ahead.items() if not v) or 'all'}{' behind' if not all(ahead.values()) else ''})")
    if onnx_teachers:
        summary += "\n\n" + _onnx_summary(rows, real_name)
    text = (f"# KD gain ({steps} steps per student, {_budget(args)}, teacher {teacher})\n\n{md}\n\n"
            f"{summary}\n\n{PAPER}\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "kd_gain.md").write_text(text)
    write_json_atomic({"steps": steps, "minutes": args.minutes, "fixed_steps": bool(args.steps), "teacher": teacher,
                       "checkpoints": ckpts, "rows": rows, "ahead": ahead,
                       "reports": {"synthetic": [r.to_dict() for r in synth], "real": [r.to_dict() for r in real]}},
                      out / "kd_gain.json")
    print(text)
    return 0


def measure_onnx_step_time(cfg: Config, n: int = 3) -> float:
    """Seconds per step of the ONNX teacher's student (random batch with random soft targets)."""
    from .train import build_onnx_student

    spec, student, teacher = build_onnx_student(cfg, master=False)
    tok = make_tokenizer(spec["tokenizer"], spec["charset"])
    system = TrainingSystem(student, tok, "student", cfg.distill).train()
    bs = cfg.data.batch_size
    batch = {"hr": torch.randn(bs, 3, 32, 128), "lr": torch.randn(bs, 3, 16, 64), "label": ["sample"] * bs,
             "t_probs": torch.softmax(torch.randn(bs, teacher.frames, len(spec["charset"]) + 1), -1),
             "has_label": torch.ones(bs, dtype=torch.bool)}
    return _median_step(system, batch, n)


def _train_onnx_pair(args, out: Path) -> tuple[Config, str]:
    """Train the onnx-teacher contender (student) and its baseline with equal steps; returns (config, teacher)."""
    ocfg = load_config(args.onnx_config, args.overrides + ["train.progress=false"])
    steps = _step_count(args, lambda: measure_onnx_step_time(ocfg), "onnx-teacher student")
    for stage, key in (("student", "onnx-student"), ("baseline", "onnx-baseline")):
        cfg = copy.deepcopy(ocfg)
        cfg.train.stage, cfg.train.out_dir, cfg.optim.steps = stage, str(out / key), steps
        cfg.train.val_every = cfg.train.ckpt_every = max(1, steps // 4)
        cfg.train.log_every = max(1, steps // 20)
        t0 = time.perf_counter()
        train(cfg)
        print(f"kd_gain: {key} trained in {time.perf_counter() - t0:.0f}s")
    return ocfg, ocfg.train.teacher_ckpt


def _onnx_pair_ckpts(ocfg: Config, out: Path) -> dict[str, str]:
    """The checkpoints the onnx-teacher pair is scored by: the recipe's shipped form, wise.pt when it sets
    train.wise_alpha (both members average with their common start), else last.pt."""
    name = "wise.pt" if ocfg.train.wise_alpha else "last.pt"
    return {k: str(out / k / name) for k in ("onnx-student", "onnx-baseline")}


def _onnx_summary(rows: list[dict], real_name: str) -> str:
    st = next((r for r in rows if r["model"] == "onnx-student"), None)
    bl = next((r for r in rows if r["model"] == "onnx-baseline"), None)
    te = next((r for r in rows if r["contender"].startswith("ONNX teacher on LR")), None)
    if not (st and bl and te):
        return ""
    keys = [k for k in st if k in ("easy", "medium", "hard") or k.startswith(real_name)]
    vs = lambda other: [k for k in keys if st[k] is not None and other[k] is not None and st[k] > other[k]]
    return (f"Student of the ONNX teacher: ahead of its LR-only baseline on {len(vs(bl))}/{len(keys)} test splits, "
            f"ahead of the ONNX teacher reading the same LR input on {len(vs(te))}/{len(keys)}.")


def _onnx_only(args, out: Path) -> int:
    """kd_gain with the onnx-teacher contender alone: no CNN teacher is trained."""
    try:
        ocfg, oteacher = _train_onnx_pair(args, out)
        val = Path(ocfg.data.val)
        synth_dir = val.parent if (val.parent / "test").exists() else None
        ckpts = _onnx_pair_ckpts(ocfg, out)
        kw = dict(max_samples=args.max_samples, onnx_teachers={"onnx-teacher": oteacher}, extra_students=ckpts)
        synth = evaluate_models(None, [str(synth_dir)], None, **kw) if synth_dir else []
        real = evaluate_models(None, [args.real], None, lr_from_hr=True, **kw) if Path(args.real).exists() else []
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    real_name = Path(args.real).name
    md, rows = gain_table(synth, real, real_name)
    text = f"# KD gain: the ONNX teacher's student ({_budget(args)})\n\n{md}\n\n{_onnx_summary(rows, real_name)}\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "kd_gain.md").write_text(text)
    write_json_atomic({"minutes": args.minutes, "teacher": oteacher, "checkpoints": ckpts, "rows": rows,
                       "reports": {"synthetic": [r.to_dict() for r in synth], "real": [r.to_dict() for r in real]}},
                      out / "kd_gain.json")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
