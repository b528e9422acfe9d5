"""The dashboard's page logic through Streamlit's AppTest, on real images and a real tiny model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from desertseg import app_logic  # noqa: E402
from desertseg.classes import CLASS_NAMES, colorize, index_to_raw, raw_to_index  # noqa: E402
from desertseg.data import DataError, read_image, read_mask  # noqa: E402
from desertseg.samples import Sample

APP = Path(__file__).resolve().parents[1] / "src" / "desertseg" / "app.py"


@pytest.fixture(scope="module")
def sample(duality_root) -> Sample:
    name = sorted((duality_root / "val" / "Color_Images").iterdir())[0].name
    return Sample(Path(name).stem, duality_root / "val" / "Color_Images" / name, duality_root / "val" / "Segmentation" / name)


@pytest.fixture
def app(tiny_run, monkeypatch):
    """A page started as `desertseg app --checkpoint <tiny best.safetensors>` would start it."""
    monkeypatch.setenv(app_logic.CHECKPOINT_ENV, str(tiny_run / "best.safetensors"))
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    return at


def png(array: np.ndarray) -> bytes:
    """PNG bytes; uint16 arrays give 16-bit single-channel files like the dataset's masks."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def upload(at: AppTest, image: tuple[str, bytes] | None = None, mask: tuple[str, bytes] | None = None) -> AppTest:
    if image:
        at.file_uploader(key="images").upload(image[0], image[1], "image/png")
    if mask:
        at.file_uploader(key="masks").upload(mask[0], mask[1], "image/png")
    at.run()
    assert not at.exception, at.exception  # bad input must become a message, never a traceback
    return at


def messages(at: AppTest) -> str:
    return "\n".join(e.value for e in [*at.error, *at.warning])


def test_scores_equal_evaluate_on_a_real_image(app, sample, tiny_run):
    from desertseg.evaluate import evaluate
    from desertseg.predict import Predictor

    upload(app, (sample.image.name, sample.image.read_bytes()), (sample.mask.name, sample.mask.read_bytes()))
    assert not app.error, messages(app)
    metrics = {m.label: m.value for m in app.metric}
    expected = evaluate(Predictor.from_checkpoint(tiny_run / "best.safetensors"), [sample], progress=False)
    assert metrics["Pixel accuracy"] == f"{expected['pixel_accuracy']:.2%}"
    assert metrics["mIoU, all 10 classes"] == f"{expected['miou_all']:.4f}"
    assert metrics[f"mIoU, {expected['num_present']} classes present"] == f"{expected['miou_present']:.4f}"
    table = app.table[-1].value  # the per-class scores
    assert list(table["class"]) == list(CLASS_NAMES)  # correct names, in class-table order, not shifted
    for row, exp in zip(table.to_dict("records"), expected["per_class"]):
        assert row["class"] == exp["class"]
        if exp["iou"] is not None:
            assert row["IoU"] == f"{exp['iou']:.4f}"
        assert row["recall"] == ("n/a" if exp["recall"] is None else f"{exp['recall']:.4f}")
    assert "Inference time" in app.markdown[0].value and "cpu" in app.markdown[0].value
    labels = [b.proto.label for b in app.get("download_button")]
    assert labels == ["Raw-id mask (16-bit PNG)", "Colour mask (PNG)", "Overlay (PNG)"]
    captions = [c for img in app.get("image") for c in img.captions]
    assert "Ground truth" in captions and any(c.startswith("Confidence") for c in captions)
    assert any(c.startswith("Errors:") for c in captions)


def test_raw_mask_download_is_16_bit_in_dataset_values(tmp_path, sample):
    target = raw_to_index(read_mask(sample.mask))
    data = app_logic.raw_mask_png(target)
    (tmp_path / "m.png").write_bytes(data)
    back = read_mask(tmp_path / "m.png")  # read_mask refuses 8-bit files
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, index_to_raw(target))
    assert set(np.unique(back)) <= {0, 100, 200, 300, 500, 550, 600, 700, 800, 7100, 10000}


def test_model_loads_once_per_process(app, sample, monkeypatch):
    import streamlit as st

    from desertseg.predict import Predictor

    st.cache_resource.clear()
    calls = []
    original = Predictor.from_checkpoint.__func__
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: calls.append(a) or original(cls, *a, **k)))
    upload(app, (sample.image.name, sample.image.read_bytes()))
    app.slider(key="opacity").set_value(0.2).run()
    app.checkbox(key="show_9").uncheck().run()  # hide Sky
    assert not app.exception
    assert any("opacity 0.20" in c for img in app.get("image") for c in img.captions)
    assert len(calls) == 1


