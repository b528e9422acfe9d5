"""Inference: a :class:`Predictor` loaded once from a model file, used by the CLI, the
evaluation and the dashboard alike, so preprocessing lives in one place.

Shape:
    in ``(H, W, 3)`` uint8 RGB at any size; out ``(H, W)`` uint8 class indices at the same
    size, and optionally ``(C, H, W)`` float32 probabilities.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import default_model_path, load_model
from .data import resize_image
from .transforms import normalize


@dataclass
class Prediction:
    mask: np.ndarray  # (H, W) uint8 class indices
    probs: np.ndarray | None = None  # (C, H, W) float32, when asked for

    @property
    def confidence(self) -> np.ndarray:
        """``(H, W)`` float32 probability of the predicted class."""
        if self.probs is None:
            raise ValueError("confidence needs probabilities: call predict(..., return_probs=True)")
        return self.probs.max(0)


@dataclass
class Timing:
    """Seconds spent, accumulated over calls; ``images`` counts images."""

    preprocess: float = 0.0
    model: float = 0.0
    postprocess: float = 0.0
    images: int = 0
    per_image: list = field(default_factory=list)


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Predictor:
    """Segment images with a trained model.

    Args:
        model: a module mapping ``(N, 3, h, w)`` normalised images to ``(N, C, h, w)`` logits.
        metadata: the model file's metadata (input size, classes, ...).
        device: ``"cpu"``, ``"cuda"`` or ``None`` for CUDA when present.
        flip: test-time augmentation with a horizontal flip (probabilities averaged).
        scales: test-time multi-scale factors of the input size, e.g. ``(0.75, 1.0, 1.25)``.
        sliding_window: run at the image's own resolution in overlapping windows of the
            model's input size (for images larger than the training size).
    """

    def __init__(self, model: torch.nn.Module, metadata: dict, device: str | None = None, flip: bool = False, scales: Sequence[float] = (1.0,), sliding_window: bool = False):
        self.device = pick_device(device)
        self.model = model.eval().to(self.device)
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.metadata = metadata
        self.input_size: tuple[int, int] = tuple(metadata["input_size"])  # (H, W)
        self.num_classes = int(metadata["num_classes"])
        self.flip = flip
        self.scales = tuple(scales)
        self.sliding_window = sliding_window
        self.timing = Timing()

    @classmethod
    def from_checkpoint(cls, path: Path | str | None = None, **kwargs) -> "Predictor":
        """Load a release ``.safetensors`` model file; ``None`` means the bundled default model."""
        path = Path(path) if path is not None else default_model_path()
        model, meta = load_model(path)
        meta = {**meta, "path": str(path)}
        return cls(model, meta, **kwargs)

    @property
    def name(self) -> str:
        return f"{self.metadata['model']} ({Path(self.metadata.get('path', '?')).name})"

    @torch.inference_mode()
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, h, w)`` float in [0, 1] -> ``(N, C, h, w)`` logits."""
        x = normalize(x.to(self.device))
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).float()

    def _probs_at(self, images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
        """Softmax probabilities ``(N, C, h, w)`` at ``size``, with flip TTA when enabled."""
        t0 = time.perf_counter()
        batch = np.stack([resize_image(im, size) for im in images])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255)
        t1 = time.perf_counter()
        probs = self._logits(x).softmax(1)
        if self.flip:
            probs += self._logits(x.flip(-1)).softmax(1).flip(-1)
            probs /= 2
        self.timing.preprocess += t1 - t0
        self.timing.model += time.perf_counter() - t1
        return probs

    def _sliding(self, image: np.ndarray) -> torch.Tensor:
        """Probabilities at the image's own size from overlapping windows (1/3 overlap)."""
        H, W = image.shape[:2]
        h, w = min(self.input_size[0], H), min(self.input_size[1], W)
        ys = _starts(H, h)
        xs = _starts(W, w)
        probs = torch.zeros(1, self.num_classes, H, W, device=self.device)
        count = torch.zeros(1, 1, H, W, device=self.device)
        for y in ys:
            for x in xs:
                crop = image[y : y + h, x : x + w]
                probs[..., y : y + h, x : x + w] += self._probs_at([crop], (h, w))
                count[..., y : y + h, x : x + w] += 1
        return probs / count

    def predict_batch(self, images: Sequence[np.ndarray], return_probs: bool = False) -> list[Prediction]:
        """Segment images of one size or many; each result is at its image's own size."""
        for i, im in enumerate(images):
            if not (isinstance(im, np.ndarray) and im.ndim == 3 and im.shape[2] == 3 and im.dtype == np.uint8):
                raise ValueError(f"image {i}: expected (H, W, 3) uint8 RGB, got {getattr(im, 'shape', type(im))} {getattr(im, 'dtype', '')}")
        results: list[Prediction | None] = [None] * len(images)
        # Group by size so one forward pass serves each group.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape[:2], []).append(i)
        for (H, W), idx in groups.items():
            group = [images[i] for i in idx]
            if self.sliding_window:
                probs = torch.cat([self._sliding(im) for im in group])
            else:
                probs = 0
                for s in self.scales:
                    size = (max(8, round(self.input_size[0] * s)), max(8, round(self.input_size[1] * s)))
                    p = self._probs_at(group, size)
                    probs = probs + F.interpolate(p, size=(H, W), mode="bilinear", align_corners=False)
                probs = probs / len(self.scales)
            t0 = time.perf_counter()
            if probs.shape[-2:] != (H, W):
                probs = F.interpolate(probs, size=(H, W), mode="bilinear", align_corners=False)
            masks = probs.argmax(1).to(torch.uint8).cpu().numpy()
            p_np = probs.cpu().numpy().astype(np.float32) if return_probs else None
            for j, i in enumerate(idx):
                results[i] = Prediction(masks[j], p_np[j] if p_np is not None else None)
            self.timing.postprocess += time.perf_counter() - t0
        self.timing.images += len(images)
        return results  # type: ignore[return-value]

    def predict(self, image: np.ndarray, return_probs: bool = False) -> Prediction:
        """Segment one ``(H, W, 3)`` uint8 RGB image."""
        return self.predict_batch([image], return_probs)[0]


def _starts(total: int, window: int) -> list[int]:
    if total <= window:
        return [0]
    stride = max(1, window * 2 // 3)
    starts = list(range(0, total - window, stride))
    return starts + [total - window]
