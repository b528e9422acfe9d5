"""The model shipped inside the package: loads with no checkpoint argument, describes itself,
and segments real desert images sensibly."""

import json
import os
import subprocess
import sys

import numpy as np

from desertseg.classes import class_table, raw_to_index
from desertseg.data.decoding import read_image, read_mask
from desertseg.data.samples import list_samples
from desertseg.inference.predict import Predictor
from desertseg.metrics import confusion_matrix, summarize
from desertseg.models.checkpoint import default_model_path, read_metadata
from desertseg.training.config import load_config


def test_bundled_model_is_small_and_self_describing():
    path = default_model_path()
    assert path.exists() and path.stat().st_size < 20 * 2**20
    meta = read_metadata(path)
    assert meta["classes"] == class_table() and meta["model"] == load_config("default").model  # trained with the default recipe
    assert meta["input_size"] == [270, 480] and meta["config"]["epochs"] > 0


def test_bundled_model_segments_real_val_images(duality_root):
    predictor = Predictor.from_checkpoint(device="cpu", backend="torch")
    samples, _ = list_samples(duality_root / "val")
    cm = np.zeros((10, 10), np.int64)
    for s in samples[:3]:
        cm += confusion_matrix(predictor.predict(read_image(s.image)).mask, raw_to_index(read_mask(s.mask)))
    m = summarize(cm)
    # Not an accuracy target (those live in benchmarks/): a guard against broken weights or
    # preprocessing, which give near-chance numbers. Sky is the easiest class.
    sky = next(c for c in m["per_class"] if c["class"] == "Sky")
    assert sky["iou"] > 0.8 and m["pixel_accuracy"] > 0.5


def test_predict_without_checkpoint_uses_and_names_the_bundled_model(duality_root, tmp_path):
    image = sorted((duality_root / "val" / "Color_Images").iterdir())[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "desertseg.cli", "predict", str(image), "--out", str(tmp_path / "out"), "--backend", "torch"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "default.safetensors" in r.stderr  # says which model is in use
    assert (tmp_path / "out" / "raw" / f"{image.stem}.png").exists()
    info = subprocess.run([sys.executable, "-m", "desertseg.cli", "info"], capture_output=True, text=True, env=env, timeout=300)
    assert json.loads(info.stdout)["model"] == load_config("default").model
