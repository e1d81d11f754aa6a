"""``python -m experiments.kd_gain (--minutes M | --steps N) --out DIR [--seeds 0,1,2] [--teacher CKPT] [--config YAML]``

Shows what distillation buys: the KD-LTR student and the baseline student (the same LR model trained on LR alone)
are trained from the same initialisation (the teacher's weights) for the same number of steps, on the same data
order, and evaluated with the teacher-on-bicubic on the synthetic test splits and on a real set of HR crops made LR
by the named conditions (``lr16``, ``lr16blur``). The step count is derived from the time budget: M minutes per
contender at the KD student's measured speed (the slower of the two), so both get identical updates; ``--steps``
fixes it instead, so a run repeats on another machine.

Margins between students are often a fraction of a point, as large as the spread between runs. ``--seeds 0,1,2``
repeats the comparison with each ``train.seed`` (data order, degradations, augmentation; the initialisation is the
teacher's either way) in ``DIR/seed-N`` and writes the mean and sample standard deviation of every cell, plus the
KD-minus-baseline difference paired by seed, in ``DIR``; the bar is then judged on the means.

A contender whose ``last.pt`` already holds a run of exactly the wanted config (output paths aside) is not trained
again: a finished one is kept, an interrupted one resumes from that checkpoint. So a killed kd_gain continues, and
seeds run elsewhere can be moved into ``DIR/seed-N`` and aggregated. A different config there is an error.

Writes ``DIR/kd_gain.json`` and ``DIR/kd_gain.md``.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from runtime.charset import make_tokenizer
from runtime.files import write_bytes_atomic, write_json_atomic
from runtime.metrics import EvalReport

from distill.checkpoint import CheckpointError, load_checkpoint
from distill.config import Config, ConfigError, config_from_dict, load_config
from distill.evaluate import evaluate_models
from distill.models import build_model, make_student
from distill.system import TrainingSystem
from distill.train import prepare_synth, train

__all__ = ["measure_step_time", "gain_table", "seed_table", "train_or_reuse", "main"]

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
    p = argparse.ArgumentParser(prog="python -m experiments.kd_gain", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--minutes", type=float, default=None,
                   help="training budget per contender (KD and baseline), turned into a step count at the KD "
                        "student's measured speed; default: none, --steps must be given")
    p.add_argument("--steps", type=int, default=0,
                   help="fixed step count per contender instead of a time budget; 0 = from --minutes")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seeds", default=None,
                   help="comma list of train.seed values; two or more repeat the comparison per seed in DIR/seed-N "
                        "and write the mean and sd over seeds in DIR; default: the config's train.seed, one run in DIR")
    p.add_argument("--config", default="configs/smoke.yaml", help="training config (data, model, distillation)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--teacher", default=None,
                   help="HR teacher checkpoint; default: train one first with the same budget")
    p.add_argument("--real", default=None,
                   help="real HR crops evaluated under lr16/lr16blur (e.g. ../shared/data/real/svt_test); unset: "
                        "the synthetic test splits only")
    p.add_argument("--max-samples", type=int, default=0, help="per evaluation split; 0 = all")
    p.add_argument("--eval-batch", type=int, default=64,
                   help="crops per batch when evaluating the torch models (default 64; larger on a GPU, where "
                        "PARSeq's step-by-step decoding is launch-bound)")
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


def _seed_list(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: a seed is listed twice in {text!r}")
    return seeds


# Keys that change where and how often a run reports, never its weights: a run directory may be moved, and a run
# logged or checkpointed at another cadence is the same run.
_NOT_IN_WEIGHTS = ("train.out_dir", "train.progress", "train.log_every", "train.ckpt_every")


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(key, old, new) for every leaf that differs, the keys of ``_NOT_IN_WEIGHTS`` aside."""
    diff = []
    for k in sorted(set(old) | set(new)):
        key, a, b = f"{prefix}{k}", old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diff += _config_diff(a, b, key + ".")
        elif a != b and key not in _NOT_IN_WEIGHTS:
            diff.append((key, a, b))
    return diff


def stored_config(ck: dict) -> dict:
    """A checkpoint's config with today's defaults for the keys added since it was written (a key that did not
    exist then had no other value), as written when one it holds is no longer known."""
    old = ck.get("config") or {}
    try:
        return config_from_dict(old).to_dict()
    except ConfigError:
        return old


