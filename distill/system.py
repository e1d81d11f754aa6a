"""The thin training system around a plain recognizer: turns a batch into the stage's loss.

teacher:  CE (or CTC) on HR images.
baseline: the LR student, CE (or CTC) on LR images only: the reference the KD gain is measured against.
student:  KD-LTR on LR images from a frozen HR teacher: visual focus + semantic contrastive + soft logits + CE
          (CTC students: per frame, with the teacher's character frames as mask and as "characters"); or an ONNX
          teacher's cached targets; and/or CLIP-OCR's losses.

Each training signal is a method object (``Labels``, ``OnnxTargets``, ``ClipOcr``, ``KdLtr``) whose ``loss``
turns the student's step into loss parts; the system runs the student once, asks the stage's methods, and weighs
the parts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from runtime.charset import AttnTokenizer, CTCTokenizer, Tokenizer

from . import losses as L
from .config import DistillCfg
from .models import RecOut, gen_tgt_perms

__all__ = ["TrainingSystem"]


class TrainingSystem(nn.Module):
    def __init__(self, student: nn.Module, tokenizer: Tokenizer | None, stage: str, distill: DistillCfg,
                 teacher: nn.Module | None = None, seed: int = 0, clip: nn.Module | None = None,
                 clip_norm: str = "ours", total_steps: int = 0, onnx_targets: bool = False,
                 lr_teacher=None) -> None:
        """``onnx_targets``: the batches carry an ONNX teacher's targets (``t_probs``, maybe ``t_feats``).
        ``lr_teacher``: a ``runtime`` recognizer that reads the student's own LR batch (``train.lr_teacher``)."""
        super().__init__()
        self.total_steps = total_steps  # the length of distill.kd_schedule's decay
        self.student = student
        self.tok = tokenizer
        self.stage = stage
        self.cfg = distill
        self.seed = seed
        self.ctc = isinstance(tokenizer, CTCTokenizer)
        self.clip_norm = clip_norm
        # Frozen teachers are not submodules: DDP must not sync them, checkpoints must not carry them.
        object.__setattr__(self, "teacher", teacher)
        object.__setattr__(self, "clip", clip)
        for t in (teacher, clip):
            if t is not None:
                t.eval().requires_grad_(False)
        self.kdltr = stage == "student" and "kdltr" in distill.method and teacher is not None
        self.projector = None
        if self.kdltr and distill.semantic.enabled:
            self.projector = L.SemanticProjector(self._char_dim())
        self.clip_heads = None
        if stage == "student" and "clipocr" in distill.method:
            self.clip_heads = self._make_clip_heads(student, clip, distill)
        self.onnx_targets = stage == "student" and onnx_targets
        object.__setattr__(self, "lr_teacher", lr_teacher if stage == "student" else None)  # an ONNX Runtime session
        # the training signals of this stage, in the order their parts are reported
        self.methods = [Labels()] + ([OnnxTargets()] if self.onnx_targets else []) + \
            ([LrTeacher()] if self.lr_teacher is not None else []) + \
            ([ClipOcr()] if self.clip_heads is not None else []) + ([KdLtr()] if self.kdltr else [])

    @staticmethod
    def _make_clip_heads(student: nn.Module, clip: nn.Module | None, distill: DistillCfg):
        from .clipocr import ClipOcrHeads

        c = distill.clipocr
        enc = getattr(student, "encoder", None)
        if clip is None:
            raise ValueError("CLIP-OCR needs a CLIP teacher (train.clip_ckpt)")
        if enc is None or enc.cls_token is None:
            raise ValueError("CLIP-OCR needs a PARSeq-family student with a class token (model.kwargs.class_token: true)")
        depth, dec_depth = len(enc.blocks), len(student.decoder.layers)
        if max(s for s, _ in c.enc_pairs) > depth:
            raise ValueError(f"distill.clipocr.enc_pairs {c.enc_pairs}: the encoder has only {depth} blocks")
        if max(s for s, _ in c.dec_pairs) >= dec_depth:
            raise ValueError(f"distill.clipocr.dec_pairs {c.dec_pairs}: the decoder needs more than "
                             f"{max(s for s, _ in c.dec_pairs)} layers (model.kwargs.dec_depth), has {dec_depth}")
        n_clip = len(clip.visual.transformer.resblocks), len(clip.transformer.resblocks)
        if max(t for _, t in c.enc_pairs) > n_clip[0] or max(t for _, t in c.dec_pairs) > n_clip[1]:
            raise ValueError(f"distill.clipocr pairs name CLIP blocks beyond its {n_clip[0]}/{n_clip[1]} layers")
        p = clip.visual.patch
        img_tokens = 1 + (32 // p) * (128 // p)  # class token + the patch rows a 32x128 HR image covers
        txt_tokens = min(student.max_len + 2, clip.context_length)
        return ClipOcrHeads(enc.pos_embed.shape[-1], enc.pos_embed.shape[1], student.max_len + 1, clip, img_tokens,
                            txt_tokens, c.enc_pairs, c.dec_pairs)

    def _char_dim(self) -> int:
        s = self.student
        if hasattr(s, "head"):
            return s.head.in_features
        return s.cls.in_features

    def to(self, *args, **kwargs):  # the teachers are not submodules: move them too
        super().to(*args, **kwargs)
        for t in (self.teacher, self.clip):
            if t is not None:
                t.to(*args, **kwargs)
        return self

    def forward(self, batch: dict, step: int) -> tuple[Tensor, dict[str, float]]:
        """(weighted total loss, each part's value) of one batch at ``step``."""
        x = batch["hr"] if self.stage in ("teacher", "clip") else batch["lr"]
        if self.stage == "clip":  # the offline CLIP of CLIP-OCR: symmetric InfoNCE between word images and labels
            from .clipocr import clip_contrastive_loss

            loss = clip_contrastive_loss(self.student, x, batch["label"], self.clip_norm)
            return loss, {"clip": float(loss.detach())}
        st = self._student_step(batch, x, step)
        parts: dict[str, Tensor] = {}
        for method in self.methods:
            parts.update(method.loss(self, st))
        weights = self._weights(parts, step)
        total = sum(weights[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def _student_step(self, batch: dict, x: Tensor, step: int) -> "Step":
        """The student's forward on the batch, with the label targets every method reads."""
        labels, dev = batch["label"], x.device
        if self.ctc:
            flat, lengths = self.tok.encode(labels)
            return Step(batch, self.student.forward_train(x), flat=torch.from_numpy(flat).to(dev),
                        lengths=torch.from_numpy(lengths).to(dev))
        assert isinstance(self.tok, AttnTokenizer)
        # CLIP-OCR's token mixers need a fixed decoder length: pad targets to max_len then.
        fixed = self.student.max_len if self.clip_heads is not None else None
        tgt = torch.from_numpy(self.tok.encode(labels, max_len=fixed)).to(dev)
        perms = None
        if hasattr(self.student, "perm_num"):
            # Teacher and student share the permutations; seeded by step so a resumed run draws the same.
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            perms = gen_tgt_perms(tgt.shape[1] - 2, self.student.perm_num, g, dev)
        taps = tuple(s for s, _ in self.cfg.clipocr.enc_pairs) if self.clip_heads is not None else ()
        out = self.student.forward_train(x, tgt, perms, enc_taps=taps) if taps else \
            self.student.forward_train(x, tgt, perms)
        return Step(batch, out, tgt=tgt, perms=perms)

    def _weights(self, parts: dict[str, Tensor], step: int) -> dict[str, float]:
        """Each part's weight at ``step`` (the KD terms follow ``distill.kd_schedule``)."""
        if self.stage == "student":
            # KD-LTR weighs CE lightly (0.025) against its KL term; CLIP-OCR alone trains on CE + word + LCLs.
            ce_w = (self.cfg.ce.weight if self.cfg.ce.enabled else 0.0) \
                if self.kdltr or self.onnx_targets or self.lr_teacher is not None else 1.0
            weights = {"ce": ce_w, "visual": self.cfg.visual.weight, "semantic": self.cfg.semantic.weight,
                       "logits": self.cfg.logits.weight, "word": self.cfg.clipocr.word_weight}
            weights.update({k: self.cfg.clipocr.weight for k in parts if k.startswith("sds_")})
            kd = L.kd_schedule_factor(self.cfg.kd_schedule, step, self.total_steps)
            weights.update({k: weights[k] * kd for k in ("visual", "semantic", "logits")})
        else:
            weights = {"ce": 1.0}
        return weights


# -- the methods: each turns one training signal into loss parts ------------------------------------------------------

@dataclass
class Step:
    """What the methods read: the batch, the student's output, and its label targets (CTC: flat labels and
    lengths; attention decoders: the padded targets and the shared permutations)."""

    batch: dict
    out: RecOut
    flat: Tensor | None = None
    lengths: Tensor | None = None
    tgt: Tensor | None = None
    perms: Tensor | None = None


class Labels:
    """CE on the labels: CTC for CTC students (unlabeled crops masked out), CE over the permutations otherwise."""

    def loss(self, sys: TrainingSystem, st: Step) -> dict[str, Tensor]:
        out = st.out
        if sys.ctc:
            has = st.batch.get("has_label")
            return {"ce": L.ctc_loss(out.logits[0], st.flat, st.lengths, None if has is None else has.to(st.flat.device))}
        pad = sys.student.pad_id
        ce_sum, n = 0.0, 0
        for lg, tg in zip(out.logits, out.targets):
            s, k = L.ce_loss(lg, tg, pad)
            ce_sum, n = ce_sum + s, n + k
        return {"ce": ce_sum / max(int(n), 1)}


class OnnxTargets:
    """An ONNX teacher's cached targets (CTC students): its frame distributions, already in our classes and on our
    frame grid; its features (``onnx_teacher.feature``) against the student's same tensor."""

    def loss(self, sys: TrainingSystem, st: Step) -> dict[str, Tensor]:
        parts, out, dev = {}, st.out, st.out.logits[0].device
        if sys.cfg.logits.enabled:
            parts["logits"] = L.frame_kl_from_probs(out.logits[0], st.batch["t_probs"].to(dev), sys.cfg.temperature)
        if "t_feats" in st.batch and sys.cfg.visual.enabled:
            # KD-LTR's visual focus form (z-scored per channel over frames, 1 - cosine), no attention mask.
            parts["visual"] = L.visual_focus_loss(out.char_feats[0], st.batch["t_feats"].to(dev))
        return parts


class LrTeacher:
    """An exported LR recognizer reading the very batch the student reads (its augmentations included): its frame
    distributions as soft targets, same classes and frames as the student's (checked when it is opened)."""

    def loss(self, sys: TrainingSystem, st: Step) -> dict[str, Tensor]:
        x, dev = st.batch["lr"], st.out.logits[0].device
        probs = sys.lr_teacher.run(x.detach().float().cpu().numpy())
        return {"logits": L.frame_kl_from_probs(st.out.logits[0], torch.from_numpy(probs).to(dev), sys.cfg.temperature)}


class ClipOcr:
    """CLIP-OCR: the word loss and the linguistic-consistency (Gram) losses of the CLIP heads."""

    def loss(self, sys: TrainingSystem, st: Step) -> dict[str, Tensor]:
        c = sys.cfg.clipocr
        return sys.clip_heads.losses(st.out, sys.clip, st.batch["hr"], st.batch["label"], sys.clip_norm, c.tau,
                                     c.w_ce, c.w_gram)


class KdLtr:
    """KD-LTR from a frozen HR teacher checkpoint: visual focus, semantic contrast, soft logits (CTC students: per
    frame, with the teacher's character frames as mask and as the "characters")."""

    def loss(self, sys: TrainingSystem, st: Step) -> dict[str, Tensor]:
        return self._ctc(sys, st) if sys.ctc else self._attn(sys, st)

    @staticmethod
    def _ctc(sys: TrainingSystem, st: Step) -> dict[str, Tensor]:
        parts, out, cfg = {}, st.out, sys.cfg
        with torch.no_grad():
            tout = sys.teacher.forward_train(st.batch["hr"])
        t_logits = tout.logits[0]
        if cfg.logits.enabled:
            parts["logits"] = L.frame_kl_loss(out.logits[0], t_logits, cfg.temperature)
        if cfg.visual.enabled:
            # The paper masks by the teacher's attention; a CTC teacher's character frames play that part.
            mask = L.ctc_focus_mask(t_logits, tout.visual.shape[2]) if cfg.ctc_focus_mask else None
            parts["visual"] = L.visual_focus_loss(out.visual, tout.visual, mask)
        if sys.projector is not None:
            # Character-level features of a CTC model: the frames where the teacher emits a character.
            parts["semantic"] = L.semantic_contrastive_loss(sys.projector, out.char_feats[0], tout.char_feats[0],
                                                            L.ctc_char_frames(t_logits), cfg.tau)
        return parts

    @staticmethod
    def _attn(sys: TrainingSystem, st: Step) -> dict[str, Tensor]:
        parts, out, cfg, pad = {}, st.out, sys.cfg, sys.student.pad_id
        with torch.no_grad():
            tout = sys.teacher.forward_train(st.batch["hr"], st.tgt, st.perms)
        valids = [tg != pad for tg in out.targets]
        if cfg.visual.enabled:
            mask = None if tout.attn is None else L.attention_mask(tout.attn, valids[0])
            parts["visual"] = L.visual_focus_loss(out.visual, tout.visual, mask)
        if cfg.semantic.enabled and sys.projector is not None:
            parts["semantic"] = sum(
                L.semantic_contrastive_loss(sys.projector, fs, ft, v, cfg.tau)
                for fs, ft, v in zip(out.char_feats, tout.char_feats, valids)) / len(valids)
        if cfg.logits.enabled:
            parts["logits"] = sum(
                L.soft_logits_loss(ls, lt, v, cfg.temperature, cfg.alpha, cfg.min_p, cfg.beam, sys.student.eos_id)
                for ls, lt, v in zip(out.logits, tout.logits, valids)) / len(valids)
        return parts
