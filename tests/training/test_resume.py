"""Resume after a hard kill: a training process is SIGKILLed mid-epoch, resumed with
``resume=True``, and must end where an uninterrupted run with the same seed ends.

Tolerance: on CPU with one thread and ``num_workers=0`` every operation is deterministic, so
the resumed run is expected to be bitwise identical; the test allows 1e-6 (absolute) on
metrics and weights so that it states a tolerance rather than relying on bit equality.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import link_subset

from desertseg.evaluation.report import read_metrics_csv
from desertseg.training.engine import (
    AtomicCheckpointIO,
    EpochShardSampler,
    rng_state,
    set_rng_state,
)

TOL = 1e-6
EPOCHS = 4

# A small driver run as a separate process, so that it can be killed like a real job.
# With --slow it sleeps in every sample fetch (and logs the fetch), which slows the run
# enough to kill it reliably in the middle of an epoch; sleeping draws no random numbers.
DRIVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from desertseg.data import decoding as D
    from desertseg.training.config import load_config
    from desertseg.training.fit import train

    data, out, log = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    if log != "-":
        get = D.SegmentationDataset.__getitem__
        def slow(self, i):
            with open(log, "a") as f:
                f.write(f"{i}\\n")
            time.sleep(0.4)
            return get(self, i)
        D.SegmentationDataset.__getitem__ = slow
    cfg = load_config("default", {
        "model": "unet_mobilenet_v2", "pretrained": False, "size": "64x36", "epochs": EPOCHS,
        "batch_size": 2, "optimizer": "adam", "lr": 3e-3, "scheduler": "step", "step_size": 1, "gamma": 0.5,
        "augment": {"hflip": 0.5, "brightness": 0.3, "noise": 0.02}, "loss": "ce", "class_weighting": "none",
        "num_workers": 0, "seed": 3,
    })
    train(cfg, data, out, accelerator="cpu", devices=1, resume="--resume" in sys.argv, progress=False)
    """
).replace("EPOCHS", str(EPOCHS))


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")


def _run(driver: Path, data: Path, out: Path, *extra: str) -> None:
    proc = subprocess.run([sys.executable, str(driver), str(data), str(out), "-", *extra], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _count(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(duality_root, tmp_path):
    data = link_subset(duality_root, tmp_path / "data", {"train": 4, "val": 2})
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)

    _run(driver, data, tmp_path / "straight")  # the reference: never interrupted

    out, log = tmp_path / "killed", tmp_path / "fetches.log"
    proc = subprocess.Popen([sys.executable, str(driver), str(data), str(out), str(log)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        last = out / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + 240
        while not last.exists():
            assert proc.poll() is None, "training ended before writing its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        at_checkpoint = _count(log)
        while _count(log) < at_checkpoint + 2:  # the next epoch has started fetching batches
            assert proc.poll() is None, "training ended before it could be killed mid-epoch"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_state = torch.load(last, map_location="cpu", weights_only=True)  # readable: writes are atomic
    assert killed_state["epoch"] < EPOCHS - 1, "the kill must leave epochs to redo"
    assert not (out / "last.safetensors").exists()  # the killed run never finished

    _run(driver, data, out, "--resume")

    ref, got = read_metrics_csv(tmp_path / "straight" / "metrics.csv"), read_metrics_csv(out / "metrics.csv")
    assert [r["epoch"] for r in got] == list(range(EPOCHS)) == [r["epoch"] for r in ref]
    for a, b in zip(ref, got):
        for key in ("train_loss", "val_loss", "val_miou", "val_pixel_accuracy"):
            assert b[key] == pytest.approx(a[key], abs=TOL), (a["epoch"], key)
    ref_state = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    got_state = torch.load(last, map_location="cpu", weights_only=True)
    assert (got_state["epoch"], got_state["global_step"]) == (ref_state["epoch"], ref_state["global_step"]) == (EPOCHS - 1, EPOCHS * 2)
    assert got_state["lr_schedulers"][0]["_last_lr"] == pytest.approx(ref_state["lr_schedulers"][0]["_last_lr"])
    wa, wb = _weights(tmp_path / "straight" / "last.safetensors"), _weights(out / "last.safetensors")
    assert wa.keys() == wb.keys()
    assert max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa) <= TOL


def test_atomic_checkpoint_write_keeps_the_previous_file_when_a_write_fails(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        io.save_checkpoint({"epoch": 2, "bad": lambda: None}, path)  # cannot be pickled: fails mid-write
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    state = rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save({"rng": state}, tmp_path / "s.pt")
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_epoch_shard_sampler_covers_every_sample_with_equal_shards():
    epoch = {"e": 0}
    shards = [EpochShardSampler(7, seed=5, rank=r, world_size=2, epoch_fn=lambda: epoch["e"]) for r in range(2)]
    first = [list(s) for s in shards]
    assert [len(x) for x in first] == [4, 4]  # equal step counts on every rank (one sample repeated)
    assert {k % 7 for x in first for k in x} == set(range(7))
    epoch["e"] = 1
    second = [list(s) for s in shards]
    assert all(k // 7 == 1 for x in second for k in x)  # the epoch travels with the index
    assert [k % 7 for k in second[0]] != [k % 7 for k in first[0]]  # reshuffled per epoch
    epoch["e"] = 0
    assert [list(s) for s in shards] == first  # and deterministic
