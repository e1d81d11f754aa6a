"""Batched prediction with a PyTorch recognizer (the torch twin of runtime's Recognizer; scoring is
runtime.evaluation)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from runtime.charset import Decoded, Tokenizer
from runtime.preprocess import prepare_batch

__all__ = ["predict", "predict_arrays"]


@torch.no_grad()
def predict(model: nn.Module, tok: Tokenizer, x: torch.Tensor) -> list[Decoded]:
    """Images (B, 3, H, W) in [-1, 1] -> decoded strings with confidences."""
    dev = next(model.parameters()).device
    probs = model.decode_logits(x.to(dev), early_stop=True).float().softmax(-1)
    return tok.decode(probs.cpu().numpy())


def _to_tensor(imgs: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    return torch.from_numpy(prepare_batch(imgs, size))


def predict_arrays(model: nn.Module, tok: Tokenizer, imgs: list[np.ndarray], batch: int = 64) -> list[Decoded]:
    """RGB uint8 crops of any size -> predictions (resized to the model's input as in training)."""
    size = tuple(model.img_size)
    out: list[Decoded] = []
    for i in range(0, len(imgs), batch):
        out += predict(model, tok, _to_tensor(imgs[i : i + batch], size))
    return out
