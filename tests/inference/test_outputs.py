"""`desertseg predict` on real images: outputs at full size, raw ids that score like Duality's
masks, bad files reported and skipped, existing output folders protected."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from desertseg.classes import raw_to_index
from desertseg.data.decoding import read_image, read_mask
from desertseg.inference.outputs import predict_paths
from desertseg.inference.predict import Predictor


@pytest.fixture()
def inputs(duality_root, tmp_path):
    """A folder with 3 real val images (symlinks) and one corrupt PNG."""
    folder = tmp_path / "in"
    folder.mkdir()
    names = sorted((duality_root / "val" / "Color_Images").iterdir())[:3]
    for p in names:
        (folder / p.name).symlink_to(p)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return folder, [p.stem for p in names]


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor.from_checkpoint(tiny_run / "best.safetensors", device="cpu")


def test_folder_with_a_corrupt_file_writes_the_rest_and_reports_it(predictor, inputs, tmp_path):
    folder, stems = inputs
    out = tmp_path / "out"
    summary = predict_paths(predictor, [folder], out, opacity=0.4, confidence=True, batch_size=2, progress=False)
    assert summary.written == 3 and not summary.ok
    assert len(summary.errors) == 1 and "broken.png" in summary.errors[0]
    for stem in stems:
        image = read_image(folder / f"{stem}.png")
        index = np.asarray(Image.open(out / "index" / f"{stem}.png"))
        assert index.shape == image.shape[:2] == (540, 960) and index.max() < 10
        color = np.asarray(Image.open(out / "color" / f"{stem}.png"))
        overlay = np.asarray(Image.open(out / "overlay" / f"{stem}.jpg"))
        conf = np.asarray(Image.open(out / "confidence" / f"{stem}.png"))
        assert color.shape == overlay.shape == conf.shape == (540, 960, 3)
    assert not (out / "index" / "broken.png").exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp files left behind


def test_raw_ids_round_trip_through_the_dataset_reader(predictor, inputs, tmp_path):
    folder, stems = inputs
    out = tmp_path / "out"
    predict_paths(predictor, [folder / f"{stems[0]}.png"], out, progress=False)
    raw = read_mask(out / "raw" / f"{stems[0]}.png")  # refuses 8-bit or colour masks
    assert raw.dtype == np.uint16 and raw.max() >= 100
    index = np.asarray(Image.open(out / "index" / f"{stems[0]}.png"))
    assert (raw_to_index(raw) == index).all()


def test_glob_pattern_and_missing_input(predictor, inputs, tmp_path):
    folder, stems = inputs
    summary = predict_paths(predictor, [str(folder / "cc*.png"), tmp_path / "nope.png"], tmp_path / "out", progress=False)
    assert summary.written == len([s for s in stems if s.startswith("cc")]) > 0
    assert len(summary.errors) == 1 and "nope.png: file not found" in summary.errors[0]


def test_existing_output_folder_is_refused_without_overwrite(predictor, inputs, tmp_path):
    folder, stems = inputs
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        predict_paths(predictor, [folder / f"{stems[0]}.png"], out, progress=False)
    summary = predict_paths(predictor, [folder / f"{stems[0]}.png"], out, overwrite=True, progress=False)
    assert summary.written == 1 and (out / "keep.txt").exists()


def _cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "desertseg.cli", "predict", *args], capture_output=True, text=True, env=env, timeout=600)


def test_cli_exit_code_says_something_failed(tiny_run, inputs, tmp_path):
    folder, stems = inputs
    out = tmp_path / "out"
    ckpt = str(tiny_run / "best.safetensors")
    r = _cli(str(folder), "--out", str(out), "--checkpoint", ckpt, "--device", "cpu", "--batch-size", "3")
    assert r.returncode == 1, r.stderr
    assert "unet_mobilenet_v2" in r.stderr  # the model in use is named
    assert "broken.png" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.stem for p in (out / "raw").iterdir()) == sorted(stems)
    r = _cli(str(folder / f"{stems[0]}.png"), "--out", str(out), "--checkpoint", ckpt, "--device", "cpu")
    assert r.returncode == 2 and "--overwrite" in r.stderr
    r = _cli(str(folder / f"{stems[0]}.png"), "--out", str(out), "--checkpoint", ckpt, "--device", "cpu", "--overwrite")
    assert r.returncode == 0, r.stderr


def test_coarse_view_and_cost_map_follow_the_class_table(predictor, inputs, tmp_path):
    from desertseg.data.coarse import COST_LUT, to_groups

    folder, stems = inputs
    out = tmp_path / "out"
    summary = predict_paths(predictor, [folder / f"{stems[0]}.png"], out, coarse=True, cost=True, progress=False)
    assert summary.ok and summary.written == 1
    index = np.asarray(Image.open(out / "index" / f"{stems[0]}.png"))
    cost = np.asarray(Image.open(out / "cost" / f"{stems[0]}.png"))
    assert cost.dtype == np.uint8 and (cost == COST_LUT[index]).all()
    coarse = np.asarray(Image.open(out / "coarse" / f"{stems[0]}.png"))
    assert coarse.shape == (*index.shape, 3)
    # Pixels of one coarse group share one colour.
    groups = to_groups(index)
    for g in np.unique(groups):
        assert len(np.unique(coarse[groups == g], axis=0)) == 1


def test_recursive_folder_keeps_sub_folders_apart(predictor, duality_root, tmp_path):
    reals = sorted((duality_root / "val" / "Color_Images").iterdir())[:3]
    folder = tmp_path / "in"
    for sub, real in (("day1", reals[0]), ("day2", reals[1])):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "a.png").symlink_to(real)
    (folder / "top.png").symlink_to(reals[2])
    summary = predict_paths(predictor, [folder], tmp_path / "flat", progress=False)
    assert summary.written == 1 and sorted(p.name for p in (tmp_path / "flat" / "index").iterdir()) == ["top.png"]
    out = tmp_path / "out"
    summary = predict_paths(predictor, [folder], out, recursive=True, batch_size=1, progress=False)
    assert summary.ok and summary.written == 3
    assert sorted(p.relative_to(out / "index").as_posix() for p in (out / "index").rglob("*.png")) == ["day1/a.png", "day2/a.png", "top.png"]
    assert (out / "overlay" / "day2" / "a.jpg").exists()
    one = predict_paths(predictor, [reals[1]], tmp_path / "one", progress=False)
    assert one.written == 1 and (out / "raw" / "day2" / "a.png").read_bytes() == (tmp_path / "one" / "raw" / f"{reals[1].stem}.png").read_bytes()


def test_resume_redoes_only_unfinished_images_and_removes_temp_files(predictor, inputs, tmp_path):
    folder, stems = inputs
    out = tmp_path / "out"
    first = predict_paths(predictor, [folder], out, batch_size=1, progress=False)  # same batches when resumed
    assert first.written == 3
    reference = (out / "overlay" / f"{stems[1]}.jpg").read_bytes()
    (out / "overlay" / f"{stems[1]}.jpg").unlink()  # killed before its last output
    (out / "index" / f".{stems[2]}.png.x1y2.tmp").write_bytes(b"half")  # a kill's leftover
    with pytest.raises(FileExistsError, match="--overwrite"):
        predict_paths(predictor, [folder], out, progress=False)
    summary = predict_paths(predictor, [folder], out, resume=True, batch_size=1, progress=False)
    assert (summary.skipped, summary.written) == (2, 1)
    assert len(summary.errors) == 1 and "broken.png" in summary.errors[0]  # still reported
    assert (out / "overlay" / f"{stems[1]}.jpg").read_bytes() == reference
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
    # Asking for one more output makes every image unfinished.
    again = predict_paths(predictor, [folder], out, resume=True, confidence=True, progress=False)
    assert (again.skipped, again.written) == (0, 3) and len(list((out / "confidence").iterdir())) == 3


def _popen_predict(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "desertseg.cli", "predict", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_cli_resume_after_kill_9_matches_an_uninterrupted_run(tiny_run, unseen_dir, tmp_path):
    import signal
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    for p in sorted((unseen_dir / "Color_Images").iterdir())[:12]:
        (folder / p.name).symlink_to(p)
    # Batch size 1: a batched forward pass can round differently (about 1 pixel in 500,000 flips
    # class), and a resumed run batches the remaining images differently.
    common = ["--checkpoint", str(tiny_run / "best.safetensors"), "--device", "cpu", "--batch-size", "1"]
    out, ref = tmp_path / "out", tmp_path / "ref"

    proc = _popen_predict(str(folder), "--out", str(out), *common)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / "overlay").is_dir() and len([p for p in (out / "overlay").iterdir() if not p.name.startswith(".")]) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    kinds = ("index", "raw", "color", "overlay")
    done = [p.stem for p in (out / "overlay").iterdir() if not p.name.startswith(".")]
    done = [s for s in done if all((out / k / f"{s}{'.jpg' if k == 'overlay' else '.png'}").exists() for k in kinds)]
    assert 3 <= len(done) < 12
    for p in out.rglob("*"):  # every file under an output name is whole
        if p.is_file() and not p.name.startswith("."):
            Image.open(p).load()

    r = subprocess.run(proc.args[:4] + [str(folder), "--out", str(out), *common, "--resume"], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"Skipped {len(done)} images" in r.stdout and f"Wrote outputs of {12 - len(done)} images" in r.stdout
    r = subprocess.run(proc.args[:4] + [str(folder), "--out", str(ref), *common], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr
    files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    assert len(files) == 12 * len(kinds)
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == files  # no temp files either
    for f in files:
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f


def test_pipelined_run_writes_what_the_serial_run_writes(predictor, inputs, tmp_path):
    folder, stems = inputs
    serial = predict_paths(predictor, [folder], tmp_path / "serial", batch_size=2, progress=False, workers=0)
    piped = predict_paths(predictor, [folder], tmp_path / "piped", batch_size=2, progress=False, workers=1)
    assert (serial.written, len(serial.errors)) == (piped.written, len(piped.errors)) == (3, 1)
    assert "broken.png" in piped.errors[0]
    files = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*.png"))
    assert files == sorted(p.relative_to(tmp_path / "piped") for p in (tmp_path / "piped").rglob("*.png")) and len(files) >= 3 * 3
    for f in files:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "serial" / f)), np.asarray(Image.open(tmp_path / "piped" / f))), f


def test_a_failing_write_in_the_pipeline_raises_in_the_caller(predictor, inputs, tmp_path, monkeypatch):
    import desertseg.inference.outputs as outputs

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs, "write_outputs", full_disk)
    with pytest.raises(OSError, match="No space left"):
        predict_paths(predictor, [inputs[0]], tmp_path / "out", batch_size=1, progress=False, workers=1)
