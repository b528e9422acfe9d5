import numpy as np
import pytest
import torch
from PIL import Image

from desertseg.classes import IGNORE_INDEX, RAW_IDS
from desertseg.data.decoding import (
    DataError,
    SegmentationDataset,
    parse_size,
    read_image,
    read_mask,
)
from desertseg.data.samples import environment, list_samples, resolve_split


def test_resolve_split_finds_train_val_test(duality_root, unseen_dir):
    assert resolve_split(duality_root, "train") == duality_root / "train"
    assert resolve_split(duality_root / "val") == duality_root / "val"
    assert resolve_split(unseen_dir.parent, "test") == unseen_dir


def test_resolve_split_in_doubled_unzip_folder(duality_root, tmp_path):
    doubled = tmp_path / "Offroad_Segmentation_Training_Dataset" / "Offroad_Segmentation_Training_Dataset"
    doubled.mkdir(parents=True)
    (doubled / "val").symlink_to(duality_root / "val")
    found = resolve_split(tmp_path, "val")
    assert found == doubled / "val"
    samples, problems = list_samples(found)
    assert len(samples) == 24 and problems == []


def test_real_masks_are_16bit_raw_ids(duality_root):
    samples, _ = list_samples(duality_root / "train")
    assert len(samples) == 100
    mask = read_mask(samples[0].mask)
    assert mask.dtype == np.uint16 and mask.shape == (540, 960)
    assert set(np.unique(mask)) <= set(RAW_IDS)
    assert mask.max() > 255  # ids like 7100 and 10000 survive
    image = read_image(samples[0].image)
    assert image.shape == (540, 960, 3) and image.dtype == np.uint8


@pytest.mark.parametrize("size", [(256, 256), (272, 480)])
def test_dataset_items_have_requested_size_and_valid_ids(duality_root, size):
    samples, _ = list_samples(duality_root / "val")
    ds = SegmentationDataset(samples[:3], size)
    image, target = ds[0]
    assert image.shape == (3, *size) and image.dtype == torch.float32
    assert target.shape == size and target.dtype == torch.int64
    values = set(target.unique().tolist())
    assert values <= set(range(10)) | {IGNORE_INDEX}
    # Nearest resizing never invents ids: every class in the resized mask exists in the original.
    full = SegmentationDataset(samples[:1], None)
    assert values <= set(full[0][1].unique().tolist())


def test_eight_bit_mask_is_refused_with_file_and_reason(duality_root, tmp_path):
    samples, _ = list_samples(duality_root / "val")
    raw = read_mask(samples[0].mask)
    bad = tmp_path / "eight_bit.png"
    Image.fromarray((raw % 256).astype(np.uint8), "L").save(bad)
    with pytest.raises(DataError, match="8-bit") as err:
        read_mask(bad)
    assert str(bad) in str(err.value)


def test_colour_mask_is_refused(tmp_path):
    bad = tmp_path / "colour.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8), "RGB").save(bad)
    with pytest.raises(DataError, match="colour"):
        read_mask(bad)


def test_corrupt_and_empty_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("not an image")
    for path, reason in ((empty, "empty"), (text, "not a readable image")):
        with pytest.raises(DataError, match=reason) as err:
            read_image(path)
        assert str(path) in str(err.value)


def test_orphans_are_reported_not_dropped_silently(duality_root, tmp_path):
    split = tmp_path / "val"
    (split / "Color_Images").mkdir(parents=True)
    (split / "Segmentation").mkdir()
    samples, _ = list_samples(duality_root / "val")
    a, b = samples[:2]
    (split / "Color_Images" / a.image.name).symlink_to(a.image)
    (split / "Segmentation" / a.mask.name).symlink_to(a.mask)
    (split / "Color_Images" / b.image.name).symlink_to(b.image)  # image without mask
    (split / "Segmentation" / "zz_orphan.png").symlink_to(samples[2].mask)  # mask without image
    found, problems = list_samples(split)
    assert [s.name for s in found] == [a.name]
    assert any("image without a mask" in p for p in problems)
    assert any("mask without an image" in p for p in problems)


def test_parse_size_and_environment():
    assert parse_size("480x272") == (272, 480)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("480")
    assert [environment(n) for n in ("cc0000032", "mt0000015", "mt10000000", "w0000002")] == ["cc", "mt0", "mt1", "w0"]


def test_fast_decoders_give_exactly_pillows_pixels(unseen_dir, ycor_dir, tmp_path):
    from PIL import Image

    from desertseg.data.decoding import _decode_fast

    files = sorted((unseen_dir / "Color_Images").glob("*.png"))[:3] + sorted((ycor_dir / "images").glob("*.jpg"))[:3]
    for path in files:
        with Image.open(path) as im:
            reference = np.asarray(im.convert("RGB"))
            assert _decode_fast(path, im) is not None, path  # the fast path really runs on these files
        assert np.array_equal(read_image(path), reference), path
    # A rotated JPEG is left to Pillow, which applies the rotation.
    with Image.open(files[-1]) as im:
        exif = im.getexif()
        exif[0x0112] = 6
        im.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(tmp_path / "rotated.jpg").shape[:2] == reference.shape[:2][::-1]
