"""Training configuration: YAML files validated into dataclasses, with ``--set key=value`` overrides.

Unknown keys and wrongly typed values are errors that name the key, so a typo never silently trains the wrong
thing."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from runtime.cli import InputError

__all__ = ["Config", "load_config", "apply_overrides", "ConfigError", "is_onnx_teacher"]


class ConfigError(InputError, ValueError):
    pass


@dataclass
class ModelCfg:
    name: str = "parseq-tiny"  # registry name: parseq-tiny, parseq-small, cnn-attn, cnn-ctc, onnx-ctc
    charset: str = "36"  # 36, 62, 94 or a literal string
    max_len: int = 25
    kwargs: dict = field(default_factory=dict)  # architecture overrides, e.g. {depth: 2}


@dataclass
class SourceCfg:
    path: str = ""
    weight: float = 1.0
    lr_mode: str = "auto"  # auto | stored | degrade (STR lmdbs and folders degrade on the fly)
    level: str = "mixed"  # degradation strength range when lr_mode is degrade
    # share of samples whose LR is the HR crop only area-resized to the student's input (no blur, noise or codec)
    # when lr_mode is degrade: the sharp small crop, which a student fine-tuned on the camera chain alone trades
    # away for robustness (PP-OCRv4 student: svt_test lr16 80.1 -> 77.7 while lr16blur rose 55.0 -> 59.4)
    clean: float = 0.0
    # share of the camera chain's draws that land the word at the student's input height (x0.8-1.25) before blur,
    # noise and JPEG act, as on a word that small in a camera's frame, instead of 2-4x below the crop's own size
    # (a 100-px crop then meets the codec at 25-50 px, and its 8x8 blocks shrink to 3-5 px at the input's 16)
    at_lr_height: float = 0.0
    unlabeled: bool = False  # images only (folder, or an lmdb whose labels are ignored): needs an ONNX teacher
    limit: int = 0  # use the first N samples of this source only (0: all)


@dataclass
class SynthCfg:
    """The embedded default: synthesize TextZoom-style data into ``dir`` if it does not exist yet."""

    n: int = 0  # 0: no synthetic data
    dir: str = ""  # default: <out_dir>/../synth-<n>-<seed>
    seed: int = 0
    weight: float = 1.0
    split_sizes: str = "train=0.85,val=0.05,test=0.1"


@dataclass
class DataCfg:
    train: list = field(default_factory=list)  # of SourceCfg
    val: str = ""  # a TextZoom-layout or STR lmdb; default: the synthetic val split
    synth: SynthCfg = field(default_factory=SynthCfg)
    batch_size: int = 64
    workers: int = 2
    epoch_size: int = 0  # samples per epoch of the weighted mix; 0: sum of the sources
    augment: bool = True
    max_val_samples: int = 2000


@dataclass
class OptimCfg:
    lr: float = 7e-4
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    steps: int = 10000
    warmup_pct: float = 0.075
    clip_grad: float = 20.0


@dataclass
class TermCfg:
    enabled: bool = True
    weight: float = 1.0


@dataclass
class ClipOcrCfg:
    """CLIP-OCR defaults from the method's public code: (student block, CLIP block) pairs."""

    enc_pairs: list = field(default_factory=lambda: [[3, 3], [6, 6], [9, 9]])
    dec_pairs: list = field(default_factory=lambda: [[1, 9], [2, 6], [3, 3]])  # the text encoder reversed
    tau: float = 0.03
    w_ce: float = 0.1
    w_gram: float = 5.0
    weight: float = 1.0  # on each SDS pair's LCL
    word_weight: float = 1.0


@dataclass
class ClipCfg:
    """Architecture of the CLIP trained from scratch by ``--stage clip`` (OpenAI key layout, smaller widths)."""

    embed_dim: int = 256
    image_resolution: int = 128
    vision_layers: int = 9
    vision_width: int = 256
    vision_patch: int = 16
    context_length: int = 32
    vocab_size: int = 49408
    text_width: int = 256
    text_heads: int = 4
    text_layers: int = 9


