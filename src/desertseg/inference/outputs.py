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

Videos go to ``video/<stem>.mp4`` plus ``video/<stem>_class_shares.csv`` (see :mod:`desertseg.inference.video`).
A bad file is reported in the returned :class:`Summary` and skipped; the rest finish.
Images stream through in batches: memory does not grow with the number of inputs.
With ``recursive``, images in sub-folders of a folder input keep their relative path
(``index/day1/a.png``, ``index/day2/a.png``).

Every file is written under a temporary name (``.<name>.*``, beside it) and renamed, so a crash
never leaves half files under an output name. ``resume`` continues a killed run: an image whose
requested outputs all exist is skipped, and temporary files left by the kill are removed.

Shape: images ``(H, W, 3)`` uint8 RGB in; masks ``(H, W)`` out at the same ``H, W``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from ..classes import colorize, index_to_raw
from ..data.decoding import DataError
from ..io import atomic_write
from .inputs import collect_inputs
from .pipeline import Pipeline

SUBFOLDERS = ("index", "raw", "color", "overlay", "confidence", "coarse", "cost", "video")


@dataclass
class Summary:
    """What a prediction run did: counts of written outputs and one line per failed input."""

    out_dir: Path
    written: int = 0  # images
    videos: int = 0
    skipped: int = 0  # images whose outputs all existed (resume)
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


def output_paths(out_dir: Path, name: str, confidence: bool = False, coarse: bool = False, cost: bool = False) -> dict[str, Path]:
    """The files :func:`write_outputs` writes for one image, by subfolder."""
    kinds = ["index", "raw", "color", "overlay"] + ["confidence"] * confidence + ["coarse"] * coarse + ["cost"] * cost
    return {k: Path(out_dir) / k / f"{name}{'.jpg' if k == 'overlay' else '.png'}" for k in kinds}


def remove_temporary_files(out_dir: Path) -> None:
    """Delete the temporary files (``.<name>.*``) a killed run left in the output subfolders."""
    for sub in SUBFOLDERS:
        for p in (Path(out_dir) / sub).rglob(".*"):
            if p.is_file():
                p.unlink()


def _save(array: np.ndarray, path: Path, fmt: str, **kwargs) -> None:
    img = Image.fromarray(array)
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt, **kwargs))


def write_outputs(out_dir: Path, name: str, image: np.ndarray, mask: np.ndarray, opacity: float = 0.5, confidence: np.ndarray | None = None, coarse: bool = False, cost: bool = False) -> None:
    """Write one image's index, raw-id, colour, overlay (and confidence, coarse, cost) files."""
    from ..evaluation.visualize import confidence_image, overlay

    paths = output_paths(out_dir, name, confidence is not None, coarse, cost)
    _save(np.ascontiguousarray(mask, dtype=np.uint8), paths["index"], "PNG")
    # PIL stores a uint16 array as a 16-bit greyscale PNG (mode I;16), like Duality's masks.
    _save(np.ascontiguousarray(index_to_raw(mask)), paths["raw"], "PNG")
    _save(colorize(mask), paths["color"], "PNG")
    _save(overlay(image, mask, opacity), paths["overlay"], "JPEG", quality=92)
    if confidence is not None:
        _save(confidence_image(confidence), paths["confidence"], "PNG")
    if coarse or cost:
        from ..data.coarse import colorize_groups, cost_map, to_groups

        if coarse:
            _save(colorize_groups(to_groups(mask)), paths["coarse"], "PNG")
        if cost:
            _save(cost_map(mask), paths["cost"], "PNG")


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
    recursive: bool = False,
    resume: bool = False,
    workers: int = 1,
) -> Summary:
    """Segment every image and video in ``inputs`` with ``predictor`` and write the outputs.

    Args:
        predictor: a :class:`desertseg.inference.predict.Predictor`.
        inputs: files, folders or glob patterns of images and videos.
        out_dir: output folder; refused when it exists and is not empty unless ``overwrite`` or ``resume``.
        opacity: colour opacity of overlays, in [0, 1].
        confidence: also write confidence maps (needs probabilities: slower, more memory).
        batch_size: images per forward pass.
        coarse: also write the coarse-group view; cost: also write traversability cost maps.
        recursive: search folder inputs recursively; outputs keep the relative sub-folders.
        resume: skip images whose requested outputs all exist (counted in ``skipped``) and
            remove temporary files left by a killed run; videos are segmented again.
        workers: background threads that decode the next images and write the last outputs
            while the model runs (0: every step in turn, in this thread).

    Returns a :class:`Summary`; inputs that could not be read are listed in ``errors``.
    """
    from tqdm import tqdm

    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    out_dir = check_out_dir(out_dir, overwrite or resume)
    images, videos, errors = collect_inputs(inputs, recursive)
    summary = Summary(out_dir, errors=errors)
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        remove_temporary_files(out_dir)

    todo = [(path, name) for path, name in images if not (resume and all(p.exists() for p in output_paths(out_dir, name, confidence, coarse, cost).values()))]
    summary.skipped = len(images) - len(todo)

    def write(batch: list[tuple[str, np.ndarray]], preds) -> None:
        for (name, image), pred in zip(batch, preds):
            write_outputs(out_dir, name, image, pred.mask, opacity, pred.confidence if confidence else None, coarse, cost)

    with tqdm(total=len(images), initial=summary.skipped, desc="predict", unit="img", disable=not progress or not images) as bar:
        _run_images(predictor, todo, write, summary, bar, batch_size, confidence, workers)
    if videos:
        _run_videos(predictor, videos, summary, opacity, batch_size, progress)
    return summary


def _run_videos(predictor, videos: list[tuple[Path, str]], summary: Summary, opacity: float, batch_size: int, progress: bool) -> None:
    """Each video to ``video/<name>.mp4`` and its class shares per frame; a bad one is an error, the rest go on."""
    from .video import predict_video  # OpenCV: the video extra, imported only when needed

    for path, name in videos:
        try:
            folder = summary.out_dir / "video"
            predict_video(predictor, path, folder / f"{name}.mp4", folder / f"{name}_class_shares.csv", opacity=opacity, batch_size=batch_size, progress=progress)
            summary.videos += 1
        except DataError as e:
            summary.errors.append(str(e))


def _run_images(predictor, todo: list[tuple[Path, str]], write, summary: Summary, bar, batch_size: int, return_probs: bool, workers: int) -> None:
    """Decode ``todo`` ahead, run the model in batches and hand each batch's predictions to
    ``write`` in the background (see :class:`Pipeline`); bad files go to ``summary.errors``."""

    def done(batch) -> None:
        summary.written += len(batch)
        bar.update(len(batch))

    with Pipeline(workers) as pipe:
        batch: list[tuple[str, np.ndarray]] = []  # decoded images waiting for the model
        for k, (name, image) in enumerate(pipe.decoded(todo, lookahead=2 * batch_size)):
            if isinstance(image, DataError):
                summary.errors.append(str(image))
                bar.update(1)
            else:
                batch.append((name, image))
            if batch and (len(batch) == batch_size or k == len(todo) - 1):
                pipe.write(write, batch, predictor.predict_batch([im for _, im in batch], return_probs=return_probs), done)
                batch = []
