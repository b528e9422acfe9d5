"""Photometric augmentation on a real Duality frame: dusk light darkens the ground more than the sky."""

import pytest
import torch

from desertseg.classes import raw_to_index
from desertseg.data.decoding import read_image, read_mask
from desertseg.data.samples import find_samples
from desertseg.data.transforms import MEAN, SKY, STD, TrainTransform, dusk


@pytest.fixture(scope="module")
def frame(duality_root):
    samples, _ = find_samples(duality_root, "train")
    for sample in samples:  # the first frame with a fair share of sky
        target = torch.from_numpy(raw_to_index(read_mask(sample.mask))).long()
        if 0.1 < (target == SKY).float().mean() < 0.9:
            image = torch.from_numpy(read_image(sample.image)).permute(2, 0, 1).contiguous()
            return image, target
    pytest.fail("no training frame with sky")


def test_dusk_keeps_the_sky_brighter_than_the_darkened_ground(frame):
    image, target = frame
    x, sky = image.float() / 255, target == SKY
    for seed in range(20):
        torch.manual_seed(seed)
        y = dusk(x, sky)
        assert y.shape == x.shape and y.min() >= 0
        ground_kept = y[:, ~sky].mean() / x[:, ~sky].mean()
        sky_kept = y[:, sky].mean() / x[:, sky].mean()
        assert ground_kept < 0.8 * 1.15 and sky_kept > 0.6 * 0.85  # ground loses >= 20% of its light, the sky <= 40%
        assert sky_kept > ground_kept * 0.999  # the sky never darkens more than the ground


def test_dusk_in_the_train_transform_uses_the_target_sky(frame):
    image, target = frame
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    plain, _ = TrainTransform({})(image, target)
    torch.manual_seed(0)
    dark, y = TrainTransform({"dusk": 1.0})(image, target)
    assert torch.equal(y, target)
    plain, dark = plain * std + mean, dark * std + mean  # back to [0, 1]
    sky = target == SKY
    assert dark[:, ~sky].mean() < 0.8 * 1.15 * plain[:, ~sky].mean()
    assert dark[:, sky].mean() / plain[:, sky].mean() > dark[:, ~sky].mean() / plain[:, ~sky].mean()
    with pytest.raises(ValueError, match="unknown augment keys"):
        TrainTransform({"dust": 1.0})