@dataclass
class OnnxTeacherCfg:
    """An ONNX recognizer as the HR teacher (``train.teacher_ckpt: X.onnx`` or a zoo name: ``ppocrv6``,
    ``ppocrv6-tiny``, ``ppocrv4`` / ``ppocr``). Defaults: PP-OCR's recognizers."""

    height: int = 48  # input height; width from the aspect ratio
    min_width: int = 320  # the batch is padded to at least this width (pad value 0 after normalisation)
    max_width: int = 1600
    channel_order: str = "bgr"  # bgr | rgb
    mean: float = 0.5  # (x/255 - mean) / std
    std: float = 0.5
    interp: str = "bilinear"  # bilinear | area | bicubic
    # metadata:KEY or a file with one character a line (CTC blank 0); "": the named model's own (runtime.zoo), else
    # metadata:character (PP-OCR's)
    dictionary: str = ""
    space_char: bool = True  # a space class follows the dictionary (PP-OCR)
    unmapped: str = "renorm"  # teacher classes the student lacks: renorm (drop, renormalise) | blank
    resample: str = "area"  # teacher frames -> student frames: area (averaged) | peaks (each character a frame)
    # "head": the teacher's frames before its classifier (or a tensor name: frames, or a (C, H, W) map, its
    # columns over the crop) are cached too and the student's own matching tensor learns them under
    # distill.visual (z-scored cosine); "": no feature-level loss
    feature: str = ""
    conf_threshold: float = 0.7  # unlabeled crops: the teacher's string is a CTC target from this confidence
    # The student's graph: "" (the teacher's own, KD-LTR's "same network") or another recognizer ONNX file or zoo
    # name (ppocrv6-tiny: a smaller network learning from the larger teacher); its own dictionary cuts its classifier
    student_graph: str = ""
    student_overrides: dict = field(default_factory=dict)  # node attribute overrides; ppocr: a built-in preset
    # Kernels of convolutions whose stride the overrides take from 2 to 1: "upsample" composes them with 2x
    # bilinear upsampling (the student reads 16x64 as the teacher reads it upsampled x2); "copy" keeps them as they are
    stride_init: str = "upsample"
    # The student keeps the graph's BatchNorm statistics while it trains (its weights still learn); false:
    # re-estimated from the training batches, which on small LR data undid the teacher's zero-shot accuracy
    freeze_bn: bool = True
    # The student upsamples its 16x64 input by this factor before the graph (bilinear), so its first layers see the
    # text at the scale of the teacher's weights; a number or [height, width] factors (height alone changes the
    # text's scale, width the frame count)
    student_input_scale: Any = 1.0
    # A narrower student: the fraction of hidden channels each feed-forward pair (1x1 widen -> activation -> 1x1
    # narrow) keeps, one number or {widening conv name: fraction, "*": the rest}; the projections are refitted on
    # prune_calib LR crops of the first training source (distill.models.pruning). 1: the full graph
    student_ffn_keep: Any = 1.0
    prune_calib: int = 256
    batch: int = 16  # teacher batch when building the target cache
    workers: int = 2  # teacher batches run in parallel
    threads: int = 0  # ONNX Runtime intra-op threads per session (0: its default)
    # what runs the teacher over the training crops: onnxruntime (CPU) | torch (its graph as an OnnxNet on the
    # training device; probabilities only, no feature tensors)
    runner: str = "onnxruntime"
    cache_dir: str = ""  # where target caches go; default beside each source, <out_dir>/../teacher-cache if read-only


KD_SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class DistillCfg:
    """KD-LTR defaults from the paper's code."""

    method: str = "kdltr"  # kdltr | clipocr | kdltr+clipocr
    visual: TermCfg = field(default_factory=lambda: TermCfg(True, 4.0))
    semantic: TermCfg = field(default_factory=lambda: TermCfg(True, 2.0))
    logits: TermCfg = field(default_factory=lambda: TermCfg(True, 20.0))
    ce: TermCfg = field(default_factory=lambda: TermCfg(True, 0.025))
    tau: float = 0.1
    temperature: float = 4.0
    beam: int = 3
    alpha: float = 0.2
    min_p: float = 0.1
    # CTC students: the visual focus loss is weighted by the teacher's character frames (1 - p(blank), see
    # losses.ctc_focus_mask), the CTC stand-in for the attention mask; false: every position counts the same
    ctc_focus_mask: bool = True
    # How the weights of the KD terms (visual, semantic, logits; never CE) move over optim.steps: constant (the
    # paper), or cosine / linear decay to 0 by the last step, so the student ends on its labels alone. A teacher
    # that sees HR sets targets an LR student cannot fully reach; early on they speed it up, late they hold it
    # below what its labels would teach it (annealed KD, Jafari et al. 2021).
    kd_schedule: str = "constant"
    clipocr: ClipOcrCfg = field(default_factory=ClipOcrCfg)


