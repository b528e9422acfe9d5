"""Prediction outputs on disk: the `desertseg predict` command's engine.

For every input image it writes, at the image's own resolution, into subfolders of the output
folder::

    index/<stem>.png       uint8 class indices 0..9 (the model's view)
    raw/<stem>.png         16-bit raw ids (100 ... 10000), scored exactly like Duality's masks
    color/<stem>.png       class colours from the class table
    overlay/<stem>.jpg     colours blended over the photo
    confidence/<stem>.png  probability of the predicted class (optional)
    coarse/<stem>.png      coarse groups (sky / vegetation / ground / obstacle), coloured (optional)
    cost/<stem>.png        8-bit traversability cost map, costs per class in coarse.py (optional)

Videos go to ``video/<stem>.mp4`` plus ``video/<stem>_class_shares.csv`` (see :mod:`desertseg.video`).
A bad file is reported in the returned :class:`Summary` and skipped; the rest finish.
Every file is written under a temporary name and renamed, so a crash never leaves half files.

Shape: images ``(H, W, 3)`` uint8 RGB in; masks ``(H, W)`` out at the same ``H, W``.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from .checkpoint import atomic_write
from .classes import colorize, index_to_raw
from .data import IMAGE_SUFFIXES, DataError, read_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
SUBFOLDERS = ("index", "raw", "color", "overlay", "confidence", "coarse", "cost", "video")


@dataclass
class Summary:
    """What a prediction run did: counts of written outputs and one line per failed input."""

    out_dir: Path
    written: int = 0  # images
    videos: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_out_dir(out_dir: Path | str, overwrite: bool = False) -> Path:
    """Refuse to write into an existing non-empty folder unless ``overwrite`` is set."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: output path exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir}: output folder is not empty; pass --overwrite to write into it anyway (files with the same names are replaced)")
    return out_dir


def collect_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[Path], list[str]]:
    """Expand files, folders (not recursive) and glob patterns into ``(images, videos, errors)``.

    Duplicates are dropped; inputs that match nothing or are not images/videos become errors.
    """
    images: list[Path] = []
    videos: list[Path] = []
    errors: list[str] = []
    seen: set[Path] = set()

    def add(path: Path, explicit: bool) -> None:
        key = path.resolve()
        if key in seen:
            return
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            images.append(path)
        elif suffix in VIDEO_SUFFIXES:
            videos.append(path)
        elif explicit:
            errors.append(f"{path}: not a supported image ({', '.join(IMAGE_SUFFIXES)}) or video ({', '.join(VIDEO_SUFFIXES)}) file")
            return
        else:
            return
        seen.add(key)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = [p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES]
            if not found:
                errors.append(f"{path}: folder holds no images or videos")
            for p in found:
                add(p, explicit=False)
        elif path.exists():
            add(path, explicit=True)
        elif glob.has_magic(str(item)):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES]
            if not files:
                errors.append(f"{item}: pattern matches no images or videos")
            for p in files:
                add(p, explicit=False)
        else:
            errors.append(f"{path}: file not found")
    return images, videos, errors


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output names from file stems; a repeated stem (a.png and a.jpg) gets a ``-2``, ``-3`` suffix."""
    used: dict[str, int] = {}
    names = []
    for p in paths:
        n = used.get(p.stem, 0) + 1
        used[p.stem] = n
        names.append(p.stem if n == 1 else f"{p.stem}-{n}")
    return names


def _save(array: np.ndarray, path: Path, fmt: str, **kwargs) -> None:
    img = Image.fromarray(array)
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt, **kwargs))


def write_outputs(out_dir: Path, name: str, image: np.ndarray, mask: np.ndarray, opacity: float = 0.5, confidence: np.ndarray | None = None, coarse: bool = False, cost: bool = False) -> None:
    """Write one image's index, raw-id, colour, overlay (and confidence, coarse, cost) files."""
    from .visualize import confidence_image, overlay

    out_dir = Path(out_dir)
    _save(np.ascontiguousarray(mask, dtype=np.uint8), out_dir / "index" / f"{name}.png", "PNG")
    # PIL stores a uint16 array as a 16-bit greyscale PNG (mode I;16), like Duality's masks.
    _save(np.ascontiguousarray(index_to_raw(mask)), out_dir / "raw" / f"{name}.png", "PNG")
    _save(colorize(mask), out_dir / "color" / f"{name}.png", "PNG")
    _save(overlay(image, mask, opacity), out_dir / "overlay" / f"{name}.jpg", "JPEG", quality=92)
    if confidence is not None:
        _save(confidence_image(confidence), out_dir / "confidence" / f"{name}.png", "PNG")
    if coarse or cost:
        from .coarse import colorize_groups, cost_map, to_groups

        if coarse:
            _save(colorize_groups(to_groups(mask)), out_dir / "coarse" / f"{name}.png", "PNG")
        if cost:
            _save(cost_map(mask), out_dir / "cost" / f"{name}.png", "PNG")


def predict_paths(
    predictor,
    inputs: Iterable[str | Path],
    out_dir: Path | str,
    opacity: float = 0.5,
    confidence: bool = False,
    batch_size: int = 4,
    overwrite: bool = False,
    progress: bool = True,
    coarse: bool = False,
    cost: bool = False,
) -> Summary:
    """Segment every image and video in ``inputs`` with ``predictor`` and write the outputs.

    Args:
        predictor: a :class:`desertseg.predict.Predictor`.
        inputs: files, folders or glob patterns of images and videos.
        out_dir: output folder; refused when it exists and is not empty unless ``overwrite``.
        opacity: colour opacity of overlays, in [0, 1].
        confidence: also write confidence maps (needs probabilities: slower, more memory).
        batch_size: images per forward pass.
        coarse: also write the coarse-group view; cost: also write traversability cost maps.

    Returns a :class:`Summary`; inputs that could not be read are listed in ``errors``.
    """
    from tqdm import tqdm

    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    out_dir = check_out_dir(out_dir, overwrite)
    images, videos, errors = collect_inputs(inputs)
    summary = Summary(out_dir, errors=errors)
    out_dir.mkdir(parents=True, exist_ok=True)

    names = _unique_stems(images)
    with tqdm(total=len(images), desc="predict", unit="img", disable=not progress or not images) as bar:
        for start in range(0, len(images), batch_size):
            batch: list[tuple[str, np.ndarray]] = []
            for path, name in zip(images[start : start + batch_size], names[start : start + batch_size]):
                try:
                    batch.append((name, read_image(path)))
                except DataError as e:
                    summary.errors.append(str(e))
                    bar.update(1)
            if not batch:
                continue
            preds = predictor.predict_batch([im for _, im in batch], return_probs=confidence)
            for (name, image), pred in zip(batch, preds):
                write_outputs(out_dir, name, image, pred.mask, opacity, pred.confidence if confidence else None, coarse, cost)
                summary.written += 1
                bar.update(1)

    if videos:
        from .video import predict_video

        for path, name in zip(videos, _unique_stems(videos)):
            try:
                predict_video(predictor, path, out_dir / "video" / f"{name}.mp4", out_dir / "video" / f"{name}_class_shares.csv", opacity=opacity, batch_size=batch_size, progress=progress)
                summary.videos += 1
            except DataError as e:
                summary.errors.append(str(e))
    return summary
