"""One self-contained HTML evaluation report (images embedded as base64 PNG) plus the PNGs.

Built from the result of :func:`desertseg.evaluation.loop.evaluate`: normalised confusion matrix,
per-class IoU, ground-truth vs predicted class shares, the metrics table, comparison panels
(image | ground truth | prediction | error map) for a sample and for the worst images by
per-image mIoU, the class legend, and training curves when a run folder is given.
The HTML needs no other file: it can be mailed or attached to an issue as is.
"""

from __future__ import annotations

import base64
import csv
import html
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..classes import CLASS_NAMES, CLASSES, colorize, raw_to_index
from ..data.decoding import DataError, read_image, read_mask, resize_image, resize_mask
from ..io import atomic_write
from .loop import format_scores
from .visualize import error_map, legend_image

PANEL_WIDTH = 320  # width of each of the four tiles in a comparison panel


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig, path: Path) -> Path:
    plt = _plt()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def _save_array(array: np.ndarray, path: Path) -> Path:
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
    return path


def plot_confusion(cm: np.ndarray, path: Path, names=CLASS_NAMES, xlabel: str = "predicted class", ylabel: str = "ground-truth class", title: str = "Confusion matrix (rows normalised)") -> Path:
    """Row-normalised confusion matrix (each ground-truth row sums to 1) with class (or group) names."""
    plt = _plt()
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(names)
    fig, ax = plt.subplots(figsize=(3 + 0.55 * n, 2.5 + 0.5 * n))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(n), yticks=range(n), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    for i in range(n):
        for j in range(n):
            if rows[i, 0] > 0 and norm[i, j] >= 0.005:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save_fig(fig, path)


def plot_iou(per_class: list[dict], path: Path) -> Path:
    """Horizontal IoU bars in class colours; classes absent from the ground truth are marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ious = [c["iou"] or 0.0 for c in per_class]
    colours = [np.array(c.color) / 255 for c in CLASSES]
    y = np.arange(len(per_class))
    ax.barh(y, ious, color=colours, edgecolor="black")
    for i, c in enumerate(per_class):
        label = f"{c['iou']:.3f}" if c["iou"] is not None else "n/a"
        ax.text(ious[i] + 0.01, i, label if c["present"] else f"{label} (absent)", va="center", fontsize=8)
    ax.set(yticks=y, xlim=(0, 1.15), xlabel="IoU", title="IoU per class")
    ax.set_yticklabels([c["class"] for c in per_class])
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    return _save_fig(fig, path)


def plot_shares(per_class: list[dict], path: Path) -> Path:
    """Share of pixels per class in the ground truth (solid) and in the prediction (hatched)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(per_class))
    colours = [np.array(c.color) / 255 for c in CLASSES]
    ax.bar(x - 0.2, [c["gt_share"] for c in per_class], 0.4, color=colours, edgecolor="black", label="ground truth")
    ax.bar(x + 0.2, [c["pred_share"] for c in per_class], 0.4, color=colours, edgecolor="black", hatch="//", alpha=0.6, label="prediction")
    ax.set(xticks=x, ylabel="share of pixels", title="Class pixel shares: ground truth vs prediction")
    ax.set_xticklabels([c["class"] for c in per_class], rotation=45, ha="right")
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(facecolor="0.8", edgecolor="black", label="ground truth"), Patch(facecolor="0.8", edgecolor="black", hatch="//", label="prediction")])
    ax.grid(axis="y", alpha=0.3)
    return _save_fig(fig, path)


def comparison_panel(image: np.ndarray, target: np.ndarray, pred: np.ndarray, title: str = "") -> np.ndarray:
    """``image | ground truth | prediction | error map`` side by side, each ``PANEL_WIDTH`` wide, with a header."""
    h = max(1, round(image.shape[0] * PANEL_WIDTH / image.shape[1]))
    size = (h, PANEL_WIDTH)
    tiles = [resize_image(image, size), colorize(resize_mask(target, size)), colorize(resize_mask(pred, size)), error_map(resize_mask(pred, size), resize_mask(target, size))]
    header = Image.new("RGB", (PANEL_WIDTH * 4, 18), "white")
    draw = ImageDraw.Draw(header)
    for i, label in enumerate(("image", "ground truth", "prediction", "error (red = wrong)")):
        draw.text((i * PANEL_WIDTH + 4, 3), f"{label}  {title}" if i == 0 and title else label, fill=(0, 0, 0))
    return np.concatenate([np.asarray(header), np.concatenate(tiles, axis=1)], axis=0)


def _pick_sample(per_image: list[dict], n: int) -> list[dict]:
    """``n`` images spread evenly over the list (deterministic)."""
    if len(per_image) <= n:
        return list(per_image)
    return [per_image[int(i)] for i in np.linspace(0, len(per_image) - 1, n).round()]


