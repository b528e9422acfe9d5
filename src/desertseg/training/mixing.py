"""Mixing training samples across environments: ClassMix (Olsson et al., WACV 2021).

A class the training data holds in one environment only (Dry Bushes: cc) is learnt together
with that environment's ground, light and neighbours. Pasting the pixels of half the classes
of one batch image onto another puts those objects into other environments' context and
other objects into theirs, so the context stops naming the class. Most partners come from
another environment, since the sampler shuffles all of them together.

Acts during training only (preset key ``class_mix``); the model file and inference are
unchanged. Random draws come from torch's global RNG, which training seeds, so runs repeat.
"""

from __future__ import annotations

import torch

from ..classes import NUM_CLASSES


def class_mix(image: torch.Tensor, target: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability ``p`` per image, paste half the classes (at least one) present in a
    partner image of the batch, pixels and labels, onto it.

    Shape: ``image`` ``(N, C, H, W)`` float, ``target`` ``(N, H, W)`` long, ignored pixels
    (``IGNORE_INDEX``) are never pasted -> the same shapes, new tensors.
    """
    n = image.shape[0]
    if n < 2 or p <= 0:
        return image, target
    partner = (torch.arange(n, device=image.device) + int(torch.randint(1, n, ()))) % n
    source = target[partner]
    present = torch.zeros(n, NUM_CLASSES + 1, dtype=torch.bool, device=image.device)
    present.scatter_(1, source.flatten(1).clamp(max=NUM_CLASSES), True)  # column NUM_CLASSES: ignored pixels
    present = present[:, :NUM_CLASSES]
    # A random half of each partner's classes: rank random keys among the present ones.
    keys = torch.where(present, torch.rand(n, NUM_CLASSES, device=image.device), torch.full((n, NUM_CLASSES), 2.0, device=image.device))
    rank = keys.argsort(1).argsort(1)
    chosen = rank < (present.sum(1, keepdim=True) + 1) // 2
    chosen &= (torch.rand(n, 1, device=image.device) < p) & present
    chosen = torch.cat([chosen, torch.zeros(n, 1, dtype=torch.bool, device=image.device)], 1)
    paste = torch.gather(chosen, 1, source.flatten(1).clamp(max=NUM_CLASSES)).view_as(target)
    mixed_image = torch.where(paste.unsqueeze(1), image[partner], image)
    return mixed_image, torch.where(paste, source, target)
