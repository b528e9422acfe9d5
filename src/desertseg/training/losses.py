"""Losses for ``(N, C, H, W)`` logits against ``(N, H, W)`` targets with ignored pixels.

``ce`` is the seed recipe's plain cross-entropy. Class weights and the region losses
(Dice, Lovász) from segmentation-models-pytorch counter the heavy class imbalance
(Sky and Landscape hold over 60% of pixels, Logs under 0.1%).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..classes import IGNORE_INDEX, NUM_CLASSES

LOSSES = ("ce", "ce+dice", "ce+lovasz", "focal", "focal+dice")


class SegmentationLoss(nn.Module):
    """Sum of the named terms, e.g. ``"ce+dice"``."""

    def __init__(self, name: str = "ce", class_weights: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0):
        super().__init__()
        import segmentation_models_pytorch as smp

        if name not in LOSSES:
            raise ValueError(f"unknown loss '{name}'; choose one of: {', '.join(LOSSES)}")
        self.name = name
        terms: list[nn.Module] = []
        for part in name.split("+"):
            if part == "ce":
                terms.append(nn.CrossEntropyLoss(weight=class_weights, ignore_index=ignore_index, label_smoothing=label_smoothing))
            elif part == "dice":
                terms.append(smp.losses.DiceLoss("multiclass", from_logits=True, ignore_index=ignore_index))
            elif part == "lovasz":
                terms.append(smp.losses.LovaszLoss("multiclass", ignore_index=ignore_index))
            elif part == "focal":
                terms.append(smp.losses.FocalLoss("multiclass", ignore_index=ignore_index))
        self.terms = nn.ModuleList(terms)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(term(logits, target) for term in self.terms)


def class_weights(pixel_counts: np.ndarray, kind: str = "inverse_sqrt") -> torch.Tensor:
    """Per-class loss weights from training pixel counts, normalised to mean 1.

    ``inverse_sqrt`` (1/sqrt(frequency)) is milder than inverse frequency, which makes the
    rarest classes (Logs) dominate. Classes absent from training get the largest weight seen.
    """
    counts = np.asarray(pixel_counts, dtype=np.float64)
    if counts.shape != (NUM_CLASSES,):
        raise ValueError(f"expected {NUM_CLASSES} pixel counts, got shape {counts.shape}")
    freq = counts / max(counts.sum(), 1.0)
    present = freq > 0
    w = np.ones(NUM_CLASSES)
    if kind == "inverse_sqrt":
        w[present] = 1.0 / np.sqrt(freq[present])
    elif kind == "inverse":
        w[present] = 1.0 / freq[present]
    elif kind != "none":
        raise ValueError(f"unknown class weighting '{kind}'; choose inverse_sqrt, inverse or none")
    if present.any():
        w[~present] = w[present].max()
    return torch.tensor(w / w.mean(), dtype=torch.float32)
