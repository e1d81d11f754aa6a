"""PARSeq (Bautista & Atienza, ECCV 2022): a ViT encoder and a one-layer two-stream decoder trained with
permutation language modelling. Parameter names follow the official release so its checkpoints load as teachers
(see :func:`load_official_parseq`).

HR teacher: 32x128 input, 4x8 patches; LR student: 16x64 input, 2x4 patches. Both give the same 8x16 token grid,
so the student can start from the teacher's weights (all but the patch embedding) and features compare 1:1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import permutations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PARSeq", "RecOut", "gen_tgt_perms", "perm_masks"]


@dataclass
class RecOut:
    """What training and distillation need from a forward pass."""

    logits: list[Tensor]  # one (B, T, C) per permutation (one entry for non-PLM models)
    char_feats: list[Tensor] | None  # (B, T, D) per permutation: decoder features before the head
    visual: Tensor  # encoder features: (B, N, D) tokens or (B, C, H, W) maps
    attn: Tensor | None = None  # (B, T, H, W) attention maps where the decoder has them
    targets: list[Tensor] | None = None  # (B, T) target ids per permutation (PAD where ignored)
    extra: dict | None = None  # CLIP-OCR taps: {"enc": {block: (B, N, D)}, "dec": [(B, T, D) per layer]}


# ---------------------------------------------------------------------------------------------------------------
# Encoder: a plain ViT without class token (timm's parameter names: patch_embed.proj, pos_embed, blocks.N.*, norm)
class PatchEmbed(nn.Module):
    def __init__(self, img_size: tuple[int, int], patch_size: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.grid = (img_size[0] // patch_size[0], img_size[1] // patch_size[1])
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    def __init__(self, img_size, patch_size, dim: int, depth: int, heads: int, mlp_ratio: float,
                 class_token: bool = False) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, dim)
        n = self.patch_embed.grid[0] * self.patch_embed.grid[1]
        # CLIP-OCR's recognizer summarises the word in a class token (timm's name and place: first token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.randn(1, n + int(class_token), dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor, return_blocks: tuple[int, ...] = ()) -> Tensor | tuple[Tensor, list[Tensor]]:
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        x = x + self.pos_embed
        taps = []
        for i, blk in enumerate(self.blocks, 1):
            x = blk(x)
            if i in return_blocks:
                taps.append(x)
        x = self.norm(x)
        return (x, taps) if return_blocks else x


# ---------------------------------------------------------------------------------------------------------------
# Decoder: pre-LN two-stream (query / content) layer, as in the official code (same parameter names)
class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ff)
        self.linear2 = nn.Linear(ff, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_c = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def stream(self, tgt: Tensor, tgt_norm: Tensor, kv: Tensor, memory: Tensor, mask: Tensor | None,
               pad: Tensor | None) -> Tensor:
        tgt = tgt + self.dropout(self.self_attn(tgt_norm, kv, kv, attn_mask=mask, key_padding_mask=pad,
                                                need_weights=False)[0])
        tgt = tgt + self.dropout(self.cross_attn(self.norm1(tgt), memory, memory, need_weights=False)[0])
        return tgt + self.dropout(self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(tgt))))))

    def forward(self, query, content, memory, query_mask=None, content_mask=None, pad=None, update_content=True):
        qn, cn = self.norm_q(query), self.norm_c(content)
        query = self.stream(query, qn, cn, memory, query_mask, pad)
        if update_content:
            content = self.stream(content, cn, cn, memory, content_mask, pad)
        return query, content


class Decoder(nn.Module):
    def __init__(self, dim: int, heads: int, ff: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ff, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, query, content, memory, query_mask=None, content_mask=None, pad=None,
                taps: list | None = None) -> Tensor:
        for i, layer in enumerate(self.layers):
            query, content = layer(query, content, memory, query_mask, content_mask, pad,
                                   update_content=i < len(self.layers) - 1)
            if taps is not None:
                taps.append(query)  # per-layer query stream (CLIP-OCR pairs decoder layers with CLIP text blocks)
        return self.norm(query)


class TokenEmbedding(nn.Module):
    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n, dim)
        self.scale = math.sqrt(dim)

    def forward(self, t: Tensor) -> Tensor:
        return self.scale * self.embedding(t)


# ---------------------------------------------------------------------------------------------------------------
def gen_tgt_perms(max_chars: int, num_perms: int, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> Tensor:
    """Permutations of positions 0..max_chars+1 (BOS first, EOS last), mirrored pairs, as PARSeq trains with.
    The first is the canonical (left-to-right) order, the second its reverse."""
    if max_chars <= 1:
        return torch.arange(max_chars + 2, device=device).unsqueeze(0)
    half = max(1, num_perms // 2)
    perms = [torch.arange(max_chars)]
    max_perms = math.factorial(max_chars) // 2
    n_gen = min(half, max_perms)
    if max_chars < 5:
        # Few characters: draw without replacement from all orders whose mirror is not already in the set
        all_p = [torch.tensor(p) for p in permutations(range(max_chars)) if p[0] < p[-1] or max_chars == 1]
        all_p = [p for p in all_p if not torch.equal(p, perms[0])]
        idx = torch.randperm(len(all_p), generator=generator)[: n_gen - 1]
        perms += [all_p[int(i)] for i in idx]
    else:
        perms += [torch.randperm(max_chars, generator=generator) for _ in range(n_gen - 1)]
    p = torch.stack(perms)
    p = torch.stack([p, p.flip(-1)]).transpose(0, 1).reshape(-1, max_chars)
    bos = torch.zeros(len(p), 1, dtype=torch.long)
    eos = torch.full((len(p), 1), max_chars + 1, dtype=torch.long)
    p = torch.cat([bos, p + 1, eos], 1)
    if len(p) > 1:  # the reverse order still predicts EOS last
        p[1, 1:] = max_chars + 1 - torch.arange(max_chars + 1)
    return p.to(device)


def perm_masks(perm: Tensor) -> tuple[Tensor, Tensor]:
    """Float attention masks (0 / -inf: ONNX Runtime runs them, bool masks it may not) for one permutation: position
    ``a`` may not see ``b`` when ``b`` comes later in the permutation. Built in a few whole-tensor ops: a loop over
    positions cost ~100 kernel launches per permutation, and on a GPU the training step is launch-bound."""
    sz = perm.shape[0]
    order = torch.empty_like(perm)
    order[perm] = torch.arange(sz, device=perm.device)
    later = order.unsqueeze(0) > order.unsqueeze(1)  # [a, b]: b is read after a
    mask = torch.zeros(sz, sz, device=perm.device).masked_fill(later, float("-inf"))
    content = mask[:-1, :-1].clone()
    mask.fill_diagonal_(float("-inf"))
    return content, mask[1:, :-1]


class PARSeq(nn.Module):
    decoder_type = "attn"

    def __init__(self, num_classes: int, max_len: int = 25, img_size=(32, 128), patch_size=(4, 8), dim: int = 192,
                 depth: int = 12, heads: int = 3, mlp_ratio: float = 4.0, dec_heads: int = 6, dec_mlp_ratio: int = 4,
                 dec_depth: int = 1, dropout: float = 0.1, decode_ar: bool = True, refine_iters: int = 1,
                 perm_num: int = 6, class_token: bool = False) -> None:
        super().__init__()
        self.max_len = max_len
        self.num_tokens = num_classes  # EOS + charset + BOS + PAD
        self.eos_id, self.bos_id, self.pad_id = 0, num_classes - 2, num_classes - 1
        self.img_size = tuple(img_size)
        self.decode_ar, self.refine_iters, self.perm_num = decode_ar, refine_iters, perm_num
        self.encoder = Encoder(img_size, patch_size, dim, depth, heads, mlp_ratio, class_token)
        self.decoder = Decoder(dim, dec_heads, dim * dec_mlp_ratio, dec_depth, dropout)
        self.head = nn.Linear(dim, num_classes - 2)  # BOS and PAD are never predicted
        self.text_embed = TokenEmbedding(num_classes, dim)
        self.pos_queries = nn.Parameter(torch.randn(1, max_len + 1, dim) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=0.02)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    @property
    def grid(self) -> tuple[int, int]:
        return self.encoder.patch_embed.grid

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, tgt: Tensor, memory: Tensor, tgt_mask=None, pad=None, query=None, query_mask=None,
               taps: list | None = None) -> Tensor:
        N, L = tgt.shape
        null_ctx = self.text_embed(tgt[:, :1])
        emb = self.pos_queries[:, : L - 1] + self.text_embed(tgt[:, 1:])
        emb = self.dropout(torch.cat([null_ctx, emb], 1))
        if query is None:
            query = self.pos_queries[:, :L].expand(N, -1, -1)
        return self.decoder(self.dropout(query), emb, memory, query_mask, tgt_mask, pad, taps)

    # -- inference (export-friendly: fixed number of steps, no data-dependent break, float masks) ------------
    def forward(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> per-step probabilities (B, max_len + 1, num_classes - 2)."""
        return self.decode_logits(x).softmax(-1)

    def decode_logits(self, x: Tensor, early_stop: bool = False) -> Tensor:
        B = x.shape[0]
        steps = self.max_len + 1
        memory = self.encode(x)
        pos = self.pos_queries[:, :steps].expand(B, -1, -1)
        causal = torch.triu(torch.full((steps, steps), float("-inf"), device=x.device), 1)
        if self.decode_ar:
            tgt_in = torch.full((B, steps), self.pad_id, dtype=torch.long, device=x.device)
            tgt_in[:, 0] = self.bos_id
            logits = []
            for i in range(steps):
                j = i + 1
                out = self.decode(tgt_in[:, :j], memory, causal[:j, :j], query=pos[:, i:j], query_mask=causal[i:j, :j])
                p = self.head(out)
                logits.append(p)
                if j < steps:
                    tgt_in[:, j] = p[:, 0].argmax(-1)  # never squeeze(): batch 1 must keep its batch axis
                    if early_stop and bool((tgt_in == self.eos_id).any(-1).all()):
                        break
            logits = torch.cat(logits, 1)
            if logits.shape[1] < steps:  # early stop: pad with EOS-certain steps so shapes stay fixed
                fill = torch.full((B, steps - logits.shape[1], logits.shape[2]), -1e4, device=x.device, dtype=logits.dtype)
                fill[..., self.eos_id] = 1e4
                logits = torch.cat([logits, fill], 1)
        else:
            bos = torch.full((B, 1), self.bos_id, dtype=torch.long, device=x.device)
            logits = self.head(self.decode(bos, memory, query=pos))
        if self.refine_iters:
            # Cloze mask: every position sees all others' previous predictions except itself.
            query_mask = causal.clone()
            query_mask[torch.triu(torch.ones(steps, steps, dtype=torch.bool, device=x.device), 2)] = 0.0
            bos = torch.full((B, 1), self.bos_id, dtype=torch.long, device=x.device)
            for _ in range(self.refine_iters):
                tgt_in = torch.cat([bos, logits[:, :-1].argmax(-1)], 1)
                pad = (tgt_in == self.eos_id).int().cumsum(-1) > 0
                pad_f = torch.zeros(pad.shape, device=x.device).masked_fill(pad, float("-inf"))
                out = self.decode(tgt_in, memory, causal, pad_f, pos, query_mask[:, : tgt_in.shape[1]])
                logits = self.head(out)
        return logits

    # -- training: permutation language modelling ---------------------------------------------------------------
    def forward_train(self, x: Tensor, tgt: Tensor, perms: Tensor | None = None,
                      generator: torch.Generator | None = None, enc_taps: tuple[int, ...] = ()) -> RecOut:
        """``tgt``: (B, L+2) BOS chars EOS PAD ids. ``perms``: shared with a teacher for distillation.
        ``enc_taps``: encoder blocks whose outputs go to ``RecOut.extra`` (with the decoder's per-layer outputs
        for the canonical order), for CLIP-OCR."""
        extra: dict = {}
        if enc_taps:
            memory, taps = self.encoder(x, enc_taps)
            extra["enc"] = dict(zip(enc_taps, taps))
        else:
            memory = self.encode(x)
        if perms is None:
            perms = gen_tgt_perms(tgt.shape[1] - 2, self.perm_num, generator, tgt.device)
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
        pad = (tgt_in == self.pad_id) | (tgt_in == self.eos_id)
        pad_f = torch.zeros(pad.shape, device=x.device).masked_fill(pad, float("-inf"))
        # All permutations in one decoder pass, stacked along the batch (sample k * B + b reads batch row b in order
        # k): a loop over them cost K times the kernel launches, and on a GPU the step is launch-bound.
        (K, B), heads = (len(perms), tgt_in.shape[0]), self.decoder.layers[0].self_attn.num_heads
        masks = [perm_masks(perm) for perm in perms]

        def per_sample(m: Tensor) -> Tensor:  # (K, L, L) -> (K * B * heads, L, L), as MultiheadAttention takes it
            return m[:, None, None].expand(K, B, heads, *m.shape[1:]).reshape(K * B * heads, *m.shape[1:])

        dec_taps = [] if enc_taps else None
        out = self.decode(tgt_in.repeat(K, 1), memory.repeat(K, 1, 1), per_sample(torch.stack([c for c, _ in masks])),
                          pad_f.repeat(K, 1), query_mask=per_sample(torch.stack([q for _, q in masks])), taps=dec_taps)
        if enc_taps:
            extra["dec"] = [t[:B] for t in dec_taps]  # the canonical order's query stream per layer
        feats = list(out.split(B))
        logits = list(self.head(out).split(B))
        # after the canonical order and its mirror, EOS is no longer a target (as in PARSeq)
        no_eos = torch.where(tgt_out == self.eos_id, torch.full_like(tgt_out, self.pad_id), tgt_out)
        targets = [tgt_out if i < 2 else no_eos for i in range(K)]
        return RecOut(logits, feats, memory, None, targets, extra)
