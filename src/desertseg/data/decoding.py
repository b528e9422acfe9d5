"""Reading the Duality AI desert dataset's files: RGB images, 16-bit masks of raw class ids
(read as 8-bit they would be silently destroyed), resizing, and a torch Dataset over
:class:`~desertseg.data.samples.Sample` pairs. Finding the files is :mod:`desertseg.data.samples`' concern.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..classes import raw_to_index

if TYPE_CHECKING:
    from .samples import Sample

# Refuse images above this many pixels before decoding them (decompression bombs).
MAX_PIXELS = 64_000_000


class DataError(Exception):
    """A data file or folder that cannot be used; the message names it and says why."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class DamagedSample(NamedTuple):
    """Stands in for dataset item ``index`` whose file ``path`` could not be read (``problem``
    says why), so that a DataLoader can pass it on to be reported instead of raising.

    A NamedTuple, not a dataclass: Lightning moves batches to the device with
    ``apply_to_collection``, which refuses frozen dataclasses and rebuilds named tuples.
    """

    index: int
    path: str
    problem: str


def _open(path: Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        if path.is_symlink() and not path.exists():
            raise DataError(path, "broken symbolic link or symlink loop")
        raise DataError(path, "file not found" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (0 bytes)")
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise DataError(path, "not a readable image (unknown or corrupt format)") from None
    except PermissionError:
        raise DataError(path, "permission denied") from None
    except Image.DecompressionBombError:  # PIL's own cap, far above ours: same answer
        raise DataError(path, f"image dimensions are over the cap of {MAX_PIXELS:,} pixels (decompression bomb?)") from None
    except OSError as e:
        raise DataError(path, f"cannot open image ({e})") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise DataError(path, f"image is {w}x{h} = {w * h:,} pixels, over the cap of {MAX_PIXELS:,}")
    return img


def _plain_png(data: bytes) -> bool:
    """Whether every chunk of a PNG file has a correct CRC (pyspng would decode a damaged
    stream silently), the file ends with IEND, and no eXIf chunk asks for a rotation."""
    import zlib

    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, end = data[pos + 4 : pos + 8], pos + 8 + length
        if end + 4 > len(data) or kind == b"eXIf" or zlib.crc32(data[pos + 4 : end]) != int.from_bytes(data[end : end + 4], "big"):
            return False
        if kind == b"IEND":
            return True
        pos = end + 4
    return False


def _decode_fast(path: Path, img: Image.Image) -> np.ndarray | None:
    """Plain 8-bit RGB PNG and JPEG files without an EXIF rotation, decoded by pyspng or
    simplejpeg: the same pixels as Pillow on the shared files measured (all 154 Duality PNGs,
    30 YCOR JPEGs), 1.4x (PNG) and 1.8x (JPEG) faster here (``benchmarks/decoders.py``). None for anything else, or when they are not installed or
    fail, so that Pillow decodes it (and names the problem of a damaged file)."""
    if img.mode != "RGB" or img.format not in ("PNG", "JPEG"):
        return None
    try:
        if img.format == "PNG":
            import pyspng

            data = path.read_bytes()
            if not _plain_png(data):
                return None
            out = pyspng.load(data)
        else:
            import simplejpeg

            if img.getexif().get(0x0112, 1) != 1:  # rotated: Pillow applies it (JPEG reads EXIF from its header)
                return None
            out = simplejpeg.decode_jpeg(path.read_bytes(), colorspace="RGB")
    except Exception:  # not installed, damaged, or data it does not take: Pillow's turn
        return None
    return out if out.shape == (img.height, img.width, 3) and out.dtype == np.uint8 else None


def read_image(path: Path | str) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB.

    EXIF orientation is applied; RGBA, grayscale, palette and 16-bit images are converted to
    8-bit RGB (alpha is dropped). Raises :class:`DataError` naming the file otherwise.
    """
    img = _open(Path(path))
    fast = _decode_fast(Path(path), img)
    if fast is not None:
        return fast
    try:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grayscale: scale to 8 bits instead of clipping to white.
            arr = np.asarray(img, dtype=np.uint32) >> 8
            img = Image.fromarray(arr.astype(np.uint8), "L")
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.asarray(img, dtype=np.uint8).copy()
    except (OSError, SyntaxError) as e:  # truncated or damaged data surfaces only when decoding; PIL reports broken chunks as SyntaxError
        raise DataError(path, f"image data is damaged or truncated ({e})") from None


def read_mask(path: Path | str) -> np.ndarray:
    """Read a Duality mask as ``(H, W)`` uint16 raw ids.

    Only single-channel 16-bit (or 32-bit integer) PNGs are accepted: an 8-bit mask cannot
    hold ids such as 7100 or 10000, so it was almost certainly destroyed by an 8-bit save,
    and a colour mask is a visualisation, not labels.
    """
    img = _open(Path(path))
    mode = img.mode
    if mode in ("RGB", "RGBA", "P", "LA", "PA", "CMYK", "YCbCr"):
        raise DataError(path, f"mask is a colour image (mode {mode}); expected a single-channel 16-bit PNG of raw class ids")
    if mode in ("L", "1"):
        raise DataError(
            path,
            f"mask is 8-bit (mode {mode}); Duality masks are 16-bit and ids like 7100 and 10000 do not fit in 8 bits, so this file was probably re-saved and its labels destroyed",
        )
    try:
        arr = np.asarray(img)
    except (OSError, SyntaxError) as e:  # PIL reports broken chunks as SyntaxError
        raise DataError(path, f"mask data is damaged or truncated ({e})") from None
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise DataError(path, f"mask has unsupported layout (mode {mode}, shape {arr.shape}, dtype {arr.dtype})")
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise DataError(path, "mask values lie outside 0..65535")
    return arr.astype(np.uint16)


def size_mismatch(mask_shape: Sequence[int], image_shape: Sequence[int]) -> str:
    """What is wrong with a mask of shape ``(H, W)`` beside an image of another ``(H, W)``:
    ``mask is WxH but its image is WxH`` (sizes written width first, as people write them)."""
    return f"mask is {mask_shape[1]}x{mask_shape[0]} but its image is {image_shape[1]}x{image_shape[0]}"


def check_mask_size(mask: Path | str, mask_shape: Sequence[int], image_shape: Sequence[int], advice: str = "") -> None:
    """Raise :class:`DataError` naming the file ``mask`` when its ``(H, W)`` shape is not its
    image's (extra dimensions, such as the image's channels, are not compared); ``advice`` is
    appended to the message."""
    if tuple(mask_shape[:2]) != tuple(image_shape[:2]):
        raise DataError(mask, size_mismatch(mask_shape, image_shape) + advice)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(H, W, 3)`` uint8 RGB to ``size`` = (H, W), bilinear with antialiasing.

    Training and inference both call this, so a model always sees the same preprocessing.
    """
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a label mask with nearest neighbour only: labels must never be blended."""
    h, w = size
    if mask.shape[:2] == (h, w):
        return mask
    return np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))


def parse_size(text: str | tuple | list) -> tuple[int, int]:
    """``"480x272"`` (width x height, as people write sizes) -> ``(272, 480)`` (H, W, as torch does)."""
    if isinstance(text, (tuple, list)):
        h, w = (int(v) for v in text)
        return h, w
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like WIDTHxHEIGHT, e.g. 480x272; got {text!r}") from None
    if w <= 0 or h <= 0 or w > 8192 or h > 8192:
        raise ValueError(f"size {text!r} is out of range (1..8192 per side)")
    return h, w


class SegmentationDataset:
    """A map-style dataset of (image, target) pairs for torch DataLoaders.

    Each item is ``(image, target)``: a float tensor ``(3, H, W)`` after ``transform`` and a
    long tensor ``(H, W)`` of class indices with ``IGNORE_INDEX`` for unknown ids.
    Images and masks are first resized to ``size`` = (H, W) (masks with nearest only), and
    those resized arrays are kept in memory when ``cache`` is true (the full 960x540
    decode dominates the data path otherwise). ``cache_dir`` adds an on-disk cache of the
    resized arrays (:class:`desertseg.data.cache.SampleCache`), shared by DataLoader workers,
    DDP ranks and later runs, and invalidated when a source file changes.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        size: tuple[int, int] | None,
        transform: Callable | None = None,
        cache: bool = False,
        cache_dir: Path | str | None = None,
    ):
        self.samples = list(samples)
        self.size = size
        self.transform = transform
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        self._disk = None
        if cache_dir is not None:
            from .cache import SampleCache

            self._disk = SampleCache(cache_dir, size)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(H, W, 3)`` uint8 and target ``(H, W)`` uint8 class indices, resized to ``size``."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        s = self.samples[i]
        hit = self._disk.get(s.image, s.mask) if self._disk is not None else None
        if hit is not None:
            if self._cache is not None:
                self._cache[i] = hit
            return hit
        image = read_image(s.image)
        target = raw_to_index(read_mask(s.mask))
        check_mask_size(s.mask, target.shape, image.shape)
        if self.size is not None and image.shape[:2] != tuple(self.size):
            image = resize_image(image, self.size)
            target = resize_mask(target, self.size)
        if self._disk is not None:
            self._disk.put(s.image, s.mask, image, target)
        if self._cache is not None:
            self._cache[i] = (image, target)
        return image, target

    def __getitem__(self, i: int):
        import torch

        image, target = self.load(i)
        image_t = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        target_t = torch.from_numpy(np.array(target)).long()
        if self.transform is not None:
            return self.transform(image_t, target_t)
        return image_t.float().div_(255), target_t
