"""Coarse groups shared by every label set, and a traversability cost map.

A desert model predicts 10 synthetic classes; real datasets label other things (YCOR: trails,
"traversable grass", "high vegetation", ...). Neither label set is a refinement of the other,
so transfer is measured on five coarse groups that both can be mapped onto, chosen for what
an off-road robot needs to know::

    sky | tall vegetation | low vegetation | traversable ground | obstacle

Pixels a dataset leaves unlabelled map to ``IGNORE_INDEX`` and never count.

Mapping of the desert classes (:data:`DESERT_GROUPS`, reasons beside each entry):

    ============== =================== ======================================================
    desert class   coarse group        why
    ============== =================== ======================================================
    Trees          tall vegetation     woody plants taller than the vehicle (YCOR "high vegetation")
    Lush Bushes    low vegetation      green shrubs below head height, driven around (YCOR "non-traversable low vegetation")
    Dry Grass      traversable ground  short grass carpeting drivable terrain (YCOR "traversable grass")
    Dry Bushes     low vegetation      woody shrubs, low but not to be driven through
    Ground Clutter traversable ground  twigs, pebbles and debris lying on drivable ground; no obstacle at vehicle scale
    Flowers        low vegetation      flowering plants standing above the ground, like small shrubs
    Logs           obstacle            fallen trunks block the way (YCOR "obstacle")
    Rocks          obstacle            stones and boulders to avoid (YCOR "obstacle" holds rocks, logs, poles)
    Landscape      traversable ground  bare soil, sand and dirt: the driving surface (YCOR trails)
    Sky            sky                 sky
    ============== =================== ======================================================

The mapping of each real dataset lives with its reader in :mod:`desertseg.data.formats` (YCOR's is
``formats.YCOR`` and is documented there), so a new dataset is one table in one place.

Shape: label masks ``(H, W)`` uint8 in, ``(H, W)`` uint8 group indices (or costs) out.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..classes import CLASS_NAMES, IGNORE_INDEX
from ..metrics import confusion_matrix, summarize

# Group name -> display colour. The order fixes the group indices 0..4.
GROUPS: dict[str, tuple[int, int, int]] = {
    "sky": (120, 190, 255),
    "tall vegetation": (0, 100, 0),
    "low vegetation": (120, 200, 60),
    "traversable ground": (215, 175, 110),
    "obstacle": (220, 30, 30),
}
GROUP_NAMES: tuple[str, ...] = tuple(GROUPS)
NUM_GROUPS = len(GROUP_NAMES)

# Desert class -> (coarse group, reason). Every name in classes.CLASSES appears exactly once.
DESERT_GROUPS: dict[str, tuple[str, str]] = {
    "Trees": ("tall vegetation", "woody plants taller than the vehicle, like YCOR's high vegetation"),
    "Lush Bushes": ("low vegetation", "green shrubs below head height that a vehicle drives around"),
    "Dry Grass": ("traversable ground", "short grass over drivable terrain, like YCOR's traversable grass"),
    "Dry Bushes": ("low vegetation", "woody shrubs, low but not to be driven through"),
    "Ground Clutter": ("traversable ground", "twigs, pebbles and debris lying on drivable ground"),
    "Flowers": ("low vegetation", "flowering plants standing above the ground, like small shrubs"),
    "Logs": ("obstacle", "fallen trunks block the way"),
    "Rocks": ("obstacle", "stones and boulders to avoid, like YCOR's obstacles"),
    "Landscape": ("traversable ground", "bare soil, sand and dirt: the driving surface"),
    "Sky": ("sky", "sky"),
}

# Traversability cost per desert class, with the ROS nav2 costmap convention: 0 free ... 254
# lethal (never enter), 255 no information. Costs rise with the risk of getting stuck or
# damaging the vehicle; sky and unlabelled pixels are not ground, so they carry no information.
FREE, LETHAL, NO_INFORMATION = 0, 254, 255
COSTS: dict[str, tuple[int, str]] = {
    "Landscape": (10, "bare soil, sand or dirt: the preferred surface"),
    "Dry Grass": (30, "drivable, but may hide small holes and stones"),
    "Ground Clutter": (60, "debris and small stones: passable slowly"),
    "Flowers": (100, "low plants: passable, better avoided"),
    "Dry Bushes": (180, "woody shrubs can scratch, snag or stop the vehicle"),
    "Lush Bushes": (200, "dense shrubs hide what is behind and under them"),
    "Rocks": (LETHAL, "stones and boulders can damage the vehicle"),
    "Logs": (LETHAL, "fallen trunks block the way"),
    "Trees": (LETHAL, "solid obstacles"),
    "Sky": (NO_INFORMATION, "not ground: says nothing about the terrain"),
}


def group_lut(groups: Mapping[str, str | None], class_names: Sequence[str]) -> np.ndarray:
    """A 256-entry uint8 lookup: label index ``i`` (named ``class_names[i]``) -> group index.

    ``groups`` maps class names to group names (``None``: ignored). Unknown label indices and
    ``IGNORE_INDEX`` map to ``IGNORE_INDEX``. Raises ``ValueError`` for a class without an
    entry or an unknown group name, so a typo in a mapping table cannot go unnoticed.
    """
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for i, name in enumerate(class_names):
        if name not in groups:
            raise ValueError(f"class {name!r} has no coarse group; add it to the mapping (group or None to ignore)")
        group = groups[name]
        if group is None:
            continue
        if group not in GROUPS:
            raise ValueError(f"class {name!r} maps to unknown group {group!r}; groups are: {', '.join(GROUP_NAMES)}")
        lut[i] = GROUP_NAMES.index(group)
    return lut


DESERT_LUT = group_lut({k: v[0] for k, v in DESERT_GROUPS.items()}, CLASS_NAMES)
GROUP_PALETTE = np.zeros((256, 3), dtype=np.uint8)
GROUP_PALETTE[: len(GROUPS)] = list(GROUPS.values())


def to_groups(index: np.ndarray, lut: np.ndarray = DESERT_LUT) -> np.ndarray:
    """Label indices ``(H, W)`` -> coarse group indices ``(H, W)`` uint8 (desert classes by default)."""
    return lut[np.asarray(index, dtype=np.uint8)]


def colorize_groups(groups: np.ndarray) -> np.ndarray:
    """Colour a group-index mask: ``(H, W)`` uint8 -> ``(H, W, 3)`` uint8 RGB; ignored pixels black."""
    return GROUP_PALETTE[np.asarray(groups, dtype=np.uint8)]


def coarse_confusion(pred_groups: np.ndarray, target_groups: np.ndarray) -> np.ndarray:
    """``(G, G)`` int64 counts, rows ground truth, columns prediction; ignored targets never count."""
    return confusion_matrix(pred_groups, target_groups, num_classes=NUM_GROUPS)


def group_confusion(cross: np.ndarray, target_lut: np.ndarray, pred_lut: np.ndarray = DESERT_LUT) -> np.ndarray:
    """``(G, G)`` group counts from a ``(labels, classes)`` table of pixel counts: each label's row
    goes to its group, each predicted class's column to its group; ignored labels drop out.
    Summing per-pixel group matrices gives the same numbers."""
    cross = np.asarray(cross, dtype=np.int64)
    t, c = target_lut[: cross.shape[0]], pred_lut[: cross.shape[1]]
    rows, cols = t < NUM_GROUPS, c < NUM_GROUPS
    cm = np.zeros((NUM_GROUPS, NUM_GROUPS), dtype=np.int64)
    np.add.at(cm, (t[rows][:, None], c[cols][None, :]), cross[np.ix_(rows, cols)])
    return cm


def coarse_summary(cm: np.ndarray) -> dict:
    """Per-group IoU, mIoU, pixel accuracy, ... of a ``(G, G)`` confusion matrix (see
    metrics.summarize: ``miou_present`` over the groups present in the ground truth,
    ``miou_all`` over every group)."""
    result = summarize(cm, GROUP_NAMES)
    for row in result["per_class"]:
        row["group"] = row.pop("class")
    result["per_group"] = result.pop("per_class")
    return result


if set(COSTS) != set(CLASS_NAMES):  # the cost table must follow the class table
    raise RuntimeError(f"COSTS and classes.CLASSES differ: {sorted(set(COSTS) ^ set(CLASS_NAMES))}")
COST_LUT = np.full(256, NO_INFORMATION, dtype=np.uint8)
for _name, (_cost, _why) in COSTS.items():
    COST_LUT[CLASS_NAMES.index(_name)] = _cost


def cost_map(index: np.ndarray) -> np.ndarray:
    """Traversability cost of a desert class-index mask: ``(H, W)`` uint8 -> ``(H, W)`` uint8.

    Values follow :data:`COSTS` (0 free ... 254 lethal, 255 no information, also for ignored
    pixels); the array can be written as an 8-bit grayscale PNG as is.
    """
    return COST_LUT[np.asarray(index, dtype=np.uint8)]


def mapping_table() -> list[dict]:
    """The desert mapping and costs as plain rows, for reports and the README."""
    return [{"class": n, "group": DESERT_GROUPS[n][0], "why": DESERT_GROUPS[n][1], "cost": COSTS[n][0], "cost_why": COSTS[n][1]} for n in CLASS_NAMES]
