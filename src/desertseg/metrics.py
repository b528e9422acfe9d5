"""Dataset-level segmentation metrics from ONE confusion matrix.

Per-image IoUs averaged over a dataset overweight small images and empty classes; the honest
protocol accumulates a single confusion matrix over every pixel of every image and derives all
numbers from it. Rows are ground truth, columns are predictions.
"""

from __future__ import annotations

import numpy as np
import torch

from .classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES


def confusion_metric(num_classes: int = NUM_CLASSES):
    """A torchmetrics confusion matrix (summed across processes under DDP)."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    return MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)


def confusion_matrix(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, num_classes: int = NUM_CLASSES, num_targets: int | None = None) -> np.ndarray:
    """``(T, C)`` int64 counts for one prediction, rows ground truth; pixels whose target is
    ``IGNORE_INDEX`` (or ``>= T``) never count. ``T = num_targets`` defaults to ``num_classes``
    (a square matrix); another dataset's labels against desert predictions give a rectangle.

    Shape: ``pred`` and ``target`` ``(H, W)`` or ``(N, H, W)`` class indices.
    """
    rows = num_classes if num_targets is None else num_targets
    pred = (pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)).reshape(-1)
    target = (target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)).reshape(-1)
    if pred.shape != target.shape:
        raise ValueError(f"prediction has {pred.size} pixels but target has {target.size}")
    keep = (target >= 0) & (target < rows)
    idx = target[keep].astype(np.int64) * num_classes + np.clip(pred[keep], 0, num_classes - 1).astype(np.int64)
    return np.bincount(idx, minlength=rows * num_classes).reshape(rows, num_classes)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.maximum(b, 1), np.nan)


def summarize(cm: np.ndarray | torch.Tensor, class_names: tuple[str, ...] = CLASS_NAMES) -> dict:
    """All metrics from a ``(C, C)`` confusion matrix.

    - ``miou_all``: mean IoU over all C classes; a class with no pixels in ground truth and
      prediction alike has undefined IoU and counts as 0 here (so absent classes cap it).
    - ``miou_present``: mean IoU over the classes present in the ground truth.
    - ``share_iou_ge_0.5``: the share of classes with IoU >= 0.5 (what the seed system calls "mAP50").
    """
    cm = np.asarray(cm.cpu() if isinstance(cm, torch.Tensor) else cm, dtype=np.float64)
    tp = np.diag(cm)
    gt, pred = cm.sum(1), cm.sum(0)
    total = cm.sum()
    iou = _div(tp, gt + pred - tp)
    precision, recall = _div(tp, pred), _div(tp, gt)
    f1 = _div(2 * tp, gt + pred)
    present = gt > 0
    iou0 = np.nan_to_num(iou, nan=0.0)
    per_class = [
        {
            "class": name,
            "iou": _f(iou[i]),
            "precision": _f(precision[i]),
            "recall": _f(recall[i]),
            "f1": _f(f1[i]),
            "gt_share": float(gt[i] / total) if total else 0.0,
            "pred_share": float(pred[i] / total) if total else 0.0,
            "present": bool(present[i]),
        }
        for i, name in enumerate(class_names)
    ]
    return {
        "miou_all": float(iou0.mean()),
        "miou_present": float(iou[present].mean()) if present.any() else float("nan"),
        "num_present": int(present.sum()),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "mean_class_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "fw_iou": float((gt[present] / total * iou0[present]).sum()) if total else float("nan"),
        "share_iou_ge_0.5": float((iou0 >= 0.5).mean()),
        "pixels": int(total),
        "per_class": per_class,
    }


def _f(x: float) -> float | None:
    return None if np.isnan(x) else float(x)