def markdown_to_html(text: str) -> str:
    """The small Markdown subset of :func:`desertseg.evaluation.loop.format_scores`: tables, bullets, lines."""
    out, table = [], []

    def close_table():
        if table:
            head, body = table[0], [r for r in table[1:] if not set("".join(r)) <= set("-: ")]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
            out.append("</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        close_table()
        if line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    close_table()
    return "\n".join(out)


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _panels(predictor, entries: list[dict], folder: Path, prefix: str) -> list[tuple[Path, str]]:
    made = []
    for rank, e in enumerate(entries, 1):
        try:
            image, target = read_image(e["image"]), raw_to_index(read_mask(e["mask"]))
        except DataError:
            continue  # evaluation already reported unreadable files
        pred = predictor.predict(image).mask
        caption = f"{e['name']}: mIoU {e['miou_present']:.3f}, pixel accuracy {e['pixel_accuracy']:.1%}"
        made.append((_save_array(comparison_panel(image, target, pred, e["name"]), folder / f"{prefix}{rank:02d}_{e['name']}.png"), caption))
    return made


def write_report(result: dict, out_dir: Path | str, predictor=None, run_dir: Path | str | None = None, sample: int = 6, worst: int = 6) -> Path:
    """Write ``report.html`` and its PNGs into ``out_dir``; returns the HTML path.

    ``predictor`` (the one that produced ``result``) re-predicts the few images shown in the
    comparison panels; without it the panels are left out. ``run_dir`` adds training curves
    (its ``curves.png``, or one drawn from its ``metrics.csv``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_class = result["per_class"]
    figures = [
        (plot_confusion(np.array(result["confusion_matrix"]), out_dir / "confusion_matrix.png"), "Confusion matrix, each ground-truth row normalised to 1"),
        (plot_iou(per_class, out_dir / "iou_per_class.png"), "IoU per class"),
        (plot_shares(per_class, out_dir / "class_shares.png"), "Class pixel shares, ground truth vs prediction"),
        (_save_array(legend_image(), out_dir / "legend.png"), "Class colours (raw ids in brackets)"),
    ]
    sections = [("Summary", "".join(_img_tag(p, a) for p, a in figures[:3]) + markdown_to_html(format_scores(result)) + _img_tag(*figures[3]))]

    if run_dir is not None:
        run_dir, curves = Path(run_dir), out_dir / "curves.png"
        if (run_dir / "curves.png").is_file():
            shutil.copyfile(run_dir / "curves.png", curves)
        elif plot_curves(run_dir / "metrics.csv", curves) is None:
            curves = None
        body = _img_tag(curves, f"Training curves of {run_dir}") if curves else f"<p>No curves.png or metrics.csv in {html.escape(str(run_dir))}.</p>"
        sections.append(("Training curves", body))

    per_image = result.get("per_image") or []
    if predictor is not None and per_image:
        # Images without any labelled pixel have no mIoU (NaN): rank them last, not first.
        ranked = sorted(per_image, key=lambda e: (np.isnan(e["miou_present"]), e["miou_present"]))[:worst]
        for title, entries, prefix in (("Sample of images", _pick_sample(per_image, sample), "sample_"), (f"Worst {len(ranked)} images by per-image mIoU", ranked, "worst_")):
            panels = _panels(predictor, entries, out_dir / "panels", prefix)
            sections.append((title, "".join(_img_tag(p, c) for p, c in panels) or "<p>No readable images.</p>"))

    title = f"Evaluation of {result.get('model')}"
    tta = result.get("tta") or {}
    tta_text = f"flip {'on' if tta.get('flip') else 'off'}, scales {tta.get('scales', [1.0])}, sliding window {'on' if tta.get('sliding_window') else 'off'}"
    meta = f"Checkpoint <code>{html.escape(str(result.get('checkpoint')))}</code>; {result.get('images')} images; test-time options: {html.escape(tta_text)}."
    body = "\n".join(f"<h2>{html.escape(t)}</h2>\n{b}" for t, b in sections)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1320px;margin:2em auto;color:#222}}img{{max-width:100%}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}figure{{margin:1em 0}}figcaption{{font-size:90%;color:#555}}</style>
</head><body><h1>{html.escape(title)}</h1><p>{meta}</p>
{body}
</body></html>
"""
    path = out_dir / "report.html"
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return path


def read_metrics_csv(path: Path) -> list[dict]:
    """Per-epoch rows of Lightning's metrics.csv, merging the train and val lines of an epoch."""
    rows: dict[int, dict] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = int(float(row["epoch"]))
            merged = rows.setdefault(epoch, {"epoch": epoch})
            merged.update({k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")})
    return [rows[k] for k in sorted(rows)]


def plot_curves(metrics_csv: Path, out_png: Path) -> Path | None:
    """Loss and mIoU per epoch as a PNG."""
    if not Path(metrics_csv).exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics_csv(Path(metrics_csv))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("train_loss", ax1), ("val_loss", ax1), ("val_miou", ax2), ("val_miou_present", ax2)):
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=key)
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax2.set(xlabel="epoch", ylabel="mIoU", title="Validation mIoU (at input size)", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.lines:  # no validation curves in a run without validation
            ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
