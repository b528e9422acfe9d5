"""What the dashboard computes, kept free of Streamlit so it can be tested on its own.

Uploads arrive as bytes; they are written to a temporary file and read with
:func:`desertseg.data.decoding.read_image` / :func:`~desertseg.data.decoding.read_mask`, so the page decodes files
exactly as ``desertseg evaluate`` and ``desertseg predict`` do, and its error messages name
the uploaded file instead of the temporary one.

Shape: images ``(H, W, 3)`` uint8 RGB; masks ``(H, W)`` uint8 class indices (``IGNORE_INDEX``
for unknown ids); confidence ``(H, W)`` float32.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..classes import (
    CLASSES,
    IGNORE_INDEX,
    RAW_IDS,
    colorize,
    index_to_raw,
    raw_to_index,
)
from ..data.decoding import MAX_PIXELS, DataError, check_mask_size, read_image, read_mask
from ..data.samples import pair_by_stem

# The page refuses larger images: probabilities for 10 classes at 16 MP already take 640 MB.
# DESERTSEG_APP_MAX_PIXELS lowers (or raises, up to data.MAX_PIXELS) the cap.
DEFAULT_APP_MAX_PIXELS = 16_000_000


def app_max_pixels() -> int:
    try:
        cap = int(os.environ.get("DESERTSEG_APP_MAX_PIXELS", DEFAULT_APP_MAX_PIXELS))
    except ValueError:
        cap = DEFAULT_APP_MAX_PIXELS
    return max(1, min(cap, MAX_PIXELS))


def _with_temp_file(data: bytes, name: str, read):
    """Run ``read(path)`` on ``data`` written to a temporary file; errors name ``name``."""
    if not data:
        raise DataError(name, "file is empty (0 bytes)")
    fd, tmp = tempfile.mkstemp(prefix="desertseg-upload-", suffix=Path(name).suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return read(Path(tmp))
    except DataError as e:
        raise DataError(name, e.problem) from None
    finally:
        os.unlink(tmp)


def peek_image(data: bytes, name: str) -> tuple[str, tuple[int, int]]:
    """``(mode, (width, height))`` from the header only, without decoding pixels."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.mode, img.size
    except Image.DecompressionBombError as e:
        raise DataError(name, f"image is far too large ({e})") from None
    except Exception:
        raise DataError(name, "not a readable image (unknown or corrupt format); upload a PNG or JPG photo") from None


def load_image(data: bytes, name: str, max_pixels: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Decode an uploaded image to ``(H, W, 3)`` uint8 RGB; returns ``(image, notes)``.

    Notes say what was converted (alpha dropped, grayscale expanded). Raises
    :class:`DataError` naming the upload for non-images, damaged files and images over the cap.
    """
    max_pixels = app_max_pixels() if max_pixels is None else max_pixels
    if not data:
        raise DataError(name, "file is empty (0 bytes)")
    mode, (w, h) = peek_image(data, name)
    if w * h > max_pixels:
        raise DataError(name, f"image is {w}x{h} = {w * h:,} pixels, over this dashboard's cap of {max_pixels:,} pixels; downscale it or use `desertseg predict`")
    image = _with_temp_file(data, name, read_image)
    notes = []
    if mode in ("RGBA", "LA", "PA"):
        notes.append(f"{name}: image has an alpha channel (mode {mode}); it was dropped and the RGB colours used")
    elif mode in ("L", "1", "I", "I;16", "I;16B", "I;16L", "F"):
        notes.append(f"{name}: image is grayscale (mode {mode}); it was converted to RGB, expect weaker results than on colour photos")
    elif mode not in ("RGB",):
        notes.append(f"{name}: image mode {mode} was converted to RGB")
    return image, notes


def load_mask(data: bytes, name: str, image_shape: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """Decode an uploaded 16-bit raw-id mask to ``(H, W)`` class indices matching ``image_shape``.

    Raises :class:`DataError` for 8-bit or colour masks and masks of another size than the image.
    """
    raw = _with_temp_file(data, name, read_mask)
    check_mask_size(name, raw.shape, image_shape, "; upload the mask that belongs to this image")
    target = raw_to_index(raw)
    notes = []
    unknown = target == IGNORE_INDEX
    if unknown.all():
        raise DataError(name, f"no pixel holds a known class id ({', '.join(map(str, RAW_IDS))}); is this a Duality segmentation mask?")
    if unknown.any():
        values = np.unique(raw[unknown])[:5]
        notes.append(f"{name}: {unknown.mean():.2%} of pixels hold unknown ids (e.g. {', '.join(map(str, values))}); they are ignored in the scores")
    return target, notes


@dataclass
class Segmentation:
    """One image's prediction as the page keeps it (probabilities reduced to confidence)."""

    mask: np.ndarray  # (H, W) uint8 class indices
    confidence: np.ndarray  # (H, W) float32
    seconds: float
    device: str


def device_name(predictor) -> str:
    """A readable name of where ``predictor`` runs, e.g. ``cpu (x86_64, 2 threads)``."""
    device = getattr(predictor, "device", None)
    describe = getattr(predictor, "describe_device", None)
    if callable(describe):
        return str(describe())
    try:
        import torch

        from ..inference.runtime import describe_device

        if isinstance(device, torch.device):
            return describe_device(device)
    except Exception:  # an unusual backend still gets a name
        pass
    return str(device or "unknown device")


def segment(predictor, image: np.ndarray) -> Segmentation:
    """Predict ``image`` with probabilities, timing the whole call (preprocess, model, resize back)."""
    t0 = time.perf_counter()
    pred = predictor.predict(image, return_probs=True)
    seconds = time.perf_counter() - t0
    return Segmentation(pred.mask, pred.confidence.astype(np.float32), seconds, device_name(predictor))


def score(pred: np.ndarray, target: np.ndarray) -> dict:
    """:func:`desertseg.metrics.summarize` of one image: the same numbers ``desertseg evaluate`` gives."""
    from ..metrics import confusion_matrix, summarize

    return summarize(confusion_matrix(pred, target))


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def metrics_rows(summary: dict) -> list[dict]:
    """Per-class rows for the IoU table; names come from the class table, never shifted."""
    rows = []
    for c, m in zip(CLASSES, summary["per_class"]):  # summarize() keeps the class table's order
        rows.append(
            {
                "class": c.name,
                "raw id": c.raw_id,
                "IoU": _fmt(m["iou"]) if m["present"] or m["pred_share"] else "absent",
                "precision": _fmt(m["precision"]),
                "recall": _fmt(m["recall"]),
                "F1": _fmt(m["f1"]),
                "GT share": f"{m['gt_share']:.2%}",
                "predicted share": f"{m['pred_share']:.2%}",
            }
        )
    return rows


def share_rows(mask: np.ndarray) -> list[dict]:
    """Per-class pixel share of a predicted mask, largest first, absent classes left out."""
    from ..evaluation.visualize import class_shares

    shares = class_shares(mask)
    order = np.argsort(-shares, kind="stable")
    return [{"class": CLASSES[i].name, "raw id": CLASSES[i].raw_id, "share": f"{shares[i]:.2%}"} for i in order if shares[i] > 0]


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of ``(H, W, 3)`` uint8 RGB, ``(H, W)`` uint8 or ``(H, W)`` uint16 (saved 16-bit)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(array))  # uint16 becomes mode I;16, saved as a 16-bit PNG
    if array.dtype == np.uint16 and img.mode != "I;16":
        raise ValueError(f"cannot save a 16-bit PNG (got mode {img.mode})")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def raw_mask_png(mask: np.ndarray) -> bytes:
    """The prediction in the dataset's value space (100 ... 10000) as a 16-bit PNG."""
    return png_bytes(index_to_raw(mask))


