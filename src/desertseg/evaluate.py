"""Honest evaluation: ONE confusion matrix over every pixel of the dataset, at the masks' own
resolution (predictions are resized back to 960x540 before comparison), with latency.

The ``resized`` protocol (compare at the model's input size, masks resized with nearest) is
available for comparison with systems that report it; it is not the default.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .classes import CLASS_NAMES, raw_to_index
from .data import DataError, read_image, read_mask, resize_mask
from .metrics import confusion_matrix, summarize
from .predict import Predictor
from .runtime import describe_device
from .samples import Sample


def evaluate(predictor: Predictor, samples: list[Sample], protocol: str = "full", progress: bool = True, keep_per_image: bool = True) -> dict:
    """Evaluate ``predictor`` on image/mask ``samples``.

    Returns the metrics of :func:`desertseg.metrics.summarize` plus ``confusion_matrix``,
    ``latency_ms`` (end-to-end: decode -> prediction at full size, and model-only),
    ``per_image`` mIoU (for worst-N galleries) and ``errors`` (files that could not be read;
    they are skipped, never silently).
    """
    from tqdm import tqdm

    if protocol not in ("full", "resized"):
        raise ValueError("protocol must be 'full' or 'resized'")
    cm = np.zeros((len(CLASS_NAMES),) * 2, dtype=np.int64)
    per_image, errors, e2e = [], [], []
    model_before = predictor.timing.model
    for s in tqdm(samples, desc="evaluate", unit="img", disable=not progress):
        t0 = time.perf_counter()
        try:
            image = read_image(s.image)
            target = raw_to_index(read_mask(s.mask))
            if target.shape != image.shape[:2]:
                raise DataError(s.mask, f"mask is {target.shape[1]}x{target.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}")
        except DataError as e:
            errors.append(str(e))
            continue
        pred = predictor.predict(image).mask
        if protocol == "resized":
            # Both sides at the model's input size, nearest only (labels are never blended).
            target = resize_mask(target, predictor.input_size)
            pred = resize_mask(pred, predictor.input_size)
        e2e.append(time.perf_counter() - t0)
        one = confusion_matrix(pred, target)
        cm += one
        if keep_per_image:
            m = summarize(one)
            per_image.append({"name": s.name, "image": str(s.image), "mask": str(s.mask), "miou_present": m["miou_present"], "pixel_accuracy": m["pixel_accuracy"]})
    n = len(e2e)
    result = summarize(cm)
    result.update(
        {
            "images": n,
            "protocol": protocol,
            "confusion_matrix": cm.tolist(),
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


def format_table(result: dict) -> str:
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
        f"| share of classes with IoU >= 0.5 (the seed's \"mAP50\") | {result['share_iou_ge_0.5']:.2f} |",
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
    md.write_text(f"# Evaluation of {result.get('model')}\n\nCheckpoint: `{result.get('checkpoint')}`\n\n" + format_table(result) + "\n")
    return js, md
