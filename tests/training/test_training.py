import json

import pytest

from desertseg.classes import class_table
from desertseg.evaluation.report import read_metrics_csv
from desertseg.models.checkpoint import load_model, read_metadata
from desertseg.training.config import load_config, parse_override


def test_seed_preset_is_the_published_recipe():
    c = load_config("seed")
    assert (c.model, c.size, c.loss, c.optimizer, c.lr, c.scheduler, c.step_size, c.gamma, c.batch_size, c.epochs) == ("deeplabv3_resnet50", "256x256", "ce", "adam", 2e-4, "step", 20, 0.1, 8, 40)
    assert c.augment == {}


def test_overrides_and_unknown_keys():
    key, value = parse_override("augment.hflip=0.25")
    c = load_config("default", {key: value, "epochs": 3})
    assert c.augment["hflip"] == 0.25 and "brightness" in c.augment and c.epochs == 3
    with pytest.raises(ValueError, match="unknown keys"):
        load_config("seed", {"learning_rate": 1})
    with pytest.raises(ValueError, match="unknown preset"):
        load_config("nonexistent")


def test_training_smoke_run_writes_everything_and_loss_falls(tiny_run):
    for name in ("config.json", "metrics.csv", "curves.png", "best.safetensors", "last.safetensors", "checkpoints/last.ckpt"):
        assert (tiny_run / name).exists(), name
    rows = [r for r in read_metrics_csv(tiny_run / "metrics.csv") if "train_loss" in r]
    assert len(rows) == 4
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    meta = read_metadata(tiny_run / "best.safetensors")
    assert meta["classes"] == class_table() and meta["input_size"] == [72, 128]
    assert json.loads((tiny_run / "config.json").read_text())["epochs"] == 4
    model, _ = load_model(tiny_run / "best.safetensors")
    assert not model.training


def test_existing_run_folder_is_not_overwritten(tiny_run, duality_root):
    from desertseg.training.fit import train

    with pytest.raises(FileExistsError, match="--resume"):
        train(load_config("default"), duality_root, tiny_run)


def test_training_without_validation_keeps_the_last_epoch(duality_root, tmp_path):
    """val_split = "none": every pair trains and the last epoch is the model (nothing is
    chosen on held-out data)."""
    from conftest import link_subset

    from desertseg.training.fit import train

    data = link_subset(duality_root, tmp_path / "data", {"train": 4})  # no val folder at all
    config = load_config("default", {"pretrained": False, "size": "96x54", "epochs": 2, "batch_size": 2, "val_split": "none"})
    result = train(config, data, tmp_path / "run", accelerator="cpu", devices=1, progress=False)
    assert set(result) == {"last"} and result["last"]["epoch"] == 1
    assert (tmp_path / "run" / "last.safetensors").exists() and not (tmp_path / "run" / "best.safetensors").exists()
    rows = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    assert len(rows) == 2 and all("train_loss" in r and "val_miou" not in r for r in rows)
    assert read_metadata(tmp_path / "run" / "last.safetensors")["config"]["val_split"] == "none"


def test_train_config_defaults_are_the_default_preset():
    from desertseg.training.config import TrainConfig

    assert TrainConfig() == load_config("default")