def color_mask_png(mask: np.ndarray) -> bytes:
    return png_bytes(colorize(mask))


def model_card(metadata: dict) -> dict:
    """The facts a user needs about a model file, from its metadata."""
    size = metadata.get("input_size") or [None, None]
    config = metadata.get("config") or {}
    return {
        "model": metadata.get("model", "?"),
        "file": metadata.get("path", "?"),
        "input size (W x H)": f"{size[1]} x {size[0]}",
        "classes": [f"{c.get('index')}: {c.get('name')} (raw id {c.get('raw_id')})" for c in metadata.get("classes", [])],
        "training config": {k: config[k] for k in sorted(config)} if config else "not recorded",
        "metrics": metadata.get("metrics") or "not recorded",
        "desertseg version": metadata.get("desertseg_version", "?"),
    }


def pair_masks(image_names: list[str], mask_names: list[str]) -> tuple[dict[str, str], list[str]]:
    """Match ground-truth uploads to images by file stem; one image + one mask pair anyway.

    Returns ``({image name: mask name}, notes)``; unmatched masks are reported in the notes.
    """
    matched, _ = pair_by_stem({Path(n).stem: n for n in image_names}, {Path(m).stem: m for m in mask_names})
    pairs = {image: mask for _, image, mask in matched if mask is not None}
    notes = []
    if not pairs and len(image_names) == 1 and len(mask_names) == 1:
        pairs[image_names[0]] = mask_names[0]
        if Path(mask_names[0]).stem != Path(image_names[0]).stem:
            notes.append(f"mask {mask_names[0]} was paired with image {image_names[0]} although their names differ")
    for m in mask_names:
        if m not in pairs.values():
            notes.append(f"mask {m} matches no uploaded image by name; it is not used")
    return pairs, notes


# --- per-session results ---


def remember(store: dict, key, compute, *args):
    """``store[key]``, computed by ``compute(*args)`` the first time.

    The dashboard keeps one ``store`` per browser session (in ``st.session_state``) instead of a
    process-wide cache keyed by content: a shared cache would hand one session's results to
    another, and its hits would tell a session that someone else uploaded the same image.
    """
    if key not in store:
        store[key] = compute(*args)
    return store[key]


def forget_others(store: dict, keep) -> None:
    """Drop every entry of ``store`` whose key is not in ``keep`` (the files uploaded now), so a
    session holds only what it shows and its memory does not grow with each upload."""
    keep = set(keep)
    for key in [k for k in store if k not in keep]:
        del store[key]
