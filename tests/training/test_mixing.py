"""ClassMix on real training pairs of different environments."""

from __future__ import annotations

import numpy as np
import torch

from desertseg.classes import IGNORE_INDEX, raw_to_index
from desertseg.data.decoding import read_image, read_mask, resize_image, resize_mask
from desertseg.data.samples import find_samples
from desertseg.training.mixing import class_mix


def _batch(duality_root, n: int = 4, size=(240, 135)) -> tuple[torch.Tensor, torch.Tensor]:
    samples, _ = find_samples(duality_root, "train")
    images, targets = [], []
    for s in samples[:: len(samples) // n][:n]:
        images.append(torch.from_numpy(resize_image(read_image(s.image), size).copy()).permute(2, 0, 1).float() / 255)
        targets.append(torch.from_numpy(resize_mask(raw_to_index(read_mask(s.mask)), size).astype(np.int64)))
    return torch.stack(images), torch.stack(targets)


def test_pasted_pixels_carry_their_labels_and_half_the_partner_classes(duality_root):
    image, target = _batch(duality_root)
    target[1, :10] = IGNORE_INDEX  # ignored pixels are never pasted
    n = len(image)
    torch.manual_seed(0)
    mixed, mixed_target = class_mix(image, target, p=1.0)
    assert not torch.equal(mixed_target, target)
    # The partner of image i is image (i + shift) % n, the same shift for the whole batch.
    for shift in range(1, n):
        if all(_explained(mixed[i], mixed_target[i], image[i], target[i], image[(i + shift) % n], target[(i + shift) % n]) for i in range(n)):
            break
    else:
        raise AssertionError("no partner explains the mixed batch")


def _explained(mixed, mixed_target, image, target, partner_image, partner_target) -> bool:
    """Whether ``mixed`` is ``image`` with exactly half (rounded up) of the partner's classes
    pasted whole, colours and labels together."""
    classes = sorted(set(partner_target.unique().tolist()) - {IGNORE_INDEX})
    pasted = [c for c in classes if (mixed_target[partner_target == c] == c).all() and torch.equal(mixed[:, partner_target == c], partner_image[:, partner_target == c])]
    mask = torch.isin(partner_target, torch.tensor(pasted, dtype=torch.long))
    same = torch.equal(mixed, torch.where(mask, partner_image, image)) and torch.equal(mixed_target, torch.where(mask, partner_target, target))
    return same and len(pasted) == (len(classes) + 1) // 2


def test_probability_zero_or_one_image_leaves_the_batch_alone(duality_root):
    image, target = _batch(duality_root, n=2)
    assert class_mix(image, target, p=0.0) == (image, target)
    one = class_mix(image[:1], target[:1], p=1.0)
    assert torch.equal(one[0], image[:1]) and torch.equal(one[1], target[:1])
