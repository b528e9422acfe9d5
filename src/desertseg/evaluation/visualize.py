"""Pictures of predictions: colour masks, overlays, error maps, confidence maps, the legend.

All functions take and return numpy arrays (``(H, W, 3)`` uint8 RGB), so the CLI, the
report and the dashboard draw the same things.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..classes import CLASSES, IGNORE_INDEX, PALETTE, colorize


def overlay(image: np.ndarray, mask: np.ndarray, opacity: float = 0.5, visible: Iterable[int] | None = None) -> np.ndarray:
    """Blend class colours over ``image``; only classes in ``visible`` (all by default) are drawn."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}")
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but mask is {mask.shape[1]}x{mask.shape[0]}")
    colour = colorize(mask).astype(np.float32)
    alpha = np.full(mask.shape, opacity, dtype=np.float32)
    alpha[mask == IGNORE_INDEX] = 0
    if visible is not None:
        alpha[~np.isin(mask, np.fromiter(visible, dtype=np.int64))] = 0
    alpha = alpha[..., None]
    return (image.astype(np.float32) * (1 - alpha) + colour * alpha).round().astype(np.uint8)


def error_map(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Correct pixels dark green, wrong ones red, ignored ground truth black."""
    out = np.zeros((*target.shape, 3), dtype=np.uint8)
    valid = target != IGNORE_INDEX
    out[valid & (pred == target)] = (20, 110, 40)
    out[valid & (pred != target)] = (230, 30, 30)
    return out


def confidence_image(confidence: np.ndarray) -> np.ndarray:
    """``(H, W)`` probabilities in [0, 1] -> a viridis-coloured image (bright = confident)."""
    from matplotlib import colormaps

    lut = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return lut[np.clip(confidence * 255, 0, 255).astype(np.uint8)]


def legend_image(swatch: int = 22, width: int = 220, classes: Iterable[int] | None = None) -> np.ndarray:
    """A vertical legend of class colours and names."""
    from PIL import Image, ImageDraw

    items = [c for c in CLASSES if classes is None or c.index in set(classes)]
    img = Image.new("RGB", (width, swatch * len(items) + 8), "white")
    draw = ImageDraw.Draw(img)
    for row, c in enumerate(items):
        y = 4 + row * swatch
        draw.rectangle([4, y + 2, 4 + swatch - 4, y + swatch - 2], fill=tuple(PALETTE[c.index]), outline=(0, 0, 0))
        draw.text((swatch + 8, y + swatch // 2 - 6), f"{c.name} ({c.raw_id})", fill=(0, 0, 0))
    return np.asarray(img)


def class_shares(mask: np.ndarray, num_classes: int = len(CLASSES)) -> np.ndarray:
    """Share of pixels per class in a class-index mask (ignored pixels excluded)."""
    counts = np.bincount(mask[mask < num_classes].ravel(), minlength=num_classes).astype(np.float64)
    total = counts.sum()
    return counts / total if total else counts
