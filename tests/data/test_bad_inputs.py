"""A corpus of bad inputs for dataset reading and check-data, generated here from real files.

Each case has one documented outcome: a :class:`DataError` naming the file and the problem,
or a documented conversion. Never a traceback, never a hang. The corpus is a table so the
outcomes can be read (and reported) at a glance.
"""

from __future__ import annotations

import builtins
import io
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from desertseg.classes import IGNORE_INDEX, raw_to_index
from desertseg.data import decoding as data_mod
from desertseg.data.check import check_data
from desertseg.data.decoding import DataError, SegmentationDataset, read_image, read_mask
from desertseg.data.samples import list_samples, resolve_split


@dataclass
class Real:
    image: Path  # a real 960x540 RGB PNG
    mask: Path  # its real 16-bit mask
    rgb: np.ndarray
    raw: np.ndarray
    others: list[tuple[Path, Path]]  # more real (image, mask) pairs, all different images


@pytest.fixture(scope="module")
def real(duality_root) -> Real:
    img = sorted((duality_root / "val" / "Color_Images").iterdir())[0]
    mask = duality_root / "val" / "Segmentation" / img.name
    others = [(p, duality_root / "val" / "Segmentation" / p.name) for p in sorted((duality_root / "val" / "Color_Images").iterdir())[1:6]]
    return Real(img, mask, np.asarray(Image.open(img).convert("RGB")), np.asarray(Image.open(mask)), others)


