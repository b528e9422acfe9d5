"""Atomic file writes, used by every writer in desertseg (models, outputs, caches, reports).

A file is written under a temporary name beside its destination and renamed onto it, so a
crash, a kill or a full disk never leaves a half-written file under the real name: a reader
(or a resumed batch job) sees the old file, the new one, or none.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: Path | str, write: Callable[[Path], object], suffix: str = ".tmp") -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: a crash never leaves a half file.

    ``suffix`` is the temporary name's ending, for writers that pick the format from it
    (a video writer needs ``.mp4``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates 0600 files; give the result the usual permissions (0666 & ~umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
