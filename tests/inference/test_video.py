"""Video in, overlay video out: same frame count, size and frame rate; one CSV row per frame."""

import csv
import subprocess
import sys

import pytest

cv2 = pytest.importorskip("cv2")

from desertseg.classes import CLASS_NAMES  # noqa: E402
from desertseg.data.decoding import DataError, read_image, resize_image  # noqa: E402
from desertseg.inference.outputs import predict_paths  # noqa: E402
from desertseg.inference.predict import Predictor  # noqa: E402
from desertseg.inference.video import FRAME_COUNT_SLACK, predict_video  # noqa: E402

W, H, FPS = 160, 96, 12.0


def make_clip(duality_root, path, frames: int, fourcc: str = "mp4v"):
    """A video of the first ``frames`` real val images, shrunk to 160x96."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (W, H))
    for p in sorted((duality_root / "val" / "Color_Images").iterdir())[:frames]:
        writer.write(cv2.cvtColor(resize_image(read_image(p), (H, W)), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_frames(path) -> list:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


@pytest.fixture()
def clip(duality_root, tmp_path):
    """A 6-frame mp4 made from real val images."""
    return make_clip(duality_root, tmp_path / "clip.mp4", 6)


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor.from_checkpoint(tiny_run / "best.safetensors", device="cpu")


def test_overlay_video_keeps_frames_size_and_rate(predictor, clip, tmp_path):
    out = predict_video(predictor, clip, tmp_path / "out" / "clip.mp4", tmp_path / "out" / "shares.csv", batch_size=4, progress=False)
    assert out["frames"] == 6 and out["size"] == (W, H)
    frames = read_frames(out["video"])
    assert len(frames) == 6 and all(f.shape == (H, W, 3) for f in frames)
    assert cv2.VideoCapture(str(out["video"])).get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    with open(out["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and list(rows[0])[2:] == list(CLASS_NAMES)
    assert all(sum(float(r[c]) for c in CLASS_NAMES) == pytest.approx(1.0, abs=1e-4) for r in rows)


def test_corrupt_video_gives_a_clear_error(predictor, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(4000))
    with pytest.raises(DataError, match="bad.mp4.*corrupt"):
        predict_video(predictor, bad, tmp_path / "out.mp4", progress=False)
    assert not (tmp_path / "out.mp4").exists()


def test_predict_paths_handles_videos_and_reports_bad_ones(predictor, clip, tmp_path):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"RIFF" + bytes(1000))
    summary = predict_paths(predictor, [clip, bad], tmp_path / "out", progress=False)
    assert summary.videos == 1 and len(summary.errors) == 1 and "bad.avi" in summary.errors[0]
    assert (tmp_path / "out" / "video" / "clip.mp4").is_file() and (tmp_path / "out" / "video" / "clip_class_shares.csv").is_file()


def test_truncated_video_keeps_what_decodes_and_fails_predict(tiny_run, duality_root, tmp_path):
    """A video cut off part-way (an interrupted copy or download): `desertseg predict` writes the
    outputs of the frames that decode, names the file and how far it got, and exits non-zero.
    AVI keeps its header (with the frame count) at the front, so the cut file still opens."""
    data = make_clip(duality_root, tmp_path / "whole.avi", 12, "MJPG").read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    decodable = len(read_frames(cut))  # what OpenCV itself gets from the cut file
    assert 0 < decodable < 12 - FRAME_COUNT_SLACK
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "desertseg.cli", "predict", str(cut), "--out", str(out), "--checkpoint", str(tiny_run / "best.safetensors"), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(cut) in errors[0] and f"only {decodable} of the 12 frames" in errors[0], r.stderr
    assert len(read_frames(out / "video" / "cut.mp4")) == decodable
    with open(out / "video" / "cut_class_shares.csv", newline="") as f:
        assert [int(row["frame"]) for row in csv.DictReader(f)] == list(range(decodable))
