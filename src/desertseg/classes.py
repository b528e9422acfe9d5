"""The single table of desert classes: names, raw mask ids, display colours.

Everything else (loss, metrics, palettes, reports, the app) derives from :data:`CLASSES`.
Duality masks store *raw ids* (100, 200, ..., 10000) in 16-bit PNGs; models work with
*class indices* 0..9. Any raw value not in the table maps to :data:`IGNORE_INDEX`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClassInfo:
    index: int
    name: str
    raw_id: int
    color: tuple[int, int, int]


# Colours are chosen so neighbouring vegetation classes stay distinguishable:
# greens for living plants, yellows/browns for dry ones, strong hues for rare classes.
CLASSES: tuple[ClassInfo, ...] = tuple(
    ClassInfo(i, name, raw_id, color)
    for i, (name, raw_id, color) in enumerate(
        [
            ("Trees", 100, (0, 100, 0)),
            ("Lush Bushes", 200, (60, 220, 60)),
            ("Dry Grass", 300, (240, 225, 120)),
            ("Dry Bushes", 500, (120, 70, 20)),
            ("Ground Clutter", 550, (0, 150, 150)),
            ("Flowers", 600, (255, 20, 147)),
            ("Logs", 700, (150, 0, 210)),
            ("Rocks", 800, (128, 128, 128)),
            ("Landscape", 7100, (215, 140, 70)),
            ("Sky", 10000, (120, 190, 255)),
        ]
    )
)

NUM_CLASSES = len(CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
RAW_IDS: tuple[int, ...] = tuple(c.raw_id for c in CLASSES)

# Colour of each class index; index 255 (ignored) is drawn black.
PALETTE = np.zeros((256, 3), dtype=np.uint8)
for _c in CLASSES:
    PALETTE[_c.index] = _c.color

# 65,536-entry lookup: raw 16-bit id -> class index, unknown ids -> IGNORE_INDEX.
RAW_TO_INDEX = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
for _c in CLASSES:
    RAW_TO_INDEX[_c.raw_id] = _c.index

# Inverse lookup: class index -> raw id; IGNORE_INDEX and unknown indices -> 0 (no class).
INDEX_TO_RAW = np.zeros(256, dtype=np.uint16)
for _c in CLASSES:
    INDEX_TO_RAW[_c.index] = _c.raw_id


def raw_to_index(raw: np.ndarray) -> np.ndarray:
    """Map a raw-id mask (any integer dtype, values 0..65535) to class indices (uint8).

    Shape: ``(H, W)`` in, ``(H, W)`` out. Values outside the table become ``IGNORE_INDEX``.
    """
    raw = np.asarray(raw)
    if raw.dtype.kind not in "iu":
        raise TypeError(f"raw mask must hold integers, got dtype {raw.dtype}")
    if raw.size and (raw.min() < 0 or raw.max() > 65535):
        raise ValueError("raw mask values must lie in 0..65535 (16-bit)")
    return RAW_TO_INDEX[raw.astype(np.int64, copy=False)]


def index_to_raw(index: np.ndarray) -> np.ndarray:
    """Map class indices back to the dataset's raw ids (uint16); ignored pixels become 0."""
    return INDEX_TO_RAW[np.asarray(index, dtype=np.uint8)]


def colorize(index: np.ndarray) -> np.ndarray:
    """Colour a class-index mask: ``(H, W)`` uint8 -> ``(H, W, 3)`` uint8 RGB."""
    return PALETTE[np.asarray(index, dtype=np.uint8)]


def class_table() -> list[dict]:
    """The class table as plain data, saved in checkpoints so a model describes itself."""
    return [{"index": c.index, "name": c.name, "raw_id": c.raw_id, "color": list(c.color)} for c in CLASSES]
