"""Training that starts from a model file (``init`` / ``desertseg train --init``) instead of
ImageNet weights: fine-tuning the bundled model, or a run's, on labelled frames."""

import pytest
import torch

from desertseg.evaluation.report import read_metrics_csv
from desertseg.models.checkpoint import CheckpointError, default_model_path, load_model, make_metadata, save_model
from desertseg.training.config import load_config
from desertseg.training.lightning_module import initial_model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v.float(), sb[k].float()) for k, v in a.state_dict().items())


def test_default_init_starts_from_the_bundled_model():
    model = initial_model(load_config("default", {"init": "default"}))
    bundled, _ = load_model(default_model_path())
    assert model.training and all(p.dtype == torch.float32 for p in model.parameters())  # the file is float16
    assert _same_weights(model, bundled)
    assert not _same_weights(model, initial_model(load_config("default", {"pretrained": False})))


def test_fine_tuning_a_trained_run_starts_where_it_ended(tiny_run, duality_root, tmp_path):
    """The same 4 images, the same size: a run that starts from tiny_run's model starts with a
    lower loss than tiny_run's own first epoch did from scratch."""
    from conftest import link_subset

    from desertseg.training.fit import train

    data = link_subset(duality_root, tmp_path / "data", {"train": 4})
    init = tiny_run / "last.safetensors"
    overrides = {"model": "unet_mobilenet_v2", "pretrained": False, "size": "128x72", "epochs": 1, "batch_size": 2, "lr": 1e-4, "augment": {}, "loss": "ce", "class_weighting": "none"}
    config = load_config("default", {**overrides, "init": str(init), "scheduler": "none", "val_split": "none"})
    train(config, data, tmp_path / "run", accelerator="cpu", devices=1, progress=False)
    first = lambda run: [r for r in read_metrics_csv(run / "metrics.csv") if "train_loss" in r][0]["train_loss"]
    assert first(tmp_path / "run") < 0.9 * first(tiny_run)
    tuned, meta = load_model(tmp_path / "run" / "last.safetensors")
    assert meta["config"]["init"] == str(init)
    assert not _same_weights(tuned, load_model(init)[0])  # it trained


def test_init_of_another_architecture_or_normalisation_is_refused(tiny_run, tmp_path):
    with pytest.raises(CheckpointError, match=r"last\.safetensors.*'unet_mobilenet_v2'.*--model unet_mobilenet_v2"):
        initial_model(load_config("default", {"init": str(tiny_run / "last.safetensors")}))
    model, meta = load_model(tiny_run / "last.safetensors")
    plain = save_model(tmp_path / "plain.safetensors", model, make_metadata(meta["model"], tuple(meta["input_size"]), mean=(0, 0, 0), std=(1, 1, 1)))
    with pytest.raises(CheckpointError, match=r"plain\.safetensors.*normalised with mean \[0\.0, 0\.0, 0\.0\]"):
        initial_model(load_config("default", {"model": "unet_mobilenet_v2", "init": str(plain)}))


def test_cli_names_a_missing_init_file_before_reading_the_data(duality_root, tmp_path):
    from conftest import run_cli

    r = run_cli("train", "--data", str(duality_root), "--out", str(tmp_path / "run"), "--init", str(tmp_path / "nope.safetensors"), timeout=120)
    assert r.returncode == 2, r.stderr
    assert "error:" in r.stderr and "nope.safetensors: model file not found" in r.stderr
