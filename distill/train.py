"""``python -m distill.train --config configs/NAME.yaml [--set key=value ...] [--resume]``

Stages (``train.stage``):
  teacher   supervised recognizer on HR (32x128) images
  student   KD-LTR: the LR (16x64) twin of a frozen teacher checkpoint learns from it on LR/HR pairs
  baseline  the same LR student trained on LR images alone, from the same initialisation (the reference)

train.teacher_ckpt may also be any recognizer ONNX file (or ``ppocr``, the PP-OCRv4 recognizer of
rapidocr-onnxruntime): the student is then that graph at 16x64 (``model.name: onnx-ctc``), and the teacher's
frame distributions and strings, computed once and cached beside the data, are its targets (``onnx_teacher``).

Multi-GPU / multi-node: ``torchrun --nproc_per_node N -m distill.train ...`` (DDP; gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import argparse
import csv
import functools
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from runtime.charset import make_tokenizer, resolve_charset
from runtime.cli import InputError
from runtime.datasets import LabelPolicy, open_dataset
from runtime.evaluation import InputSet, evaluate, input_sets
from runtime.preprocess import LR_SIZE

from .augment import text_augment
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import Config, ConfigError, is_onnx_teacher, load_config
from .datasets import PairDataset, WeightedConcat, WithTeacherTargets, collate
from .models import PPOCR_LR_OVERRIDES, build_model, make_onnx_student, make_student, model_spec, resolved_kwargs
from .predict import predict_arrays
from .system import TrainingSystem

if TYPE_CHECKING:
    from .onnx_teacher import OnnxTeacher
    from runtime.recognizer import Recognizer

__all__ = ["main", "train", "ResumableSampler", "prepare_synth"]


class ResumableSampler(Sampler[int]):
    """A per-epoch permutation fixed by (seed, epoch), sharded across DDP ranks, that can start mid-epoch."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.start = 0, 0
        self.per_rank = n // world  # drop the remainder so every rank takes the same number of steps

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 7_919 + self.epoch)
        order = torch.randperm(self.n, generator=g)[: self.per_rank * self.world]
        mine = order[self.rank :: self.world].tolist()
        return iter(mine[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


def prepare_synth(cfg: Config, rank: int = 0) -> Path | None:
    """The embedded default: synthesize the configured TextZoom-style set once (rank 0), reuse it afterwards."""
    s = cfg.data.synth
    if s.n <= 0:
        return None
    d = Path(s.dir) if s.dir else Path(cfg.train.out_dir).parent / f"synth-{s.n}-{s.seed}"
    if rank == 0 and not (d / "synth.json").exists():
        from .synth.generate import main as synth_main

        print(f"train: synthesizing {s.n} pairs into {d}")
        synth_main(["--out", str(d), "--n", str(s.n), "--seed", str(s.seed), "--split-sizes", s.split_sizes,
                    "--overwrite", "--no-progress", "--workers", str(max(1, min(os.cpu_count() or 1, 16)))])
    if dist.is_initialized():
        dist.barrier()
    return d


def build_datasets(cfg: Config, synth_dir: Path | None, policy: LabelPolicy, teacher=None, rank: int = 0):
    """The weighted training mix and the val reader. With an ONNX ``teacher`` (stage student), every source gets
    the teacher's cached targets; rank 0 builds the caches first."""
    aug = text_augment if cfg.data.augment else None
    if aug is not None and teacher is not None:  # its targets are cached per crop: keep the characters in place
        aug = functools.partial(text_augment, geometric=False)
    sources, weights = [], []
    if synth_dir is not None:
        sources.append((PairDataset(str(synth_dir / "train"), policy=policy, seed=cfg.train.seed), False))
        weights.append(cfg.data.synth.weight)
    for i, s in enumerate(cfg.data.train):
        if s.unlabeled:
            from .unlabeled import open_unlabeled

            src = open_unlabeled(s.path)
            ds = PairDataset(src, lr_mode="degrade", level=s.level, seed=cfg.train.seed + 1 + i, augment=aug,
                             limit=s.limit, clean=s.clean, at_lr_height=s.at_lr_height)
        else:
            ds = PairDataset(s.path, lr_mode=s.lr_mode, level=s.level, seed=cfg.train.seed + 1 + i, policy=policy,
                             augment=aug if s.lr_mode != "stored" else None, limit=s.limit, clean=s.clean,
                             at_lr_height=s.at_lr_height)
        st = ds.reader.stats
        if len(ds) == 0 and s.weight > 0:
            raise ConfigError(f"data.train[{i}].path {s.path}: no usable samples ({st.summary()})")
        if rank == 0 and st.filtered_empty + st.filtered_too_long + len(st.bad_labels):
            print(f"train: data.train[{i}] {s.path}: {st.summary()}", file=sys.stderr)
        sources.append((ds, s.unlabeled))
        weights.append(s.weight)
    if teacher is not None:
        sources = [(with_teacher_targets(cfg, teacher, ds, unl, rank), unl) for ds, unl in sources]
    train = WeightedConcat([d for d, _ in sources], weights, cfg.data.epoch_size or None, seed=cfg.train.seed)
    val_path = cfg.data.val or (str(synth_dir / "val") if synth_dir else "")
    val = open_dataset(val_path, policy) if val_path else None
    return train, val


def with_teacher_targets(cfg: Config, teacher, ds: PairDataset, unlabeled: bool, rank: int) -> WithTeacherTargets:
    """Run the ONNX teacher once over the source (rank 0; the others wait) and wrap it with the cached targets."""
    from .onnx_teacher import TeacherCache

    o = cfg.onnx_teacher
    cache = TeacherCache(ds.reader.path, teacher.fingerprint(), o.cache_dir or None,
                         Path(cfg.train.out_dir).parent / "teacher-cache")
    if rank == 0:
        summary = cache.build(teacher, ds.reader, len(ds), o.batch, o.workers, cfg.train.progress)
        m = summary.get("mapping", {})
        fa = summary.get("frames_agree")  # absent from caches built before it was measured
        agree = "" if fa is None else f"; its frames read its own string on {100 * fa:.1f} %"
        print(f"train: teacher targets {cache.path} ({summary.get('samples')} samples, mean confidence "
              f"{summary.get('mean_conf') or float('nan'):.3f}, mean dropped mass "
              f"{summary.get('mean_dropped_mass') or float('nan'):.4f}; classes {m.get('mapped_exact')} exact, "
              f"{m.get('merged_case')} case-merged, {m.get('dropped')} dropped{agree})")
        if fa is not None and fa < 0.9:
            print(f"train: warning: {cache.path.name}: the teacher's frames, resampled to the student's {teacher.frames}, "
                  f"read its own string on only {100 * fa:.1f} % of the crops: the frame-level "
                  "KL would teach broken words. Give the teacher an input whose frames match the student's "
                  "(onnx_teacher.height/min_width/max_width), use onnx_teacher.resample: peaks, or more student "
                  "frames", file=sys.stderr)
    if dist.is_initialized():
        dist.barrier()
    return WithTeacherTargets(ds, cache, unlabeled, o.conf_threshold)


def build_onnx_student(cfg: Config, master: bool):
    """(spec, student, teacher) for an ONNX teacher: the student is the teacher's own graph at 16x64 (stride and
    pooling overrides), classifier cut to our charset, all weights from the file."""
    from runtime.ppocr import Letterbox, default_dictionary, resolve_recognizer

    from .onnx_teacher import OnnxTeacher

    o = cfg.onnx_teacher
    path = resolve_recognizer(cfg.train.teacher_ckpt)
    pre = Letterbox(o.height, o.min_width, o.max_width, o.channel_order, o.mean, o.std, o.interp)
    charset = resolve_charset(cfg.model.charset)
    # One session: its class names shape the student, whose frame count it then needs for its targets.
    teacher = OnnxTeacher(path, charset, 1, pre, default_dictionary(cfg.train.teacher_ckpt, o.dictionary),
                          o.space_char, o.unmapped, o.threads, o.resample, o.feature)
    if o.runner == "torch":  # the GPU reads the training crops for the cache (gpu_check measures which is faster)
        from .onnx_teacher import TorchSession

        teacher.session = TorchSession(path, len(teacher.classes), "cuda" if use_cuda(cfg) else "cpu")
    graph, classes = path, teacher.classes
    if o.student_graph:  # another network than the teacher's: its classifier is cut by its own dictionary
        from runtime.ppocr import LetterboxRecognizer

        try:
            graph = resolve_recognizer(o.student_graph)
            classes = LetterboxRecognizer(graph, pre, default_dictionary(o.student_graph), o.space_char, 1).classes
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise ConfigError(f"onnx_teacher.student_graph {o.student_graph!r}: {str(e).strip(chr(39))}") from None
    overrides = o.student_overrides
    if not overrides and ((cfg.train.teacher_ckpt == "ppocr" and not o.student_graph)
                          or "PP-OCRv4_rec" in Path(graph).name):
        overrides = PPOCR_LR_OVERRIDES
    keep, calib = o.student_ffn_keep, None
    if keep != 1:  # the pruned projections are refitted on LR crops of the first training source
        from .datasets import image_to_tensor

        if not cfg.data.train:
            raise ConfigError("onnx_teacher.student_ffn_keep: the refit reads LR crops of data.train's first source; "
                              "data.train is empty")
        src = cfg.data.train[0].path
        crops = [im for s in input_sets([src], ("lr16", "lr16blur"), hr=False, max_samples=o.prune_calib // 2 or 1)
                 for im in s.images]
        calib = torch.stack([image_to_tensor(im, LR_SIZE) for im in crops])
    try:
        spec, model, composed = make_onnx_student(graph, charset, cfg.model.max_len, classes, overrides,
                                                  flip_input_channels=o.channel_order == "bgr",
                                                  input_scale=o.student_input_scale, stride_init=o.stride_init,
                                                  ffn_keep=keep, calib=calib)
        with torch.no_grad():
            teacher.frames = model.eval().decode_logits(torch.zeros(1, 3, *model.img_size)).shape[1]
        model.train()
        model.freeze_bn_stats = o.freeze_bn
    except (ValueError, RuntimeError, KeyError) as e:
        what = "onnx_teacher.student_graph" if o.student_graph else "train.teacher_ckpt"
        raise ConfigError(f"{what} {graph}: cannot make a 16x64 student of it ({e}); set "
                          "onnx_teacher.student_overrides (node name -> attributes, e.g. strides) so the graph "
                          "accepts 16x64 input") from None
    if teacher.feature:  # the student's own tensor of that name learns the teacher's
        try:
            model.set_feature_tap(teacher.feature)
            check_feature_grid(teacher, model)
        except ValueError as e:
            raise ConfigError(f"onnx_teacher.feature {o.feature!r}: {e}") from None
    if master:
        sh, sw = model.input_scale
        up = f" (upsampled x{sh:g} in height, x{sw:g} in width inside)" if (sh, sw) != (1, 1) else ""
        pruned = f", feed-forward hidden channels kept {keep} (refitted on {len(calib)} crops of {src})" \
            if calib is not None else ""
        print(f"train: onnx-ctc student from {graph}: 16x64 input{up}, {teacher.frames} frames{pruned}, "
              f"overrides {overrides or 'none'}{', feature ' + teacher.feature if teacher.feature else ''}"
              + (f", kernels composed with x2 upsampling: {', '.join(composed)}" if composed else ""))
    return spec, model, teacher


def check_feature_grid(teacher: OnnxTeacher, model: torch.nn.Module) -> None:
    """The teacher's feature on a crop that fills its input against the student's tensor of that name, both as
    (positions, channels): a student that cannot match it cell for cell fails here, not at its first step."""
    from .losses import _tokens

    pre = teacher.pre
    crop = np.full((pre.height, pre.max_width, 3), 128, np.uint8)
    want = teacher.targets([crop])[0].feats
    want = tuple(want.reshape(want.shape[0], -1).T.shape) if want.ndim == 3 else tuple(want.shape)
    with torch.no_grad():
        got = tuple(_tokens(model.eval().run(torch.zeros(1, 3, *model.img_size), (model.tap_name,))[model.tap_name])
                    .shape[1:])
    model.train()
    if got != want:
        raise ValueError(f"the teacher's is {want[0]} positions x {want[1]} channels, the student's {got[0]} x "
                         f"{got[1]}: the student must compute it on the teacher's grid (onnx_teacher.student_input_scale"
                         ", student_overrides)")


def open_lr_teacher(cfg: Config, spec: dict, model: torch.nn.Module, frames: int, master: bool) -> "Recognizer":
    """The exported LR recognizer of ``train.lr_teacher`` (ONNX Runtime), checked to read the student's input
    tensor and to give the student's ``frames`` over the student's classes."""
    from runtime.backends import open_recognizer
    from runtime.preprocess import MEAN, STD

    path = cfg.train.lr_teacher
    try:
        rec = open_recognizer(path, threads=cfg.onnx_teacher.threads)
    except (InputError, OSError, ValueError) as e:
        raise ConfigError(f"train.lr_teacher {path}: {str(e).removeprefix(str(path) + ': ')}") from None
    info, want = rec.info, {"decoder": "ctc", "charset": spec["charset"], "size": tuple(model.img_size),
                            "normalisation": (MEAN, STD)}
    got = {"decoder": info.decoder, "charset": info.charset, "size": (info.height, info.width),
           "normalisation": (info.mean, info.std)}
    for key in want:
        if got[key] != want[key]:
            raise ConfigError(f"train.lr_teacher {path}: its {key} is {got[key]!r}, the student's {want[key]!r}; "
                              "the teacher must read the student's own input tensor and classes")
    t_frames = rec.run(np.zeros((1, 3, *model.img_size), np.float32)).shape[1]
    if t_frames != frames:
        raise ConfigError(f"train.lr_teacher {path}: gives {t_frames} frames, the student {frames}")
    if master:
        print(f"train: LR teacher {path} ({info.precision}, {info.height}x{info.width}, {frames} frames) reads each "
              f"LR batch; the HR teacher's cached targets are not used")
    return rec


def init_weights(model: torch.nn.Module, spec: dict, path: str, master: bool) -> None:
    """Fine-tuning: the student's weights from checkpoint ``path``, whose model spec must be the one this config
    builds (same model, charset and, for ONNX students, the same graph and overrides)."""
    ck = load_checkpoint(path)
    theirs = ck["model_spec"]
    diff = sorted(k for k in set(spec) | set(theirs) if k != "kwargs" and spec.get(k) != theirs.get(k))
    kw, tkw = spec.get("kwargs", {}), theirs.get("kwargs", {})
    if theirs.get("name") == spec["name"]:
        try:  # older checkpoints stored only the arguments given, not the defaults
            tkw = resolved_kwargs(spec["name"], tkw)
        except ValueError:
            pass  # arguments this version lacks: reported as a difference below
    diff += sorted(f"kwargs.{k}" for k in set(kw) | set(tkw) if kw.get(k) != tkw.get(k))
    if diff:
        raise ConfigError(f"train.init_ckpt {path}: its model differs from the one this config builds in {diff}")
    model.load_state_dict(ck["model"])
    if master:
        print(f"train: weights from {path} (step {ck.get('step')}, val accuracy {ck.get('val_acc')})")


def load_clip(path: str):
    """(CLIP, input normalisation): a --stage clip checkpoint of ours, or an OpenAI-layout ViT CLIP file."""
    from .models.clip import load_openai_clip

    try:
        ck = load_checkpoint(path)
    except CheckpointError:
        try:
            return load_openai_clip(path), "openai"
        except (ValueError, RuntimeError, OSError) as e:
            raise ConfigError(f"train.clip_ckpt {path}: neither a distill CLIP checkpoint nor an OpenAI CLIP ({e})")
    if ck["model_spec"]["name"] != "clip":
        raise ConfigError(f"train.clip_ckpt {path}: a {ck['model_spec']['name']} checkpoint, not a CLIP")
    m = build_model(ck["model_spec"])
    m.load_state_dict(ck["model"])
    return m, "ours"


@torch.no_grad()
def validate_clip(clip, reader, device, batch: int, max_samples: int) -> float:
    """Image -> label retrieval accuracy (%) within chunks of ``batch`` val samples."""
    from .clipocr import clip_input
    from .datasets import image_to_tensor
    from .models.clip import char_tokens

    clip.eval()
    hits = n = 0
    samples = [s for _, s in zip(range(max_samples or len(reader)), reader.iter_valid())]
    for k in range(0, len(samples), batch):
        chunk = samples[k : k + batch]
        x = torch.stack([image_to_tensor(s.image, (32, 128)) for s in chunk]).to(device)
        lab = [s.label for s in chunk]
        i, t = clip(clip_input(x, "ours"), char_tokens(lab, clip.context_length).to(device))
        pred = (i @ t.t()).argmax(1).tolist()
        hits += sum(lab[p].lower() == lab[j].lower() for j, p in enumerate(pred))
        n += len(chunk)
    clip.train()
    return 100.0 * hits / max(n, 1)


@torch.no_grad()
def validate(model, tok, reader, stage: str, device, batch: int, max_samples: int) -> float:
    """Word accuracy (%) on the val split: HR input for teachers, LR for students (stored or lr16blur-made)."""
    from runtime.conditions import apply_condition

    n = len(reader) if not max_samples else min(len(reader), max_samples)
    val = InputSet("val", "val", [], [])
    for _, s in zip(range(n), reader.iter_valid()):
        val.images.append(s.image if stage == "teacher" else s.lr if s.lr is not None
                          else apply_condition("lr16blur", s.image))
        val.labels.append(s.label)
    model.eval()
    acc = evaluate(lambda imgs: predict_arrays(model, tok, imgs, batch), val, batch).accuracy
    model.train()
    return acc


def _rng_state() -> dict:
    """Every generator's state as tensors and plain types (checkpoints load with weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    st = {"torch": torch.get_rng_state(),
          "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
          "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    name, keys, *rest = st["numpy"]  # a tensor, or an array in checkpoints saved before
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), *rest))
    version, internal, gauss = st["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# -- setup, in the order train() calls it (the order matters: model initialisation draws from the seeded RNG) ----

@dataclass
class Devices:
    """Where this process runs: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain run is rank 0 of 1."""

    world: int
    rank: int
    local_rank: int
    use_cuda: bool
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0


def use_cuda(cfg: Config) -> bool:
    """Whether this run trains on CUDA (``train.device``: auto takes a GPU when there is one)."""
    return torch.cuda.is_available() if cfg.train.device == "auto" else cfg.train.device == "cuda"


def setup_devices(cfg: Config) -> Devices:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = use_cuda(cfg)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # Ampere+: TF32 matmuls where bf16 autocast does not reach
        torch.backends.cudnn.allow_tf32 = True
    return Devices(world, rank, local_rank, cuda, device)


def seed_everything(seed: int) -> None:
    """Every rank starts from the same weights; data shards differ by rank (ResumableSampler)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@dataclass
class Models:
    """The trained model and what guides it: a frozen teacher (KD-LTR), a CLIP (CLIP-OCR), or an ONNX teacher whose
    targets come with the data."""

    spec: dict
    model: torch.nn.Module
    teacher: torch.nn.Module | None = None
    clip: torch.nn.Module | None = None
    clip_norm: str = "ours"
    onnx_teacher: object | None = None
    lr_teacher: object | None = None  # a runtime recognizer reading the student's own LR batch (train.lr_teacher)


def build_models(cfg: Config, master: bool) -> Models:
    stage = cfg.train.stage
    if stage == "clip":
        spec = model_spec("clip", cfg.model.charset, cfg.model.max_len, lr=False, **asdict(cfg.clip))
        return Models(spec, build_model(spec))
    if stage == "teacher":
        spec = model_spec(cfg.model.name, cfg.model.charset, cfg.model.max_len, lr=False, **cfg.model.kwargs)
        return Models(spec, build_model(spec))
    if is_onnx_teacher(cfg.train.teacher_ckpt):
        spec, model, onnx_teacher = build_onnx_student(cfg, master)
        if cfg.train.lr_teacher:  # it replaces the HR teacher's targets; the HR file still shaped the student
            return Models(spec, model, lr_teacher=open_lr_teacher(cfg, spec, model, onnx_teacher.frames, master))
        return Models(spec, model, onnx_teacher=onnx_teacher)
    tck = load_checkpoint(cfg.train.teacher_ckpt)
    tspec = tck["model_spec"]
    if tspec["lr"]:
        raise ConfigError(f"train.teacher_ckpt {cfg.train.teacher_ckpt}: is an LR model; the teacher must be HR")
    mine = {"model.name": cfg.model.name, "model.charset": resolve_charset(cfg.model.charset),
            "model.max_len": cfg.model.max_len}
    theirs = {"model.name": tspec["name"], "model.charset": tspec["charset"], "model.max_len": tspec["max_len"]}
    for key in mine:  # the student is the teacher's twin: a config that says otherwise is a mistake
        if mine[key] != theirs[key]:
            raise ConfigError(f"{key}: the config says {mine[key]!r} but train.teacher_ckpt "
                              f"{cfg.train.teacher_ckpt} is {theirs[key]!r}; set {key} to the teacher's")
    # The student is the teacher's LR twin and starts from its weights (both stages: equal initialisation).
    spec, model, not_copied = make_student(tspec, tck["model"])
    if master:
        print(f"train: student initialised from {cfg.train.teacher_ckpt} except {not_copied or 'nothing'}")
    m = Models(spec, model)
    if stage == "student" and "kdltr" in cfg.distill.method:
        m.teacher = build_model(tspec)
        m.teacher.load_state_dict(tck["model"])
    if stage == "student" and "clipocr" in cfg.distill.method:
        m.clip, m.clip_norm = load_clip(cfg.train.clip_ckpt)
    return m


def prepare_weights(cfg: Config, m: Models, resume: str | None, master: bool) -> dict | None:
    """``init_ckpt`` weights, then quantization-aware hooks; returns the starting weights when wise.pt needs them."""
    # A resumed run loads its own weights later; it reads init_ckpt again only when wise.pt needs the start.
    if cfg.train.init_ckpt and (not resume or cfg.train.wise_alpha):
        init_weights(m.model, m.spec, cfg.train.init_ckpt, master and not resume)
    start = {k: v.detach().clone() for k, v in m.model.state_dict().items()} if cfg.train.wise_alpha else None
    if cfg.train.qat:
        n = m.model.enable_fake_quant()
        if master:
            print(f"train: quantization-aware: int8 weights per channel, uint8 activations at {n} points")
    return start


def build_system(cfg: Config, m: Models, dev: Devices) -> tuple[TrainingSystem, object]:
    """The student with its losses (``distill.system``), on the device; and the tokenizer."""
    spec = m.spec
    tok = make_tokenizer(spec["tokenizer"], spec["charset"]) if spec["tokenizer"] in ("attn", "ctc") else None
    try:
        system = TrainingSystem(m.model, tok, cfg.train.stage, cfg.distill, m.teacher, cfg.train.seed, m.clip,
                                m.clip_norm, cfg.optim.steps, onnx_targets=m.onnx_teacher is not None,
                                lr_teacher=m.lr_teacher)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    system.to(dev.device)
    if dev.use_cuda and cfg.train.channels_last and spec["name"].startswith("cnn"):
        system.student.to(memory_format=torch.channels_last)  # cuDNN convs prefer NHWC under bf16
    return system, tok


@dataclass
class Data:
    train: torch.utils.data.Dataset
    val: object | None  # a runtime.datasets reader, or None without a val split
    sampler: ResumableSampler
    batch: int

    def loader(self, cfg: Config, epoch: int, start_batch: int, pin: bool) -> DataLoader:
        """The epoch's batches from ``start_batch`` on (exact resume)."""
        self.train.set_epoch(epoch)
        self.sampler.set_epoch(epoch, start_batch * self.batch)
        # A dedicated generator: worker seeding must not consume the global RNG, or resumed runs would diverge.
        return DataLoader(self.train, batch_size=self.batch, sampler=self.sampler, num_workers=cfg.data.workers,
                          collate_fn=collate, pin_memory=pin, drop_last=True, persistent_workers=False,
                          generator=torch.Generator().manual_seed(cfg.train.seed + epoch))


def build_data(cfg: Config, m: Models, dev: Devices) -> Data:
    synth_dir = prepare_synth(cfg, dev.rank)
    norm = "textzoom" if m.spec["charset"] == "0123456789abcdefghijklmnopqrstuvwxyz" else "none"
    policy = LabelPolicy(normalize=norm, max_len=m.spec["max_len"])
    train_ds, val_reader = build_datasets(cfg, synth_dir, policy,
                                          m.onnx_teacher if cfg.train.stage == "student" else None, dev.rank)
    sampler = ResumableSampler(len(train_ds), cfg.train.seed, dev.rank, dev.world)
    if len(sampler) // cfg.data.batch_size == 0:
        raise ConfigError(f"data: {len(sampler)} samples per rank is less than one batch of {cfg.data.batch_size}")
    return Data(train_ds, val_reader, sampler, cfg.data.batch_size)


def build_optimizer(cfg: Config, system: TrainingSystem):
    """AdamW + one-cycle, as PARSeq trains. Returns (trainable parameters, optimizer, scheduler)."""
    params = [p for p in system.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    # OneCycleLR divides by (warm-up steps - 1): a warm-up of exactly one step (5 % of 20) would divide by zero
    n, pct = cfg.optim.steps, cfg.optim.warmup_pct
    if abs(pct * n - 1) < 1e-9:
        pct = 2.0 / n if n > 2 else 0.0
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.optim.lr, total_steps=cfg.optim.steps,
                                                pct_start=pct, cycle_momentum=False)
    return params, opt, sched


@dataclass
class Progress:
    """Where the run is: what a checkpoint must hold to continue exactly."""

    step: int = 0
    best: float = -1.0
    epoch: int = 0
    batch_in_epoch: int = 0


def check_resume(cfg: Config, resume: str | None) -> None:
    """Before anything is built or written: a resume past the configured end would only rewrite best.pt."""
    if resume:
        done = load_checkpoint(resume).get("step", 0)
        if done > cfg.optim.steps:
            raise ConfigError(f"optim.steps {cfg.optim.steps}: below step {done} of --resume {resume}; give at least "
                              f"{done}, or start a new run in another train.out_dir")


def restore(resume: str, cfg: Config, system: TrainingSystem, opt, sched, master: bool) -> Progress:
    ck = load_checkpoint(resume)
    try:
        system.student.load_state_dict(ck["model"])
    except RuntimeError as e:  # another architecture, or the same one at another size
        theirs = (ck.get("model_spec") or {}).get("name", "?")
        raise ConfigError(f"--resume {resume}: its weights ({theirs}) do not fit this config's model "
                          f"{cfg.model.name!r}: {str(e).splitlines()[0]}") from None
    if system.projector is not None and ck.get("projector"):
        system.projector.load_state_dict(ck["projector"])
    if system.clip_heads is not None and ck.get("clip_heads"):
        system.clip_heads.load_state_dict(ck["clip_heads"])
    if cfg.train.qat and ck.get("fake_quant"):
        system.student.fake_quant.load_state_dict(ck["fake_quant"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    _set_rng_state(ck["rng"])
    p = Progress(ck["step"], ck.get("best_acc", -1.0), ck["epoch"], ck["batch_in_epoch"])
    if master:
        print(f"train: resumed from {resume} at step {p.step} (epoch {p.epoch}, batch {p.batch_in_epoch})")
    return p


def save(path: Path, cfg: Config, spec: dict, system: TrainingSystem, opt, sched, p: Progress,
         val_acc: float | None) -> None:
    """A checkpoint that continues exactly (``--resume``) and carries the model's spec and the config."""
    save_checkpoint(path, {
        "model_spec": spec, "model": system.student.state_dict(), "charset": spec["charset"],
        "tokenizer": spec["tokenizer"], "config": cfg.to_dict(), "stage": cfg.train.stage,
        "projector": system.projector.state_dict() if system.projector is not None else None,
        "clip_heads": system.clip_heads.state_dict() if system.clip_heads is not None else None,
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": p.step, "epoch": p.epoch,
        "batch_in_epoch": p.batch_in_epoch, "rng": _rng_state(), "best_acc": p.best, "val_acc": val_acc,
        "teacher_ckpt": cfg.train.teacher_ckpt,
        "fake_quant": system.student.fake_quant.state_dict() if cfg.train.qat else None,
    })


class TrainLog:
    """``log.csv`` (appended to on resume) and TensorBoard when installed; only the master process writes."""

    def __init__(self, out: Path, resume: str | None, master: bool) -> None:
        self.master, self.writer, self.file = master, None, None
        if not master:
            return
        path = out / "log.csv"
        new = not path.exists() or not resume
        self.file = open(path, "w" if new else "a", newline="")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(["step", "epoch", "loss", "lr", "images_per_s", "val_acc", "parts"])
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: needs the tensorboard package

            self.writer = SummaryWriter(str(out / "tb"))
        except Exception:
            self.writer = None

    def train(self, step: int, epoch: int, loss: float, lr: float, ips: float, parts: dict) -> None:
        if not self.master:
            return
        self.csv.writerow([step, epoch, f"{loss:.5f}", f"{lr:.3e}", f"{ips:.1f}", "",
                           " ".join(f"{k}={v:.4f}" for k, v in parts.items())])
        self.file.flush()
        if self.writer:
            self.writer.add_scalar("loss/total", loss, step)
            for k, v in parts.items():
                self.writer.add_scalar(f"loss/{k}", v, step)
            self.writer.add_scalar("images_per_s", ips, step)

    def val(self, step: int, epoch: int, acc: float) -> None:
        if not self.master:
            return
        self.csv.writerow([step, epoch, "", "", "", f"{acc:.2f}", ""])
        self.file.flush()
        if self.writer:
            self.writer.add_scalar("val/accuracy", acc, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.writer:
            self.writer.close()


def describe(cfg: Config, m: Models, system: TrainingSystem, dev: Devices, n_train: int) -> str:
    method = ("lr teacher" if m.lr_teacher is not None else "onnx teacher" if m.onnx_teacher is not None
              else cfg.distill.method) if cfg.train.stage == "student" else "-"
    return (f"train: stage={cfg.train.stage} method={method} model={m.spec['name']}{' (LR)' if m.spec['lr'] else ''} "
            f"params={sum(p.numel() for p in system.student.parameters()) / 1e6:.2f}M device={dev.device} "
            f"world={dev.world} steps={cfg.optim.steps} batch={cfg.data.batch_size}x{dev.world} "
            f"train_samples={n_train}")


def evaluate_val(cfg: Config, system: TrainingSystem, tok, val_reader, dev: Devices) -> float:
    if not dev.master:
        return 0.0
    if cfg.train.stage == "clip":
        return validate_clip(system.student, val_reader, dev.device, 64, cfg.data.max_val_samples)
    return validate(system.student, tok, val_reader, cfg.train.stage, dev.device, 128, cfg.data.max_val_samples)


class StepClock:
    """Milliseconds between laps, summed per name until ``means`` reads them (the device synchronised at each lap,
    so a GPU's queued work counts where it was queued)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.t, self.sums, self.counts = cuda, time.perf_counter(), {}, {}

    def lap(self, name: str | None) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        if name is not None:
            self.sums[name] = self.sums.get(name, 0.0) + (t - self.t) * 1000
            self.counts[name] = self.counts.get(name, 0) + 1
        self.t = t

    def means(self) -> dict[str, float]:
        out = {k: v / self.counts[k] for k, v in self.sums.items()}
        self.sums, self.counts = {}, {}
        return out


# -- the training loop -----------------------------------------------------------------------------------------------

def train(cfg: Config, resume: str | None = None) -> dict:
    # The whole loop on one screen (about 90 lines, nanoGPT's shape): setup calls, then the steps; each concern it touches
    # is a named function above.
    check_resume(cfg, resume)
    dev = setup_devices(cfg)
    out = Path(cfg.train.out_dir)
    if dev.master:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.train.seed)
    m = build_models(cfg, dev.master)
    start = prepare_weights(cfg, m, resume, dev.master)  # the weights wise.pt averages with best.pt
    system, tok = build_system(cfg, m, dev)
    data = build_data(cfg, m, dev)
    params, opt, sched = build_optimizer(cfg, system)
    p = restore(resume, cfg, system, opt, sched, dev.master) if resume else Progress()
    if dev.world > 1 and dev.use_cuda:
        system = torch.nn.SyncBatchNorm.convert_sync_batchnorm(system)  # BN statistics over the global batch
    net = DDP(system, device_ids=[dev.local_rank] if dev.use_cuda else None) if dev.world > 1 else system
    fwd = torch.compile(net) if cfg.train.compile else net
    amp = dev.use_cuda and cfg.train.amp in ("auto", "bf16")
    log = TrainLog(out, resume, dev.master)
    if dev.master:
        print(describe(cfg, m, system, dev, len(data.train)))

    system.train()
    bar = tqdm(total=cfg.optim.steps, initial=p.step, disable=not (dev.master and cfg.train.progress),
               desc=cfg.train.stage, dynamic_ncols=True)
    t0, seen, val_acc = time.perf_counter(), 0, None
    clock = StepClock(dev.use_cuda) if cfg.train.time_parts else None
    while p.step < cfg.optim.steps:
        for batch in data.loader(cfg, p.epoch, p.batch_in_epoch, dev.use_cuda):
            clock and clock.lap("data_ms")
            for k, v in batch.items():  # images and whatever targets the dataset adds
                if torch.is_tensor(v):
                    batch[k] = v.to(dev.device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss, parts = fwd(batch, p.step)
            clock and clock.lap("forward_ms")
            if not torch.isfinite(loss):
                bar.close()
                raise FloatingPointError(
                    f"train: loss is {loss.item()} at step {p.step} (parts {parts}); stopping. The last good "
                    f"checkpoint is {out / 'last.pt'}; lower optim.lr or check the data.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad)
            opt.step()
            sched.step()
            clock and clock.lap("backward_ms")
            p.step += 1
            p.batch_in_epoch += 1
            seen += len(batch["label"]) * dev.world
            bar.update(1)
            last = p.step == cfg.optim.steps
            if p.step % cfg.train.log_every == 0 or last:
                ips = seen / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{ips:.0f}")
                log.train(p.step, p.epoch, loss.item(), sched.get_last_lr()[0], ips, {**parts, **(clock.means()
                                                                                                  if clock else {})})
                t0, seen = time.perf_counter(), 0
            if data.val is not None and (p.step % cfg.train.val_every == 0 or last):
                val_acc = evaluate_val(cfg, system, tok, data.val, dev)
                if dev.master:
                    log.val(p.step, p.epoch, val_acc)
                    bar.write(f"step {p.step}: val accuracy {val_acc:.2f}% (best {max(p.best, val_acc):.2f}%)")
                    if val_acc > p.best:
                        p.best = val_acc
                        save(out / "best.pt", cfg, m.spec, system, opt, sched, p, val_acc)
            if dev.world > 1 and last:
                # DDP syncs BN running statistics at the start of each forward; after the last step, do it once
                # more so every rank (and the checkpoint) ends with the same buffers.
                for buf in system.student.buffers():
                    dist.broadcast(buf, 0)
            if dev.master and (p.step % cfg.train.ckpt_every == 0 or last):
                save(out / "last.pt", cfg, m.spec, system, opt, sched, p, val_acc)
            clock and clock.lap(None)  # validation and checkpoints are not the step's
            if p.step >= cfg.optim.steps:
                break
        else:
            p.epoch += 1
            p.batch_in_epoch = 0
    bar.close()
    log.close()
    if dev.master:
        if not (out / "best.pt").exists():
            save(out / "best.pt", cfg, m.spec, system, opt, sched, p, val_acc)
        print(f"train: done at step {p.step}; best val accuracy {p.best:.2f}%; checkpoints in {out}")
        if start is not None:
            write_wise(out, start, cfg.train.wise_alpha, system.student, tok, data.val, cfg, dev.device)
    if dist.is_initialized():
        dist.barrier()
    return {"step": p.step, "best_acc": p.best, "out_dir": str(out), "model": system.student}


def wise_weights(start: dict, trained: dict, alpha: float) -> dict:
    """alpha * start + (1 - alpha) * trained for floating tensors; counters, integers and tensors the start lacks
    (quantization-aware ranges) stay trained."""
    return {k: torch.lerp(v.float(), start[k].float().to(v.device), alpha).to(v.dtype)
            if v.is_floating_point() and k in start and start[k].shape == v.shape else v for k, v in trained.items()}


def write_wise(out: Path, start: dict, alpha: float, student: torch.nn.Module, tok, val_reader, cfg: Config,
               device) -> None:
    """wise.pt: best.pt with its weights averaged with the starting ones, validated like best.pt."""
    ck = load_checkpoint(out / "best.pt")
    ck["model"] = wise_weights(start, ck["model"], alpha)
    ck["wise_alpha"] = alpha
    if val_reader is not None:
        keep = {k: v.detach().clone() for k, v in student.state_dict().items()}
        student.load_state_dict(ck["model"])
        ck["val_acc"] = validate(student, tok, val_reader, cfg.train.stage, device, 128, cfg.data.max_val_samples)
        student.load_state_dict(keep)
    save_checkpoint(out / "wise.pt", ck)
    acc = f"val accuracy {ck['val_acc']:.2f}%" if ck.get("val_acc") is not None else "no val split"
    print(f"train: wise.pt = {alpha:g} x start + {1 - alpha:g} x best.pt ({acc})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distill.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (dataclass defaults when omitted)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint; without a value: <out_dir>/last.pt")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        resume = args.resume
        if resume == "auto":
            resume = str(Path(cfg.train.out_dir) / "last.pt")
        train(cfg, resume)
    except FloatingPointError as e:
        print(str(e), file=sys.stderr)
        return 3
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from runtime.cli import run

    sys.exit(run(main))
