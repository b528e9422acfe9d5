"""Which model files the dashboard may load: the one given with ``desertseg app --checkpoint``
and, with ``--models-dir DIR``, the model files inside that folder, by name, never outside it."""

from __future__ import annotations

import os
from pathlib import Path

CHECKPOINT_ENV = "DESERTSEG_APP_CHECKPOINT"
# Set by `desertseg app --models-dir DIR`: the only folder whose model files the page may load by name.
MODELS_DIR_ENV = "DESERTSEG_APP_MODELS_DIR"
MODEL_SUFFIXES = (".safetensors", ".onnx")
# A models folder holds a handful of runs; the listing stops here so a huge tree cannot stall the page.
MAX_LISTED_MODELS = 500


class ModelPathError(ValueError):
    """A model name the page refuses to load; the message is the same whatever the reason."""


def models_dir_setting() -> Path | None:
    """The folder set with ``desertseg app --models-dir DIR``, or ``None``: typed paths are off."""
    value = os.environ.get(MODELS_DIR_ENV, "").strip()
    return Path(value) if value else None


def _is_model_name(path: Path) -> bool:
    return path.suffix.lower() in MODEL_SUFFIXES


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def resolve_model_path(models_dir: Path, name: str) -> Path:
    """The model file ``name`` (relative to ``models_dir``, or absolute inside it) as a resolved path.

    Refuses, with :class:`ModelPathError`, anything that is not a .safetensors / .onnx file
    inside ``models_dir`` once symlinks and ``..`` are resolved. Every refusal carries the same
    message, and a name that points outside the folder before symlinks are followed is refused
    without touching the file system, so the page never tells whether a path outside exists.
    """
    refused = ModelPathError(f"{name}: no model file of that name in the models folder (the dashboard loads only .safetensors or .onnx files inside it)")
    try:
        given = Path(os.path.abspath(models_dir))
        root = given.resolve(strict=True)
        typed = Path(name)
        candidate = Path(os.path.normpath(typed if typed.is_absolute() else given / typed))
        # Lexical check first (no stat of an outside path); the folder may be named by either spelling.
        if not name.strip() or not _is_model_name(candidate) or not _inside(candidate, (given, root)):
            raise refused
        resolved = candidate.resolve(strict=True)  # follows every symlink, inside or out
        if not _inside(resolved, (root,)) or not _is_model_name(resolved) or not resolved.is_file():
            raise refused
    except (OSError, ValueError, RuntimeError):  # missing, unreadable, NUL in the name, symlink loop
        raise refused from None
    return resolved


def list_model_files(models_dir: Path) -> list[str]:
    """Model files inside ``models_dir`` as sorted POSIX paths relative to it.

    Files (or symlinks) that resolve outside the folder are left out, so the list offers only
    what :func:`resolve_model_path` accepts. Symlinked sub-folders are not walked.
    """
    names = []
    try:
        root = Path(models_dir).resolve(strict=True)
    except OSError:
        return []
    for folder, dirs, files in os.walk(root, onerror=lambda e: None):
        dirs.sort()
        for f in sorted(files):
            rel = (Path(folder) / f).relative_to(root).as_posix()
            if _is_model_name(Path(f)):
                try:
                    resolve_model_path(root, rel)
                except ModelPathError:
                    continue
                names.append(rel)
                if len(names) >= MAX_LISTED_MODELS:
                    return sorted(names)
    return sorted(names)
