"""CLIP (Radford et al., 2021) with the parameter names and shapes of the OpenAI release, so a user's local
``ViT-B-16`` state dict (or open_clip's conversion of it) loads as a CLIP-OCR teacher; no open_clip dependency.

Only what CLIP-OCR needs: the image encoder with a positional embedding cut to the class token plus the patch rows
a 32x128 word image covers, per-block outputs of both encoders, and character-level text tokens computed without
the BPE vocabulary (see :func:`char_tokens`).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CLIP", "char_tokens", "char_token_id", "SOT", "EOT", "load_openai_clip", "clip_vit_b16_args"]

SOT, EOT = 49406, 49407  # <|startoftext|>, <|endoftext|> in CLIP's 49408-token vocabulary


def char_token_id(c: str) -> int:
    """CLIP's token for a one-character word: its byte-level vocabulary lists the 94 printable ASCII characters
    first ('!'..'~'), then repeats the 256 symbols with the end-of-word marker '</w>'; a lone character c is the
    word 'c</w>', so its id is 256 + ord(c) - 33. CLIP lowercases text before tokenizing."""
    c = c.lower()
    if not (33 <= ord(c) <= 126):
        raise ValueError(f"char_token_id: {c!r} is not a printable ASCII character")
    return 256 + ord(c) - 33


def char_tokens(labels: list[str], context: int = 77) -> Tensor:
    """Labels as CLIP text tokens, characters joined by spaces: [SOT, c1, c2, ..., EOT, 0...] (N, context)."""
    out = torch.zeros(len(labels), context, dtype=torch.long)
    for i, lb in enumerate(labels):
        ids = [SOT] + [char_token_id(c) for c in lb if not c.isspace()][: context - 2] + [EOT]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d: int, heads: int, causal_len: int = 0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads)
        self.ln_1 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d, d * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(d * 4, d))]))
        self.ln_2 = nn.LayerNorm(d)
        self.causal_len = causal_len

    def forward(self, x: Tensor) -> Tensor:  # (L, N, D), as the release
        mask = None
        if self.causal_len:
            L = x.shape[0]
            mask = torch.full((L, L), float("-inf"), device=x.device).triu(1)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, causal) for _ in range(layers)])

    def forward(self, x: Tensor, taps: tuple[int, ...] = ()) -> tuple[Tensor, dict[int, Tensor]]:
        got = {}
        for i, blk in enumerate(self.resblocks, 1):
            x = blk(x)
            if i in taps:
                got[i] = x.permute(1, 0, 2)  # (N, L, D)
        return x, got


class VisionTransformer(nn.Module):
    def __init__(self, resolution: int, patch: int, width: int, layers: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.grid = resolution // patch
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        s = width ** -0.5
        self.class_embedding = nn.Parameter(s * torch.randn(width))
        self.positional_embedding = nn.Parameter(s * torch.randn(self.grid ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(s * torch.randn(width, out_dim))

    def forward(self, x: Tensor, taps: tuple[int, ...] = ()) -> tuple[Tensor, dict[int, Tensor]]:
        """x: (N, 3, H, W) with H, W multiples of the patch and within the pretraining grid. The positional
        embedding is cut to the class token plus the top-left rows x columns the image covers (a 32x128 word image
        on ViT-B/16: 2 rows of 8)."""
        f = self.conv1(x)
        N, D, gh, gw = f.shape
        if gh > self.grid or gw > self.grid:
            raise ValueError(f"CLIP image grid {gh}x{gw} exceeds the pretrained {self.grid}x{self.grid}")
        f = f.flatten(2).transpose(1, 2)
        pos = self.positional_embedding[1:].view(self.grid, self.grid, D)[:gh, :gw].reshape(gh * gw, D)
        pos = torch.cat([self.positional_embedding[:1], pos], 0)
        cls = self.class_embedding.to(f.dtype).expand(N, 1, D)
        h = self.ln_pre(torch.cat([cls, f], 1) + pos)
        h, got = self.transformer(h.permute(1, 0, 2), taps)
        h = h.permute(1, 0, 2)
        return self.ln_post(h[:, 0]) @ self.proj, got


def clip_vit_b16_args() -> dict:
    return dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch=16,
                context_length=77, vocab_size=49408, text_width=512, text_heads=8, text_layers=12)


class CLIP(nn.Module):
    def __init__(self, embed_dim: int = 512, image_resolution: int = 224, vision_layers: int = 12,
                 vision_width: int = 768, vision_patch: int = 16, context_length: int = 77, vocab_size: int = 49408,
                 text_width: int = 512, text_heads: int = 8, text_layers: int = 12) -> None:
        super().__init__()
        self.args = dict(embed_dim=embed_dim, image_resolution=image_resolution, vision_layers=vision_layers,
                         vision_width=vision_width, vision_patch=vision_patch, context_length=context_length,
                         vocab_size=vocab_size, text_width=text_width, text_heads=text_heads, text_layers=text_layers)
        self.context_length = context_length
        self.visual = VisionTransformer(image_resolution, vision_patch, vision_width, vision_layers,
                                        max(1, vision_width // 64), embed_dim)
        self.transformer = Transformer(text_width, text_layers, text_heads, causal=True)
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, text_width) * 0.01)
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.randn(text_width, embed_dim) * text_width ** -0.5)
        self.logit_scale = nn.Parameter(torch.ones([]) * torch.log(torch.tensor(1 / 0.07)))

    def encode_image(self, x: Tensor, taps: tuple[int, ...] = ()) -> tuple[Tensor, dict[int, Tensor]]:
        return self.visual(x, taps)

    def encode_text(self, tokens: Tensor, taps: tuple[int, ...] = ()) -> tuple[Tensor, dict[int, Tensor]]:
        L = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:L]
        x, got = self.transformer(x.permute(1, 0, 2), taps)
        x = self.ln_final(x.permute(1, 0, 2))
        eot = tokens.argmax(-1)  # EOT has the largest id
        return x[torch.arange(x.shape[0]), eot] @ self.text_projection, got

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        i = F.normalize(self.encode_image(images)[0], dim=-1)
        t = F.normalize(self.encode_text(tokens)[0], dim=-1)
        return i, t


def load_openai_clip(path_or_state, **overrides) -> CLIP:
    """A ViT CLIP from an OpenAI-layout state dict (or a TorchScript release file, or open_clip's conversion with
    the same names). Shapes decide the architecture, as the release's own builder does; any mismatch is an error
    listing the keys."""
    state = path_or_state
    if isinstance(state, str):
        try:
            state = torch.load(path_or_state, map_location="cpu", weights_only=True)
        except Exception:  # the OpenAI release files are TorchScript archives
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                state = torch.jit.load(path_or_state, map_location="cpu").state_dict()
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    state = {k: v for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    try:
        vw = state["visual.conv1.weight"].shape[0]
        patch = state["visual.conv1.weight"].shape[-1]
        vlayers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        args = dict(embed_dim=state["text_projection"].shape[1], image_resolution=patch * grid, vision_layers=vlayers,
                    vision_width=vw, vision_patch=patch, context_length=state["positional_embedding"].shape[0],
                    vocab_size=state["token_embedding.weight"].shape[0], text_width=state["ln_final.weight"].shape[0],
                    text_heads=state["ln_final.weight"].shape[0] // 64,
                    text_layers=len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}))
    except KeyError as e:
        raise ValueError(f"not an OpenAI-layout ViT CLIP state dict: missing {e}") from None
    args.update(overrides)
    model = CLIP(**args)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in set(own) & set(state)
              if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"CLIP state dict does not match the OpenAI layout: missing {missing[:6]}, unexpected "
                         f"{unexpected[:6]}, shapes {shapes[:6]}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model
