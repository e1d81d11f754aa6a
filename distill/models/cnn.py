"""CNN recognizers: a ResNet backbone with (a) an ABINet-vision style position-attention decoder, whose attention
maps drive KD-LTR's visual focus mask, or (b) a CTC head: the small, fast edge model.

HR 32x128 input gives an 8x32 map (total stride 4: two stride-2 stages). The LR student (16x64) sets the first
stride-2 stage to stride 1 (``lr=True``), so both give the same 8x32 map and features compare position by position.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .parseq import RecOut

__all__ = ["ResNetBackbone", "CNNAttn", "CNNCTC"]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: tuple[int, int], project: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        # ``project``: the HR twin of this block strides, so keep its shortcut projection (weights stay shareable).
        if project or stride != (1, 1) or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.down is None else self.down(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + idt)


class ResNetBackbone(nn.Module):
    """Stem + stages; ``strides`` per stage. The LR variant makes the first stride-2 stage stride 1."""

    def __init__(self, widths=(16, 32, 64, 96, 128), blocks=(1, 1, 2, 1, 1), strides=(2, 1, 2, 1, 1),
                 lr: bool = False) -> None:
        super().__init__()
        nominal = list(strides)
        strides = list(strides)
        if lr:
            first = next((i for i, s in enumerate(strides) if s == 2), None)
            if first is None:
                raise ValueError("ResNetBackbone(lr=True) needs a stride-2 stage to halve")
            strides[first] = 1
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, cin = [], widths[0]
        for w, n, s, s0 in zip(widths, blocks, strides, nominal):
            stage = [BasicBlock(cin, w, (s, s), project=s0 != 1)] + [BasicBlock(w, w, (1, 1)) for _ in range(n - 1)]
            layers.append(nn.Sequential(*stage))
            cin = w
        self.stages = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))


def _conv_bn(cin: int, cout: int, stride=(1, 1)) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PositionAttention(nn.Module):
    """Queries = learned position embeddings; keys = a mini U-Net over the feature map; values = the features."""

    def __init__(self, channels: int, max_steps: int, grid: tuple[int, int], mid: int = 64) -> None:
        super().__init__()
        self.max_steps = max_steps
        h, w = grid
        self.k_enc = nn.ModuleList([_conv_bn(channels, mid, (1, 2)), _conv_bn(mid, mid, (2, 2)), _conv_bn(mid, mid, (2, 2))])
        self.k_dec = nn.ModuleList([_conv_bn(mid, mid), _conv_bn(mid, mid), _conv_bn(mid, channels)])
        self.sizes = [(h, w // 2), (h // 2, w // 4), (h // 4, w // 8)]
        self.pos = nn.Parameter(torch.randn(1, max_steps, channels) * 0.02)
        self.project = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, C, H, W = x.shape
        k, skips = x, []
        for enc in self.k_enc:
            k = enc(k)
            skips.append(k)
        # decode back up with skips (fixed output sizes: export-friendly, no data-dependent shapes)
        targets = [(H // 2, W // 4), (H, W // 2), (H, W)]
        for i, dec in enumerate(self.k_dec):
            k = F.interpolate(k, size=targets[i], mode="nearest")
            k = dec(k)
            if i < 2:
                k = k + skips[1 - i]
        q = self.project(self.pos).expand(B, -1, -1)  # (B, T, C)
        scores = torch.bmm(q, k.flatten(2)) / (C ** 0.5)  # (B, T, HW)
        attn = scores.softmax(-1)
        vecs = torch.bmm(attn, x.flatten(2).transpose(1, 2))  # (B, T, C)
        return vecs, attn.view(B, -1, H, W)


class CNNAttn(nn.Module):
    """ResNet + position attention, parallel (non-autoregressive) decoding: max_len + 1 steps, EOS = class 0."""

    decoder_type = "attn"

    def __init__(self, num_classes: int, max_len: int = 25, img_size=(32, 128), lr: bool = False,
                 widths=(16, 32, 64, 96, 128), blocks=(1, 1, 2, 1, 1), strides=(2, 1, 2, 1, 1)) -> None:
        super().__init__()
        self.max_len = max_len
        self.img_size = tuple(img_size)
        self.eos_id, self.bos_id, self.pad_id = 0, num_classes - 2, num_classes - 1
        self.backbone = ResNetBackbone(widths, blocks, strides, lr)
        grid = (img_size[0] // (2 if lr else 4), img_size[1] // (2 if lr else 4))
        self.grid = grid
        self.attention = PositionAttention(self.backbone.out_channels, max_len + 1, grid)
        self.cls = nn.Linear(self.backbone.out_channels, num_classes - 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.cls(self.attention(self.backbone(x))[0]).softmax(-1)

    def decode_logits(self, x: Tensor, early_stop: bool = False) -> Tensor:
        return self.cls(self.attention(self.backbone(x))[0])

    def forward_train(self, x: Tensor, tgt: Tensor, perms=None, generator=None) -> RecOut:
        feats = self.backbone(x)
        vecs, attn = self.attention(feats)
        T = vecs.shape[1]
        target = tgt[:, 1:]  # drop BOS: chars, EOS, PAD
        if target.shape[1] < T:
            target = F.pad(target, (0, T - target.shape[1]), value=self.pad_id)
        return RecOut([self.cls(vecs)], [vecs], feats, attn, [target[:, :T]])


class CNNCTC(nn.Module):
    """ResNet + CTC: the feature map's height is pooled away, each of the W columns is a frame."""

    decoder_type = "ctc"

    def __init__(self, num_classes: int, max_len: int = 25, img_size=(32, 128), lr: bool = False,
                 widths=(16, 32, 48, 64, 96), blocks=(1, 1, 1, 1, 1), strides=(2, 1, 2, 1, 1), hidden: int = 128) -> None:
        super().__init__()
        self.max_len = max_len
        self.img_size = tuple(img_size)
        self.blank_id = 0
        self.backbone = ResNetBackbone(widths, blocks, strides, lr)
        c = self.backbone.out_channels
        self.grid = (img_size[0] // (2 if lr else 4), img_size[1] // (2 if lr else 4))
        # Collapse height with a learned (H x 1) conv rather than a mean: keeps where in the column ink sits.
        self.collapse = nn.Sequential(nn.Conv2d(c, hidden, (self.grid[0], 1)), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.context = nn.Sequential(nn.Conv1d(hidden, hidden, 3, 1, 1), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
        self.cls = nn.Linear(hidden, num_classes)

    def frames(self, feats: Tensor) -> Tensor:
        f = self.collapse(feats).squeeze(2)  # (B, hidden, W): height is exactly 1 here
        f = f + self.context(f)
        return f.transpose(1, 2)  # (B, T, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.cls(self.frames(self.backbone(x))).softmax(-1)

    def decode_logits(self, x: Tensor, early_stop: bool = False) -> Tensor:
        return self.cls(self.frames(self.backbone(x)))

    def forward_train(self, x: Tensor, tgt=None, perms=None, generator=None) -> RecOut:
        feats = self.backbone(x)
        fr = self.frames(feats)
        return RecOut([self.cls(fr)], [fr], feats, None, None)
