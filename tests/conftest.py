"""Shared fixtures. Tests run on the real files in ../shared/data (beside the project root)."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Hub downloads would otherwise retry for ~30 s before failing on an offline machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYTHONWARNINGS", "ignore")
# Compiled PT2E graphs go to a cache of this session's own, never the user's: whether `auto`
# picks pt2e must not depend on what this machine compiled before.
os.environ["DESERTSEG_CACHE"] = tempfile.mkdtemp(prefix="desertseg-test-cache-")
atexit.register(shutil.rmtree, os.environ["DESERTSEG_CACHE"], True)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DESERTSEG_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        msg = f"real test data missing: {path} (expected ../shared/data beside the project root)"
        if os.environ.get("CI"):
            pytest.fail(msg)  # in CI a missing data folder is an error, never a skip
        pytest.skip(msg)
    return path


def link_subset(root: Path, dest: Path, counts: dict[str, int]) -> Path:
    """A dataset folder of the first ``counts[split]`` real pairs of each split, as symlinks
    (the real files stay where they are and are never copied)."""
    for split, n in counts.items():
        for sub in ("Color_Images", "Segmentation"):
            (dest / split / sub).mkdir(parents=True)
        for p in sorted((root / split / "Color_Images").iterdir())[:n]:
            for sub in ("Color_Images", "Segmentation"):
                (dest / split / sub / p.name).symlink_to(root / split / sub / p.name)
    return dest


def train_args(data: Path, out: Path, *extra: str, size: str = "64x36", devices: int = 1) -> list[str]:
    """``desertseg train`` arguments of a tiny CPU run from scratch: seed preset, an untrained
    unet_mobilenet_v2 at ``size``, 2 epochs at batch 1, no loader workers. ``devices=2`` makes
    it a two-process DDP run (gloo, Lightning starts the second process); ``extra`` arguments
    (``--lr``, ``--set``, ``--accumulate``, ...) come last."""
    args = ["train", "--data", str(data), "--out", str(out), "--preset", "seed", "--model", "unet_mobilenet_v2", "--set", "pretrained=false"]
    args += ["--size", size, "--epochs", "2", "--batch-size", "1", "--workers", "0", "--accelerator", "cpu", "--devices", str(devices)]
    return args + (["--strategy", "ddp"] if devices > 1 else []) + list(extra)


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``desertseg ARGS`` in a fresh process, as a user starts it (one thread, offline, quiet); output captured."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "desertseg.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def duality_root() -> Path:
    """The dataset root holding train/ and val/."""
    return _require(SHARED / "duality_sample" / "Offroad_Segmentation_Training_Dataset")


@pytest.fixture(scope="session")
def unseen_dir() -> Path:
    """30 pairs of environment w0, seen in neither train nor val."""
    return _require(SHARED / "duality_sample" / "Offroad_Segmentation_testImages")


@pytest.fixture(scope="session")
def ycor_dir() -> Path:
    return _require(SHARED / "ycor_sample")


@pytest.fixture(scope="session")
def tiny_run(duality_root, tmp_path_factory) -> Path:
    """A real (tiny) training run on 4 train + 2 val images, shared by tests that need a model."""
    import shutil

    from desertseg.training.config import load_config
    from desertseg.training.fit import train

    # Developers may reuse one tiny run across pytest sessions (never in CI).
    cached = os.environ.get("DESERTSEG_TINY_RUN")
    if cached and not os.environ.get("CI") and (Path(cached) / "best.safetensors").exists():
        yield Path(cached)
        return
    data = link_subset(duality_root, tmp_path_factory.mktemp("tiny_data"), {"train": 4, "val": 2})
    out = Path(cached) if cached and not os.environ.get("CI") else tmp_path_factory.mktemp("tiny_run") / "run"
    config = load_config(
        "default",
        {"model": "unet_mobilenet_v2", "pretrained": False, "size": "128x72", "epochs": 4, "batch_size": 2, "lr": 3e-3, "augment": {}, "loss": "ce", "class_weighting": "none", "scheduler": "none"},
    )
    train(config, data, out, accelerator="cpu", devices=1, progress=False)
    assert (out / "best.safetensors").exists()
    yield out
    if not cached:
        shutil.rmtree(out, ignore_errors=True)
