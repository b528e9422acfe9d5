"""Dataset formats: the YCOR colour reader and the Duality wrapper on the real sample files,
format files (TOML) for new datasets, and clear errors for bad tables and bad masks."""

import numpy as np
import pytest
from PIL import Image

from desertseg.classes import CLASS_NAMES, IGNORE_INDEX, raw_to_index
from desertseg.data.coarse import GROUP_NAMES
from desertseg.data.decoding import DataError, read_mask
from desertseg.data.formats import FORMATS, YCOR, from_spec, get_format

# The legend of ../shared/data/README.md, written out independently of formats.YCOR.
LEGEND = {
    (40, 80, 0): "high vegetation",
    (178, 176, 153): "smooth trail",
    (156, 76, 30): "rough trail",
    (128, 255, 0): "traversable grass",
    (1, 88, 255): "sky",
    (0, 160, 0): "non-traversable low vegetation",
    (255, 255, 255): "background / unlabelled",
    (255, 0, 0): "obstacle",
    (255, 0, 128): "puddle",
}


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_ycor_finds_all_100_pairs(ycor_dir):
    samples, problems = get_format("ycor").find(ycor_dir, None)
    assert len(samples) == 100 and problems == []
    assert all(s.image.suffix == ".jpg" and s.mask.parent.name == "masks" and s.image.stem == s.mask.stem for s in samples)


def test_ycor_reader_maps_every_colour_of_every_sample_mask(ycor_dir):
    fmt = get_format("ycor")
    samples, _ = fmt.find(ycor_dir, None)
    seen = set()
    for s in samples:
        labels = fmt.read_labels(s.mask)  # strict: an unexpected colour raises DataError
        assert labels.shape == (544, 1024) and labels.dtype == np.uint8
        assert labels.max() < len(fmt.class_names)
        seen.update(fmt.class_names[i] for i in np.unique(labels))
    assert seen == set(LEGEND.values())  # all nine legend entries occur in the sample
    # Pixel by pixel on a few masks: the label's name is the legend's name of the pixel colour.
    for s in samples[:3]:
        rgb, labels = _rgb(s.mask), fmt.read_labels(s.mask)
        for colour, name in LEGEND.items():
            hit = (rgb == colour).all(-1)
            assert (labels[hit] == fmt.class_names.index(name)).all()


def test_unlabelled_white_is_ignored_and_every_other_colour_has_a_group(ycor_dir):
    fmt = get_format("ycor")
    lut = fmt.coarse_lut
    for i, name in enumerate(fmt.class_names):
        if name == "background / unlabelled":
            assert lut[i] == IGNORE_INDEX
        else:
            assert GROUP_NAMES[lut[i]] == fmt.groups[name]
    s = fmt.find(ycor_dir, None)[0][0]
    white = (_rgb(s.mask) == 255).all(-1)
    assert white.any()
    assert (lut[fmt.read_labels(s.mask)][white] == IGNORE_INDEX).all()


def test_rgb_masks_read_like_palette_masks(ycor_dir, tmp_path):
    fmt = get_format("ycor")
    s = fmt.find(ycor_dir, None)[0][1]
    Image.fromarray(_rgb(s.mask)).save(tmp_path / "rgb.png")  # same colours, no palette
    assert Image.open(tmp_path / "rgb.png").mode == "RGB"
    assert (fmt.read_labels(tmp_path / "rgb.png") == fmt.read_labels(s.mask)).all()


def test_unexpected_colour_is_an_error_naming_file_and_colour(ycor_dir, tmp_path):
    fmt = get_format("ycor")
    rgb = _rgb(fmt.find(ycor_dir, None)[0][0].mask).copy()
    rgb[:2, :5] = (10, 20, 30)
    Image.fromarray(rgb).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad\.png.*RGB 10,20,30 \(10 px\)"):
        fmt.read_labels(tmp_path / "bad.png")
    lenient = from_spec({**YCOR, "unknown": "ignore"})
    labels = lenient.read_labels(tmp_path / "bad.png")
    assert (labels[:2, :5] == IGNORE_INDEX).all() and (labels[2:] != IGNORE_INDEX).any()


