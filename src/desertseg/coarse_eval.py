"""Evaluate a desert model on another dataset (real photographs) in shared coarse groups.

The model predicts the 10 desert classes; the dataset's labels are its own. Both are mapped
onto the groups of :mod:`desertseg.coarse` (the dataset's table comes from its format in
:mod:`desertseg.formats`) and ONE group confusion matrix is summed over every labelled pixel
of every image, at the masks' own resolution. A cross table of dataset labels against the
predicted desert classes is kept too: it shows *what* the model calls a trail or a bush.

Shape: images ``(H, W, 3)`` uint8 RGB; predictions and labels ``(H, W)`` uint8.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from .coarse import (
    GROUP_NAMES,
    coarse_confusion,
    coarse_summary,
    mapping_table,
    to_groups,
)
from .data import DataError, read_image
from .formats import DatasetFormat
from .io import atomic_write
from .samples import Sample


def evaluate_coarse(predictor, samples: list[Sample], fmt: DatasetFormat, progress: bool = True, keep_per_image: bool = True) -> dict:
    """Score ``predictor`` (a :class:`desertseg.predict.Predictor`) on ``samples`` of format ``fmt``.

    Returns :func:`desertseg.coarse.coarse_summary` (``per_group`` IoU, ``miou``,
    ``pixel_accuracy``, ...) plus ``confusion_matrix`` (groups, rows ground truth),
    ``label_vs_prediction`` (dataset labels x desert classes, pixel counts), ``per_image``,
    ``mapping`` and ``errors`` (files that could not be read: reported and skipped).
    """
    from tqdm import tqdm

    target_lut = fmt.coarse_lut
    n_labels = len(fmt.class_names)
    cm = np.zeros((len(GROUP_NAMES),) * 2, dtype=np.int64)
    cross = np.zeros((n_labels, NUM_CLASSES), dtype=np.int64)
    per_image, errors = [], []
    for s in tqdm(samples, desc=f"evaluate {fmt.name}", unit="img", disable=not progress):
        try:
            image = read_image(s.image)
            labels = fmt.read_labels(s.mask)
            if labels.shape != image.shape[:2]:
                raise DataError(s.mask, f"mask is {labels.shape[1]}x{labels.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}")
        except DataError as e:
            errors.append(str(e))
            continue
        pred = predictor.predict(image).mask
        one = coarse_confusion(to_groups(pred), target_lut[labels])
        cm += one
        valid = labels != IGNORE_INDEX
        cross += np.bincount(labels[valid].astype(np.int64) * NUM_CLASSES + pred[valid], minlength=n_labels * NUM_CLASSES).reshape(n_labels, NUM_CLASSES)
        if keep_per_image:
            m = coarse_summary(one)
            per_image.append({"name": s.name, "image": str(s.image), "mask": str(s.mask), "miou": m["miou"], "pixel_accuracy": m["pixel_accuracy"]})
    result = coarse_summary(cm)
    meta = getattr(predictor, "metadata", {})
    result.update(
        {
            "dataset": fmt.name,
            "dataset_description": fmt.description,
            "images": len(samples) - len(errors),
            "groups": list(GROUP_NAMES),
            "confusion_matrix": cm.tolist(),
            "label_vs_prediction": {"labels": list(fmt.class_names), "predicted": list(CLASS_NAMES), "counts": cross.tolist()},
            "mapping": {"dataset": [dict(r) for r in fmt.table], "desert": mapping_table()},
            "model": meta.get("model"),
            "checkpoint": meta.get("path"),
            "per_image": per_image,
            "errors": errors,
        }
    )
    return result


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v:.4f}"


def format_coarse_table(result: dict) -> str:
    """The coarse evaluation as Markdown: per-group metrics, summary, confusion, what labels become."""
    groups = result["groups"]
    lines = [
        f"Coarse-group evaluation on {result['dataset']} ({result['images']} images): desert predictions and {result['dataset']} labels mapped onto {len(groups)} shared groups.",
        "",
        "| group | IoU | precision | recall | GT share | pred share |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for g in result["per_group"]:
        name = g["group"] if g["present"] else f"{g['group']} (absent)"
        lines.append(f"| {name} | {_fmt(g['iou'])} | {_fmt(g['precision'])} | {_fmt(g['recall'])} | {g['gt_share']:.2%} | {g['pred_share']:.2%} |")
    lines += [
        "",
        "| metric | value |",
        "|---|---:|",
        f"| coarse mIoU, {result['num_present']} groups present in ground truth | {_fmt(result['miou'])} |",
        f"| coarse mIoU, all {len(groups)} groups | {_fmt(result['miou_all'])} |",
        f"| pixel accuracy | {result['pixel_accuracy']:.2%} |" if result["pixels"] else "| pixel accuracy | n/a |",
        f"| labelled pixels | {result['pixels']:,} |",
        "",
        "Confusion matrix, share of each ground-truth row:",
        "",
        "| ground truth \\ predicted | " + " | ".join(groups) + " |",
        "|---|" + "---:|" * len(groups),
    ]
    cm = np.asarray(result["confusion_matrix"], dtype=np.float64)
    for name, row in zip(groups, cm):
        total = row.sum()
        lines.append(f"| {name} | " + " | ".join(f"{v / total:.1%}" if total else "-" for v in row) + " |")
    cross = result["label_vs_prediction"]
    counts = np.asarray(cross["counts"], dtype=np.float64)
    group_of = {r["name"]: r["group"] for r in result["mapping"]["dataset"]}
    lines += ["", f"What the model predicts for each {result['dataset']} label (top 3 desert classes, share of the label's pixels):", "", "| label | group | predicted as |", "|---|---|---|"]
    for name, row in zip(cross["labels"], counts):
        if row.sum() == 0:
            continue
        top = np.argsort(row)[::-1][:3]
        lines.append(f"| {name} | {group_of.get(name) or 'ignored'} | " + ", ".join(f"{cross['predicted'][i]} {row[i] / row.sum():.0%}" for i in top if row[i]) + " |")
    if result["errors"]:
        lines += ["", f"{len(result['errors'])} files could not be read:"] + [f"- {e}" for e in result["errors"]]
    return "\n".join(lines)


def plot_confusion(result: dict, path: Path) -> Path:
    """A row-normalised coarse confusion matrix as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = result["groups"]
    cm = np.asarray(result["confusion_matrix"], dtype=np.float64)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.4), dpi=120)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(groups)):
        for j in range(len(groups)):
            ax.text(j, i, f"{share[i, j]:.0%}", ha="center", va="center", color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_yticks(range(len(groups)), groups)
    ax.set_xlabel("predicted (desert classes mapped to groups)")
    ax.set_ylabel(f"ground truth ({result['dataset']})")
    ax.set_title(f"{result['dataset']}: coarse mIoU {_fmt(result['miou'])}, {result['images']} images")
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)


def write_coarse_results(result: dict, out_dir: Path | str) -> tuple[Path, Path, Path]:
    """Write ``coarse_metrics.json``, ``coarse_metrics.md`` and ``coarse_confusion.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md, png = out_dir / "coarse_metrics.json", out_dir / "coarse_metrics.md", out_dir / "coarse_confusion.png"
    atomic_write(js, lambda tmp: tmp.write_text(json.dumps(result, indent=2)))
    text = f"# Coarse evaluation of {result.get('model')} on {result['dataset']}\n\nCheckpoint: `{result.get('checkpoint')}`\n\n" + format_coarse_table(result) + "\n"
    atomic_write(md, lambda tmp: tmp.write_text(text))
    plot_confusion(result, png)
    return js, md, png
