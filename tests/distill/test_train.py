"""distill.train: smoke runs of every family and stage, exact resume after a kill, NaN stop, DDP, KD schedule."""
import importlib.util
import os
import signal
import subprocess
import sys
import time
import pytest
import torch
from conftest import ROOT, TINY, overrides
from distill.checkpoint import load_checkpoint, load_model
from distill.config import load_config
from distill.train import train


@pytest.mark.parametrize("model", sorted(TINY))
def test_teacher_student_baseline(model, synth, tmp_path):
    t = train(load_config("configs/smoke.yaml", overrides(synth, tmp_path / "t", model)))
    assert t["step"] == 4
    ck = load_checkpoint(tmp_path / "t" / "last.pt")
    assert ck["model_spec"]["name"] == model and not ck["model_spec"]["lr"]
    assert ck["config"]["model"]["name"] == model and ck["charset"] == "0123456789abcdefghijklmnopqrstuvwxyz"
    if importlib.util.find_spec("tensorboard") is not None:
        assert any((tmp_path / "t" / "tb").iterdir()), "TensorBoard events expected"
    assert (tmp_path / "t" / "log.csv").read_text().startswith("step,epoch,loss")
    for stage in ("student", "baseline"):
        train(load_config("configs/smoke.yaml", overrides(synth, tmp_path / stage, model, f"train.stage={stage}",
                                                          f"train.teacher_ckpt={tmp_path / 't' / 'last.pt'}")))
        m, tok, ck = load_model(tmp_path / stage / "best.pt")
        assert ck["model_spec"]["lr"] and tuple(m.img_size) == (16, 64) and ck["stage"] == stage
        rows = (tmp_path / stage / "log.csv").read_text().splitlines()
        parts = " ".join(rows[1:])
        if stage == "student":
            assert "logits=" in parts and "visual=" in parts and "semantic=" in parts
        else:
            assert "logits=" not in parts and "visual=" not in parts



