"""Torch ``Dataset`` wrappers over the torch-free readers in ``runtime.datasets``.

Every item is a dict ``{"hr": 3xHxW, "lr": 3xhxw float tensors in [-1, 1], "label": str, "key": str}``:
TextZoom lmdbs give their stored LR; STR lmdbs and image folders get LR made on the fly by the camera-chain
degradation (a fresh draw every epoch, reproducible from (seed, epoch, index)). The resize/normalise step is
``runtime.preprocess``, the same one inference uses.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from runtime.conditions import area_resize
from runtime.datasets import CorruptSample, DataError, LabelPolicy, Reader, open_dataset
from runtime.preprocess import HR_SIZE, LR_SIZE, prepare

from .degrade import degrade, strength_for

__all__ = ["PairDataset", "WeightedConcat", "WithTeacherTargets", "collate", "image_to_tensor"]

log = logging.getLogger(__name__)


def image_to_tensor(img: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    return torch.from_numpy(prepare(img, size))  # the runtime's preprocessing, byte for byte


class PairDataset(Dataset):
    """LR/HR pairs from any supported layout.

    lr_mode: ``stored`` (TextZoom's LR images), ``degrade`` (made from HR by the camera chain) or ``auto``
    (stored when the layout has LR images, degrade otherwise).
    augment: optional ``fn(hr_uint8, rng) -> hr_uint8`` applied to the HR crop before LR is made from it.
    clean: with ``degrade``, the share of samples whose LR is the HR crop area-resized to ``lr_size`` and nothing
    else (the ``lr16`` condition of the benchmarks) instead of a draw of the camera chain.
    """

    def __init__(
        self,
        source: str | Reader,
        hr_size: tuple[int, int] = HR_SIZE,
        lr_size: tuple[int, int] = LR_SIZE,
        lr_mode: str = "auto",
        level: str = "mixed",
        seed: int = 0,
        policy: LabelPolicy | None = None,
        augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        limit: int = 0,
        clean: float = 0.0,
        at_lr_height: float = 0.0,
    ) -> None:
        for name, share in (("clean", clean), ("at_lr_height", at_lr_height)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name}: expected a share in [0, 1], got {share}")
        self.reader = source if isinstance(source, Reader) else open_dataset(source, policy)
        self.limit = int(limit)
        if lr_mode == "auto":
            lr_mode = "stored" if self.reader.layout == "textzoom" else "degrade"
        if lr_mode not in ("stored", "degrade"):
            raise ValueError(f"lr_mode: expected auto, stored or degrade, got {lr_mode!r}")
        if lr_mode == "stored" and self.reader.layout != "textzoom":
            raise ValueError(f"{self.reader.path}: lr_mode 'stored' needs a TextZoom-layout lmdb, got {self.reader.layout}")
        if lr_mode == "stored" and len(self.reader):
            key = f"image_lr-{self.reader.keys[0]}"
            with self.reader.env.begin() as txn:
                if txn.get(key.encode()) is None:  # checked before training, not after 64 failed samples
                    raise DataError(f"{self.reader.path}: a TextZoom-layout lmdb without its LR images ({key} missing); "
                                    "set its lr_mode: degrade to make LR from the HR crops")
        if (clean or at_lr_height) and lr_mode != "degrade":
            raise ValueError(f"{self.reader.path}: clean and at_lr_height shape the camera chain's LR, so they need "
                             f"lr_mode degrade (this source's LR is {lr_mode})")
        self.hr_size, self.lr_size = hr_size, lr_size
        self.lr_mode, self.level, self.seed, self.clean = lr_mode, level, seed, float(clean)
        self.at_lr_height = float(at_lr_height)
        self.augment = augment
        self.epoch = 0
        self.skipped: list[str] = []  # keys met that could not be decoded (per process)

    @property
    def labels(self) -> list[str]:
        return self.reader.labels

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return min(len(self.reader), self.limit) if self.limit else len(self.reader)

    def _load(self, i: int) -> dict:
        s = self.reader[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        hr = s.image
        if self.augment is not None:
            hr = self.augment(hr, rng)
        if self.lr_mode == "stored":
            lr = s.lr
        elif self.clean and rng.random() < self.clean:  # (no draw when clean is 0: older seeds keep their samples)
            lr = area_resize(hr, self.lr_size)
        else:
            native = self.at_lr_height and rng.random() < self.at_lr_height  # (no draw when 0: seeds keep samples)
            lr, _, _ = degrade(hr, rng, strength_for(self.level, rng), self.lr_size[0] if native else 0)
        return {"hr": image_to_tensor(hr, self.hr_size), "lr": image_to_tensor(lr, self.lr_size), "label": s.label,
                "key": s.key}

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        for k in range(min(n, 64)):
            j = (i + k) % n
            try:
                return self._load(j)
            except CorruptSample as e:
                # Never crash mid-epoch on one bad image: count it, say which, and take the next sample.
                if e.key not in self.skipped:
                    self.skipped.append(e.key)
                    self.reader.record_skip(e.key)
                    log.warning("%s: skipping %s", self.reader.path, e)
        raise RuntimeError(f"{self.reader.path}: 64 consecutive samples from index {i} failed to decode")


class WeightedConcat(Dataset):
    """Draws from several datasets with the given weights. An epoch has ``length`` items (default: the sum of
    the lengths); the draw of (dataset, index) for each position is fixed by (seed, epoch)."""

    def __init__(self, datasets: Sequence[Dataset], weights: Sequence[float] | None = None,
                 length: int | None = None, seed: int = 0) -> None:
        if not datasets:
            raise ValueError("WeightedConcat: no datasets")
        weights = list(weights) if weights is not None else [float(len(d)) for d in datasets]
        if len(weights) != len(datasets):
            raise ValueError(f"WeightedConcat: {len(weights)} weights for {len(datasets)} datasets")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"WeightedConcat: weights must be >= 0 with a positive sum, got {weights}")
        empty = [i for i, d in enumerate(datasets) if len(d) == 0 and weights[i] > 0]
        if empty:
            raise ValueError(f"WeightedConcat: datasets {empty} are empty but have positive weight")
        self.datasets = list(datasets)
        self.p = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.length = int(length) if length is not None else sum(len(d) for d in datasets)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch, 7919])
        self._which = rng.choice(len(self.datasets), size=self.length, p=self.p)
        self._index = np.array([rng.integers(0, max(1, len(self.datasets[k]))) for k in self._which], dtype=np.int64)
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return self.datasets[int(self._which[i])][int(self._index[i])]


class WithTeacherTargets(Dataset):
    """Adds an ONNX teacher's cached targets to each item: ``t_probs`` (F x C frame distributions in the student's
    classes), ``t_feats`` (F x D, when the teacher exposes a feature) and ``has_label``. Unlabeled sources take the
    teacher's string as label when its confidence reaches ``conf_threshold``; below it the item trains on the soft
    targets alone (``has_label`` False)."""

    def __init__(self, ds: PairDataset, cache, unlabeled: bool = False, conf_threshold: float = 0.7) -> None:
        self.ds, self.cache, self.unlabeled, self.threshold = ds, cache, unlabeled, conf_threshold

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        item = self.ds[i]
        t = self.cache.get(item["key"])
        if t is None:
            raise KeyError(f"{self.cache.path}: no teacher targets for sample {item['key']} of {self.ds.reader.path}; "
                           "delete the cache to rebuild it")
        item["t_probs"] = torch.from_numpy(t.probs.astype(np.float32))
        if t.feats is not None:
            item["t_feats"] = torch.from_numpy(t.feats.astype(np.float32))
        if self.unlabeled:
            item["label"] = t.text if t.conf >= self.threshold else ""
        item["has_label"] = bool(item["label"])
        return item


def collate(batch: list[dict]) -> dict:
    out = {
        "hr": torch.stack([b["hr"] for b in batch]),
        "lr": torch.stack([b["lr"] for b in batch]),
        "label": [b["label"] for b in batch],
        "key": [b["key"] for b in batch],
    }
    if "t_probs" in batch[0]:
        out["t_probs"] = torch.stack([b["t_probs"] for b in batch])
        out["has_label"] = torch.tensor([b["has_label"] for b in batch])
    if "t_feats" in batch[0]:
        out["t_feats"] = torch.stack([b["t_feats"] for b in batch])
    return out