def train_or_reuse(cfg: Config, who: str) -> None:
    """Train ``cfg`` unless ``train.out_dir`` already holds a run of the same config: a finished one is kept, an
    interrupted one resumes from its last.pt. A run of another config there is a ConfigError naming the key."""
    last = Path(cfg.train.out_dir) / "last.pt"
    if not last.exists():
        t0 = time.perf_counter()
        train(cfg)
        print(f"kd_gain: {who} trained in {time.perf_counter() - t0:.0f}s")
        return
    ck = load_checkpoint(last)
    diff = _config_diff(stored_config(ck), cfg.to_dict())
    if diff:
        key, old, new = diff[0]
        more = f" ({len(diff) - 1} more keys differ)" if len(diff) > 1 else ""
        raise ConfigError(f"{last}: trained with {key}={old!r}, this run wants {new!r}{more}; give another --out "
                          f"or remove {last.parent}")
    done = ck["step"] >= cfg.optim.steps and (last.parent / "best.pt").exists()
    if done and (not cfg.train.wise_alpha or (last.parent / "wise.pt").exists()):
        print(f"kd_gain: {who} already trained ({last}, step {ck['step']}); kept")
        return
    # A finished run that lacks best.pt or wise.pt resumes at its last step: train() then only writes them.
    print(f"kd_gain: {who} resumes from {last} at step {ck['step']}")
    train(cfg, resume=str(last))


def _split_keys(row: dict, real_name: str) -> list[str]:
    return [k for k in row if k in ("easy", "medium", "hard") or k.startswith(real_name)]


def _beats(a: dict, b: dict, real_name: str) -> dict[str, bool]:
    """Per test split: is row ``a`` above row ``b`` (both measured)?"""
    return {k: a[k] is not None and b[k] is not None and a[k] > b[k] for k in _split_keys(a, real_name)}


def _ahead(rows: list[dict], real_name: str) -> dict[str, bool]:
    """Per test split: is the KD student above both the baseline and the teacher on bicubic(LR)?"""
    kd = next(r for r in rows if r["model"] == "student")
    bl = next(r for r in rows if r["model"] == "baseline")
    bic = next(r for r in rows if r["contender"].startswith("teacher on bicubic"))
    vs_bl, vs_bic = _beats(kd, bl, real_name), _beats(kd, bic, real_name)
    return {k: vs_bl[k] and vs_bic[k] for k in vs_bl}


# what each CLIP-OCR row is judged against: (key in clipocr_ahead, the other row's model, its name in the line)
_CLIPOCR_REFS = (("baseline", "baseline", "the LR-only baseline"), ("kdltr", "student", "the KD-LTR student"))


def _clipocr_lines(rows: list[dict], real_name: str) -> tuple[list[str], dict]:
    """One line per CLIP-OCR contender: on how many test splits it is above the LR-only baseline and above the
    KD-LTR student, naming the splits where it is not."""
    lines, res = [], {}
    by_model = {r["model"]: r for r in rows}
    for model in ("clipocr", "kdltr+clipocr"):
        if model not in by_model:
            continue
        res[model], parts = {}, []
        for who, ref, label in _CLIPOCR_REFS:
            got = res[model][who] = _beats(by_model[model], by_model[ref], real_name)
            behind = [k for k, v in got.items() if not v]
            parts.append(f"{label} on {len(got) - len(behind)}/{len(got)}"
                         + (f" (not on {', '.join(behind)})" if behind else ""))
        lines.append(f"{by_model[model]['contender']} ahead of " + " and of ".join(parts) + " test splits")
    return lines, res


def _ahead_line(ahead: dict[str, bool], by: str = "") -> str:
    behind = [k for k, v in ahead.items() if not v]
    return (f"KD student ahead of baseline and teacher-on-bicubic on {len(ahead) - len(behind)}/{len(ahead)} test "
            f"splits{by} ({', '.join(behind) + ' behind' if behind else 'all'})")


