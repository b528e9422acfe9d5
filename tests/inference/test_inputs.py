"""The one input collector (predict, export, benchmark) on real image folders, links and patterns."""

import pytest

from desertseg.inference.inputs import collect_inputs, image_paths


def test_folder_inputs_are_sorted_images_named_by_relative_path(unseen_dir, tmp_path):
    top = sorted((unseen_dir / "Color_Images").iterdir())[:3]
    (tmp_path / "day1").mkdir()
    (tmp_path / "a.png").symlink_to(top[0])
    (tmp_path / "day1" / "a.png").symlink_to(top[1])
    (tmp_path / "notes.txt").write_text("not an image")
    images, videos, errors = collect_inputs([tmp_path], recursive=True)
    assert [name for _, name in images] == ["a", "day1/a"] and not videos and not errors
    flat, _, _ = collect_inputs([tmp_path])
    assert [name for _, name in flat] == ["a"]  # sub-folders only with recursive


def test_repeated_names_get_suffixes_and_repeated_paths_count_once(unseen_dir):
    first, second = sorted((unseen_dir / "Color_Images").iterdir())[:2]
    images, _, errors = collect_inputs([first, first, second, str(unseen_dir / "Segmentation" / first.name)])
    assert [p for p, _ in images] == [first, second, unseen_dir / "Segmentation" / first.name]
    assert [name for _, name in images] == [first.stem, second.stem, first.stem + "-2"] and not errors


def test_image_paths_searches_folders_recursively_and_takes_limit(duality_root):
    paths = image_paths([duality_root / "val"], limit=5)
    assert len(paths) == 5 and paths == sorted(paths)
    assert len(image_paths([duality_root / "val"])) == 48  # 24 images + 24 masks, both PNG
    pattern = image_paths([str(duality_root / "val" / "Color_Images" / "*.png")])
    assert len(pattern) == 24


def test_image_paths_names_every_bad_input(unseen_dir, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    with pytest.raises(ValueError) as e:
        image_paths([unseen_dir / "Color_Images", tmp_path / "missing.png", str(tmp_path / "*.jpg"), video])
    message = str(e.value)
    assert "missing.png: file not found" in message and "*.jpg: pattern matches no images" in message and "clip.mp4: a video" in message