# --- helpers that write unusual files --------------------------------------------------------


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, depth: int, color_type: int, raw_rows: bytes = b"") -> bytes:
    """A PNG written by hand: lets us declare any size (bombs) or 16-bit RGB (PIL cannot write it)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw_rows)) + _chunk(b"IEND", b"")


def rgb16_png(arr: np.ndarray) -> bytes:
    h, w, _ = arr.shape
    rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    return png_bytes(w, h, 16, 2, rows)


def deny_read(path: Path, monkeypatch) -> str:
    """Make ``path`` unreadable. chmod 000 works for normal users; root ignores it, so there
    the OS refusal is simulated by an ``open`` that raises PermissionError for this one path.
    Returns ``"chmod"`` or ``"simulated (running as root)"``."""
    os.chmod(path, 0)
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        return "chmod"
    real_open, target = builtins.open, os.path.abspath(path)

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(file)) == target:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)
    return "simulated (running as root)"


# --- corpus 1: single image files through read_image -------------------------------------------


def _exif_rotated(tmp: Path, real: Real) -> Path:
    p = tmp / "exif_rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(real.rgb[:32, :64]).save(p, quality=95, exif=exif.tobytes())
    return p


def _save(name: str, make: Callable[[Real], Image.Image]):
    def build(tmp: Path, real: Real) -> Path:
        p = tmp / name
        make(real).save(p)
        return p

    return build


def _write(name: str, payload: Callable[[Real], bytes]):
    def build(tmp: Path, real: Real) -> Path:
        p = tmp / name
        p.write_bytes(payload(real))
        return p

    return build


def _flip_byte(real: Real) -> bytes:
    b = bytearray(real.image.read_bytes())
    b[len(b) // 2] ^= 0xFF
    return bytes(b)


def _dir(tmp: Path, real: Real) -> Path:
    (tmp / "folder.png").mkdir()
    return tmp / "folder.png"


def _loop(tmp: Path, real: Real) -> Path:
    (tmp / "loop.png").symlink_to(tmp / "loop.png")
    return tmp / "loop.png"


def _dangling(tmp: Path, real: Real) -> Path:
    (tmp / "dangling.png").symlink_to(tmp / "gone.png")
    return tmp / "dangling.png"


def _non_ascii(tmp: Path, real: Real) -> Path:
    p = tmp / "désert_ü_日本.png"
    p.symlink_to(real.image)
    return p


def _truncated_jpeg(tmp: Path, real: Real) -> Path:
    buf = io.BytesIO()
    Image.fromarray(real.rgb).save(buf, "JPEG")
    p = tmp / "truncated.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return p


def _same(expected: Callable[[Real], np.ndarray]):
    def check(out: np.ndarray, real: Real) -> None:
        want = expected(real)
        assert out.dtype == np.uint8 and out.shape == want.shape and np.array_equal(out, want)

    return check


IMAGE_CASES = [
    # (id, build, outcome: regex of the DataError, or a check of the converted array)
    ("zero-byte file", _write("zero.png", lambda r: b""), r"file is empty \(0 bytes\)"),
    ("truncated PNG", _write("truncated.png", lambda r: r.image.read_bytes()[:300_000]), r"damaged or truncated"),
    ("flipped byte in PNG data", _write("flipped.png", _flip_byte), r"damaged or truncated"),
    ("text file named .png", _write("text.png", lambda r: b"just some text\n" * 10), r"not a readable image"),
    ("truncated JPEG", _truncated_jpeg, r"damaged or truncated"),
    ("PNG header declaring 20000x5000 (tiny file)", _write("big.png", lambda r: png_bytes(20000, 5000, 8, 2)), r"over the cap of 64,000,000"),
    ("PNG header declaring 100000x100000 (PIL bomb)", _write("bomb.png", lambda r: png_bytes(100000, 100000, 8, 2)), r"over the cap of 64,000,000"),
    ("folder named .png", _dir, r"not a regular file"),
    ("symlink loop named .png", _loop, r"broken symbolic link or symlink loop"),
    ("dangling symlink", _dangling, r"broken symbolic link or symlink loop"),
    ("JPEG with EXIF rotation", _exif_rotated, lambda out, r: _exif_check(out, r)),
    ("RGBA PNG", _save("rgba.png", lambda r: Image.fromarray(np.dstack([r.rgb[:40, :50], np.full((40, 50), 7, np.uint8)]), "RGBA")), _same(lambda r: r.rgb[:40, :50])),
    ("grayscale PNG", _save("gray.png", lambda r: Image.fromarray(r.rgb[:40, :50, 1], "L")), _same(lambda r: np.repeat(r.rgb[:40, :50, 1:2], 3, axis=2))),
    ("palette PNG", _save("palette.png", lambda r: Image.fromarray(r.rgb[:40, :50]).quantize(16)), _same(lambda r: np.asarray(Image.fromarray(r.rgb[:40, :50]).quantize(16).convert("RGB")))),
    ("16-bit RGB PNG", _write("rgb16.png", lambda r: rgb16_png(r.rgb[:40, :50].astype(np.uint16) * 257 + 3)), _same(lambda r: r.rgb[:40, :50])),
    ("16-bit grayscale PNG", _save("gray16.png", lambda r: Image.fromarray(r.rgb[:40, :50, 0].astype(np.uint16) * 256 + 255)), _same(lambda r: np.repeat(r.rgb[:40, :50, 0:1], 3, axis=2))),
    ("non-ASCII file name", _non_ascii, _same(lambda r: r.rgb)),
]


def _exif_check(out: np.ndarray, real: Real) -> None:
    # Stored 64 wide x 32 high; displayed (and returned) upright: 32 wide x 64 high.
    assert out.shape == (64, 32, 3)
    stored = np.asarray(Image.open(io.BytesIO(_jpeg_roundtrip(real))).convert("RGB"))
    assert np.array_equal(out, np.rot90(stored, k=-1))


def _jpeg_roundtrip(real: Real) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(real.rgb[:32, :64]).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("case, build, outcome", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_image_corpus(case, build, outcome, real, tmp_path):
    path = build(tmp_path, real)
    if isinstance(outcome, str):
        with pytest.raises(DataError, match=outcome) as err:
            read_image(path)
        assert str(path) in str(err.value)  # the message names the file
    else:
        outcome(read_image(path), real)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_image(tmp_path / "nope.png")


def test_real_image_over_a_lowered_pixel_cap(real, monkeypatch):
    monkeypatch.setattr(data_mod, "MAX_PIXELS", 1000)
    with pytest.raises(DataError, match=r"960x540 = 518,400 pixels, over the cap of 1,000"):
        read_image(real.image)


def test_unreadable_file(real, tmp_path, monkeypatch):
    p = tmp_path / "locked.png"
    p.write_bytes(real.image.read_bytes())
    how = deny_read(p, monkeypatch)
    with pytest.raises(DataError, match="permission denied") as err:
        read_image(p)
    assert str(p) in str(err.value), how


# --- corpus 2: masks through read_mask and the dataset ---------------------------------------

MASK_CASES = [
    ("8-bit mask", lambda r: Image.fromarray((r.raw % 256).astype(np.uint8), "L"), r"mask is 8-bit \(mode L\)"),
    ("1-bit mask", lambda r: Image.fromarray(r.raw > 1000), r"mask is 8-bit \(mode 1\)"),
    ("colour-coded RGB mask", lambda r: Image.fromarray(r.rgb), r"colour image \(mode RGB\)"),
    ("palette mask", lambda r: Image.fromarray(r.rgb).quantize(8), r"colour image \(mode P\)"),
    ("RGBA mask", lambda r: Image.fromarray(r.rgb).convert("RGBA"), r"colour image \(mode RGBA\)"),
    ("grayscale JPEG named .png", lambda r: _as_jpeg(Image.fromarray(r.rgb[..., 0], "L")), r"mask is 8-bit \(mode L\)"),
    ("16-bit mask of real ids", lambda r: Image.fromarray(r.raw), "accepted"),
]


def _as_jpeg(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return Image.open(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("case, make, outcome", MASK_CASES, ids=[c[0] for c in MASK_CASES])
def test_mask_corpus(case, make, outcome, real, tmp_path):
    path = tmp_path / "mask.png"
    make(real).save(path)
    if outcome == "accepted":
        out = read_mask(path)
        assert out.dtype == np.uint16 and np.array_equal(out, real.raw)
    else:
        with pytest.raises(DataError, match=outcome) as err:
            read_mask(path)
        assert str(path) in str(err.value)


def test_truncated_mask(real, tmp_path):
    p = tmp_path / "cut.png"
    p.write_bytes(real.mask.read_bytes()[: real.mask.stat().st_size // 2])
    with pytest.raises(DataError, match="mask data is damaged or truncated"):
        read_mask(p)


def test_unknown_raw_ids_become_ignore_index(real, tmp_path):
    raw = real.raw.copy()
    raw[:5, :7] = 1234
    raw[5, 0] = 0
    p = tmp_path / "unknown.png"
    Image.fromarray(raw).save(p)
    target = raw_to_index(read_mask(p))
    assert (target[:5, :7] == IGNORE_INDEX).all() and target[5, 0] == IGNORE_INDEX
    assert np.array_equal(target[6:], raw_to_index(real.raw)[6:])


def test_mask_of_another_size_names_the_mask(real, tmp_path):
    for sub in ("Color_Images", "Segmentation"):
        (tmp_path / sub).mkdir()
    (tmp_path / "Color_Images" / "a.png").symlink_to(real.image)
    Image.fromarray(np.ascontiguousarray(real.raw[::2, ::2])).save(tmp_path / "Segmentation" / "a.png")
    samples, problems = list_samples(tmp_path)
    with pytest.raises(DataError, match="mask is 480x270 but its image is 960x540") as err:
        SegmentationDataset(samples, (64, 64))[0]
    assert "Segmentation/a.png" in str(err.value)


# --- corpus 3: folders through list_samples and check-data -----------------------------------


def _split(tmp: Path, real: Real, images=(), masks=(), extra: Callable[[Path], None] | None = None) -> Path:
    d = tmp / "split"
    for sub in ("Color_Images", "Segmentation"):
        (d / sub).mkdir(parents=True)
    # Each stem gets its own real pair (by first-seen order), so no duplicate-image warnings.
    stems = list(dict.fromkeys(Path(n).stem for n in [*images, *masks]))
    for name in images:
        (d / "Color_Images" / name).symlink_to(real.others[stems.index(Path(name).stem)][0])
    for name in masks:
        (d / "Segmentation" / name).symlink_to(real.others[stems.index(Path(name).stem)][1])
    if extra:
        extra(d)
    return d


def _loops(d: Path) -> None:
    (d / "Color_Images" / "loop.png").symlink_to(d / "Color_Images" / "loop.png")
    (d / "Color_Images" / "up").symlink_to(d)  # a folder loop: split/Color_Images/up -> split


def _only_non_images(d: Path) -> None:
    for name in ("readme.txt", "labels.csv", ".DS_Store"):
        (d / "Color_Images" / name).write_text("x")


def _no_mask_dir(d: Path) -> None:
    (d / "Segmentation").rmdir()


@dataclass
class FolderCase:
    case: str
    build: Callable[[Path, Real], Path]
    listing: str  # list_samples outcome: "pairs N", or an error regex prefixed "error:"
    list_problems: tuple[str, ...]  # substrings of list_samples problems
    check_kinds: tuple[tuple[str, str], ...]  # (severity, kind) check-data must report
    outcome: str  # the documented outcome, in words


FOLDER_CASES = [
    FolderCase(
        "image without a mask",
        lambda t, r: _split(t, r, ["a.png", "b.png"], ["a.png"]),
        "pairs 1",
        ("b.png: image without a mask",),
        (("error", "orphan_image"),),
        "pair skipped, reported; check-data error",
    ),
    FolderCase(
        "mask without an image", lambda t, r: _split(t, r, ["a.png"], ["a.png", "z.png"]), "pairs 1", ("z.png: mask without an image",), (("error", "orphan_mask"),), "reported; check-data error"
    ),
    FolderCase(
        "names differing in case (image Foo, mask foo)",
        lambda t, r: _split(t, r, ["a.png", "Foo.png"], ["a.png", "foo.png"]),
        "pairs 1",
        ("Foo.png: image without a mask", "foo.png: mask without an image"),
        (("error", "orphan_image"), ("error", "orphan_mask")),
        "not paired (case-sensitive, as on Linux); check-data says they differ only in case",
    ),
    FolderCase(
        "two images differing only in case (A, a)",
        lambda t, r: _split(t, r, ["A.png", "a.png"], ["A.png", "a.png"]),
        "pairs 2",
        (),
        (("warning", "case_collision"),),
        "both pairs used; check-data warns they collide on Windows/macOS",
    ),
    FolderCase(
        "same name, two formats (x.png, x.jpg)",
        lambda t, r: _split(t, r, ["x.jpg", "x.png"], ["x.png"]),
        "pairs 1",
        ("x.png: same name as x.jpg; skipped",),
        (("error", "duplicate_name"),),
        "first (sorted) kept, other reported, never swapped silently",
    ),
    FolderCase("non-ASCII names", lambda t, r: _split(t, r, ["désert_ü.png", "日本.png"], ["désert_ü.png", "日本.png"]), "pairs 2", (), (), "read normally; check-data clean"),
    FolderCase(
        "symlink loops in the image folder",
        lambda t, r: _split(t, r, ["a.png"], ["a.png"], _loops),
        "pairs 1",
        ("loop.png: image without a mask",),
        (("error", "broken_link"), ("warning", "non_image")),
        "no hang; loop reported; folder link ignored",
    ),
    FolderCase("empty folders", lambda t, r: _split(t, r), "error:no image/mask pairs found", (), (("error", "no_pairs"),), "DataError naming the folder; check-data error"),
    FolderCase(
        "folder of only non-images",
        lambda t, r: _split(t, r, extra=_only_non_images),
        "error:no image/mask pairs found",
        (),
        (("error", "no_pairs"), ("warning", "non_image")),
        "DataError; check-data lists each non-image",
    ),
    FolderCase(
        "mask folder missing",
        lambda t, r: _split(t, r, ["a.png"], extra=_no_mask_dir),
        "error:mask folder not found",
        (),
        (("error", "no_masks"), ("error", "orphan_image")),
        "DataError naming Segmentation/; check-data error",
    ),
]


@pytest.mark.parametrize("fc", FOLDER_CASES, ids=[c.case for c in FOLDER_CASES])
def test_folder_corpus(fc, real, tmp_path):
    d = fc.build(tmp_path, real)
    if fc.listing.startswith("error:"):
        with pytest.raises(DataError, match=fc.listing[6:]):
            list_samples(d)
    else:
        samples, problems = list_samples(d)
        assert len(samples) == int(fc.listing.split()[1])
        for want in fc.list_problems:
            assert any(want in p for p in problems), (want, problems)
        assert len(problems) == len(fc.list_problems), problems
    report = check_data(d, progress=False)
    found = {(p["severity"], p["kind"]) for p in report["problems"]}
    assert found == set(fc.check_kinds), report["problems"]
    assert report["ok"] == (not any(s == "error" for s, _ in fc.check_kinds))


def test_folder_without_any_split(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="no split .val. with a Color_Images/ folder found"):
        resolve_split(tmp_path, "val")
    report = check_data(tmp_path, progress=False)
    assert not report["ok"] and report["problems"][0]["kind"] == "no_splits"


def test_unreadable_file_in_a_dataset_is_reported_and_the_rest_checked(real, tmp_path, monkeypatch):
    d = _split(tmp_path, real, ["a.png", "b.png"], ["a.png", "b.png"])
    locked = d / "Color_Images" / "locked.png"
    locked.write_bytes(real.image.read_bytes())
    (d / "Segmentation" / "locked.png").symlink_to(real.mask)
    how = deny_read(locked, monkeypatch)
    report = check_data(d, progress=False, workers=2)
    problems = [(p["kind"], p["path"]) for p in report["problems"] if p["kind"] != "duplicate_image"]
    assert problems == [("unreadable", str(locked))], how
    assert report["pairs"] == 3 and report["splits"][0]["image_sizes"] == {"960x540": 2}


def test_whole_corpus_in_one_dataset_one_pass(real, tmp_path):
    """Every file-level problem at once: check-data reports each, counts the good pairs, exits 1."""
    d = _split(tmp_path, real, ["good1.png", "good2.png"], ["good1.png", "good2.png"])
    ci, sg = d / "Color_Images", d / "Segmentation"
    regular = 0  # bad images that are still files (folders and broken links never pair)
    for i, (_, build, outcome) in enumerate(IMAGE_CASES):
        if not isinstance(outcome, str):
            continue
        src = build(tmp_path, real)
        name = f"bad{i:02d}{src.suffix}"
        os.rename(src, ci / name) if not src.is_symlink() else (ci / name).symlink_to(os.readlink(src))
        (sg / f"bad{i:02d}.png").symlink_to(real.mask)
        regular += (ci / name).is_file()
    for i, (_, make, _outcome) in enumerate(MASK_CASES):
        (ci / f"mask{i:02d}.png").symlink_to(real.image)
        make(real).save(sg / f"mask{i:02d}.png")
    r = subprocess.run([sys.executable, "-m", "desertseg.cli", "check-data", str(d), "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    import json

    report = json.loads(r.stdout)
    bad_paths = {Path(p["path"]).stem for p in report["problems"] if p["severity"] == "error"}
    n_image_errors = sum(isinstance(c[2], str) for c in IMAGE_CASES)
    assert {f"bad{i:02d}" for i, c in enumerate(IMAGE_CASES) if isinstance(c[2], str)} <= bad_paths
    assert {f"mask{i:02d}" for i, c in enumerate(MASK_CASES) if c[2] != "accepted"} <= bad_paths
    assert len(bad_paths) == n_image_errors + len(MASK_CASES) - 1
    assert regular == 7 and report["pairs"] == 2 + regular + len(MASK_CASES)
    assert {p["kind"] for p in report["problems"] if Path(p["path"]).stem in ("bad07", "bad08", "bad09")} >= {"broken_link", "orphan_mask"}