def _contender_config(base: Config, stage: str, out_dir: Path, steps: int) -> Config:
    """A copy of ``base`` for one contender: its stage, output directory and step count, validated and
    checkpointed four times and logged twenty times over the run."""
    cfg = copy.deepcopy(base)
    cfg.train.stage, cfg.train.out_dir, cfg.optim.steps = stage, str(out_dir), steps
    cfg.train.val_every = cfg.train.ckpt_every = max(1, steps // 4)
    cfg.train.log_every = max(1, steps // 20)
    return cfg


def _run(args, out: Path, overrides: list[str], wanted: list[str], teacher: str | None, clip_ckpt: str | None,
         steps: int | None, onnx_steps: int | None) -> dict:
    """One comparison: train (or reuse) every contender, evaluate them, write ``out/kd_gain.{md,json}``; returns
    the JSON with the Markdown under ``text``."""
    cnn = [c for c in wanted if c != "onnx-teacher"]
    base = load_config(args.config, overrides + ["train.progress=false"])
    ckpts: dict[str, str] = {}
    for name in cnn:
        stage = "baseline" if name == "baseline" else "student"
        key = "student" if name == "kdltr" else name
        cfg = _contender_config(base, stage, out / key, steps)
        cfg.train.teacher_ckpt = teacher
        if stage == "student":
            cfg.distill.method = name
            cfg.train.clip_ckpt = clip_ckpt or ""
        train_or_reuse(cfg, name)
        ckpts[key] = str(out / key / "best.pt")
    onnx_teachers = {}
    synth_dir = prepare_synth(base) if cnn else None
    if "onnx-teacher" in wanted:
        ocfg = load_config(args.onnx_config, overrides + ["train.progress=false"])
        for stage, key in (("student", "onnx-student"), ("baseline", "onnx-baseline")):
            train_or_reuse(_contender_config(ocfg, stage, out / key, onnx_steps), key)
        ckpts.update(_onnx_pair_ckpts(ocfg, out))
        onnx_teachers["onnx-teacher"] = ocfg.train.teacher_ckpt
        val = Path(ocfg.data.val)
        if not cnn and (val.parent / "test").exists():
            synth_dir = val.parent
    extra = {k: v for k, v in ckpts.items() if k != "student"}
    kw = dict(max_samples=args.max_samples, batch=args.eval_batch, extra_students=extra, onnx_teachers=onnx_teachers)
    synth = evaluate_models(ckpts.get("student"), [str(synth_dir)] if synth_dir else [], teacher, **kw)
    real = evaluate_models(ckpts.get("student"), [args.real], teacher, lr_from_hr=True, **kw) if args.real else []
    real_name = Path(args.real).name if args.real else "real"
    md, rows = gain_table(synth, real, real_name)
    seed = (base if cnn else ocfg).train.seed  # the onnx-teacher pair alone trains from its own config
    res: dict = {"seed": seed, "minutes": args.minutes, "fixed_steps": bool(args.steps), "checkpoints": ckpts,
                 "rows": rows}
    summary = []
    if cnn:
        res.update(steps=steps, teacher=teacher, ahead=_ahead(rows, real_name))
        summary.append(_ahead_line(res["ahead"]))
        clip_lines, res["clipocr_ahead"] = _clipocr_lines(rows, real_name)
        summary += clip_lines
        title = f"# KD gain ({steps} steps per student, {_budget(args)}, seed {seed}, teacher {teacher})"
    else:
        res.update(steps=onnx_steps, teacher=onnx_teachers["onnx-teacher"])
        title = f"# KD gain: the ONNX teacher's student ({onnx_steps} steps, {_budget(args)}, seed {seed})"
    if onnx_teachers:
        summary.append(_onnx_summary(rows, real_name))
    res["reports"] = {"synthetic": [r.to_dict() for r in synth], "real": [r.to_dict() for r in real]}
    text = f"{title}\n\n{md}\n\n" + "\n\n".join(summary) + (f"\n\n{PAPER}\n" if cnn else "\n")
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(text.encode(), out / "kd_gain.md")
    write_json_atomic(res, out / "kd_gain.json")
    return {**res, "text": text}


def _stat(values: list) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "values": vals}


def seed_table(runs: list[dict], real_name: str) -> tuple[str, dict]:
    """Markdown + JSON over the seeds' kd_gain results (same contenders): mean ± sample sd of every cell, the
    student-minus-baseline differences paired by seed (per seed and summarised), and the bar judged on the means."""
    by_seed = [{r["contender"]: r for r in run["rows"]} for run in runs]
    labels = [r["contender"] for r in runs[0]["rows"]]
    for run, rows in zip(runs, by_seed):
        if list(rows) != labels:
            raise ConfigError(f"seed {run['seed']}: contenders {list(rows)} differ from seed {runs[0]['seed']}'s "
                              f"{labels}")
    keys = [k for k in runs[0]["rows"][0] if k not in ("contender", "model")]
    head = [k.replace("synthetic_avg", "synthetic avg").replace(f"{real_name}_", f"{real_name} ") for k in keys]
    cell = lambda st, sign="": "" if st is None else f"{st['mean']:{sign}.2f} ± {st['sd']:.2f}"
    lines = ["| contender | " + " | ".join(head) + " |", "|---|" + "---:|" * len(keys)]
    rows = []
    for label in labels:
        row = {"contender": label, "model": by_seed[0][label]["model"]}
        row.update({k: _stat([rs[label][k] for rs in by_seed]) for k in keys})
        rows.append(row)
        lines.append(f"| {label} | " + " | ".join(cell(row[k]) for k in keys) + " |")
    pairs = [(a, b) for a, b in (("student", "baseline"), ("clipocr", "baseline"), ("kdltr+clipocr", "baseline"),
                                 ("onnx-student", "onnx-baseline"))
             if any(r["model"] == a for r in rows) and any(r["model"] == b for r in rows)]
    diffs, per_seed = {}, []
    for a, b in pairs:
        la = next(r["contender"] for r in rows if r["model"] == a)
        lb = next(r["contender"] for r in rows if r["model"] == b)
        d = [{k: None if rs[la][k] is None or rs[lb][k] is None else rs[la][k] - rs[lb][k] for k in keys}
             for rs in by_seed]
        diffs[f"{a} - {b}"] = {k: _stat([x[k] for x in d]) for k in keys}
        lines.append(f"| {a} minus {b}, paired by seed | " + " | ".join(cell(diffs[f'{a} - {b}'][k], '+')
                                                                      for k in keys) + " |")
        per_seed += [f"| seed {run['seed']}: {a} minus {b} | " + " | ".join("" if x[k] is None else f"{x[k]:+.2f}"
                                                                          for k in keys) + " |"
                     for run, x in zip(runs, d)]
    md = "\n".join(lines)
    if per_seed:
        md += "\n\n| per seed | " + " | ".join(head) + " |\n|---|" + "---:|" * len(keys) + "\n" + "\n".join(per_seed)
    agg = {"seeds": [run["seed"] for run in runs], "rows": rows, "paired_differences": diffs}
    if any(r["model"] == "student" for r in rows):
        means = [{k: (v["mean"] if isinstance(v, dict) else v) for k, v in r.items()} for r in rows]
        agg["ahead"] = _ahead(means, real_name)
        agg["ahead_per_seed"] = {str(run["seed"]): sum(run["ahead"].values()) for run in runs}
        agg["summary"] = (_ahead_line(agg["ahead"], f" by the mean over {len(runs)} seeds") + "; per seed: "
                          + ", ".join(f"seed {s} {n}/{len(agg['ahead'])}" for s, n in agg["ahead_per_seed"].items()))
    return md, agg


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.minutes is None) == (not args.steps):
        parser.error("give exactly one of --minutes and --steps")
    if args.eval_batch < 1:
        parser.error(f"--eval-batch: must be >= 1, got {args.eval_batch}")
    if args.steps < 0 or (args.minutes is not None and args.minutes <= 0):
        parser.error(f"--steps / --minutes: must be > 0, got {args.steps or args.minutes}")
    if args.real and not Path(args.real).exists():
        parser.error(f"--real {args.real}: no such dataset")
    out = Path(args.out)
    real_name = Path(args.real).name if args.real else "real"
    try:
        wanted = [c.strip() for c in args.contenders.split(",") if c.strip()]
        bad = sorted(set(wanted) - {"kdltr", "baseline", "clipocr", "kdltr+clipocr", "onnx-teacher"})
        cnn = [c for c in wanted if c != "onnx-teacher"]
        if bad or (cnn and ("kdltr" not in cnn or "baseline" not in cnn)) or not wanted:
            raise ConfigError(f"--contenders: need kdltr and baseline, may add clipocr, kdltr+clipocr; or "
                              f"onnx-teacher alone or with them; got {wanted}")
        seeds = _seed_list(args.seeds)
        teacher, clip_ckpt, steps, onnx_steps = args.teacher, args.clip, None, None
        if cnn:
            # The teacher and the CLIP are trained once, with the config's own seed, and shared by every seed.
            base = load_config(args.config, args.overrides + ["train.progress=false"])
            if teacher is None:
                tcfg = copy.deepcopy(base)
                tcfg.train.stage, tcfg.train.out_dir = "teacher", str(out / "teacher")
                print(f"kd_gain: no --teacher; training one ({tcfg.optim.steps} steps)")
                train_or_reuse(tcfg, "teacher")
                teacher = str(out / "teacher" / "best.pt")
            load_checkpoint(teacher)
            steps = _step_count(args, lambda: measure_step_time(base, teacher), "KD student")
            if any("clipocr" in c for c in wanted) and clip_ckpt is None:
                ccfg = copy.deepcopy(base)
                ccfg.train.stage, ccfg.train.out_dir, ccfg.optim.steps = "clip", str(out / "clip"), steps
                ccfg.train.val_every = ccfg.train.ckpt_every = max(1, steps // 4)
                print(f"kd_gain: no --clip; training one offline ({steps} steps)")
                train_or_reuse(ccfg, "CLIP")
                clip_ckpt = str(out / "clip" / "last.pt")
        if "onnx-teacher" in wanted:
            ocfg = load_config(args.onnx_config, args.overrides + ["train.progress=false"])
            onnx_steps = _step_count(args, lambda: measure_onnx_step_time(ocfg), "onnx-teacher student")
        common = (wanted, teacher, clip_ckpt, steps, onnx_steps)
        if len(seeds) < 2:
            res = _run(args, out, args.overrides + [f"train.seed={s}" for s in seeds], *common)
            print(res["text"])
            return 0
        runs = []
        for seed in seeds:
            print(f"kd_gain: seed {seed} in {out / f'seed-{seed}'}")
            runs.append(_run(args, out / f"seed-{seed}", args.overrides + [f"train.seed={seed}"], *common))
        md, agg = seed_table(runs, real_name)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    title = (f"# KD gain over {len(seeds)} seeds ({', '.join(map(str, seeds))}): mean ± sample sd "
             f"({runs[0]['steps']} steps per student, {_budget(args)}, teacher {runs[0]['teacher']})")
    text = f"{title}\n\n{md}\n\n" + (f"{agg['summary']}\n\n" if "summary" in agg else "") + f"{PAPER}\n"
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(text.encode(), out / "kd_gain.md")
    write_json_atomic({**agg, "steps": runs[0]["steps"], "minutes": args.minutes, "fixed_steps": bool(args.steps),
                       "teacher": runs[0]["teacher"], "runs": {str(r["seed"]): str(out / f"seed-{r['seed']}")
                                                               for r in runs}}, out / "kd_gain.json")
    print(text)
    return 0


def measure_onnx_step_time(cfg: Config, n: int = 3) -> float:
    """Seconds per step of the ONNX teacher's student (random batch with random soft targets)."""
    from distill.train import build_onnx_student

    spec, student, teacher = build_onnx_student(cfg, master=False)
    tok = make_tokenizer(spec["tokenizer"], spec["charset"])
    system = TrainingSystem(student, tok, "student", cfg.distill, onnx_targets=True).train()
    bs = cfg.data.batch_size
    batch = {"hr": torch.randn(bs, 3, 32, 128), "lr": torch.randn(bs, 3, 16, 64), "label": ["sample"] * bs,
             "t_probs": torch.softmax(torch.randn(bs, teacher.frames, len(spec["charset"]) + 1), -1),
             "has_label": torch.ones(bs, dtype=torch.bool)}
    return _median_step(system, batch, n)


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
    vs_bl, vs_te = _beats(st, bl, real_name), _beats(st, te, real_name)
    return (f"Student of the ONNX teacher: ahead of its LR-only baseline on {sum(vs_bl.values())}/{len(vs_bl)} test "
            f"splits, ahead of the ONNX teacher reading the same LR input on {sum(vs_te.values())}/{len(vs_te)}.")


if __name__ == "__main__":
    from runtime.cli import run as run_cli

    sys.exit(run_cli(main))
