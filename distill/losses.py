"""KD-LTR's distillation losses (Guo et al., ACM MM 2023), each a plain function of tensors.

* visual focus: per-channel z-scored features, 1 - cosine at each position, weighted by the teacher's attention
  (CTC teachers: by their character frames, ``ctc_focus_mask``)
* semantic contrastive: InfoNCE between student and teacher character features through one shared projection
* soft logits: KL(teacher || student) at temperature T, the teacher's target sharpened towards its best
  sequence from a small beam search
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["visual_focus_loss", "attention_mask", "ctc_char_frames", "ctc_focus_mask", "SemanticProjector",
           "semantic_contrastive_loss", "beam_best_path", "soft_logits_loss", "frame_kl_loss", "ce_loss", "ctc_loss",
           "kd_schedule_factor"]


def _tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) maps or (B, N, D) tokens -> (B, positions, channels)."""
    return x.flatten(2).transpose(1, 2) if x.dim() == 4 else x


def attention_mask(attn: Tensor, valid: Tensor) -> Tensor:
    """Max over the valid decoding steps of the teacher's attention maps, scaled to [0, 1] per image.
    attn: (B, T, H, W); valid: (B, T) bool -> (B, H*W)."""
    a = attn.flatten(2) * valid[..., None].to(attn.dtype)
    m = a.max(1).values
    return m / m.amax(1, keepdim=True).clamp_min(1e-8)


def ctc_char_frames(t_logits: Tensor, blank_id: int = 0) -> Tensor:
    """(B, T) bool: the frames where a CTC teacher emits a character (its argmax is not blank): a CTC model's
    "characters", for the semantic contrastive loss."""
    return t_logits.argmax(-1) != blank_id


