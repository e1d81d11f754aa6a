"""New labelled LR views at every step of the INT8 fine-tuning (``--int8-finetune-views fresh``).

The cached fine-tuning inputs (``calibration.finetune_tensors``) are each crop under the benchmark's fixed
conditions, the same few thousand tensors every epoch. Here every step draws crops by weight from the fine-tuning
data, augments them (``distill.augment.text_augment``: small rotations, shears, crop jitter, photometric changes)
and makes them LR the way the students are trained (``distill.datasets.PairDataset``: a share only area-resized, the
rest a draw of the camera chain), so no view is seen twice. The FP32 file reads each view for the KL targets
(``qdq_finetune``), as ``train.lr_teacher`` does for a float student."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from runtime.datasets import LabelPolicy, open_dataset

from .calibration import CalibrationError, data_paths, existing_data

__all__ = ["FreshViews", "CLEAN_SHARE"]

CLEAN_SHARE = 0.4  # the students' recipes (configs/ppocrv6_student*.yaml): 40 % of the views are plain lr16


class FreshViews:
    """Batches of new views from ``data`` (comma-separated), drawn by ``weights`` (default: by size, as the cached
    inputs weigh them); each position of the stream is fixed by ``seed``, so a rerun trains on the same views."""

    def __init__(self, data: str, size: tuple[int, int], weights: Sequence[float] | None = None, seed: int = 0,
                 clean: float = CLEAN_SHARE) -> None:
        from distill.augment import text_augment
        from distill.datasets import PairDataset, WeightedConcat

        parts = data_paths(data)
        if weights is not None and len(weights) != len(parts):
            raise CalibrationError(f"--int8-finetune-weights: {len(weights)} weights for {len(parts)} "
                                   f"--int8-finetune-data sources")
        self.sources = []
        for i, part in enumerate(parts):
            reader = open_dataset(existing_data(part, "--int8-finetune-data"), LabelPolicy(max_len=0))
            stored = reader.layout == "textzoom"  # a TextZoom pair keeps its own LR image
            ds = PairDataset(reader, lr_size=size, lr_mode="stored" if stored else "degrade", seed=seed + 1 + i,
                             augment=None if stored else text_augment, clean=0.0 if stored else clean)
            if len(ds) == 0:
                raise CalibrationError(f"--int8-finetune-data {part}: no usable labelled crops")
            self.sources.append(ds)
        self.weights = list(weights) if weights is not None else [float(len(d)) for d in self.sources]
        self._mix = WeightedConcat(self.sources, self.weights, length=4096, seed=seed)
        self._epoch = -1

    @property
    def crops(self) -> int:
        return sum(len(d) for d in self.sources)

    def __str__(self) -> str:  # the INT8 file's metadata
        shares = ",".join(f"{w / sum(self.weights):.2f}" for w in self.weights)
        return f"new augmented views at every step of {self.crops} crops (shares {shares})"

    def __call__(self, step: int, batch: int) -> tuple[np.ndarray, list[str]]:
        """The views of ``step``: (batch, 3, H, W) network inputs and their labels."""
        xs, labels = [], []
        for pos in range(step * batch, (step + 1) * batch):
            epoch, i = divmod(pos, len(self._mix))
            if epoch != self._epoch:  # a new draw of sources, indices and degradations
                self._mix.set_epoch(epoch)
                self._epoch = epoch
            item = self._mix[i]
            xs.append(item["lr"].numpy())
            labels.append(item["label"])
        return np.stack(xs).astype(np.float32), labels
