"""Dataset formats in one place: a reader per format and each format's label table as data.

A format knows three things: how to find image/mask pairs under a folder, how to read a mask
into label indices, and which coarse group (:mod:`desertseg.data.coarse`) each label belongs to.
Built in:

- ``duality``: the Duality AI desert data (16-bit raw-id masks, the 10 classes of classes.py).
- ``ycor``: Yamaha-CMU Off-Road photos, ``images/*.jpg`` + ``masks/*.png`` colour masks.

Evaluation on a non-desert format scores the desert model in coarse groups
(``desertseg evaluate --data DIR --dataset ycor``). Training code never reads this module.

Adding another real dataset (RUGD, RELLIS-3D, GOOSE, ...)
---------------------------------------------------------
No code changes are needed: describe the dataset in a TOML file and pass its path as
``--dataset``::

    desertseg evaluate --data /data/RUGD --dataset rugd.toml --out runs/rugd_eval

The file names the image and mask globs (relative to ``--data``, ``**`` searches sub-folders),
how masks encode labels (``encoding = "color"`` for RGB/palette colour masks, ``"id"`` for
single-channel id masks), and one ``[[classes]]`` entry per label: its ``color = [r, g, b]``
or ``id = N``, a ``name``, its coarse ``group`` (``sky``, ``tall vegetation``,
``low vegetation``, ``traversable ground``, ``obstacle``, or ``ignore`` for pixels that must
not count) and, please, ``why``. Images and masks are paired by file stem after removing
``image_suffix`` / ``mask_suffix``. A mask value missing from the table is an error naming
the file and the value (``unknown = "ignore"`` maps such pixels to ignore instead). Example,
RUGD (colours from the dataset's ``RUGD_annotation-colormap.txt``; list every class)::

    name = "rugd"
    description = "RUGD off-road video frames"
    images = "RUGD_frames-with-annotations/**/*.png"
    masks = "RUGD_annotations/**/*.png"
    encoding = "color"

    [[classes]]
    name = "void"
    color = [0, 0, 0]
    group = "ignore"
    why = "unlabelled"

    [[classes]]
    name = "dirt"
    color = [108, 64, 20]
    group = "traversable ground"
    why = "the driving surface"

    [[classes]]
    name = "tree"
    color = [0, 255, 0]
    group = "tall vegetation"
    why = "taller than the vehicle"
    # ... sand, grass, pole, water, sky, bush, rock, log, ... in the same way

RELLIS-3D: ``images = "**/pylon_camera_node/*.jpg"``, ``masks =
"**/pylon_camera_node_label_id/*.png"``, ``encoding = "id"`` and entries such as
``id = 1, name = "dirt"``, ``id = 19, name = "bush"`` (ids from the dataset's ontology file).
GOOSE: ``images = "images/val/**/*.png"``, ``image_suffix = "_windshield_vis"``, ``masks =
"labels/val/**/*_labelids.png"``, ``mask_suffix = "_labelids"``, ``encoding = "id"`` with the
ids of ``goose_label_mapping.csv``. Check a new table with ``desertseg evaluate ... --limit 5``
first: unknown values are reported per file. To make a format built in, add its table to
:data:`FORMATS` below the same way as :data:`YCOR` (a dict with the TOML file's keys).

Shape: masks are read as ``(H, W)`` uint8 label indices (positions in the format's class
table), ``IGNORE_INDEX`` for unlabelled pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..classes import CLASS_NAMES, IGNORE_INDEX, RAW_IDS, raw_to_index
from .coarse import DESERT_GROUPS, GROUP_NAMES, group_lut
from .decoding import DataError, _open, read_mask
from .samples import IMAGE_SUFFIXES, Sample, find_samples, pair_by_stem

# YCOR's legend (see ../shared/data/README.md) with the coarse group of each colour.
YCOR: dict = {
    "name": "ycor",
    "description": "Yamaha-CMU Off-Road real photographs (forest trails), palette masks read as RGB",
    "images": "images/*",
    "masks": "masks/*.png",
    "encoding": "color",
    "classes": [
        {"color": [40, 80, 0], "name": "high vegetation", "group": "tall vegetation", "why": "trees and tall bushes, like desert Trees"},
        {"color": [178, 176, 153], "name": "smooth trail", "group": "traversable ground", "why": "the driving surface, like desert Landscape"},
        {"color": [156, 76, 30], "name": "rough trail", "group": "traversable ground", "why": "still the driving surface, only rougher"},
        {"color": [128, 255, 0], "name": "traversable grass", "group": "traversable ground", "why": "labelled drivable by the dataset, like desert Dry Grass"},
        {"color": [1, 88, 255], "name": "sky", "group": "sky", "why": "sky"},
        {"color": [0, 160, 0], "name": "non-traversable low vegetation", "group": "low vegetation", "why": "bushes and shrubs, like desert Lush/Dry Bushes"},
        {"color": [255, 255, 255], "name": "background / unlabelled", "group": "ignore", "why": "no label: never scored"},
        {"color": [255, 0, 0], "name": "obstacle", "group": "obstacle", "why": "rocks, logs, poles, like desert Rocks and Logs"},
        {"color": [255, 0, 128], "name": "puddle", "group": "traversable ground", "why": "water lying on the trail, driven through; desert has no water class"},
    ],
}


@dataclass(frozen=True)
class DatasetFormat:
    """A dataset format: where the pairs are, how masks become labels, labels -> coarse groups."""

    name: str
    description: str
    class_names: tuple[str, ...]
    groups: dict  # class name -> coarse group name, or None (ignored)
    table: tuple[dict, ...]  # rows: value, name, group, why (for docs and reports)
    find: Callable[[Path, str | None], tuple[list[Sample], list[str]]]
    read_labels: Callable[[Path], np.ndarray]  # mask file -> (H, W) uint8 label indices

    @property
    def coarse_lut(self) -> np.ndarray:
        """256-entry uint8 lookup: label index -> coarse group index (IGNORE_INDEX: ignored)."""
        return group_lut(self.groups, self.class_names)


def _duality() -> DatasetFormat:
    table = tuple({"value": raw, "name": n, "group": DESERT_GROUPS[n][0], "why": DESERT_GROUPS[n][1]} for raw, n in zip(RAW_IDS, CLASS_NAMES))
    return DatasetFormat(
        name="duality",
        description="Duality AI synthetic desert: Color_Images/ + Segmentation/ 16-bit raw-id masks",
        class_names=CLASS_NAMES,
        groups={n: DESERT_GROUPS[n][0] for n in CLASS_NAMES},
        table=table,
        find=lambda data, split: find_samples(data, split or "val"),
        read_labels=lambda path: raw_to_index(read_mask(path)),
    )


def pair_files(root: Path, image_glob: str, mask_glob: str, image_suffix: str = "", mask_suffix: str = "") -> tuple[list[Sample], list[str]]:
    """Pair images and masks found by globs under ``root`` by file stem (minus the suffixes).

    Returns ``(samples, problems)``: orphans and names found twice are reported, not dropped silently.
    """

    def index(pattern: str, suffix: str, allowed) -> tuple[dict[str, Path], list[str]]:
        found: dict[str, list[Path]] = {}
        for p in sorted(root.glob(pattern)):
            if p.is_file() and p.suffix.lower() in allowed:
                key = p.stem[: -len(suffix)] if suffix and p.stem.endswith(suffix) else p.stem
                found.setdefault(key, []).append(p)
        dupes = {k: f"{ps[0]}: name also used by {', '.join(map(str, ps[1:]))}; all skipped" for k, ps in found.items() if len(ps) > 1}
        return {k: ps[0] for k, ps in found.items() if len(ps) == 1}, dupes

    images, dup_images = index(image_glob, image_suffix, IMAGE_SUFFIXES)
    masks, dup_masks = index(mask_glob, mask_suffix, (".png",))
    matched, lone_masks = pair_by_stem(dict(sorted(images.items())), masks)
    problems = list(dup_images.values()) + list(dup_masks.values())
    # A name skipped as ambiguous on one side leaves no orphan on the other: it is reported once.
    problems += [f"{masks[k]}: mask without an image" for k in sorted(lone_masks) if k not in dup_images]
    problems += [f"{image}: image without a mask" for k, image, mask in matched if mask is None and k not in dup_masks]
    samples = [Sample(k, image, mask) for k, image, mask in matched if mask is not None]
    if not samples:
        raise DataError(root, f"no image/mask pairs found (images: {image_glob}, masks: {mask_glob})")
    return samples, problems


def _unknown(path: Path, values: list[tuple[str, int]]) -> DataError:
    shown = ", ".join(f"{v} ({n:,} px)" for v, n in values[:5])
    more = f" and {len(values) - 5} more" if len(values) > 5 else ""
    return DataError(path, f"mask holds values missing from the format's class table: {shown}{more}")


def _color_reader(colors: list[tuple[int, int, int]], strict: bool) -> Callable[[Path], np.ndarray]:
    code_to_label = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(colors)}

    def read(path: Path) -> np.ndarray:
        img = _open(Path(path))
        try:
            if img.mode == "P":  # map the palette (256 entries) instead of every pixel
                idx = np.asarray(img)
                pal = np.asarray((img.getpalette() or []) + [0] * 768, dtype=np.int64)[:768].reshape(256, 3)
                codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
                used = np.bincount(idx.ravel(), minlength=256)
            else:
                rgb = np.asarray(img.convert("RGB"), dtype=np.int64)
                codes, idx = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2], return_inverse=True)
                idx = idx.reshape(rgb.shape[:2])
                used = np.bincount(idx.ravel(), minlength=len(codes))
        except OSError as e:
            raise DataError(path, f"mask data is damaged or truncated ({e})") from None
        lut = np.array([code_to_label.get(int(c), IGNORE_INDEX) for c in codes], dtype=np.uint8)
        bad = [(f"RGB {int(c) >> 16},{(int(c) >> 8) & 255},{int(c) & 255}", int(n)) for c, n, label in zip(codes, used, lut) if n and label == IGNORE_INDEX]
        if bad and strict:
            raise _unknown(path, bad)
        return lut[idx]

    return read


def _id_reader(ids: list[int], strict: bool) -> Callable[[Path], np.ndarray]:
    lut = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    for i, v in enumerate(ids):
        lut[v] = i

    def read(path: Path) -> np.ndarray:
        img = _open(Path(path))
        if img.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
            raise DataError(path, f'id mask must be single-channel (got mode {img.mode}); for colour masks use encoding = "color"')
        try:
            arr = np.asarray(img).astype(np.int64)
        except OSError as e:
            raise DataError(path, f"mask data is damaged or truncated ({e})") from None
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(path, "mask values lie outside 0..65535")
        labels = lut[arr]
        if strict:
            values, counts = np.unique(arr[labels == IGNORE_INDEX], return_counts=True)
            if len(values):
                raise _unknown(path, [(f"id {v}", int(n)) for v, n in zip(values, counts)])
        return labels

    return read


def from_spec(spec: dict, source: str = "format") -> DatasetFormat:
    """Build a format from a table (the built-in dicts, or a TOML file's contents)."""

    def need(key, kind):
        if not isinstance(spec.get(key), kind):
            raise ValueError(f"{source}: '{key}' is missing or not a {kind.__name__}")
        return spec[key]

    name, images, masks, classes = need("name", str), need("images", str), need("masks", str), need("classes", list)
    encoding = spec.get("encoding", "color")
    if encoding not in ("color", "id"):
        raise ValueError(f"{source}: encoding must be 'color' or 'id', got {encoding!r}")
    if spec.get("unknown", "error") not in ("error", "ignore"):
        raise ValueError(f"{source}: unknown must be 'error' or 'ignore'")
    if not 0 < len(classes) < IGNORE_INDEX:
        raise ValueError(f"{source}: needs 1..254 [[classes]] entries, got {len(classes)}")
    key = "color" if encoding == "color" else "id"
    values, names, table = [], [], []
    for n, c in enumerate(classes):
        where = f"{source}: classes entry {n + 1} ({c.get('name', '?')})"
        v, group = c.get(key), c.get("group")
        ok = (isinstance(v, list) and len(v) == 3 and all(isinstance(x, int) and 0 <= x <= 255 for x in v)) if key == "color" else (isinstance(v, int) and 0 <= v <= 65535)
        if not ok:
            raise ValueError(f"{where}: '{key}' must be " + ("[r, g, b] with 0..255" if key == "color" else "an integer 0..65535"))
        if not isinstance(c.get("name"), str) or c["name"] in names:
            raise ValueError(f"{where}: needs a 'name' not used by another entry")
        if group != "ignore" and group not in GROUP_NAMES:
            raise ValueError(f"{where}: group must be one of {', '.join(GROUP_NAMES)} or ignore, got {group!r}")
        v = tuple(v) if key == "color" else v
        if v in values:
            raise ValueError(f"{where}: {key} {v} is listed twice")
        values.append(v)
        names.append(c["name"])
        table.append({"value": list(v) if key == "color" else v, "name": c["name"], "group": None if group == "ignore" else group, "why": c.get("why", "")})
    strict = spec.get("unknown", "error") == "error"
    image_suffix, mask_suffix = spec.get("image_suffix", ""), spec.get("mask_suffix", "")

    def find(data: Path, split: str | None = None) -> tuple[list[Sample], list[str]]:
        root = Path(data)
        if not root.is_dir():
            raise DataError(root, "dataset folder not found")
        if split and (root / split).is_dir():
            root = root / split
        return pair_files(root, images, masks, image_suffix, mask_suffix)

    return DatasetFormat(
        name=name,
        description=spec.get("description", name),
        class_names=tuple(names),
        groups={row["name"]: row["group"] for row in table},
        table=tuple(table),
        find=find,
        read_labels=_color_reader(values, strict) if key == "color" else _id_reader(values, strict),
    )


def load_format(path: Path | str) -> DatasetFormat:
    """A format described by a TOML file (see the module docstring)."""
    import tomllib

    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "format file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"not a valid TOML format file ({e})") from None
    return from_spec(spec, str(path))


FORMATS: dict[str, DatasetFormat] = {"duality": _duality(), "ycor": from_spec(YCOR, "ycor")}


def get_format(name: str) -> DatasetFormat:
    """A built-in format by name, or a format file (``.toml``) by path."""
    if name in FORMATS:
        return FORMATS[name]
    if name.lower().endswith(".toml"):
        return load_format(name)
    raise ValueError(f"unknown dataset format {name!r}; built in: {', '.join(FORMATS)}, or pass a .toml format file")
