"""Environment-held-out splits: train on some simulated environments, validate on another.

Duality's official val split shares environments with train, so its scores say little about
a new desert. Holding out a whole environment (file-name prefix, see
:func:`desertseg.data.samples.environment`) measures generalisation without touching the test set.

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
from collections import Counter
from pathlib import Path

from .samples import FORMAT, Sample, collect_samples, environment


def environment_matches(env: str, wanted: str) -> bool:
    """``wanted`` with a digit matches exactly (``mt1``); letters only match every environment
    with those letters (``mt`` -> ``mt0``, ``mt1``; ``w`` -> ``w0`` but not ``ww1``)."""
    wanted = wanted.strip().lower()
    if any(ch.isdigit() for ch in wanted):
        return env == wanted
    return re.sub(r"\d+$", "", env) == wanted


def make_splits(data: Path | str, val_envs: list[str], train_envs: list[str] | None = None) -> tuple[dict[str, list[Sample]], list[str]]:
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
    from ..io import atomic_write

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


def describe_split(samples: list[Sample]) -> str:
    """``"124 pairs (cc 55, mt0 31, mt1 38)"``: the size of a split and its environments."""
    counts = Counter(environment(s.name) for s in samples)
    return f"{len(samples)} pairs ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})"
