"""Training meets a bad file (issue 16, item 4): a real image or mask damaged while a run is
under way is reported with its path, skipped and counted (``bad_files`` / ``val_bad_files`` in
metrics.csv), and training goes on; past ``max_bad_share`` of a split the run stops with one
clear error and keeps its last checkpoint.

The runs train on real pairs *copied* into pytest's tmp folder (the copies are what gets
damaged, never the shared files), with the in-memory cache off so every epoch re-reads them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli, train_args

from desertseg.data.decoding import DataError
from desertseg.errors import TooManyDamagedFiles
from desertseg.evaluation.report import read_metrics_csv
from desertseg.training.config import load_config
from desertseg.training.engine import SkipDamaged
from desertseg.training.lightning_module import SegmentationModule, collate_readable

N_TRAIN, N_VAL, EPOCHS = 6, 2, 3


def copy_subset(root: Path, dest: Path, counts: dict[str, int]) -> Path:
    """The first ``counts[split]`` real pairs of each split, copied (so they can be damaged)."""
    for split, n in counts.items():
        for p in sorted((root / split / "Color_Images").iterdir())[:n]:
            for sub in ("Color_Images", "Segmentation"):
                (dest / split / sub).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / split / sub / p.name, dest / split / sub / p.name)
    return dest


def truncate(path: Path) -> None:
    """Keep the first half of a PNG: it still opens, but its pixel data is cut short."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def damage_after_epoch(monkeypatch, epoch: int, files: list[Path]) -> None:
    """Truncate ``files`` at the end of training epoch ``epoch`` (after its validation), so the
    next epoch meets them mid-run, not in a check beforehand."""
    original = SegmentationModule.on_train_epoch_end

    def on_train_epoch_end(self):
        original(self)
        if self.current_epoch == epoch:
            for f in files:
                truncate(f)

    monkeypatch.setattr(SegmentationModule, "on_train_epoch_end", on_train_epoch_end)


def tiny_config(**overrides):
    base = {"pretrained": False, "size": "96x54", "epochs": EPOCHS, "batch_size": 2, "num_workers": 0, "cache": False, "augment": {}, "loss": "ce", "class_weighting": "none", "scheduler": "none"}
    return load_config("default", {**base, **overrides})


def pair(data: Path, split: str, i: int, sub: str) -> Path:
    return sorted((data / split / sub).iterdir())[i]


def test_damaged_files_mid_run_are_skipped_counted_and_training_goes_on(duality_root, tmp_path, monkeypatch, capsys):
    from desertseg.training.fit import train

    data = copy_subset(duality_root, tmp_path / "data", {"train": N_TRAIN, "val": N_VAL})
    bad_image, bad_val_mask = pair(data, "train", 3, "Color_Images"), pair(data, "val", 1, "Segmentation")
    damage_after_epoch(monkeypatch, 0, [bad_image, bad_val_mask])
    # 1 of 6 training and 1 of 2 validation files: within a share of 0.5, so the run goes on.
    result = train(tiny_config(max_bad_share=0.5), data, tmp_path / "run", accelerator="cpu", devices=1, progress=False)

    assert result["last"]["epoch"] == EPOCHS - 1
    assert (tmp_path / "run" / "last.safetensors").exists()
    out = capsys.readouterr().out
    for f in (bad_image, bad_val_mask):  # one warning per file, naming it and its problem
        assert out.count(f"warning: skipped damaged file {f}: ") == 1, out
    assert "truncated" in out
    rows = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    assert [r["bad_files"] for r in rows] == [0, 1, 1]
    assert [r["val_bad_files"] for r in rows] == [0, 1, 1]


