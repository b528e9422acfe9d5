"""Environment-held-out splits on the real data: deterministic, disjoint, usable by train/evaluate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from desertseg.data.decoding import DataError
from desertseg.data.samples import (
    environment,
    find_samples,
    find_split_dirs,
    read_split_file,
)
from desertseg.data.splits import environment_matches, make_splits, write_split_file


def cli(*args):
    return subprocess.run([sys.executable, "-m", "desertseg.cli", *args], capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_w0_held_out_is_deterministic_and_disjoint(duality_root):
    data = duality_root.parent  # train + val + testImages pooled
    a, problems = make_splits(data, ["w0"])
    b, _ = make_splits(data, ["w0"])
    assert problems == [] and a == b
    assert len(a["val"]) == 30 and len(a["train"]) == 124
    assert {environment(s.name) for s in a["val"]} == {"w0"}
    assert "w0" not in {environment(s.name) for s in a["train"]}
    assert not {s.image for s in a["train"]} & {s.image for s in a["val"]}
    assert [s.name for s in a["train"]] == sorted(s.name for s in a["train"])


def test_letters_only_environment_matches_every_digit_variant():
    assert environment_matches("mt0", "mt") and environment_matches("mt1", "mt")
    assert environment_matches("w0", "w") and not environment_matches("ww1", "w")
    assert environment_matches("mt1", "MT1") and not environment_matches("mt0", "mt1")


def test_train_envs_restrict_training_and_overlap_is_refused(duality_root):
    splits, _ = make_splits(duality_root, ["mt1"], ["cc"])
    assert {environment(s.name) for s in splits["val"]} == {"mt1"}
    assert {environment(s.name) for s in splits["train"]} == {"cc"}
    with pytest.raises(ValueError, match="both train and val"):
        make_splits(duality_root, ["mt"], ["mt1"])
    with pytest.raises(ValueError, match=r"no samples of environment 'w0'.*found: cc, mt0, mt1"):
        make_splits(duality_root, ["w0"])


def test_split_file_round_trip_is_relative_and_survives_moving_the_data(duality_root, tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val"):
        for sub in ("Color_Images", "Segmentation"):
            (root / split / sub).mkdir(parents=True)
        names = sorted((duality_root / split / "Color_Images").iterdir())
        for img in names[:3] + names[-3:]:  # cc... and mt...
            for sub in ("Color_Images", "Segmentation"):
                (root / split / sub / img.name).symlink_to(duality_root / split / sub / img.name)
    splits, _ = make_splits(root, ["mt"])
    path = write_split_file(tmp_path / "s" / "split_val.json", splits["val"], root, "val")
    doc = json.loads(path.read_text())
    assert doc["count"] == len(splits["val"]) > 0
    assert all(not Path(e["image"]).is_absolute() and e["image"].split("/")[1] == "Color_Images" for e in doc["samples"])
    moved = tmp_path / "moved"
    root.rename(moved)
    samples, problems = read_split_file(path, moved)
    assert problems == [] and [s.name for s in samples] == [s.name for s in splits["val"]]
    assert all(s.image.parent.parent.parent == moved for s in samples)
    # find_samples (used by train and evaluate) accepts the split file.
    assert find_samples(moved, str(path))[0] == samples


def test_split_file_problems_are_reported_not_fatal(duality_root, tmp_path):
    good = sorted((duality_root / "val" / "Color_Images").iterdir())[0].name
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            {
                "format": "desertseg-split/1",
                "samples": [
                    {"image": f"val/Color_Images/{good}", "mask": f"val/Segmentation/{good}"},
                    {"image": f"val/Color_Images/{good}", "mask": f"val/Segmentation/{good}"},
                    {"image": "val/Color_Images/gone.png", "mask": "val/Segmentation/gone.png"},
                ],
            }
        )
    )
    samples, problems = read_split_file(path, duality_root)
    assert len(samples) == 1
    assert any("listed twice" in p for p in problems) and any("gone.png" in p and "not found" in p for p in problems)
    txt = tmp_path / "s.txt"
    txt.write_text(f"# one image per line\nval/Color_Images/{good}\n")
    samples, problems = read_split_file(txt, duality_root)
    assert problems == [] and samples[0].mask == duality_root / "val" / "Segmentation" / good
    for text, reason in (("{not json", "not valid JSON"), ('{"samples": []}', "not a desertseg split file")):
        path.write_text(text)
        with pytest.raises(DataError, match=reason):
            read_split_file(path, duality_root)
    with pytest.raises(DataError, match="no listed image/mask pair exists"):
        read_split_file(txt, tmp_path)  # the wrong data root


def test_find_split_dirs_survives_a_symlink_loop(duality_root, tmp_path):
    (tmp_path / "val").symlink_to(duality_root / "val")
    (tmp_path / "loop").symlink_to(tmp_path)
    assert find_split_dirs(tmp_path) == [tmp_path / "val"]


def test_cli_split_then_evaluate_with_the_split_file(duality_root, tiny_run, tmp_path):
    out = tmp_path / "splits"
    r = cli("split", str(duality_root), "--val-envs", "mt1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "val: 38 pairs (mt1 38)" in r.stdout and "train: 86 pairs" in r.stdout
    r2 = cli("split", str(duality_root), "--val-envs", "mt1", "--out", str(out))
    assert r2.returncode == 2 and "--overwrite" in r2.stderr
    r = cli(
        "evaluate",
        "--data",
        str(duality_root),
        "--split",
        str(out / "split_val.json"),
        "--checkpoint",
        str(tiny_run / "best.safetensors"),
        "--limit",
        "2",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "ev"),
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["images"] == 2


def test_split_all_pools_every_split_folder(duality_root):
    """`train_split = "all"` trains on every pair there is (the bundled model's 154)."""
    samples, problems = find_samples(duality_root.parent, "all")
    assert problems == [] and len(samples) == 154
    assert sorted({environment(s.name) for s in samples}) == ["cc", "mt0", "mt1", "w0"]
    assert len({s.image for s in samples}) == 154
