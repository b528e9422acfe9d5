"""Where the samples are: image/mask pairs found by file stem in a split folder, a whole
dataset root, or a split file; and the simulated environment a Duality file comes from.

Layout (as published)::

    <root>/<split>/Color_Images/<name>.png   RGB, 960x540
    <root>/<split>/Segmentation/<name>.png   single channel, 16-bit raw ids

The zips are sometimes unpacked into a doubled folder (``X/X/train/...``); :func:`resolve_split`
finds the split either way. Split files (written by :mod:`desertseg.data.splits`) are read here.
Decoding the files is :mod:`desertseg.data.decoding`'s concern; this module only finds them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, TypeVar

from .decoding import DataError

IMAGE_DIR = "Color_Images"
MASK_DIR = "Segmentation"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Split names users type -> folder names in the published zips.
SPLIT_ALIASES = {"test": ("test", "Offroad_Segmentation_testImages", "testImages")}
FORMAT = "desertseg-split/1"


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    mask: Path | None


F = TypeVar("F")  # a file: a Path, or an upload's name


def pair_by_stem(images: Mapping[str, F], masks: Mapping[str, F]) -> tuple[list[tuple[str, F, F | None]], list[str]]:
    """Pair images with masks by file stem: the one place that does.

    ``images`` and ``masks`` map a stem (however the caller derived it: the file's stem, less a
    suffix) to its file; finding and indexing the files, and what to do with two files of one
    stem, stay with the caller. Returns ``(matched, lone_masks)``: every image as
    ``(stem, image, mask)`` in the order of ``images``, ``mask`` ``None`` where no mask has its
    stem, and the stems of masks without an image in the order of ``masks``. Nothing is dropped,
    so each caller can report every orphan in its own words.
    """
    matched = [(stem, image, masks.get(stem)) for stem, image in images.items()]
    lone_masks = [stem for stem in masks if stem not in images]
    return matched, lone_masks


def _by_stem(folder: Path, suffixes: tuple[str, ...], problems: list[str]) -> dict[str, Path]:
    """Image files of a folder by stem; a second file with the same stem (``a.png``, ``a.jpg``)
    is reported, not silently swapped in. Sub-folders (and links to them) are skipped."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in suffixes or p.is_dir():
            continue
        if p.stem in found:
            problems.append(f"{p}: same name as {found[p.stem].name}; skipped (ambiguous pairing)")
            continue
        found[p.stem] = p
    return found


def list_samples(split_dir: Path | str, require_masks: bool = True) -> tuple[list[Sample], list[str]]:
    """Pair images with masks by file stem. Returns ``(samples, problems)``.

    Orphans (an image without a mask, or a mask without an image) are reported in
    ``problems``, never silently dropped.
    """
    split_dir = Path(split_dir)
    img_dir, mask_dir = split_dir / IMAGE_DIR, split_dir / MASK_DIR
    if not img_dir.is_dir():
        raise DataError(img_dir, "image folder not found")
    problems: list[str] = []
    images = _by_stem(img_dir, IMAGE_SUFFIXES, problems)
    masks = _by_stem(mask_dir, (".png",), problems) if mask_dir.is_dir() else {}
    if require_masks and not mask_dir.is_dir():
        raise DataError(mask_dir, "mask folder not found")
    matched, lone_masks = pair_by_stem(images, masks)
    for stem in sorted(lone_masks):
        problems.append(f"{masks[stem]}: mask without an image")
    samples = []
    for stem, img, mask in matched:
        if mask is None and require_masks:
            problems.append(f"{img}: image without a mask")
            continue
        samples.append(Sample(stem, img, mask))
    if not samples:
        raise DataError(split_dir, "no image/mask pairs found")
    return samples, problems


def resolve_split(data: Path | str, split: str | None = None) -> Path:
    """Find the folder holding ``Color_Images`` and ``Segmentation`` for a split.

    ``data`` may be the split folder itself, the dataset root, or a root unpacked into a
    doubled folder. ``split`` is ``train``, ``val``, ``test`` or a folder name.
    """
    data = Path(data)
    if not data.is_dir():
        raise DataError(data, "dataset folder not found")
    if (data / IMAGE_DIR).is_dir():
        return data
    names = SPLIT_ALIASES.get(split, (split,)) if split else None
    found = []
    for depth in range(1, 5):
        for img_dir in data.glob("/".join(["*"] * depth)):
            if img_dir.name != IMAGE_DIR or not img_dir.is_dir():
                continue
            d = img_dir.parent
            if names is None or any(n.lower() == d.name.lower() or n.lower() in d.name.lower() for n in names):
                found.append(d)
        if found:
            break
    if not found:
        want = f"split '{split}'" if split else "any split"
        raise DataError(data, f"no {want} with a {IMAGE_DIR}/ folder found (looked 4 levels deep)")
    if len(found) > 1:
        # A doubled unzip leaves identical splits at two depths; prefer the shallowest.
        found.sort(key=lambda p: len(p.parts))
        if len(found[0].parts) == len(found[1].parts):
            raise DataError(data, f"several folders match split '{split}': {', '.join(map(str, found))}; pass one")
    return found[0]