def _unreadable(sample) -> dict[str, tuple[bytes, str]]:
    """Upload name -> (bytes, expected words in the message)."""
    raw = sample.image.read_bytes()
    return {
        "text.png": (b"this is not an image\n" * 20, "not a readable image"),
        "truncated.png": (raw[: len(raw) // 2], "damaged or truncated"),
        "empty.png": (b"", "empty"),
    }


@pytest.mark.parametrize("case", ["text.png", "truncated.png", "empty.png"])
def test_unreadable_images_give_a_message(app, sample, case):
    data, expected = _unreadable(sample)[case]
    upload(app, (case, data))
    assert expected in messages(app) and case in messages(app)
    assert not app.get("download_button")


def test_rgba_and_grayscale_are_converted_with_a_note(app, sample):
    image = read_image(sample.image)
    rgba = np.dstack([image, np.full(image.shape[:2], 200, np.uint8)])
    gray = np.asarray(Image.fromarray(image).convert("L"))
    app.file_uploader(key="images").set_value([("rgba.png", png(rgba), "image/png"), ("gray.png", png(gray), "image/png")])
    app.run()
    assert not app.exception
    text = messages(app)
    assert "rgba.png: image has an alpha channel" in text
    assert "gray.png: image is grayscale" in text
    assert not app.error
    assert len(app.table) == 1 + 1  # summary of the two images + shares of the inspected one
    assert app.selectbox(key="inspect").options == ["rgba.png", "gray.png"]


def test_image_over_the_cap_is_refused_naming_the_cap(app, sample, monkeypatch):
    monkeypatch.setenv("DESERTSEG_APP_MAX_PIXELS", "400000")  # the real image is 960x540 = 518,400
    upload(app, (sample.image.name, sample.image.read_bytes()))
    assert "518,400 pixels, over this dashboard's cap of 400,000" in messages(app)
    assert not app.get("download_button")


def test_bad_ground_truth_masks_give_a_message(app, sample):
    raw = read_mask(sample.mask)
    target = raw_to_index(raw)
    bad = {
        "eight_bit.png": (png((target * 20).astype(np.uint8)), "mask is 8-bit"),
        "colour.png": (png(colorize(target)), "mask is a colour image"),
        "small.png": (png(raw[::2, ::2].copy()), "mask is 480x270 but its image is 960x540"),
        "unknown.png": (png(np.full_like(raw, 42)), "no pixel holds a known class id"),
    }
    for name, (data, expected) in bad.items():
        at = AppTest.from_file(str(APP), default_timeout=180)
        at.run()
        upload(at, (sample.image.name, sample.image.read_bytes()), (name, data))
        assert expected in messages(at) and name in messages(at), (name, messages(at))
        assert not at.metric  # no scores against a bad mask, but the prediction is still shown
        assert len(at.get("download_button")) == 3


def test_bad_model_path_and_missing_bundled_model(app, sample, tmp_path, monkeypatch):
    app.sidebar.text_input(key="model_path").set_value(str(sample.image)).run()
    assert not app.exception
    assert "Cannot load the model" in messages(app) and "not a safetensors model file" in messages(app)
    monkeypatch.setattr("desertseg.checkpoint.default_model_path", lambda: tmp_path / "default.safetensors")
    app.sidebar.radio(key="model_source").set_value("Bundled default model").run()
    assert "bundled default model is not installed" in messages(app)
    assert "--checkpoint" in messages(app)


def test_model_card_shows_metadata(app, tiny_run):
    from desertseg.checkpoint import read_metadata

    meta = read_metadata(tiny_run / "best.safetensors")
    card = app_logic.model_card({**meta, "path": "x"})
    assert card["input size (W x H)"] == f"{meta['input_size'][1]} x {meta['input_size'][0]}"
    assert [c.split(": ")[1].split(" (")[0] for c in card["classes"]] == list(CLASS_NAMES)
    assert card["training config"]["model"] == "unet_mobilenet_v2"
    assert any(meta["model"] in s.value for s in app.sidebar.success)


def test_pair_masks_by_name():
    pairs, notes = app_logic.pair_masks(["a.png", "b.jpg"], ["b.png", "c.png"])
    assert pairs == {"b.jpg": "b.png"} and notes == ["mask c.png matches no uploaded image by name; it is not used"]
    pairs, notes = app_logic.pair_masks(["photo.jpg"], ["gt.png"])
    assert pairs == {"photo.jpg": "gt.png"} and "names differ" in notes[0]


def test_load_mask_rejects_wrong_size_with_names():
    raw = np.full((4, 6), 7100, np.uint16)
    with pytest.raises(DataError, match="up.png: mask is 6x4 but its image is 8x4"):
        app_logic.load_mask(png(raw), "up.png", (4, 8))


def test_video_is_segmented_with_progress_and_downloads(app, duality_root, tmp_path):
    cv2 = pytest.importorskip("cv2")
    frames = [read_image(p) for p in sorted((duality_root / "val" / "Color_Images").iterdir())[:3]]
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (320, 180))
    for f in frames:
        writer.write(cv2.cvtColor(cv2.resize(f, (320, 180)), cv2.COLOR_RGB2BGR))
    writer.release()
    app.file_uploader(key="video").upload("clip.mp4", path.read_bytes(), "video/mp4")
    app.run()
    app.button(key="run_video").click().run()
    assert not app.exception and not app.error, messages(app)
    assert any("3 frames at 5.0 fps" in s.value for s in app.success)
    assert app.get("video"), "the overlay video is shown for playback"
    labels = [b.proto.label for b in app.get("download_button")]
    assert "Overlay video (MP4)" in labels and "Class shares per frame (CSV)" in labels


def test_bad_video_gives_a_message(app):
    app.file_uploader(key="video").upload("broken.mp4", b"not a video at all" * 100, "video/mp4")
    app.run()
    app.button(key="run_video").click().run()
    assert not app.exception
    assert "broken.mp4" in messages(app) and "cannot open video" in messages(app)


def test_app_command_refuses_a_missing_checkpoint(tmp_path):
    from typer.testing import CliRunner

    from desertseg.cli import app as cli

    result = CliRunner().invoke(cli, ["app", "--checkpoint", str(tmp_path / "none.safetensors"), "--port", "1"])
    assert result.exit_code == 2
    assert "none.safetensors: model file not found" in result.output


def test_robot_view_shows_coarse_groups_and_cost_map(app, sample):
    upload(app, (sample.image.name, sample.image.read_bytes()))
    captions = [c for img in app.get("image") for c in img.captions]
    assert not any(c.startswith("Traversability cost") for c in captions)
    app.checkbox(key="robot_view").check().run()
    assert not app.exception, app.exception
    captions = [c for img in app.get("image") for c in img.captions]
    assert any(c.startswith("Coarse groups") for c in captions)
    assert any(c.startswith("Traversability cost") for c in captions)