@dataclass
class TrainCfg:
    stage: str = "teacher"  # teacher | student | baseline | clip
    out_dir: str = "runs/default"
    teacher_ckpt: str = ""  # student/baseline: the frozen HR teacher (and the student's initialisation)
    # fine-tuning: the model starts from this checkpoint's weights (same model spec) instead of the teacher's (a
    # student) or random ones (a teacher trained further on a new schedule)
    init_ckpt: str = ""
    qat: bool = False  # simulate the INT8 export while training (onnx-ctc students): quantization-aware fine-tuning
    # An exported LR recognizer (e.g. weights/ppocrv6-student-lr.onnx) that reads the student's own LR batch: its
    # frames on each augmented view, computed online, are the soft targets (distill.logits) instead of an HR
    # teacher's cached ones. A teacher that sees what the student sees can be asked about any view, so geometric
    # augmentation stays on ("consistent teaching", Beyer et al. 2022). "": off.
    lr_teacher: str = ""
    # Weight-space ensemble with the starting weights (WiSE-FT, Wortsman et al. 2022): at the end, wise.pt holds
    # alpha * start + (1 - alpha) * best.pt. A fine-tune that learns degraded text forgets some of what its start
    # read; the average keeps both (PP-OCRv4 student, svt_test lr16 / lr16blur: start 83.5 / 56.9, best.pt
    # 81.9 / 62.0, alpha 0.5 83.6 / 64.5). 0: off.
    wise_alpha: float = 0.0
    clip_ckpt: str = ""  # CLIP-OCR: a --stage clip checkpoint or an OpenAI-layout ViT CLIP state dict
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | off
    compile: bool = False
    # where a step's time goes: the loader's wait, forward (with the losses), backward and the optimizer step, in ms,
    # logged among the parts (data_ms, forward_ms, backward_ms); synchronises the GPU twice a step, so a little slower
    time_parts: bool = False
    channels_last: bool = True  # CNNs on GPU
    val_every: int = 500
    log_every: int = 20
    ckpt_every: int = 500
    progress: bool = True


