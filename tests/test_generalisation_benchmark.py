"""benchmarks/generalisation.py on the real shared pairs: a (tiny) fold trains on the other
environments, is scored on the held-out one, and is kept for the next run."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "generalisation.py"


def _run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_one_fold_holds_out_w0_and_is_reused(duality_root, tmp_path):
    data = duality_root.parent  # train + val + testImages: all 154 pairs
    tiny = ["--set", 'size="64x36"', "--set", "epochs=1", "--set", "pretrained=false", "--set", "batch_size=16"]
    doc = _run("--data", str(data), "--folds", "w0", "--seeds", "0", *tiny, "--out", str(tmp_path), "--name", "tiny", "--threads", "1")
    (fold,) = doc["folds"]
    assert (fold["held_out"], fold["train_images"], fold["test_images"]) == ("w0", 124, 30)
    assert 0 <= fold["miou_all"] <= fold["miou_present"] <= 1 and len(fold["per_class_iou"]) == 10
    assert fold["per_class_iou"]["Dry Bushes"] in (None, 0.0)  # absent from w0: no true positive can exist
    split = json.loads((tmp_path / "w0-seed0" / "train_split.json").read_text())
    assert not any(s["name"].startswith("w0") for s in split["samples"])  # nothing of w0 in training
    assert doc["mean_over_folds"]["miou_all"]["mean"] == fold["miou_all"]
    again = _run("--data", str(data), "--folds", "w0", "--seeds", "0", *tiny, "--out", str(tmp_path), "--name", "tiny", "--threads", "1")
    assert again["folds"] == doc["folds"]  # read back from fold.json, not trained again
