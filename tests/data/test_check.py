"""check-data on the real shared data and on a corrupted copy (symlinks + damaged files in tmp)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from desertseg.classes import CLASSES
from desertseg.data.check import check_data, format_report


def cli(*args):
    return subprocess.run([sys.executable, "-m", "desertseg.cli", *args], capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_shared_data_is_clean_with_expected_counts(duality_root, unseen_dir):
    report = check_data(duality_root.parent, progress=False)
    assert report["ok"] and report["errors"] == 0 and report["warnings"] == 0, report["problems"][:3]
    by_name = {s["name"]: s for s in report["splits"]}
    assert {k: v["pairs"] for k, v in by_name.items()} == {
        "Offroad_Segmentation_Training_Dataset/train": 100,
        "Offroad_Segmentation_Training_Dataset/val": 24,
        "Offroad_Segmentation_testImages": 30,
    }
    train = by_name["Offroad_Segmentation_Training_Dataset/train"]
    assert train["image_sizes"] == {"960x540": 100} and train["image_modes"] == {"RGB": 100} and train["mask_modes"] == {"I;16": 100}
    assert by_name["Offroad_Segmentation_testImages"]["environments"] == {"w0": 30}
    assert set(train["environments"]) == {"cc", "mt0", "mt1"} and sum(train["environments"].values()) == 100
    # Class shares of val, recomputed here independently from the raw masks.
    counts = {c.raw_id: 0 for c in CLASSES}
    for m in sorted((duality_root / "val" / "Segmentation").iterdir()):
        ids, n = np.unique(np.asarray(Image.open(m)), return_counts=True)
        for i, k in zip(ids.tolist(), n.tolist()):
            counts[i] += k
    total = sum(counts.values())
    val = by_name["Offroad_Segmentation_Training_Dataset/val"]
    for c in CLASSES:
        assert abs(val["class_share"][c.name] - counts[c.raw_id] / total) < 1e-9
    assert 0.3 < val["class_share"]["Sky"] < 0.45  # README: 37.8% in the full val split
    assert abs(sum(c["share"] for c in report["classes"]) - 1) < 1e-9
    assert max(c["images"] for c in report["classes"]) == 154  # e.g. Sky is in every image


def test_cli_json_and_table(duality_root):
    r = cli("check-data", str(duality_root / "val"), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["pairs"] == 24 and report["ok"]
    r = cli("check-data", str(duality_root / "val"))
    assert r.returncode == 0 and "OK: 24 pairs in 1 split folders" in r.stdout and "Landscape" in r.stdout


def _corrupted_copy(duality_root: Path, root: Path) -> dict[str, Path]:
    """A dataset root with train/val made of symlinks to real files, plus one of each problem."""
    for split in ("train", "val"):
        for sub in ("Color_Images", "Segmentation"):
            (root / split / sub).mkdir(parents=True)
        for img in sorted((duality_root / split / "Color_Images").iterdir())[:4]:
            for sub in ("Color_Images", "Segmentation"):
                (root / split / sub / img.name).symlink_to(duality_root / split / sub / img.name)
    tr, va = root / "train", root / "val"
    src_img = sorted((duality_root / "train" / "Color_Images").iterdir())[10]
    raw = np.asarray(Image.open(duality_root / "train" / "Segmentation" / src_img.name))
    bad = {}
    # 8-bit mask (labels destroyed by an 8-bit save)
    bad["mask_8bit"] = tr / "Segmentation" / "eightbit.png"
    (tr / "Color_Images" / "eightbit.png").symlink_to(src_img)
    Image.fromarray((raw % 256).astype(np.uint8), "L").save(bad["mask_8bit"])
    # orphan image and orphan mask
    bad["orphan_image"] = tr / "Color_Images" / "lonely.png"
    bad["orphan_image"].symlink_to(src_img)
    bad["orphan_mask"] = tr / "Segmentation" / "ghost.png"
    bad["orphan_mask"].symlink_to(duality_root / "train" / "Segmentation" / src_img.name)
    # truncated PNG image
    bad["corrupt"] = tr / "Color_Images" / "truncated.png"
    bad["corrupt"].write_bytes(src_img.read_bytes()[: src_img.stat().st_size // 2])
    (tr / "Segmentation" / "truncated.png").symlink_to(duality_root / "train" / "Segmentation" / src_img.name)
    # unknown raw id in a block of the mask
    unk = raw.copy()
    unk[:10, :20] = 1234
    bad["unknown_ids"] = tr / "Segmentation" / "unknown.png"
    Image.fromarray(unk).save(bad["unknown_ids"])
    (tr / "Color_Images" / "unknown.png").symlink_to(src_img)
    # mask of another size
    bad["size_mismatch"] = tr / "Segmentation" / "small.png"
    Image.fromarray(np.ascontiguousarray(raw[::2, ::2])).save(bad["size_mismatch"])
    (tr / "Color_Images" / "small.png").symlink_to(src_img)
    # empty image file, colour mask
    bad["empty_file"] = va / "Color_Images" / "zero.png"
    bad["empty_file"].write_bytes(b"")
    (va / "Segmentation" / "zero.png").symlink_to(duality_root / "train" / "Segmentation" / src_img.name)
    bad["mask_colour"] = va / "Segmentation" / "colour.png"
    Image.fromarray(np.zeros((540, 960, 3), np.uint8)).save(bad["mask_colour"])
    (va / "Color_Images" / "colour.png").symlink_to(sorted((duality_root / "train" / "Color_Images").iterdir())[11])
    # the same image in train and val under another name: validation leaks into training
    bad["duplicate_across_splits"] = va / "Color_Images" / "leak.png"
    bad["duplicate_across_splits"].symlink_to(src_img)
    (va / "Segmentation" / "leak.png").symlink_to(duality_root / "train" / "Segmentation" / src_img.name)
    # a text file among images (a warning, not an error)
    bad["non_image"] = va / "Color_Images" / "notes.txt"
    bad["non_image"].write_text("not an image")
    return bad


def test_corrupted_copy_every_problem_found_in_one_pass(duality_root, tmp_path):
    root = tmp_path / "data"
    bad = _corrupted_copy(duality_root, root)
    report = check_data(root, progress=False)
    assert not report["ok"]
    found = {(p["kind"], p["path"]) for p in report["problems"]}
    for kind, path in bad.items():
        assert (kind, str(path)) in found, (kind, path, sorted(found))
    severities = {p["kind"]: p["severity"] for p in report["problems"]}
    assert severities["non_image"] == "warning" and severities["mask_8bit"] == "error"
    # Copies of one image inside train are a warning; the copy in val is the leak (an error).
    dups = sorted(Path(p["path"]).name for p in report["problems"] if p["kind"] == "duplicate_image")
    assert dups == ["lonely.png", "small.png", "unknown.png"] and severities["duplicate_image"] == "warning"
    assert [p["path"] for p in report["problems"] if p["kind"] == "duplicate_across_splits"] == [str(bad["duplicate_across_splits"])]
    # Good pairs still counted: 4 real + eightbit/truncated/unknown/small in train; 4 + zero/colour/leak in val.
    assert [s["pairs"] for s in report["splits"]] == [8, 7]
    assert report["splits"][0]["unknown_ids"] == {"1234": 200}
    assert report["splits"][0]["mask_modes"].get("L") == 1
    text = format_report(report)
    assert "PROBLEMS FOUND" in text and "mask is 480x270 but its image is 960x540" in text
    r = cli("check-data", str(root))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "truncated.png" in r.stdout and "raw ids not in the class table: 1234 (200 px)" in r.stdout


def test_strict_fails_on_warnings_only(duality_root, tmp_path):
    split = tmp_path / "val"
    for sub in ("Color_Images", "Segmentation"):
        (split / sub).mkdir(parents=True)
    for img in sorted((duality_root / "val" / "Color_Images").iterdir())[:2]:
        for sub in ("Color_Images", "Segmentation"):
            (split / sub / img.name).symlink_to(duality_root / "val" / sub / img.name)
    (split / "Color_Images" / "Thumbs.db").write_bytes(b"junk")
    assert cli("check-data", str(split)).returncode == 0
    r = cli("check-data", str(split), "--strict")
    assert r.returncode == 1 and "Thumbs.db" in r.stdout


def test_missing_folder_is_a_one_line_error(tmp_path):
    r = cli("check-data", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path / 'nope'}: dataset folder not found"