def test_too_many_damaged_files_stop_the_run_and_keep_the_last_checkpoint(duality_root, tmp_path, monkeypatch):
    from desertseg.cli.main import _expected
    from desertseg.training.fit import train

    data = copy_subset(duality_root, tmp_path / "data", {"train": N_TRAIN, "val": N_VAL})
    bad = [pair(data, "train", 1, "Color_Images"), pair(data, "train", 4, "Segmentation")]  # an image and a mask
    damage_after_epoch(monkeypatch, 0, bad)
    out = tmp_path / "run"
    # 2 of 6 training files damaged is over a share of 0.25.
    with pytest.raises(TooManyDamagedFiles) as info:
        train(tiny_config(max_bad_share=0.25), data, out, accelerator="cpu", devices=1, progress=False)

    msg = str(info.value)
    last = out / "checkpoints" / "last.ckpt"
    assert "2 damaged files among the 6 train samples" in msg and "max_bad_share = 0.25" in msg
    assert all(str(f) in msg for f in bad)
    assert f"the last checkpoint is kept: {last} (epoch 1)" in msg and f"--resume {out}" in msg
    assert "\n" not in msg and _expected(info.value)  # the CLI prints it as one error line, exit 2
    # The epoch that met the damage finished and was checkpointed; no later epoch ran.
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1
    assert [r["epoch"] for r in read_metrics_csv(out / "metrics.csv")] == [0, 1]


def test_two_process_ddp_run_counts_a_damaged_file_once_and_goes_on(duality_root, tmp_path):
    """Under DDP (started by the command line, progress bar on, as a user would) the count is
    summed over processes without a hang: rank 0's progress bar syncs the epoch's metrics before
    the module's epoch-end hook, so that hook must not start a collective of its own."""
    data = copy_subset(duality_root, tmp_path / "data", {"train": 4, "val": 2})
    bad = pair(data, "train", 2, "Color_Images")
    truncate(bad)  # damaged from the start: the seed preset reads no file before training
    out = tmp_path / "run"
    proc = run_cli(*train_args(data, out, "--set", "max_bad_share=0.5", devices=2))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert f"warning: skipped damaged file {bad}: " in log
    assert [r["bad_files"] for r in read_metrics_csv(out / "metrics.csv")] == [1, 1]  # one file, on one process per epoch


class _Pairs:
    """Stands in for SegmentationDataset: item i is (i, i), except that ``bad`` items raise."""

    def __init__(self, n: int, bad: set[int]):
        self.n, self.bad = n, bad

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            raise DataError(f"/data/{i}.png", "image data is damaged or truncated")
        return torch.tensor(float(i)), torch.tensor(i)


def test_a_stand_in_takes_a_damaged_training_sample_s_place_and_validation_drops_it():
    train = SkipDamaged(_Pairs(6, bad={2}), stand_in=True)
    image, target, damaged = train[2]
    assert int(target) != 2 and [(d.index, d.path) for d in damaged] == [(2, "/data/2.png")]
    assert int(train[2][1]) == int(target)  # the same stand-in in every run, worker and process
    assert train[3][2] == ()
    assert SkipDamaged(_Pairs(6, bad=set(range(6))), stand_in=True)[0][0] is None  # nothing readable

    val = SkipDamaged(_Pairs(6, bad={2}), stand_in=False)
    image, target, batch_damaged = collate_readable([val[1], val[2], val[3]])
    assert target.tolist() == [1, 3] and [d.index for d in batch_damaged] == [2]
    assert collate_readable([val[2]])[:2] == (None, None)


def test_a_file_damaged_before_the_run_is_left_out_of_class_weights_and_skipped(duality_root, tmp_path, capsys):
    """Class weighting reads every training mask before training starts: a damaged one there
    is warned about, not fatal, and training then skips it like any other bad file."""
    from desertseg.training.fit import train

    data = copy_subset(duality_root, tmp_path / "data", {"train": N_TRAIN, "val": N_VAL})
    bad = pair(data, "train", 2, "Segmentation")
    truncate(bad)
    with pytest.warns(UserWarning, match=f"class weights leave out a damaged file: {bad}"):
        result = train(tiny_config(max_bad_share=0.5, class_weighting="inverse_sqrt", epochs=1), data, tmp_path / "run", accelerator="cpu", devices=1, progress=False)
    assert result["last"]["epoch"] == 0
    assert f"skipped damaged file {bad}" in capsys.readouterr().out
    assert [r["bad_files"] for r in read_metrics_csv(tmp_path / "run" / "metrics.csv") if "bad_files" in r] == [1]