def test_config_errors_name_the_key(synth, tmp_path):
    r = subprocess.run([sys.executable, "-m", "distill.train", "--config", "configs/smoke.yaml", "--set",
                        "optim.lrr=1"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "optim.lrr: unknown key" in r.stderr
    r = subprocess.run([sys.executable, "-m", "distill.train", "--config", "configs/smoke.yaml", "--set",
                        "train.stage=student"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "train.teacher_ckpt" in r.stderr



def test_set_indexes_lists_and_checks_the_clean_share():
    from distill.config import ConfigError

    recipe = [s.clean for s in load_config("configs/ppocr_student.yaml").data.train]
    cfg = load_config("configs/ppocr_student.yaml", ["data.train.1.clean=0.25"])
    assert [s.clean for s in cfg.data.train] == recipe[:1] + [0.25] + recipe[2:] and recipe[1] != 0.25
    with pytest.raises(ConfigError, match=r"data.train\[0\].clean: expected a share in \[0, 1\], got 2"):
        load_config("configs/ppocr_student.yaml", ["data.train.0.clean=2"])
    with pytest.raises(ConfigError, match=r"data.train\[1\].at_lr_height: expected a share in \[0, 1\], got 2"):
        load_config("configs/ppocr_student.yaml", ["data.train.1.at_lr_height=2"])
    with pytest.raises(ConfigError, match="data.train is a list of 3; expected an index 0..2, got '3'"):
        load_config("configs/ppocr_student.yaml", ["data.train.3.clean=0.5"])



def test_resume_after_kill_is_exact(synth, tmp_path):
    ov = lambda out: overrides(synth, out, "parseq-tiny", "optim.steps=12", "train.ckpt_every=3", "train.val_every=6")
    train(load_config("configs/smoke.yaml", ov(tmp_path / "straight")))
    # a second run, killed with SIGKILL once its first checkpoint exists, then resumed
    args = [sys.executable, "-m", "distill.train", "--config", "configs/smoke.yaml"]
    for o in ov(tmp_path / "killed"):
        args += ["--set", o]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = load_checkpoint(last)["step"]
    assert step_at_kill < 12, "the run finished before it could be killed"
    r = subprocess.run(args + ["--resume"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"resumed from {last} at step {step_at_kill}" in r.stdout
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(last)
    assert a["step"] == b["step"] == 12
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k



def test_nan_loss_stops_and_keeps_last_good_checkpoint(synth, tmp_path, monkeypatch):
    from distill import system as S

    real = S.TrainingSystem.forward

    def poisoned(self, batch, step):
        loss, parts = real(self, batch, step)
        return (loss * float("nan") if step >= 3 else loss), parts

    monkeypatch.setattr(S.TrainingSystem, "forward", poisoned)
    cfg = load_config("configs/smoke.yaml", overrides(synth, tmp_path, "cnn-ctc", "optim.steps=6", "train.ckpt_every=1"))
    with pytest.raises(FloatingPointError, match="loss is nan at step 3"):
        train(cfg)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3  # steps 0..2 done, the poisoned step never applied



def test_ddp_two_cpu_processes_end_identical(synth, tmp_path):
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
            "tests/distill/ddp_driver.py", "configs/smoke.yaml"]
    args += overrides(synth, tmp_path, "cnn-attn", "optim.steps=3", "train.val_every=100")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "world=2" in r.stdout
    w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["step"] == 3
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k  # parameters and BN buffers alike
        assert torch.equal(w0[k], saved["model"][k]), k



def test_kd_schedule_anneals_the_kd_terms_to_nothing():
    from distill.models import build_model, make_student, model_spec
    from distill.system import TrainingSystem
    from runtime.charset import make_tokenizer

    cfg = load_config("configs/smoke.yaml", ["distill.kd_schedule=cosine"])
    torch.manual_seed(0)
    tspec = model_spec("cnn-ctc", "36", 12, widths=[8, 8, 16, 16, 16], hidden=32)
    teacher = build_model(tspec)
    spec, student, _ = make_student(tspec, teacher.state_dict())
    system = TrainingSystem(student, make_tokenizer("ctc", spec["charset"]), "student", cfg.distill, teacher,
                            total_steps=11)
    batch = {"hr": torch.randn(4, 3, 32, 128), "lr": torch.randn(4, 3, 16, 64), "label": ["ab", "c1", "xyz", "7"]}
    totals = {}
    for step in (0, 5, 10):
        loss, parts = system(batch, step)
        kd = sum(getattr(cfg.distill, k).weight * parts[k] for k in ("visual", "semantic", "logits"))
        totals[step] = (loss.item(), parts["ce"] * cfg.distill.ce.weight, kd)
    assert totals[0][2] > 0.01  # the teacher disagrees with an LR twin on random input
    assert totals[0][0] == pytest.approx(totals[0][1] + totals[0][2], rel=1e-5)  # full weight at the start
    assert totals[5][0] == pytest.approx(totals[5][1] + 0.5 * totals[5][2], rel=1e-5)  # half way: half
    assert totals[10][0] == pytest.approx(totals[10][1], rel=1e-5)  # the last step: labels alone
    from distill.config import ConfigError

    with pytest.raises(ConfigError, match="distill.kd_schedule: expected one of constant, cosine, linear, got 'cos'"):
        load_config("configs/smoke.yaml", ["distill.kd_schedule=cos"])



def test_teacher_trains_further_from_an_older_checkpoint(synth, tmp_path):
    """train.init_ckpt for a teacher; a checkpoint from before model specs spelled out every argument still fits,
    and a real difference is still named."""
    train(load_config("configs/smoke.yaml", overrides(synth, tmp_path / "t", "cnn-ctc")))
    ck = torch.load(tmp_path / "t" / "last.pt", weights_only=False)
    ck["model_spec"]["kwargs"] = {"widths": [8, 8, 16, 16, 16], "hidden": 32}  # the arguments given, no defaults
    torch.save(ck, tmp_path / "old.pt")
    out = train(load_config("configs/smoke.yaml", overrides(synth, tmp_path / "t2", "cnn-ctc",
                                                            f"train.init_ckpt={tmp_path / 'old.pt'}", "optim.steps=1")))
    assert out["step"] == 1
    w0, w1 = ck["model"], load_checkpoint(tmp_path / "t2" / "last.pt")["model"]
    learnt = [k for k in w0 if w0[k].is_floating_point() and "running" not in k]  # not BN statistics
    assert max((w0[k] - w1[k]).abs().max().item() for k in learnt) < 0.05  # one small step from its weights
    from distill.config import ConfigError

    ck["model_spec"]["kwargs"]["hidden"] = 48
    torch.save(ck, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"its model differs .* \['kwargs.hidden'\]"):
        train(load_config("configs/smoke.yaml", overrides(synth, tmp_path / "t3", "cnn-ctc",
                                                          f"train.init_ckpt={tmp_path / 'other.pt'}")))


def test_a_config_extends_another_and_merges_section_by_section(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {name: cnn-ctc, max_len: 12}\noptim: {lr: 0.01, steps: 7}\n"
                                        "data: {synth: {n: 10}}\n")
    (tmp_path / "stage.yaml").write_text("extends: base.yaml\noptim: {steps: 9}\ntrain: {out_dir: runs/x}\n")
    cfg = load_config(str(tmp_path / "stage.yaml"), ["optim.lr=0.5"])
    assert (cfg.model.name, cfg.model.max_len, cfg.optim.steps, cfg.optim.lr, cfg.train.out_dir) == \
        ("cnn-ctc", 12, 9, 0.5, "runs/x")
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ValueError, match="extends itself"):
        load_config(str(tmp_path / "loop.yaml"))
    (tmp_path / "missing.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ValueError, match="extends .*nowhere.yaml: no such file"):
        load_config(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("stage, base", [("configs/ppocrv6_baseline.yaml", "configs/ppocrv6_student.yaml"),
                                         ("configs/smoke_student.yaml", "configs/smoke.yaml")])
def test_recipe_stage_files_differ_from_their_base_only_where_they_say(stage, base):
    a, b = load_config(str(ROOT / stage)).to_dict(), load_config(str(ROOT / base)).to_dict()
    diff = {f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b[s][k]} if all(isinstance(v, dict) for v in a.values()) \
        else None
    assert diff and diff <= {"train.stage", "train.out_dir", "train.teacher_ckpt"}, diff


def test_a_one_step_warm_up_builds_its_schedule():
    """5 % of 20 steps is one warm-up step, where OneCycleLR divides by zero: the schedule takes two instead and
    still rises to optim.lr (at the second step), then decays."""
    from distill.train import build_optimizer

    cfg = load_config(None, ["optim.steps=20", "optim.warmup_pct=0.05", "optim.lr=0.01", "data.synth.n=10"])
    _, opt, sched = build_optimizer(cfg, torch.nn.Linear(2, 2))
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step() if len(lrs) < 20 else None
    assert max(lrs) == pytest.approx(0.01) and lrs.index(max(lrs)) == 1 and lrs[-1] < 1e-4
