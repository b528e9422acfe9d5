"""Guards around training: a diverging loss stops the run with a clear message and keeps the
last good checkpoint; an unusable run folder fails before any training; gradient
accumulation and the time budget do what they say.

About the unwritable-folder tests: they run as root here, and root ignores permission bits,
so "unwritable" is produced with a path below a regular file (which no user can create).
The permission-bit case runs only as a normal user; the full-disk case is simulated by
making ``shutil.disk_usage`` report 10 MiB free (filling a real disk is not an option in a test).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import link_subset, run_cli, train_args

import desertseg.training.lightning_module as T
from desertseg.evaluation.report import read_metrics_csv
from desertseg.training.config import load_config
from desertseg.training.engine import TrainingDiverged
from desertseg.training.fit import train
from desertseg.training.losses import SegmentationLoss

TINY = {"model": "unet_mobilenet_v2", "pretrained": False, "size": "64x36", "batch_size": 2, "lr": 3e-3, "augment": {}, "loss": "ce", "class_weighting": "none", "scheduler": "none", "num_workers": 0}


@pytest.fixture
def tiny_data(duality_root, tmp_path) -> Path:
    return link_subset(duality_root, tmp_path / "data", {"train": 2, "val": 1})


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    class NaNFromSecondTrainingStep(SegmentationLoss):
        calls = 0

        def forward(self, logits, target):
            loss = super().forward(logits, target)
            if torch.is_grad_enabled():  # training, not validation
                type(self).calls += 1
                if type(self).calls >= 2:
                    return loss * float("nan")
            return loss

    monkeypatch.setattr(T, "SegmentationLoss", NaNFromSecondTrainingStep)
    out = tmp_path / "run"
    # Two train images, batch 2: one step per epoch, so the second step is epoch 1, step 0.
    with pytest.raises(TrainingDiverged, match=r"became nan at epoch 1, step 0 .*last good checkpoint is kept: .*last\.ckpt \(epoch 0\)"):
        train(load_config("default", {**TINY, "epochs": 3}), tiny_data, out, accelerator="cpu", devices=1, progress=False)
    kept = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert kept["epoch"] == 0 and kept["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
    assert not (out / "last.safetensors").exists()


def test_diverging_learning_rate_is_one_clear_error_line(tiny_data, tmp_path):
    proc = run_cli(*train_args(tiny_data, tmp_path / "run", "--lr", "1e30"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert re.search(r"^error: training loss became (nan|inf|-inf) at epoch \d+, step \d+ ", proc.stderr, re.M), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_run_folder_that_cannot_be_created_fails_before_training(tiny_data, tmp_path, monkeypatch):
    import lightning

    def no_training(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(lightning, "Trainer", no_training)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a regular file")
    config = load_config("default", {**TINY, "epochs": 1})
    with pytest.raises(OSError, match=r"notes\.txt/run: run folder cannot be created"):
        train(config, tiny_data, a_file / "run", accelerator="cpu", devices=1, progress=False)
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        train(config, tiny_data, a_file, accelerator="cpu", devices=1, progress=False)
    assert a_file.read_text() == "a regular file"


def test_nearly_full_disk_fails_before_training(tiny_data, tmp_path, monkeypatch):
    import lightning

    monkeypatch.setattr(lightning, "Trainer", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: type("U", (), {"free": 10 * 2**20})())
    with pytest.raises(OSError, match="only 10 MiB free"):
        train(load_config("default", {**TINY, "epochs": 1}), tiny_data, tmp_path / "run", accelerator="cpu", devices=1, progress=False)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_run_folder_fails_before_training(tiny_data, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OSError, match="not writable|cannot be created"):
            train(load_config("default", {**TINY, "epochs": 1}), tiny_data, ro / "run", accelerator="cpu", devices=1, progress=False)
    finally:
        ro.chmod(0o700)


def test_accumulate_flag_halves_the_optimizer_steps(tiny_data, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(*train_args(tiny_data, out, "--accumulate", "2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stdout + proc.stderr  # desertseg's own device line, none of Lightning's banners or tips
    assert "Training unet_mobilenet_v2 at 64x36 for 2 epochs on 2 pairs (1 val) with 1 cpu device(s)" in log, log
    assert not any(noise in log for noise in ("GPU available", "TPU available", "Tip", "max_epochs=2` reached")), log
    # Not a terminal: one plain line per epoch instead of a progress bar's redraws.
    assert [line.split(":")[0] for line in log.splitlines() if line.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"], log
    assert "train_loss" in log and "val_miou" in log and "━" not in log and "\r" not in log
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # 2 images at batch 1 = 2 batches per epoch; accumulating 2 makes one optimiser step per epoch.
    assert (state["epoch"], state["global_step"]) == (1, 2)


def test_max_time_stops_a_long_run_early_and_still_writes_the_model(tiny_data, tmp_path):
    out = tmp_path / "run"
    config = load_config("default", {**TINY, "epochs": 500, "batch_size": 1, "max_time": 0.002})  # 0.12 s budget
    result = train(config, tiny_data, out, accelerator="cpu", devices=1, progress=False)
    rows = read_metrics_csv(out / "metrics.csv")
    assert 1 <= len(rows) < 500 and result["last"]["epoch"] < 499
    assert (out / "last.safetensors").exists()


# --- the on-disk sample cache never serves stale or damaged data ---------------------------


def _copy_pair(duality_root: Path, dest: Path, index: int, name: str = "a.png") -> tuple[Path, Path]:
    import shutil

    src = sorted((duality_root / "train" / "Color_Images").iterdir())[index]
    for sub in ("Color_Images", "Segmentation"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(duality_root / "train" / sub / src.name, dest / sub / name)
    return dest / "Color_Images" / name, dest / "Segmentation" / name


def test_disk_cache_serves_decoded_samples_and_follows_file_changes(duality_root, tmp_path, monkeypatch):
    import numpy as np

    import desertseg.data.decoding as D
    from desertseg.data.decoding import SegmentationDataset
    from desertseg.data.samples import Sample

    image, mask = _copy_pair(duality_root, tmp_path / "split", 0)
    samples, size, cache = [Sample("a", image, mask)], (36, 64), tmp_path / "cache"
    fresh = SegmentationDataset(samples, size).load(0)
    first = SegmentationDataset(samples, size, cache_dir=cache).load(0)
    entries = list((cache / "64x36").glob("*.npy"))
    assert len(entries) == 1
    assert all(np.array_equal(a, b) for a, b in zip(first, fresh)) and first[0].dtype == first[1].dtype == np.uint8

    real_read = D.read_image
    monkeypatch.setattr(D, "read_image", lambda p: pytest.fail("decoded although cached"))
    hit = SegmentationDataset(samples, size, cache_dir=cache).load(0)
    assert all(np.array_equal(a, b) for a, b in zip(hit, fresh))
    monkeypatch.setattr(D, "read_image", real_read)

    # Replace the image and mask with another pair: the cache must not serve the old pixels.
    _copy_pair(duality_root, tmp_path / "split", 1)
    os.utime(image, ns=(os.stat(image).st_atime_ns, os.stat(image).st_mtime_ns + 10**9))
    changed = SegmentationDataset(samples, size, cache_dir=cache).load(0)
    expected = SegmentationDataset(samples, size).load(0)
    assert not np.array_equal(changed[0], fresh[0])
    assert all(np.array_equal(a, b) for a, b in zip(changed, expected))

    # A damaged entry is a miss, not an error and not garbage.
    for entry in (cache / "64x36").glob("*.npy"):
        entry.write_bytes(entry.read_bytes()[:100])
    repaired = SegmentationDataset(samples, size, cache_dir=cache).load(0)
    assert all(np.array_equal(a, b) for a, b in zip(repaired, expected))


def test_unusable_cache_folder_is_a_clear_error(duality_root, tmp_path):
    from desertseg.data.decoding import SegmentationDataset
    from desertseg.data.samples import Sample

    image, mask = _copy_pair(duality_root, tmp_path / "split", 0)
    a_file = tmp_path / "cache.txt"
    a_file.write_text("x")
    with pytest.raises(OSError, match=r"cache\.txt/64x36: cache folder is not usable"):
        SegmentationDataset([Sample("a", image, mask)], (36, 64), cache_dir=a_file)
