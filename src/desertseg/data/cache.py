"""An on-disk cache of decoded, resized samples, so that decoding 960x540 PNGs does not limit training.

Each sample becomes one ``.npy`` file holding a ``(H, W, 4)`` uint8 array: RGB in channels
0..2 and the class-index target (0..9, ``IGNORE_INDEX``) in channel 3. Files live under
``<root>/<W>x<H>/`` and are named by a hash of the cache format, the class table, the size,
and each source file's absolute path, byte size and modification time, so editing, replacing
or touching an image or mask makes its old entry unreachable (the stale file is left behind;
delete the folder to reclaim the space). Entries are written to a temporary name and renamed,
so concurrent DataLoader workers or DDP ranks can fill the same cache safely, and a truncated
or foreign file is treated as a miss and rewritten. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..classes import CLASSES
from ..io import atomic_write

CACHE_VERSION = 1


class SampleCache:
    """Decoded ``(image, target)`` pairs of one input size, keyed by their source files.

    Shape: ``image`` ``(H, W, 3)`` uint8 RGB, ``target`` ``(H, W)`` uint8 class indices,
    ``size`` = (H, W) or None for samples kept at their own resolution.
    """

    def __init__(self, root: Path | str, size: tuple[int, int] | None):
        self.size = tuple(size) if size is not None else None
        folder = f"{self.size[1]}x{self.size[0]}" if self.size is not None else "full"
        self.dir = Path(root).expanduser() / folder
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.dir, prefix=".probe", delete=True)
            probe.close()
        except OSError as e:
            raise OSError(f"{self.dir}: cache folder is not usable ({e})") from None
        self._writable = True
        self._salt = f"{CACHE_VERSION}|{[(c.raw_id, c.name) for c in CLASSES]}|{self.size}"

    def key(self, image: Path, mask: Path | None) -> str:
        """Hex key of a sample; it changes when either source file is replaced or modified."""
        h = hashlib.sha256(self._salt.encode())
        for p in (image, mask):
            if p is None:
                h.update(b"|none")
                continue
            st = os.stat(p)  # follows symlinks: the key tracks the real file's size and mtime
            h.update(f"|{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:40]

    def path(self, image: Path, mask: Path | None) -> Path:
        return self.dir / f"{self.key(image, mask)}.npy"

    def get(self, image: Path, mask: Path | None) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached pair, or None on a miss (absent, stale, truncated or malformed entry)."""
        try:
            path = self.path(image, mask)
        except OSError:
            return None  # a missing source file: let the decoder raise its clear DataError
        if not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 4 or (self.size is not None and arr.shape[:2] != self.size):
            return None
        return arr[..., :3], arr[..., 3]

    def put(self, image_path: Path, mask_path: Path | None, image: np.ndarray, target: np.ndarray) -> None:
        """Store a pair atomically. A full or read-only disk disables further writes with one warning."""
        if not self._writable:
            return
        if target.dtype != np.uint8 or image.dtype != np.uint8 or image.shape[:2] != target.shape:
            raise ValueError(f"cache holds uint8 (H, W, 3) images with uint8 (H, W) targets; got {image.dtype} {image.shape} and {target.dtype} {target.shape}")
        arr = np.concatenate([image, target[..., None]], axis=2)
        try:
            # Saved through a file object: np.save would add ".npy" to the temporary name.
            def write(tmp: Path) -> None:
                with open(tmp, "wb") as f:
                    np.save(f, arr, allow_pickle=False)

            atomic_write(self.path(image_path, mask_path), write)
        except OSError as e:
            self._writable = False
            warnings.warn(f"{self.dir}: cannot write to the sample cache ({e}); going on without caching new samples", stacklevel=2)
