"""Tables and files of a coarse-group evaluation (another dataset's labels, e.g. real
photographs, scored against the desert model in the shared groups of :mod:`desertseg.data.coarse`).
The numbers come from the one evaluation loop, :func:`desertseg.evaluation.loop.evaluate` with the
dataset's format; this module only presents them: per-group metrics, the group confusion and
what the model predicts for each of the dataset's labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io import atomic_write
from .report import plot_confusion


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v:.4f}"


def format_coarse_scores(result: dict) -> str:
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
        f"| coarse mIoU, {result['num_present']} groups present in ground truth | {_fmt(result['miou_present'])} |",
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


def write_coarse_results(result: dict, out_dir: Path | str) -> tuple[Path, Path, Path]:
    """Write ``coarse_metrics.json``, ``coarse_metrics.md`` and ``coarse_confusion.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md, png = out_dir / "coarse_metrics.json", out_dir / "coarse_metrics.md", out_dir / "coarse_confusion.png"
    atomic_write(js, lambda tmp: tmp.write_text(json.dumps(result, indent=2)))
    text = f"# Coarse evaluation of {result.get('model')} on {result['dataset']}\n\nCheckpoint: `{result.get('checkpoint')}`\n\n" + format_coarse_scores(result) + "\n"
    atomic_write(md, lambda tmp: tmp.write_text(text))
    title = f"{result['dataset']}: coarse mIoU {_fmt(result['miou_present'])}, {result['images']} images"
    plot_confusion(result["confusion_matrix"], png, result["groups"], "predicted (desert classes mapped to groups)", f"ground truth ({result['dataset']})", title)
    return js, md, png
