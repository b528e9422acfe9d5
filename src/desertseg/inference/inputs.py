"""Which files a command works on: one collector of images (and videos) from files, folders and
glob patterns, for predict, export and benchmark alike."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..data.decoding import DataError
from ..data.samples import IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")


def collect_inputs(inputs: Iterable[str | Path], recursive: bool = False) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]], list[str]]:
    """Expand files, folders and glob patterns into ``(images, videos, errors)``.

    Images and videos are ``(path, output name)`` pairs. The name is the file stem, or for a
    file found in a folder input its path relative to that folder without the suffix (with
    ``recursive``, sub-folders are searched and ``sub/a`` keeps them apart). A repeated name
    (a.png and a.jpg) gets a ``-2``, ``-3`` suffix. Duplicates are dropped; inputs that match
    nothing or are not images/videos become errors.
    """
    images: list[tuple[Path, str]] = []
    videos: list[tuple[Path, str]] = []
    errors: list[str] = []
    seen: set[str] = set()
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES

    def add(path: Path, name: str, explicit: bool) -> None:
        key = os.path.abspath(path)  # the same path twice; a symlink under another name is another input
        if key in seen:
            return
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            images.append((path, name))
        elif suffix in VIDEO_SUFFIXES:
            videos.append((path, name))
        elif explicit:
            errors.append(f"{path}: not a supported image ({', '.join(IMAGE_SUFFIXES)}) or video ({', '.join(VIDEO_SUFFIXES)}) file")
            return
        else:
            return
        seen.add(key)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.rglob("*") if recursive else path.iterdir())
            found = [p for p in found if p.is_file() and p.suffix.lower() in suffixes]
            if not found:
                errors.append(f"{path}: folder holds no images or videos")
            for p in found:
                add(p, p.relative_to(path).with_suffix("").as_posix(), explicit=False)
        elif path.exists():
            add(path, path.stem, explicit=True)
        elif glob.has_magic(str(item)):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            files = [m for m in matches if m.is_file() and m.suffix.lower() in suffixes]
            if not files:
                errors.append(f"{item}: pattern matches no images or videos")
            for p in files:
                add(p, p.stem, explicit=False)
        else:
            errors.append(f"{path}: file not found")
    return _unique_names(images), _unique_names(videos), errors


def _unique_names(items: Sequence[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """A repeated output name (a.png and a.jpg) gets a ``-2``, ``-3`` suffix."""
    used: dict[str, int] = {}
    out = []
    for path, name in items:
        n = used.get(name, 0) + 1
        used[name] = n
        out.append((path, name if n == 1 else f"{name}-{n}"))
    return out


def image_paths(inputs: Sequence[str | Path], limit: int | None = None, recursive: bool = True) -> list[Path]:
    """The image files of ``inputs`` (as :func:`collect_inputs`, folders searched recursively by
    default), at most ``limit``, for commands that read images only (export, benchmark).

    Raises:
        ValueError: an input is missing, matches nothing or is not an image (each one named).
        DataError: no image is found.
    """
    images, videos, errors = collect_inputs(inputs, recursive)
    errors += [f"{path}: a video; this command reads images ({', '.join(IMAGE_SUFFIXES)})" for path, _ in videos]
    if errors:
        raise ValueError("; ".join(errors))
    if not images:
        raise DataError(Path(str(inputs[0])) if inputs else Path("."), "no images found")
    paths = [path for path, _ in images]
    return paths[:limit] if limit else paths
