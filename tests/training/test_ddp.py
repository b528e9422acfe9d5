"""A real two-process DDP training on CPU (gloo), started by the command line exactly as a user
would (``--strategy ddp --devices 2``: Lightning launches the second process), whose summed
validation confusion matrix must equal a one-process evaluation of the saved weights.

Three validation images on two processes: the shards differ in size, so a padded
DistributedSampler (which repeats an image) or per-rank averaging would both be caught.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import link_subset, run_cli, train_args

from desertseg.data.decoding import SegmentationDataset
from desertseg.data.samples import find_samples
from desertseg.data.transforms import eval_transform
from desertseg.evaluation.report import read_metrics_csv
from desertseg.metrics import confusion_matrix, summarize
from desertseg.models.checkpoint import load_model

W, H, N_VAL = 64, 36, 3


def test_two_process_ddp_training_matches_one_process_evaluation(duality_root, tmp_path):
    data = link_subset(duality_root, tmp_path / "data", {"train": 4, "val": N_VAL})
    out = tmp_path / "run"
    proc = run_cli(*train_args(data, out, "--lr", "0.003", "--cache-dir", str(tmp_path / "cache"), size=f"{W}x{H}", devices=2))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Starting with 2 processes" in log and "distributed_backend=gloo" in log

    # Both processes filled one shared on-disk cache (atomic writes): one entry per image.
    assert len(list((tmp_path / "cache" / f"{W}x{H}").glob("*.npy"))) == 4 + N_VAL

    doc = json.loads((out / "val_confusion.json").read_text())
    assert (doc["epoch"], doc["world_size"]) == (1, 2)
    ddp_cm = np.array(doc["confusion_matrix"], dtype=np.int64)

    # One process, the same weights (last.safetensors = the weights of the last validation),
    # the same val images decoded and resized without the cache, one image at a time.
    model, meta = load_model(out / "last.safetensors")
    assert meta["input_size"] == [H, W]
    samples, _ = find_samples(data, "val")
    ds = SegmentationDataset(samples, (H, W), eval_transform)
    cm = np.zeros_like(ddp_cm)
    with torch.no_grad():
        for i in range(len(ds)):
            image, target = ds[i]
            cm += confusion_matrix(model(image[None]).argmax(1), target[None])

    assert cm.sum() == N_VAL * W * H  # every val image counted exactly once (no ignored pixels here)
    np.testing.assert_array_equal(ddp_cm, cm)
    rows = read_metrics_csv(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[-1]["val_miou"] == pytest.approx(summarize(cm)["miou_all"], abs=1e-6)
