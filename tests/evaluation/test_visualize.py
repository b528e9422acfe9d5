import numpy as np
import pytest

from desertseg.classes import CLASSES, raw_to_index
from desertseg.data.decoding import read_image, read_mask
from desertseg.data.samples import list_samples
from desertseg.evaluation.visualize import (
    class_shares,
    confidence_image,
    error_map,
    legend_image,
    overlay,
)


def test_overlay_on_real_image(duality_root):
    s = list_samples(duality_root / "val")[0][0]
    image, mask = read_image(s.image), raw_to_index(read_mask(s.mask))
    assert (overlay(image, mask, 0.0) == image).all()
    full = overlay(image, mask, 1.0)
    sky = mask == 9
    assert sky.any() and (full[sky] == CLASSES[9].color).all()
    hidden = overlay(image, mask, 1.0, visible=[0])
    assert (hidden[sky] == image[sky]).all()
    with pytest.raises(ValueError):
        overlay(image, mask[:10], 0.5)


def test_error_map_confidence_legend_shares():
    target = np.array([[0, 1], [255, 2]], np.uint8)
    pred = np.array([[0, 2], [1, 2]], np.uint8)
    em = error_map(pred, target)
    assert tuple(em[0, 1]) == (230, 30, 30) and tuple(em[1, 0]) == (0, 0, 0)
    assert confidence_image(np.array([[0.0, 1.0]])).shape == (1, 2, 3)
    assert legend_image().shape[0] > 10 * 20
    assert np.allclose(class_shares(target, 3), [1 / 3, 1 / 3, 1 / 3])
