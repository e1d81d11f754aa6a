"""The thin training system around a plain recognizer: turns a batch into the stage's loss.

teacher:  CE (or CTC) on HR images.
baseline: the LR student, CE (or CTC) on LR images only: the reference the KD gain is measured against.
student:  KD-LTR on LR images from a frozen HR teacher: visual focus + semantic contrastive + soft logits + CE.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from runtime.charset import AttnTokenizer, CTCTokenizer, Tokenizer

from . import losses as L
from .config import DistillCfg
from .models import RecOut, gen_tgt_perms

__all__ = ["TrainingSystem"]


class TrainingSystem(nn.Module):
    def __init__(self, student: nn.Module, tokenizer: Tokenizer, stage: str, distill: DistillCfg,
                 teacher: nn.Module | None = None, seed: int = 0) -> None:
        super().__init__()
        self.student = student
        self.tok = tokenizer
        self.stage = stage
        self.cfg = distill
        self.seed = seed
        self.ctc = isinstance(tokenizer, CTCTokenizer)
        # The teacher is frozen and not a submodule: DDP must not sync it, checkpoints must not carry it.
        object.__setattr__(self, "teacher", teacher)
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.projector = None
        if stage == "student" and distill.semantic.enabled and not self.ctc:
            dim = self._char_dim()
            self.projector = L.SemanticProjector(dim)

    def _char_dim(self) -> int:
        s = self.student
        if hasattr(s, "head"):
            return s.head.in_features
        return s.cls.in_features

    def to(self, *args, **kwargs):  # the teacher is not a submodule: move it too
        super().to(*args, **kwargs)
        if self.teacher is not None:
            self.teacher.to(*args, **kwargs)
        return self

    def forward(self, batch: dict, step: int) -> tuple[Tensor, dict[str, float]]:
        x = batch["hr"] if self.stage == "teacher" else batch["lr"]
        labels = batch["label"]
        dev = x.device
        parts: dict[str, Tensor] = {}
        if self.ctc:
            flat, lengths = self.tok.encode(labels)
            flat, lengths = torch.from_numpy(flat).to(dev), torch.from_numpy(lengths).to(dev)
            out: RecOut = self.student.forward_train(x)
            parts["ce"] = L.ctc_loss(out.logits[0], flat, lengths)
            if self.stage == "student":
                with torch.no_grad():
                    tout = self.teacher.forward_train(batch["hr"])
                if self.cfg.logits.enabled:
                    parts["logits"] = L.frame_kl_loss(out.logits[0], tout.logits[0], self.cfg.temperature)
                if self.cfg.visual.enabled:
                    parts["visual"] = L.visual_focus_loss(out.visual, tout.visual)
        else:
            assert isinstance(self.tok, AttnTokenizer)
            tgt = torch.from_numpy(self.tok.encode(labels)).to(dev)
            perms = None
            if hasattr(self.student, "perm_num"):
                # Teacher and student share the permutations; seeded by step so a resumed run draws the same.
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
                perms = gen_tgt_perms(tgt.shape[1] - 2, self.student.perm_num, g, dev)
            out = self.student.forward_train(x, tgt, perms)
            pad = self.student.pad_id
            ce_sum, n = 0.0, 0
            for lg, tg in zip(out.logits, out.targets):
                s, k = L.ce_loss(lg, tg, pad)
                ce_sum, n = ce_sum + s, n + k
            parts["ce"] = ce_sum / max(int(n), 1)
            if self.stage == "student":
                with torch.no_grad():
                    tout = self.teacher.forward_train(batch["hr"], tgt, perms)
                valids = [tg != pad for tg in out.targets]
                if self.cfg.visual.enabled:
                    mask = None if tout.attn is None else L.attention_mask(tout.attn, valids[0])
                    parts["visual"] = L.visual_focus_loss(out.visual, tout.visual, mask)
                if self.cfg.semantic.enabled and self.projector is not None:
                    parts["semantic"] = sum(
                        L.semantic_contrastive_loss(self.projector, fs, ft, v, self.cfg.tau)
                        for fs, ft, v in zip(out.char_feats, tout.char_feats, valids)) / len(valids)
                if self.cfg.logits.enabled:
                    parts["logits"] = sum(
                        L.soft_logits_loss(ls, lt, v, self.cfg.temperature, self.cfg.alpha, self.cfg.min_p,
                                           self.cfg.beam, self.student.eos_id)
                        for ls, lt, v in zip(out.logits, tout.logits, valids)) / len(valids)
        if self.stage == "student":
            weights = {"ce": self.cfg.ce.weight if self.cfg.ce.enabled else 0.0, "visual": self.cfg.visual.weight,
                       "semantic": self.cfg.semantic.weight, "logits": self.cfg.logits.weight}
        else:
            weights = {"ce": 1.0}
        total = sum(weights[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}
