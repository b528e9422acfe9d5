import numpy as np
import pytest

from desertseg import classes as C


def test_table_has_the_ten_dataset_classes_in_order():
    assert C.RAW_IDS == (100, 200, 300, 500, 550, 600, 700, 800, 7100, 10000)
    assert C.CLASS_NAMES[0] == "Trees" and C.CLASS_NAMES[-1] == "Sky"
    assert C.NUM_CLASSES == 10 and C.IGNORE_INDEX == 255


def test_every_raw_id_maps_to_its_index_and_back():
    raw = np.array([C.RAW_IDS], dtype=np.uint16)
    idx = C.raw_to_index(raw)
    assert idx.tolist() == [list(range(10))]
    assert C.index_to_raw(idx).tolist() == raw.tolist()


def test_unknown_ids_map_to_ignore_and_16bit_values_survive():
    raw = np.array([[0, 1, 99, 101, 255, 7099, 9999, 10001, 65535, 10000]], dtype=np.uint16)
    idx = C.raw_to_index(raw)
    assert idx.tolist() == [[255] * 9 + [9]]
    assert C.RAW_TO_INDEX.shape == (65536,)


def test_raw_to_index_rejects_non_integer_and_out_of_range():
    with pytest.raises(TypeError):
        C.raw_to_index(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError):
        C.raw_to_index(np.array([[70000]], dtype=np.int64))


def test_colours_are_distinct_and_colorize_uses_them():
    colours = [c.color for c in C.CLASSES]
    assert len(set(colours)) == 10
    # Vegetation classes must stay far apart to the eye (sum of channel differences).
    lush, dry_grass, dry_bushes = (np.array(C.CLASSES[i].color, int) for i in (1, 2, 3))
    for a, b in ((lush, dry_grass), (lush, dry_bushes), (dry_grass, dry_bushes)):
        assert np.abs(a - b).sum() > 150
    rgb = C.colorize(np.array([[0, 9, 255]], dtype=np.uint8))
    assert rgb.shape == (1, 3, 3)
    assert tuple(rgb[0, 1]) == C.CLASSES[9].color and tuple(rgb[0, 2]) == (0, 0, 0)
