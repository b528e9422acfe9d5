"""Environment-held-out splits: train on some simulated environments, validate on another.

Duality's official val split shares environments with train, so its scores say little about
a new desert. Holding out a whole environment (file-name prefix, see
:func:`desertseg.data.environment`) measures generalisation without touching the test set.

A split file is JSON with image/mask paths relative to the data root, so a dataset folder
can move without breaking it::

    {"format": "desertseg-split/1", "name": "val", "environments": ["w0"], "count": 30,
     "samples": [{"name": "w0000002", "image": "test/Color_Images/w0000002.png",
                  "mask": "test/Segmentation/w0000002.png"}, ...]}

A ``.txt`` split file lists one image path per line (relative to the data root); the mask is
the same path with ``Color_Images`` replaced by ``Segmentation``, or a second path after a tab.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .data import IMAGE_DIR, MASK_DIR, DataError, Sample, environment, list_samples

FORMAT = "desertseg-split/1"


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


def environment_matches(env: str, wanted: str) -> bool:
    """``wanted`` with a digit matches exactly (``mt1``); letters only match every environment
    with those letters (``mt`` -> ``mt0``, ``mt1``; ``w`` -> ``w0`` but not ``ww1``)."""
    wanted = wanted.strip().lower()
    if any(ch.isdigit() for ch in wanted):
        return env == wanted
    return re.sub(r"\d+$", "", env) == wanted


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


def make_splits(
    data: Path | str, val_envs: list[str], train_envs: list[str] | None = None
) -> tuple[dict[str, list[Sample]], list[str]]:
    """Split every pair under ``data`` by environment: ``val`` holds ``val_envs``, ``train``
    holds ``train_envs`` (default: every other environment). Deterministic (sorted by path)
    and disjoint. Returns ``({"train": [...], "val": [...]}, problems)``."""
    if not val_envs:
        raise ValueError("give at least one validation environment, e.g. --val-envs w0")
    overlap = [t for t in (train_envs or []) if any(environment_matches(t.lower(), v) or environment_matches(v.lower(), t) for v in val_envs)]
    if overlap:
        raise ValueError(f"environments {overlap} are in both train and val; splits must be disjoint")
    samples, problems = collect_samples(data)
    envs = sorted({environment(s.name) for s in samples})
    for wanted in list(val_envs) + list(train_envs or []):
        if not any(environment_matches(e, wanted) for e in envs):
            raise ValueError(f"no samples of environment '{wanted}' under {data} (found: {', '.join(envs)})")
    val, train = [], []
    for s in sorted(samples, key=lambda s: (s.name, str(s.image))):
        env = environment(s.name)
        if any(environment_matches(env, v) for v in val_envs):
            val.append(s)
        elif train_envs is None or any(environment_matches(env, t) for t in train_envs):
            train.append(s)
    if not train:
        raise ValueError(f"no training samples left after holding out {val_envs}")
    return {"train": train, "val": val}, problems


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive on Windows: keep it absolute
        return Path(path).resolve().as_posix()


def write_split_file(path: Path | str, samples: list[Sample], data_root: Path | str, name: str, environments: list[str] | None = None) -> Path:
    """Write a JSON split file with paths relative to ``data_root`` (atomically)."""
    from .checkpoint import atomic_write  # lazy: checkpoint imports torch

    root = Path(data_root)
    doc = {
        "format": FORMAT,
        "name": name,
        "environments": sorted({environment(s.name) for s in samples}) if environments is None else environments,
        "count": len(samples),
        "samples": [{"name": s.name, "image": _rel(s.image, root), "mask": _rel(s.mask, root) if s.mask else None} for s in samples],
    }
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8"))
    return path


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