def ctc_focus_mask(t_logits: Tensor, rows: int, blank_id: int = 0, spread: int = 3) -> Tensor:
    """The CTC counterpart of ``attention_mask``: a CTC teacher has no attention maps, but its per-frame character
    probability (1 - p(blank)) says which columns hold text. CTC emits one peaked frame per character while the
    character's ink spans neighbouring columns, so the mask is max-pooled over ``spread`` frames, scaled to [0, 1]
    per image and repeated over the feature map's ``rows``. t_logits: (B, W, C) -> (B, rows*W), row-major like
    ``_tokens``."""
    p = 1.0 - t_logits.detach().float().softmax(-1)[..., blank_id]  # (B, W)
    if spread > 1:
        p = F.max_pool1d(p[:, None], spread, 1, spread // 2)[:, 0]
    p = p / p.amax(1, keepdim=True).clamp_min(1e-8)
    return p[:, None, :].expand(-1, rows, -1).reshape(p.shape[0], -1)


def visual_focus_loss(fs: Tensor, ft: Tensor, mask: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """1 - cos(z(fs), z(ft)) per position, z-scored per channel over positions; weighted by ``mask`` (B, N)."""
    s, t = _tokens(fs).float(), _tokens(ft).float()
    if s.shape != t.shape:
        raise ValueError(f"visual focus: student features {tuple(s.shape)} and teacher {tuple(t.shape)} differ; "
                         "the LR student must give the teacher's grid")
    zs = (s - s.mean(1, keepdim=True)) / (s.std(1, keepdim=True) + eps)
    zt = (t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + eps)
    d = 1.0 - F.cosine_similarity(zs, zt, dim=-1)  # (B, N)
    if mask is None:
        return d.mean()
    return (d * mask).sum() / mask.sum().clamp_min(1e-8)


class SemanticProjector(nn.Module):
    """The projection both branches share: BiLSTM with 256 units per direction -> 512-d character features."""

    def __init__(self, in_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.rnn = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor) -> Tensor:
        self.rnn.flatten_parameters()
        return self.rnn(x.float())[0]


def semantic_contrastive_loss(proj: SemanticProjector, fs: Tensor, ft: Tensor, valid: Tensor, tau: float = 0.1) -> Tensor:
    """InfoNCE over all characters of the batch: the positive of a student character is the same character of the
    same image in the teacher branch, every other character in the batch is a negative (both directions)."""
    zs = F.normalize(proj(fs)[valid], dim=-1)
    zt = F.normalize(proj(ft.detach())[valid], dim=-1)
    if zs.shape[0] == 0:
        return fs.sum() * 0.0
    logits = zs @ zt.t() / tau
    target = torch.arange(zs.shape[0], device=zs.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


@torch.no_grad()
def beam_best_path(logits: Tensor, eos_id: int = 0, width: int = 3) -> tuple[Tensor, Tensor]:
    """Best sequence of a width-``width`` beam over per-step distributions (B, T, C); a path ends at its EOS.
    Returns (ids (B, T) with EOS repeated after the end, probability of the path (B,))."""
    lp = logits.float().log_softmax(-1)
    B, T, C = lp.shape
    scores, idx = lp[:, 0].topk(width, -1)  # (B, W)
    seqs = idx[..., None]  # (B, W, 1)
    done = idx == eos_id
    stay = torch.full((C,), float("-inf"), device=lp.device)
    stay[eos_id] = 0.0
    for t in range(1, T):
        step = lp[:, t][:, None, :].expand(B, width, C)
        step = torch.where(done[..., None], stay.expand(B, width, C), step)  # finished paths only "stay" at EOS
        cand = (scores[..., None] + step).reshape(B, -1)
        scores, flat = cand.topk(width, -1)
        beam, cls = flat // C, flat % C
        seqs = torch.cat([seqs.gather(1, beam[..., None].expand(-1, -1, seqs.shape[2])), cls[..., None]], 2)
        done = done.gather(1, beam) | (cls == eos_id)
    return seqs[:, 0], scores[:, 0].exp()


def soft_logits_loss(s_logits: Tensor, t_logits: Tensor, valid: Tensor, temperature: float = 4.0, alpha: float = 0.2,
                     min_p: float = 0.1, beam: int = 3, eos_id: int = 0) -> Tensor:
    """KL(teacher || student) at ``temperature`` over valid steps, times T^2. Where the teacher's best beam path
    has probability >= ``min_p``, its target is mixed with that path's one-hot: (1 - alpha) p_T + alpha onehot."""
    T = temperature
    pt = (t_logits.detach().float() / T).softmax(-1)
    if alpha > 0:
        path, p = beam_best_path(t_logits.detach(), eos_id, beam)
        sure = (p >= min_p).to(pt.dtype)[:, None, None] * alpha
        pt = (1 - sure) * pt + sure * F.one_hot(path, pt.shape[-1]).to(pt.dtype)
    log_ps = (s_logits.float() / T).log_softmax(-1)
    kl = (pt * (pt.clamp_min(1e-8).log() - log_ps)).sum(-1)  # (B, T)
    v = valid.to(kl.dtype)
    return (kl * v).sum() / v.sum().clamp_min(1.0) * T * T


def kd_schedule_factor(schedule: str, step: int, total: int) -> float:
    """The factor on the KD terms' weights at ``step`` of ``total`` (distill.kd_schedule): 1 throughout for
    constant; from 1 at step 0 to 0 at the last step, by a half cosine or a straight line."""
    if schedule == "constant" or total <= 1:
        return 1.0
    t = min(max(step / (total - 1), 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return 1.0 - t
    raise ValueError(f"distill.kd_schedule: unknown {schedule!r}")


def frame_kl_loss(s_logits: Tensor, t_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """CTC students: KL(teacher || student) per frame on the shared grid, times T^2."""
    T = temperature
    pt = (t_logits.detach().float() / T).softmax(-1)
    log_ps = (s_logits.float() / T).log_softmax(-1)
    return (pt * (pt.clamp_min(1e-8).log() - log_ps)).sum(-1).mean() * T * T


def frame_kl_from_probs(s_logits: Tensor, t_probs: Tensor, temperature: float = 1.0) -> Tensor:
    """As ``frame_kl_loss`` with the teacher given as probabilities (an ONNX teacher's cached targets): the
    tempered target is p^(1/T), renormalised."""
    T = temperature
    lt = t_probs.detach().float().clamp_min(1e-8).log()
    return frame_kl_loss(s_logits, lt, T)


def ce_loss(logits: Tensor, target: Tensor, pad_id: int) -> tuple[Tensor, Tensor]:
    """Sum of token cross-entropies and the number of tokens (so permutations can be averaged PARSeq's way)."""
    n = (target != pad_id).sum()
    loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=pad_id, reduction="sum")
    return loss, n


def ctc_loss(logits: Tensor, targets: Tensor, target_lengths: Tensor, mask: Tensor | None = None) -> Tensor:
    """CTC averaged over the batch (each sample's loss divided by its target length); ``mask`` (B,) bool leaves
    samples out, e.g. unlabeled crops whose pseudo-label is below the confidence threshold."""
    lp = logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, C)
    T, B = lp.shape[:2]
    input_lengths = torch.full((B,), T, dtype=torch.long, device=lp.device)
    if mask is None:
        return F.ctc_loss(lp, targets, input_lengths, target_lengths, blank=0, zero_infinity=True)
    per = F.ctc_loss(lp, targets, input_lengths, target_lengths, blank=0, zero_infinity=True, reduction="none")
    per = per / target_lengths.clamp_min(1).float()
    m = mask.float()
    return (per * m).sum() / m.sum().clamp_min(1.0)