@dataclass
class Config:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    distill: DistillCfg = field(default_factory=DistillCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    clip: ClipCfg = field(default_factory=ClipCfg)
    onnx_teacher: OnnxTeacherCfg = field(default_factory=OnnxTeacherCfg)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> "Config":
        t = self.train
        from runtime.charset import resolve_charset

        from .models import MODELS  # here: importing the config alone stays free of torch

        if self.model.name not in MODELS:
            raise ConfigError(f"model.name: unknown {self.model.name!r}; known: {', '.join(sorted(MODELS))}")
        try:
            resolve_charset(self.model.charset)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"model.charset: {e}") from None
        if self.model.max_len < 1:
            raise ConfigError(f"model.max_len: must be >= 1, got {self.model.max_len}")
        if self.optim.steps < 1 or not self.optim.lr > 0:
            raise ConfigError(f"optim.steps and optim.lr: must be > 0, got {self.optim.steps} and {self.optim.lr}")
        if t.stage not in ("teacher", "student", "baseline", "clip"):
            raise ConfigError(f"train.stage: expected teacher, student, baseline or clip, got {t.stage!r}")
        if t.stage == "student" and "clipocr" in self.distill.method and not t.clip_ckpt:
            raise ConfigError(f"train.clip_ckpt: distill.method {self.distill.method!r} needs a CLIP checkpoint "
                              "(train one with train.stage=clip, or give an OpenAI ViT CLIP file)")
        if t.stage in ("student", "baseline") and not t.teacher_ckpt:
            raise ConfigError(f"train.teacher_ckpt: stage {t.stage!r} needs a teacher checkpoint")
        if t.qat and self.model.name != "onnx-ctc":
            raise ConfigError(f"train.qat: simulated INT8 is implemented for onnx-ctc students, not {self.model.name!r}")
        if not 0.0 <= t.wise_alpha < 1.0:
            raise ConfigError(f"train.wise_alpha: expected a share in [0, 1), got {t.wise_alpha}")
        if t.wise_alpha and t.stage not in ("student", "baseline"):
            raise ConfigError(f"train.wise_alpha: averages a fine-tuned student with its start; stage {t.stage!r} "
                              "starts from random weights")
        if t.init_ckpt and t.stage == "clip":
            raise ConfigError("train.init_ckpt: fine-tunes a teacher, student or baseline, not stage 'clip'")
        if t.amp not in ("auto", "bf16", "off"):
            raise ConfigError(f"train.amp: expected auto, bf16 or off, got {t.amp!r}")
        if self.optim.steps <= 0:
            raise ConfigError(f"optim.steps: must be > 0, got {self.optim.steps}")
        if self.data.batch_size <= 0:
            raise ConfigError(f"data.batch_size: must be > 0, got {self.data.batch_size}")
        if not self.data.train and self.data.synth.n <= 0:
            raise ConfigError("data: no training data (give data.train sources or data.synth.n > 0)")
        for i, s in enumerate(self.data.train):
            if not s.path:
                raise ConfigError(f"data.train[{i}].path: empty")
            if s.lr_mode not in ("auto", "stored", "degrade"):
                raise ConfigError(f"data.train[{i}].lr_mode: expected auto, stored or degrade, got {s.lr_mode!r}")
        onnx = is_onnx_teacher(t.teacher_ckpt)
        if t.lr_teacher and (t.stage != "student" or self.model.name != "onnx-ctc" or not onnx):
            raise ConfigError(f"train.lr_teacher: teaches an onnx-ctc student (train.stage student) whose graph "
                              f"train.teacher_ckpt names (X.onnx or a model name such as ppocrv6), got stage "
                              f"{t.stage!r}, model {self.model.name!r} and teacher {t.teacher_ckpt or 'none'!r}")
        for i, s in enumerate(self.data.train):
            if s.unlabeled and t.lr_teacher:
                raise ConfigError(f"data.train[{i}].unlabeled: pseudo-labels come from the HR teacher's cache, which "
                                  "train.lr_teacher replaces; give labelled sources")
            if s.unlabeled and not (onnx and t.stage == "student"):
                raise ConfigError(f"data.train[{i}].unlabeled: unlabeled data learns from an ONNX teacher's targets "
                                  "(train.stage student with train.teacher_ckpt X.onnx or a model name such as ppocrv6)")
            if s.limit < 0:
                raise ConfigError(f"data.train[{i}].limit: must be >= 0, got {s.limit}")
            for key in ("clean", "at_lr_height"):
                if not 0.0 <= getattr(s, key) <= 1.0:
                    raise ConfigError(f"data.train[{i}].{key}: expected a share in [0, 1], got {getattr(s, key)}")
        if self.onnx_teacher.student_graph and not onnx:
            raise ConfigError(f"onnx_teacher.student_graph: another graph as the student needs an ONNX teacher "
                              f"(train.teacher_ckpt X.onnx or a model name such as ppocrv6), got "
                              f"{t.teacher_ckpt or 'none'!r}")
        if onnx and self.model.name != "onnx-ctc":
            raise ConfigError(f"model.name: an ONNX teacher ({t.teacher_ckpt}) makes an onnx-ctc student, "
                              f"got {self.model.name!r}")
        from .models.onnx_net import scale_pair  # here: the config module stays free of torch until it is needed

        try:
            scale_pair(self.onnx_teacher.student_input_scale, "")
        except ValueError:
            raise ConfigError("onnx_teacher.student_input_scale: expected a factor >= 1 or [height, width] factors "
                              f">= 1, got {self.onnx_teacher.student_input_scale!r}") from None
        keep = self.onnx_teacher.student_ffn_keep
        fractions = list(keep.values()) if isinstance(keep, dict) else [keep]
        if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1 for f in fractions):
            raise ConfigError("onnx_teacher.student_ffn_keep: expected a fraction in (0, 1] or {conv name: fraction}, "
                              f"got {keep!r}")
        if self.onnx_teacher.prune_calib < 1:
            raise ConfigError(f"onnx_teacher.prune_calib: expected a crop count >= 1, got {self.onnx_teacher.prune_calib}")
        if self.onnx_teacher.runner not in ("onnxruntime", "torch"):
            raise ConfigError(f"onnx_teacher.runner: expected onnxruntime or torch, got {self.onnx_teacher.runner!r}")
        if self.onnx_teacher.runner == "torch" and self.onnx_teacher.feature:
            raise ConfigError("onnx_teacher.runner torch: gives the probabilities only; onnx_teacher.feature needs "
                              "onnxruntime")
        if self.onnx_teacher.stride_init not in ("upsample", "copy"):
            raise ConfigError(f"onnx_teacher.stride_init: expected upsample or copy, got "
                              f"{self.onnx_teacher.stride_init!r}")
        if self.distill.kd_schedule not in KD_SCHEDULES:
            raise ConfigError(f"distill.kd_schedule: expected one of {', '.join(KD_SCHEDULES)}, got "
                              f"{self.distill.kd_schedule!r}")
        if self.distill.method not in ("kdltr", "clipocr", "kdltr+clipocr"):
            raise ConfigError(f"distill.method: unknown {self.distill.method!r}")
        return self