def test_duality_format_wraps_the_desert_reader_and_maps_all_10_classes(duality_root):
    fmt = FORMATS["duality"]
    assert fmt.class_names == CLASS_NAMES and set(fmt.groups) == set(CLASS_NAMES)
    assert all(fmt.groups[n] in GROUP_NAMES for n in CLASS_NAMES)
    assert (fmt.coarse_lut[: len(CLASS_NAMES)] != IGNORE_INDEX).all()
    samples, problems = fmt.find(duality_root, None)  # val by default
    assert len(samples) == 24 and problems == []
    assert (fmt.read_labels(samples[0].mask) == raw_to_index(read_mask(samples[0].mask))).all()
    assert [row["value"] for row in fmt.table] == [100, 200, 300, 500, 550, 600, 700, 800, 7100, 10000]


def test_orphans_are_reported(ycor_dir, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    names = sorted(p.stem for p in (ycor_dir / "images").iterdir())[:3]
    for n in names:
        (tmp_path / "images" / f"{n}.jpg").symlink_to(ycor_dir / "images" / f"{n}.jpg")
    for n in names[:2]:
        (tmp_path / "masks" / f"{n}.png").symlink_to(ycor_dir / "masks" / f"{n}.png")
    samples, problems = get_format("ycor").find(tmp_path, None)
    assert [s.name for s in samples] == names[:2]
    assert len(problems) == 1 and names[2] in problems[0] and "image without a mask" in problems[0]


def test_toml_format_file_adds_a_dataset_without_code(ycor_dir, tmp_path):
    """A RELLIS-like layout: id masks with a suffix, in sub-folders, described by a TOML file."""
    ycor = get_format("ycor")
    samples = ycor.find(ycor_dir, None)[0][:2]
    for s in samples:
        seq = tmp_path / "data" / "seq01"
        (seq / "cam").mkdir(parents=True, exist_ok=True)
        (seq / "cam_label_id").mkdir(exist_ok=True)
        (seq / "cam" / f"frame{s.name}.jpg").symlink_to(s.image)
        ids = ycor.read_labels(s.mask) * 3 + 1  # ids 1, 4, ..., 25
        Image.fromarray(ids.astype(np.uint8), "L").save(seq / "cam_label_id" / f"frame{s.name}_id.png")
    entries = "\n".join(f'[[classes]]\nid = {3 * i + 1}\nname = "{name}"\ngroup = "{g or "ignore"}"\nwhy = "test"\n' for i, (name, g) in enumerate((r["name"], r["group"]) for r in ycor.table))
    spec = tmp_path / "mine.toml"
    spec.write_text(f'name = "mine"\nimages = "**/cam/*.jpg"\nmasks = "**/cam_label_id/*.png"\nmask_suffix = "_id"\nencoding = "id"\n\n{entries}')
    fmt = get_format(str(spec))
    found, problems = fmt.find(tmp_path / "data", None)
    assert problems == [] and [f.name for f in found] == [f"frame{s.name}" for s in samples]
    for f, s in zip(found, samples):
        assert (fmt.read_labels(f.mask) == ycor.read_labels(s.mask)).all()
    assert (fmt.coarse_lut == ycor.coarse_lut).all()
    Image.fromarray(np.full((4, 4), 2, np.uint8), "L").save(tmp_path / "odd.png")
    with pytest.raises(DataError, match=r"odd\.png.*id 2 \(16 px\)"):
        fmt.read_labels(tmp_path / "odd.png")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"classes": [{"color": [1, 2, 3], "name": "a", "group": "road"}]}, "group must be one of"),
        ({"classes": [{"color": [1, 2, 3], "name": "a", "group": "sky"}, {"color": [1, 2, 3], "name": "b", "group": "sky"}]}, "listed twice"),
        ({"classes": [{"color": [1, 2], "name": "a", "group": "sky"}]}, r"\[r, g, b\]"),
        ({"encoding": "rgb"}, "encoding must be"),
        ({"images": None}, "'images' is missing"),
    ],
)
def test_bad_format_tables_are_refused_with_the_reason(change, message):
    with pytest.raises(ValueError, match=message):
        from_spec({**YCOR, **change}, "mine.toml")


def test_unknown_format_name_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match="built in: duality, ycor"):
        get_format("rugd")
    with pytest.raises(DataError, match="format file not found"):
        get_format(str(tmp_path / "rugd.toml"))
