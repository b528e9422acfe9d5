"""Honest evaluation: ONE confusion matrix over every pixel of the dataset, at the masks' own
resolution (predictions are resized back to 960x540 before comparison), with latency.

The ``resized`` protocol (compare at the model's input size, masks resized with nearest) is
available for comparison with systems that report it; it is not the default.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..classes import CLASS_NAMES, NUM_CLASSES
from ..data.coarse import GROUP_NAMES, coarse_summary, group_confusion, mapping_table
from ..data.decoding import DataError, check_mask_size, read_image, resize_mask
from ..data.formats import DatasetFormat, get_format
from ..data.samples import Sample
from ..inference.predict import Predictor
from ..inference.runtime import describe_device
from ..metrics import confusion_matrix, summarize


def labelled_pairs(samples: list[Sample], read_labels, errors: list[str]) -> Iterator[tuple[Sample, np.ndarray, np.ndarray, float]]:
    """``(sample, image (H, W, 3) uint8, target (H, W) uint8, decode seconds)`` per readable pair.

    ``read_labels`` turns a mask file into label indices (the dataset format's reader). A file
    that cannot be read, or a mask of another size than its image, is appended to ``errors``
    and skipped, never silently.
    """
    for s in samples:
        t0 = time.perf_counter()
        try:
            image = read_image(s.image)
            target = read_labels(s.mask)
            check_mask_size(s.mask, target.shape, image.shape)
        except DataError as e:
            errors.append(str(e))
            continue
        yield s, image, target, time.perf_counter() - t0


def evaluate(predictor: Predictor, samples: list[Sample], protocol: str = "full", progress: bool = True, keep_per_image: bool = True, fmt: DatasetFormat | None = None) -> dict:
    """Evaluate ``predictor`` on image/mask ``samples`` of dataset format ``fmt`` (Duality's by default).

    One loop accumulates ONE table of pixel counts, the dataset's labels against the predicted
    desert classes; the metrics are summaries of it. For Duality masks (labels = the 10 classes)
    it is the confusion matrix: the metrics of :func:`desertseg.metrics.summarize` at the top
    level, the coarse groups under ``coarse``. For another label set the coarse-group metrics
    (:func:`desertseg.data.coarse.coarse_summary`) are the top level, with ``label_vs_prediction``.
    Both carry ``confusion_matrix``, ``latency_ms`` (end-to-end: decode -> prediction at full
    size, and model-only), ``per_image`` scores (for worst-N galleries) and ``errors`` (files
    that could not be read; they are skipped, never silently).
    """
    from tqdm import tqdm

    if protocol not in ("full", "resized"):
        raise ValueError("protocol must be 'full' or 'resized'")
    fmt = fmt or get_format("duality")
    fine = tuple(fmt.class_names) == tuple(CLASS_NAMES)
    cross = np.zeros((len(fmt.class_names), NUM_CLASSES), dtype=np.int64)
    per_image, errors, e2e = [], [], []
    model_before = predictor.timing.model
    pairs = labelled_pairs(samples, fmt.read_labels, errors)
    for s, image, target, decode_s in tqdm(pairs, total=len(samples), desc=f"evaluate {fmt.name}", unit="img", disable=not progress):
        t0 = time.perf_counter()
        pred = predictor.predict(image).mask
        if protocol == "resized":
            # Both sides at the model's input size, nearest only (labels are never blended).
            target = resize_mask(target, predictor.input_size)
            pred = resize_mask(pred, predictor.input_size)
        e2e.append(decode_s + time.perf_counter() - t0)
        one = confusion_matrix(pred, target, NUM_CLASSES, num_targets=len(fmt.class_names))
        cross += one
        if keep_per_image:
            m = summarize(one) if fine else coarse_summary(group_confusion(one, fmt.coarse_lut))
            per_image.append({"name": s.name, "image": str(s.image), "mask": str(s.mask), "miou_present": m["miou_present"], "pixel_accuracy": m["pixel_accuracy"]})
    result = summaries(cross, fmt)
    n = len(e2e)
    result.update(
        {
            "dataset": fmt.name,
            "dataset_description": fmt.description,
            "images": n,
            "protocol": protocol,
            "latency_ms": {
                "end_to_end_mean": 1000 * float(np.mean(e2e)) if n else None,
                "end_to_end_p50": 1000 * float(np.median(e2e)) if n else None,
                "model_mean": 1000 * (predictor.timing.model - model_before) / n if n else None,
                "device": describe_device(predictor.device),
                "threads": torch.get_num_threads(),
            },
            "model": predictor.metadata.get("model"),
            "checkpoint": predictor.metadata.get("path"),
            "tta": {"flip": predictor.flip, "scales": list(predictor.scales), "sliding_window": predictor.sliding_window},
            "per_image": per_image,
            "errors": errors,
        }
    )
    return result


def summaries(cross: np.ndarray, fmt: DatasetFormat) -> dict:
    """The metrics of one table of pixel counts (``fmt``'s labels x the desert classes): the fine
    metrics with the coarse groups under ``coarse`` for Duality's labels, else the coarse metrics
    with the table and the label mapping."""
    groups = group_confusion(cross, fmt.coarse_lut)
    coarse = coarse_summary(groups)
    coarse.update(groups=list(GROUP_NAMES), confusion_matrix=groups.tolist())
    if tuple(fmt.class_names) == tuple(CLASS_NAMES):
        result = summarize(cross)
        result.update(confusion_matrix=cross.tolist(), coarse=coarse)
        return result
    coarse["label_vs_prediction"] = {"labels": list(fmt.class_names), "predicted": list(CLASS_NAMES), "counts": cross.tolist()}
    coarse["mapping"] = {"dataset": [dict(r) for r in fmt.table], "desert": mapping_table()}
    return coarse


def format_scores(result: dict) -> str:
    """Metrics as a Markdown table (per class, then the summary)."""
    lines = ["| class | IoU | precision | recall | F1 | GT share | pred share |", "|---|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    for c in result["per_class"]:
        name = c["class"] if c["present"] else f"{c['class']} (absent)"
        lines.append(f"| {name} | {fmt(c['iou'])} | {fmt(c['precision'])} | {fmt(c['recall'])} | {fmt(c['f1'])} | {c['gt_share']:.2%} | {c['pred_share']:.2%} |")
    lat = result["latency_ms"]
    lines += [
        "",
        "| metric | value |",
        "|---|---:|",
        f"| mIoU, all {len(result['per_class'])} classes | {result['miou_all']:.4f} |",
        f"| mIoU, {result['num_present']} classes present in ground truth | {result['miou_present']:.4f} |",
        f"| pixel accuracy | {result['pixel_accuracy']:.2%} |",
        f"| mean class accuracy | {result['mean_class_accuracy']:.4f} |",
        f"| frequency-weighted IoU | {result['fw_iou']:.4f} |",
        f'| share of classes with IoU >= 0.5 (the seed\'s "mAP50") | {result["share_iou_ge_0.5"]:.2f} |',
        f"| images | {result['images']} ({result['protocol']} resolution protocol) |",
        f"| latency per image, end-to-end mean | {fmt(lat['end_to_end_mean'])} ms |",
        f"| latency per image, model only | {fmt(lat['model_mean'])} ms |",
        f"| device | {lat['device']} |",
    ]
    if result["errors"]:
        lines += ["", f"{len(result['errors'])} files could not be read:"] + [f"- {e}" for e in result["errors"]]
    return "\n".join(lines)


def write_results(result: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "metrics.json", out_dir / "metrics.md"
    js.write_text(json.dumps(result, indent=2))
    md.write_text(f"# Evaluation of {result.get('model')}\n\nCheckpoint: `{result.get('checkpoint')}`\n\n" + format_scores(result) + "\n")
    return js, md