def is_onnx_teacher(path: str) -> bool:
    from runtime.zoo import is_zoo_name

    return is_zoo_name(path) or path.endswith(".onnx")


def _build(cls, data: Any, where: str):
    """dict -> dataclass ``cls``, recursively, rejecting unknown keys and wrong types."""
    if dataclasses.is_dataclass(cls):
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{where + '.' if where else ''}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
        kwargs = {k: _build(hints[k], v, f"{where + '.' if where else ''}{k}") for k, v in data.items()}
        return cls(**kwargs)
    if cls is list and where.endswith("train"):
        if not isinstance(data, list):
            raise ConfigError(f"{where}: expected a list of sources")
        return [_build(SourceCfg, d if isinstance(d, dict) else {"path": d}, f"{where}[{i}]") for i, d in enumerate(data)]
    if cls is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if cls is float and isinstance(data, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(data)
        except ValueError:
            pass
    if cls is tuple and isinstance(data, (list, tuple)):
        return tuple(data)
    if cls is str and isinstance(data, (int, float)) and not isinstance(data, bool):
        return str(data)  # a bare YAML scalar: --set model.charset=94 means the charset named "94"
    if cls in (int, float, str, bool, dict, list) and not isinstance(data, cls) or (cls is int and isinstance(data, bool)):
        raise ConfigError(f"{where}: expected {cls.__name__}, got {data!r}")
    return data


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """``a.b.c=v`` sets d[a][b][c]; a number indexes a list (``data.train.0.clean=0.4``)."""
    for ov in overrides:
        key, sep, raw = ov.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {ov!r}: expected key=value, e.g. optim.lr=3e-4")
        value = yaml.safe_load(raw) if raw != "" else ""
        node = d
        parts = key.split(".")
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise ConfigError(f"--set {key}: {'.'.join(parts[:i]) or p} is a list of {len(node)}; "
                                      f"expected an index 0..{len(node) - 1}, got {p!r}")
                p = int(p)
            elif not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is not a section")
            if last:
                node[p] = value
            else:
                if isinstance(node, dict) and node.get(p) is None:
                    node[p] = {}
                node = node[p]
    return d


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """The config of YAML file ``path`` (dataclass defaults without one), then ``overrides`` (``key=value``). A file
    may start from another: ``extends: base.yaml`` (relative to the file) takes that file's mapping and merges its
    own keys over it, section by section, so a recipe's stages are short files that say what differs."""
    raw = _read_yaml(Path(path)) if path else {}
    raw = apply_overrides(raw, overrides or [])
    return _build(Config, raw, "").validate()


def _read_yaml(p: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not p.is_file():
        raise ConfigError(f"{'extends' if seen else '--config'} {p}: no such file")
    if p.resolve() in seen:
        raise ConfigError(f"{p}: extends itself (through {' -> '.join(str(s) for s in seen)})")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{p}: extends: expected a file name, got {base!r}")
    return _merge(_read_yaml(p.parent / base, seen + (p.resolve(),)), raw)


def _merge(base: dict, over: dict) -> dict:
    """``over`` on ``base``: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(d: dict) -> Config:
    return _build(Config, d, "")
