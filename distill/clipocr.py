"""CLIP-OCR: symmetrical linguistic feature distillation (SDS) with the Linguistic Consistency Loss (LCL).

CLIP's image encoder cascaded with its *reversed* text encoder guides the recognizer from vision to language:
recognizer encoder blocks 3/6/9 <-> CLIP image blocks 3/6/9, recognizer decoder layers 1/2/3 <-> CLIP text blocks
9/6/3, and the encoder's class token (through an MLP) <-> CLIP's projected end-of-text embedding (word level).
Student tokens are mapped onto the teacher's token count by a learnable token-mixing matrix, then Linear + LayerNorm;
the teacher side gets a LayerNorm. LCL on row-normalised token matrices Fs, Ft (M tokens x d):

    0.1 * CE(Fs Ft^T / 0.03, identity) + 5.0 * mean |Fs Fs^T - Ft Ft^T|

Under DDP the teacher's rows (the negatives) are gathered from all ranks.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .models.clip import CLIP, char_tokens

__all__ = ["lcl_loss", "TokenMixer", "ClipOcrHeads", "clip_input", "clip_contrastive_loss", "OPENAI_MEAN", "OPENAI_STD"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_input(x: Tensor, norm: str) -> Tensor:
    """Our images are in [-1, 1]; an OpenAI-pretrained CLIP expects its own mean/std."""
    if norm != "openai":
        return x
    mean = torch.tensor(OPENAI_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=x.device).view(1, 3, 1, 1)
    return (x * 0.5 + 0.5 - mean) / std


def _gather(t: Tensor) -> tuple[Tensor, int]:
    """All ranks' rows (no gradient: they are the teacher's) and this rank's offset."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t, 0
    parts = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts), dist.get_rank() * t.shape[0]


def lcl_loss(fs: Tensor, ft: Tensor, tau: float = 0.03, w_ce: float = 0.1, w_gram: float = 5.0) -> Tensor:
    """fs, ft: (..., d) token matrices of student and teacher (same token count)."""
    s = F.normalize(fs.reshape(-1, fs.shape[-1]).float(), dim=-1)
    t = F.normalize(ft.reshape(-1, ft.shape[-1]).float(), dim=-1).detach()
    t_all, off = _gather(t)
    target = torch.arange(s.shape[0], device=s.device) + off
    ce = F.cross_entropy(s @ t_all.t() / tau, target)
    gram = (s @ s.t() - t @ t.t()).abs().mean()
    return w_ce * ce + w_gram * gram


class TokenMixer(nn.Module):
    """A learnable (M_out x M_in) matrix mixing tokens: maps the student's token count onto the teacher's."""

    def __init__(self, m_in: int, m_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((m_out, m_in), 1.0 / m_in) + torch.randn(m_out, m_in) * 0.01)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("om,bmd->bod", self.weight, x)


class _StudentProj(nn.Module):
    def __init__(self, m_in: int, m_out: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.mix = TokenMixer(m_in, m_out)
        self.proj = nn.Linear(d_in, d_out)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(self.mix(x.float())))


class ClipOcrHeads(nn.Module):
    """The trainable side of SDS: one student projection per pair, teacher-side LayerNorms, the word MLP."""

    def __init__(self, s_dim: int, s_enc_tokens: int, s_dec_tokens: int, clip: CLIP, img_tokens: int,
                 txt_tokens: int, enc_pairs: list, dec_pairs: list) -> None:
        super().__init__()
        vw, tw, emb = clip.visual.conv1.out_channels, clip.ln_final.normalized_shape[0], clip.text_projection.shape[1]
        self.enc_pairs = [tuple(p) for p in enc_pairs]
        self.dec_pairs = [tuple(p) for p in dec_pairs]
        self.txt_tokens = txt_tokens
        self.enc = nn.ModuleDict({str(s): _StudentProj(s_enc_tokens, img_tokens, s_dim, vw) for s, _ in self.enc_pairs})
        self.dec = nn.ModuleDict({str(s): _StudentProj(s_dec_tokens, txt_tokens, s_dim, tw) for s, _ in self.dec_pairs})
        self.enc_t = nn.LayerNorm(vw)
        self.dec_t = nn.LayerNorm(tw)
        self.word = nn.Sequential(nn.Linear(s_dim, s_dim), nn.GELU(), nn.Linear(s_dim, emb))

    def losses(self, out, clip: CLIP, hr: Tensor, labels: list[str], norm: str, tau: float, w_ce: float,
               w_gram: float) -> dict[str, Tensor]:
        img_blocks = tuple(sorted({t for _, t in self.enc_pairs}))
        txt_blocks = tuple(sorted({t for _, t in self.dec_pairs}))
        with torch.no_grad():
            _, img_taps = clip.encode_image(clip_input(hr, norm), img_blocks)
            tokens = char_tokens(labels, clip.context_length).to(hr.device)
            txt_emb, txt_taps = clip.encode_text(tokens, txt_blocks)
        enc, dec = out.extra["enc"], out.extra["dec"]
        parts: dict[str, Tensor] = {}
        for s, t in self.enc_pairs:
            parts[f"sds_enc{s}"] = lcl_loss(self.enc[str(s)](enc[s]), self.enc_t(img_taps[t]), tau, w_ce, w_gram)
        for s, t in self.dec_pairs:
            ft = self.dec_t(txt_taps[t][:, : self.txt_tokens])
            parts[f"sds_dec{s}"] = lcl_loss(self.dec[str(s)](dec[s - 1]), ft, tau, w_ce, w_gram)
        cls = out.visual[:, 0]  # the encoder's final class token
        parts["word"] = lcl_loss(self.word(cls.float())[:, None], txt_emb[:, None], tau, w_ce, w_gram)
        return parts


def clip_contrastive_loss(clip: CLIP, images: Tensor, labels: list[str], norm: str = "ours") -> Tensor:
    """Symmetric InfoNCE between word images and their labels (the offline ``--stage clip``)."""
    tokens = char_tokens(labels, clip.context_length).to(images.device)
    i, t = clip(clip_input(images, norm), tokens)
    logits = clip.logit_scale.exp().clamp(max=100) * i @ t.t()
    # identical labels in a batch are not negatives of each other
    same = torch.tensor([[a.lower() == b.lower() for b in labels] for a in labels], device=images.device)
    target = same.float() / same.float().sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target.t()))