def find_split_dirs(root: Path | str, max_depth: int = 4) -> list[Path]:
    """Every folder at most ``max_depth`` levels under ``root`` (``root`` included) that holds
    ``Color_Images/``. Symlinked folders are followed once (loops are cut), results sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder not found")
    found: list[Path] = []
    seen: set[str] = set()

    def walk(d: Path, depth: int) -> None:
        try:
            real = os.path.realpath(d)
        except OSError:
            return
        if real in seen:  # a symlink loop or a second link to the same folder
            return
        seen.add(real)
        if (d / IMAGE_DIR).is_dir():
            found.append(d)
            return
        if depth >= max_depth:
            return
        try:
            children = sorted(p for p in d.iterdir() if p.is_dir() and p.name != "__MACOSX")
        except OSError:  # permission denied, vanished folder
            return
        for child in children:
            walk(child, depth + 1)

    walk(root, 0)
    return found


def collect_samples(data: Path | str) -> tuple[list[Sample], list[str]]:
    """All pairs of every split folder under ``data`` (train, val and test pooled)."""
    samples: list[Sample] = []
    problems: list[str] = []
    dirs = find_split_dirs(data)
    if not dirs:
        raise DataError(data, f"no folder with {IMAGE_DIR}/ found (looked 4 levels deep)")
    for d in dirs:
        try:
            s, p = list_samples(d)
        except DataError as e:
            problems.append(str(e))
            continue
        samples += s
        problems += p
    return samples, problems


def _resolve(rel: str, root: Path) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else root / p


def read_split_file(path: Path, data_root: Path) -> tuple[list[Sample], list[str]]:
    """Samples listed in a split file, paths resolved against ``data_root``.

    Returns ``(samples, problems)``: listed files that are missing and duplicate entries are
    problems (the rest still load); a file that cannot be parsed, or lists nothing usable,
    raises :class:`DataError`.
    """
    path, root = Path(path), Path(data_root)
    if not path.is_file():
        raise DataError(path, "split file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read split file ({e})") from None
    entries: list[tuple[str, str, str | None]] = []  # (name, image, mask)
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, f"split file is not valid JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("samples"), list):
            raise DataError(path, f"not a desertseg split file (expected format {FORMAT!r} with a 'samples' list)")
        for i, item in enumerate(doc["samples"]):
            if not isinstance(item, dict) or not isinstance(item.get("image"), str):
                raise DataError(path, f"entry {i} has no 'image' path")
            entries.append((item.get("name") or Path(item["image"]).stem, item["image"], item.get("mask")))
    else:
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            image, _, mask = line.partition("\t")
            if not mask:
                parts = Path(image).parts
                mask = str(Path(*[MASK_DIR if p == IMAGE_DIR else p for p in parts])) if IMAGE_DIR in parts else None
            entries.append((Path(image).stem, image, mask or None))
    if not root.is_dir():
        raise DataError(root, "data root for the split file not found")
    samples, problems, seen = [], [], set()
    for name, image, mask in entries:
        img_path = _resolve(image, root)
        if image in seen:
            problems.append(f"{path}: {image} is listed twice")
            continue
        seen.add(image)
        if mask is None:
            problems.append(f"{path}: {image} has no mask path")
            continue
        mask_path = _resolve(mask, root)
        missing = [str(p) for p in (img_path, mask_path) if not p.is_file()]
        if missing:
            problems.append(f"{path}: listed file not found: {', '.join(missing)} (is {root} the data root the split was made for?)")
            continue
        samples.append(Sample(name, img_path, mask_path))
    if not samples:
        raise DataError(path, f"no listed image/mask pair exists under {root}" + (f" ({problems[0]})" if problems else ""))
    return samples, problems


def find_samples(data: Path | str, split: str | None = None) -> tuple[list[Sample], list[str]]:
    """Samples of a split: a split name under a dataset root, ``all`` (every split folder
    under ``data`` pooled: train, val and test), a split folder, or a split file
    (``.json``/``.txt``, written by ``desertseg split``). Returns ``(samples, problems)``."""
    if split and Path(split).suffix.lower() in (".json", ".txt"):
        return read_split_file(Path(split), Path(data))
    if split == "all":
        return collect_samples(data)
    return list_samples(resolve_split(data, split))


# Environments of the published dataset, as Duality names them (longest prefix wins).
KNOWN_ENVIRONMENTS = ("cc", "mt0", "mt1", "w0", "ww1")


def environment(name: str) -> str:
    """Simulated environment of a Duality file from its name prefix, e.g. 'mt1' for mt10000000.

    Known prefixes (cc, mt0, mt1, w0, ww1) are matched first; other names fall back to their
    leading letters plus the first digit.
    """
    lower = name.lower()
    for env in sorted(KNOWN_ENVIRONMENTS, key=len, reverse=True):
        if lower.startswith(env):
            return env
    m = re.match(r"([a-z]+)(\d?)", lower)
    return m.group(1) + m.group(2) if m else "unknown"
