"""Training-time augmentation and the normalisation shared by training and inference.

Geometric transforms act on image and mask together (masks always with nearest, padding
with ``IGNORE_INDEX``); photometric ones, the domain randomisation, touch the image only.
Which ones run and how strongly comes from the preset's ``[augment]`` table.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..classes import IGNORE_INDEX

# ImageNet statistics: every encoder here was pretrained with them.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# Keys an [augment] table may hold, with what they mean (see presets/default.toml).
AUGMENT_KEYS = {
    "hflip": "probability of a horizontal flip",
    "scale": "[min, max] zoom range: random crops of this fraction of the side, resized back",
    "rotate": "max rotation in degrees",
    "brightness": "colour jitter strength for brightness",
    "contrast": "colour jitter strength for contrast",
    "saturation": "colour jitter strength for saturation",
    "hue": "max hue shift (0..0.5)",
    "grayscale": "probability of dropping colour (grayscale)",
    "gamma": "[min, max] gamma range",
    "white_balance": "max per-channel gain deviation (e.g. 0.1 = gains in 0.9..1.1)",
    "blur": "probability of a Gaussian blur",
    "noise": "max std of Gaussian sensor noise (0..1 image scale)",
    "jpeg": "probability of JPEG compression artefacts (quality 30..90)",
    "haze": "probability of haze/fog: blending towards a bright grey",
    "vignette": "probability of lens vignetting",
}


def normalize(image: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """``(N, 3, H, W)`` or ``(3, H, W)`` float in [0, 1] -> ``(image - mean) / std`` per channel
    (ImageNet statistics unless given; inference passes the model file's own)."""
    mean = torch.tensor(mean, device=image.device, dtype=image.dtype).view(-1, 1, 1)
    std = torch.tensor(std, device=image.device, dtype=image.dtype).view(-1, 1, 1)
    return (image - mean) / std


def _rand(lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand(()).item()


class TrainTransform:
    """Callable ``(image uint8 (3, H, W), target long (H, W)) -> (normalised float, target)``."""

    def __init__(self, augment: dict | None):
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        self.augment = dict(augment or {})
        unknown = set(self.augment) - set(AUGMENT_KEYS)
        if unknown:
            raise ValueError(f"unknown augment keys {sorted(unknown)}; known: {', '.join(AUGMENT_KEYS)}")
        a = self.augment
        joint = []
        fill = {"others": 0, tv_tensors.Mask: IGNORE_INDEX}  # padding is ignored, never a class
        if a.get("scale"):
            lo, hi = a["scale"]
            joint.append(v2.RandomAffine(degrees=a.get("rotate", 0), scale=(lo, hi), fill=fill))
        elif a.get("rotate"):
            joint.append(v2.RandomRotation(a["rotate"], fill=fill))
        if a.get("hflip"):
            joint.append(v2.RandomHorizontalFlip(a["hflip"]))
        self.joint = v2.Compose(joint) if joint else None
        cj = {k: a[k] for k in ("brightness", "contrast", "saturation", "hue") if a.get(k)}
        self.color = v2.ColorJitter(**cj) if cj else None
        self.grayscale = v2.RandomGrayscale(a["grayscale"]) if a.get("grayscale") else None
        self.jpeg = v2.JPEG((30, 90)) if a.get("jpeg") else None
        self.blur = v2.GaussianBlur(5, sigma=(0.1, 1.5)) if a.get("blur") else None

    def __call__(self, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        a = self.augment
        if self.joint is not None:
            image, target = self.joint(tv_tensors.Image(image), tv_tensors.Mask(target))
            image, target = image.as_subclass(torch.Tensor), target.as_subclass(torch.Tensor)
        if self.jpeg is not None and torch.rand(()) < a["jpeg"]:
            image = self.jpeg(image)
        if self.color is not None:
            image = self.color(image)
        if self.grayscale is not None:
            image = self.grayscale(image)
        x = image.float().div_(255)
        if self.blur is not None and torch.rand(()) < a["blur"]:
            x = self.blur(x)
        if a.get("gamma"):
            x = x.clamp_(1e-6, 1).pow_(_rand(*a["gamma"]))
        if a.get("white_balance"):
            d = a["white_balance"]
            x = x * torch.empty(3, 1, 1).uniform_(1 - d, 1 + d)
        if a.get("haze") and torch.rand(()) < a["haze"]:
            # Atmospheric haze: I = J * t + A * (1 - t), airlight A a bright grey.
            t, airlight = _rand(0.5, 0.9), _rand(0.7, 1.0)
            x = x * t + airlight * (1 - t)
        if a.get("vignette") and torch.rand(()) < a["vignette"]:
            h, w = x.shape[-2:]
            yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
            x = x * (1 - _rand(0.2, 0.5) * ((xx**2 + yy**2) / 2).clamp(max=1))
        if a.get("noise"):
            x = x + torch.randn_like(x) * _rand(0, a["noise"])
        return normalize(x.clamp_(0, 1)), target.long()


def eval_transform(image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic counterpart of :class:`TrainTransform`: scale and normalise."""
    return normalize(image.float().div_(255)), target.long()
