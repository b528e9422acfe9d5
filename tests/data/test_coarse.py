"""Coarse groups, coarse metrics, the traversability cost map, and the coarse evaluation of a
desert model on real YCOR photographs (library and CLI)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from desertseg.classes import CLASS_NAMES, IGNORE_INDEX, raw_to_index
from desertseg.data.coarse import (
    COSTS,
    DESERT_GROUPS,
    GROUP_NAMES,
    coarse_confusion,
    coarse_summary,
    colorize_groups,
    cost_map,
    to_groups,
)
from desertseg.data.decoding import read_image, read_mask
from desertseg.data.formats import get_format
from desertseg.data.samples import Sample, list_samples
from desertseg.evaluation.coarse_eval import format_coarse_scores, write_coarse_results
from desertseg.evaluation.loop import evaluate
from desertseg.inference.predict import Predictor

# The documented mapping, written out here so a silent change of the tables fails a test.
SKY, TALL, LOW, GROUND, OBSTACLE = range(5)
YCOR_COLOUR_GROUP = {
    (40, 80, 0): TALL,
    (178, 176, 153): GROUND,
    (156, 76, 30): GROUND,
    (128, 255, 0): GROUND,
    (1, 88, 255): SKY,
    (0, 160, 0): LOW,
    (255, 0, 0): OBSTACLE,
    (255, 0, 128): GROUND,
}  # (255, 255, 255) unlabelled: ignored
DESERT_GROUP = [TALL, LOW, GROUND, LOW, GROUND, LOW, OBSTACLE, OBSTACLE, GROUND, SKY]
DOCUMENTED_COST = {"Trees": 254, "Lush Bushes": 200, "Dry Grass": 30, "Dry Bushes": 180, "Ground Clutter": 60, "Flowers": 100, "Logs": 254, "Rocks": 254, "Landscape": 10, "Sky": 255}


def test_group_names_and_desert_mapping_cover_all_10_classes():
    assert GROUP_NAMES == ("sky", "tall vegetation", "low vegetation", "traversable ground", "obstacle")
    assert set(DESERT_GROUPS) == set(CLASS_NAMES)
    assert all(why for _, why in DESERT_GROUPS.values())
    assert to_groups(np.arange(10, dtype=np.uint8)).tolist() == DESERT_GROUP
    assert to_groups(np.array([IGNORE_INDEX, 10], np.uint8)).tolist() == [IGNORE_INDEX, IGNORE_INDEX]


def test_every_group_has_members_in_both_label_sets():
    ycor = get_format("ycor")
    assert set(DESERT_GROUP) == set(range(5))
    assert {g for g in ycor.groups.values() if g} == set(GROUP_NAMES)


def test_ycor_colours_map_to_the_documented_groups(tmp_path):
    colours = list(YCOR_COLOUR_GROUP) + [(255, 255, 255)]
    Image.fromarray(np.array([colours], np.uint8)).save(tmp_path / "legend.png")
    fmt = get_format("ycor")
    groups = fmt.coarse_lut[fmt.read_labels(tmp_path / "legend.png")]
    assert groups.tolist() == [list(YCOR_COLOUR_GROUP.values()) + [IGNORE_INDEX]]


def test_coarse_metrics_by_hand():
    # pred (desert classes): Trees, Lush Bushes, Dry Grass, Landscape / Sky, Rocks, Landscape, Landscape
    pred = np.array([[0, 1, 2, 8], [9, 7, 8, 8]], np.uint8)
    target = np.array([[TALL, TALL, GROUND, LOW], [SKY, OBSTACLE, IGNORE_INDEX, GROUND]], np.uint8)
    cm = coarse_confusion(to_groups(pred), target)
    expected = np.zeros((5, 5), np.int64)
    expected[TALL, TALL] = expected[TALL, LOW] = expected[LOW, GROUND] = expected[SKY, SKY] = expected[OBSTACLE, OBSTACLE] = 1
    expected[GROUND, GROUND] = 2
    assert (cm == expected).all()  # the ignored pixel counts nowhere
    m = coarse_summary(cm)
    iou = {g["group"]: g["iou"] for g in m["per_group"]}
    assert iou == pytest.approx({"sky": 1.0, "tall vegetation": 0.5, "low vegetation": 0.0, "traversable ground": 2 / 3, "obstacle": 1.0})
    assert m["miou_present"] == pytest.approx((1 + 0.5 + 0 + 2 / 3 + 1) / 5)
    assert m["pixel_accuracy"] == pytest.approx(5 / 7) and m["pixels"] == 7


def test_cost_map_follows_the_documented_table(duality_root, tmp_path):
    assert {n: c for n, (c, _) in COSTS.items()} == DOCUMENTED_COST
    assert all(why for _, why in COSTS.values())
    costs = cost_map(np.array([list(range(10)) + [IGNORE_INDEX]], np.uint8))
    assert costs.dtype == np.uint8 and costs.tolist() == [[DOCUMENTED_COST[n] for n in CLASS_NAMES] + [255]]
    samples, _ = list_samples(duality_root / "val")
    index = raw_to_index(read_mask(samples[0].mask))
    cmap = cost_map(index)
    assert cmap.shape == index.shape
    for i in np.unique(index):
        assert (cmap[index == i] == DOCUMENTED_COST[CLASS_NAMES[i]]).all()
    Image.fromarray(cmap).save(tmp_path / "cost.png")  # PNG-ready: 8-bit grayscale, lossless
    back = Image.open(tmp_path / "cost.png")
    assert back.mode == "L" and (np.asarray(back) == cmap).all()
    colours = colorize_groups(to_groups(index))
    assert colours.shape == (*index.shape, 3) and (colorize_groups(np.array([[IGNORE_INDEX]], np.uint8)) == 0).all()


@pytest.fixture(scope="module")
def ycor_eval(tiny_run, ycor_dir):
    fmt = get_format("ycor")
    samples = fmt.find(ycor_dir, None)[0][:3]
    predictor = Predictor.from_checkpoint(tiny_run / "best.safetensors", device="cpu")
    return predictor, samples, evaluate(predictor, samples, progress=False, fmt=fmt)


def test_coarse_evaluation_on_real_ycor_photos(ycor_eval, tmp_path):
    predictor, samples, result = ycor_eval
    assert result["images"] == 3 and result["errors"] == [] and result["dataset"] == "ycor"
    # Recompute by hand with the documented tables: one matrix, masks' own resolution.
    cm = np.zeros((5, 5), np.int64)
    for s in samples:
        rgb = np.asarray(Image.open(s.mask).convert("RGB"))
        target = np.full(rgb.shape[:2], IGNORE_INDEX, np.uint8)
        for colour, group in YCOR_COLOUR_GROUP.items():
            target[(rgb == colour).all(-1)] = group
        pred = predictor.predict(read_image(s.image)).mask
        assert pred.shape == (544, 1024)
        cm += coarse_confusion(np.array(DESERT_GROUP, np.uint8)[pred], target)
    assert result["confusion_matrix"] == cm.tolist()
    white = sum(int((np.asarray(Image.open(s.mask).convert("RGB")) == 255).all(-1).sum()) for s in samples)
    assert result["pixels"] == 3 * 544 * 1024 - white
    assert 0 <= result["miou_all"] <= 1 and 0 <= result["miou_present"] <= 1 and 0 <= result["pixel_accuracy"] <= 1
    assert [g["group"] for g in result["per_group"]] == list(GROUP_NAMES)
    assert np.asarray(result["label_vs_prediction"]["counts"]).sum() == 3 * 544 * 1024  # every pixel, unlabelled too
    assert len(result["per_image"]) == 3 and all(0 <= p["miou_present"] <= 1 for p in result["per_image"])
    table = format_coarse_scores(result)
    assert "coarse mIoU" in table and "| traversable grass | traversable ground |" in table
    js, md, png = write_coarse_results(result, tmp_path)
    assert json.loads(js.read_text())["confusion_matrix"] == cm.tolist()
    assert "Confusion matrix" in md.read_text() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_coarse_evaluation_reports_bad_files_and_finishes(ycor_eval, tmp_path):
    predictor, samples, _ = ycor_eval
    (tmp_path / "empty.png").write_bytes(b"")
    bad = Sample("bad", samples[0].image, tmp_path / "empty.png")
    result = evaluate(predictor, [bad, samples[0]], progress=False, fmt=get_format("ycor"))
    assert result["images"] == 1 and len(result["errors"]) == 1 and "empty.png" in result["errors"][0]
    assert "1 files could not be read" in format_coarse_scores(result)


def test_duality_evaluation_carries_its_coarse_summary_from_the_same_loop(tiny_run, duality_root):
    """Fine and coarse metrics are two summaries of one pass: the coarse matrix of a Duality
    evaluation equals per-pixel group confusions summed by hand."""
    samples, _ = list_samples(duality_root / "val")
    predictor = Predictor.from_checkpoint(tiny_run / "best.safetensors", device="cpu")
    result = evaluate(predictor, samples[:2], progress=False)
    cm = np.zeros((5, 5), np.int64)
    for s in samples[:2]:
        pred = predictor.predict(read_image(s.image)).mask
        cm += coarse_confusion(to_groups(pred), to_groups(raw_to_index(read_mask(s.mask))))
    assert result["coarse"]["confusion_matrix"] == cm.tolist()
    assert np.asarray(result["confusion_matrix"]).sum() == cm.sum()  # every labelled pixel, in both
    assert result["coarse"]["miou_present"] == pytest.approx(coarse_summary(cm)["miou_present"])


def _cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "desertseg.cli", *args], capture_output=True, text=True, env=env, timeout=600)


def test_cli_evaluate_dataset_ycor(tiny_run, ycor_dir, tmp_path):
    r = _cli("evaluate", "--data", str(ycor_dir), "--dataset", "ycor", "--checkpoint", str(tiny_run / "best.safetensors"), "--limit", "2", "--device", "cpu", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "coarse mIoU" in r.stdout and "| traversable ground |" in r.stdout
    result = json.loads((tmp_path / "coarse_metrics.json").read_text())
    assert result["images"] == 2 and len(result["confusion_matrix"]) == 5
    assert (tmp_path / "coarse_metrics.md").exists() and (tmp_path / "coarse_confusion.png").stat().st_size > 1000
    r = _cli("evaluate", "--data", str(ycor_dir), "--dataset", "bogus", "--checkpoint", str(tiny_run / "best.safetensors"))
    assert r.returncode == 2 and r.stderr.startswith("error: unknown dataset format 'bogus'") and "Traceback" not in r.stderr
