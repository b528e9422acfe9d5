"""The dashboard's page logic through Streamlit's AppTest, on real images and a real tiny model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from desertseg.app import logic as app_logic  # noqa: E402
from desertseg.app import models_dir as app_models  # noqa: E402
from desertseg.classes import CLASS_NAMES, colorize, index_to_raw, raw_to_index  # noqa: E402
from desertseg.data.decoding import DataError, read_image, read_mask  # noqa: E402
from desertseg.data.samples import Sample  # noqa: E402

APP = Path(__file__).resolve().parents[2] / "src" / "desertseg" / "app" / "page.py"


@pytest.fixture(scope="module")
def sample(duality_root) -> Sample:
    name = sorted((duality_root / "val" / "Color_Images").iterdir())[0].name
    return Sample(Path(name).stem, duality_root / "val" / "Color_Images" / name, duality_root / "val" / "Segmentation" / name)


@pytest.fixture
def app(tiny_run, monkeypatch):
    """A page started as `desertseg app --checkpoint <tiny best.safetensors>` would start it."""
    monkeypatch.setenv(app_models.CHECKPOINT_ENV, str(tiny_run / "best.safetensors"))
    monkeypatch.delenv(app_models.MODELS_DIR_ENV, raising=False)
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
    from desertseg.evaluation.loop import evaluate
    from desertseg.inference.predict import Predictor

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

    from desertseg.inference.predict import Predictor

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


def test_missing_bundled_model(app, tmp_path, monkeypatch):
    monkeypatch.setattr("desertseg.app.sidebar.default_model_path", lambda: tmp_path / "default.safetensors")
    app.sidebar.radio(key="model_source").set_value("Bundled default model").run()
    assert "bundled default model is not installed" in messages(app)
    assert "--checkpoint" in messages(app)


def test_model_card_shows_metadata(app, tiny_run):
    from desertseg.models.checkpoint import read_metadata

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


# --- sharing the dashboard: the models folder, the upload cap, one session's results ---


@pytest.fixture
def models_tree(tmp_path, tiny_run) -> dict[str, Path]:
    """A models folder holding a real model, a symlink inside it to that model, symlinks escaping
    it (to a real model outside, to a missing file, to an outside folder) and a non-model file."""
    models, outside = tmp_path / "models", tmp_path / "outside"
    (models / "run").mkdir(parents=True)
    outside.mkdir()
    (models / "run" / "best.safetensors").write_bytes((tiny_run / "best.safetensors").read_bytes())
    (outside / "secret.safetensors").write_bytes((tiny_run / "best.safetensors").read_bytes())  # loadable, if reached
    (models / "alias.safetensors").symlink_to(models / "run" / "best.safetensors")
    (models / "escape.safetensors").symlink_to(outside / "secret.safetensors")
    (models / "dangling.onnx").symlink_to(outside / "missing.onnx")
    (models / "outdir").symlink_to(outside, target_is_directory=True)
    (models / "broken.safetensors").write_bytes(b"not a model at all")
    (models / "notes.txt").write_text("a notes file, not a model")
    return {"models": models, "outside": outside}


def _refusal(models: Path, name: str) -> str:
    with pytest.raises(app_models.ModelPathError) as e:
        app_models.resolve_model_path(models, name)
    return str(e.value).replace(name, "NAME", 1)


def test_resolve_model_path_accepts_only_model_files_inside_the_folder(models_tree):
    models, outside = models_tree["models"], models_tree["outside"]
    best = (models / "run" / "best.safetensors").resolve()
    assert app_models.resolve_model_path(models, "run/best.safetensors") == best
    assert app_models.resolve_model_path(models, str(models / "run" / "best.safetensors")) == best  # absolute, inside
    assert app_models.resolve_model_path(models, "alias.safetensors") == best  # a symlink staying inside
    assert app_models.resolve_model_path(models, "run/../run/best.safetensors") == best
    refused = {
        "../outside/secret.safetensors": "traversal to a real model outside",
        "../outside/nothing.safetensors": "traversal to nothing",
        "run/../../outside/secret.safetensors": "traversal through a sub-folder",
        str(outside / "secret.safetensors"): "absolute path outside",
        "/etc/passwd": "absolute path to a non-model outside",
        "escape.safetensors": "symlink inside pointing to a real model outside",
        "dangling.onnx": "symlink inside pointing to nothing outside",
        "outdir/secret.safetensors": "through a symlinked folder pointing outside",
        "notes.txt": "not a model file",
        "missing.onnx": "missing inside",
        "run": "a folder",
        "bad\0name.onnx": "a NUL byte",
    }
    messages = {why: _refusal(models, name) for name, why in refused.items()}
    # One message for every refusal, so it tells nothing about what exists outside the folder.
    assert len(set(messages.values())) == 1, messages
    assert "NAME: no model file of that name in the models folder" in messages["missing inside"]
    assert str(outside) not in messages["symlink inside pointing to a real model outside"]


def test_list_model_files_offers_only_what_resolves_inside(models_tree):
    assert app_models.list_model_files(models_tree["models"]) == ["alias.safetensors", "broken.safetensors", "run/best.safetensors"]
    assert app_models.list_model_files(models_tree["outside"] / "nope") == []


def test_typed_model_paths_are_off_without_models_dir(app):
    assert app.sidebar.radio(key="model_source").options == ["Bundled default model", "Model chosen at start (--checkpoint)", "Upload a model file"]
    assert not [t for t in app.sidebar.text_input if t.key == "model_path"]


def test_models_dir_lists_and_loads_only_files_inside(models_tree, monkeypatch):
    monkeypatch.delenv(app_models.CHECKPOINT_ENV, raising=False)
    monkeypatch.setenv(app_models.MODELS_DIR_ENV, str(models_tree["models"]))
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    at.sidebar.radio(key="model_source").set_value("Model file from the models folder").run()
    assert at.sidebar.selectbox(key="model_pick").options == ["alias.safetensors", "broken.safetensors", "run/best.safetensors"]
    at.sidebar.selectbox(key="model_pick").set_value("run/best.safetensors").run()
    assert not at.exception and not at.error, messages(at)
    assert any("unet_mobilenet_v2" in s.value for s in at.sidebar.success)
    for name in ("escape.safetensors", "../outside/secret.safetensors", str(models_tree["outside"] / "secret.safetensors")):
        at.sidebar.text_input(key="model_path").set_value(name).run()
        assert not at.exception and not at.sidebar.success, name
        assert messages(at) == f"{name}: no model file of that name in the models folder (the dashboard loads only .safetensors or .onnx files inside it)"
    at.sidebar.text_input(key="model_path").set_value("broken.safetensors").run()
    assert "broken.safetensors: cannot load the model" in messages(at)
    assert str(models_tree["models"]) not in messages(at)  # the server's folder is not shown


def test_page_names_the_upload_cap(app):
    from streamlit import config

    before = config.get_option("server.maxUploadSize")
    config.set_option("server.maxUploadSize", 7)
    try:
        app.run()
        assert any("up to 7 MB" in i.value for i in app.info), [i.value for i in app.info]
    finally:
        config.set_option("server.maxUploadSize", before)


def test_remember_and_forget_others():
    store, calls = {}, []
    assert app_logic.remember(store, "a", lambda x: calls.append(x) or 1, "a") == 1
    assert app_logic.remember(store, "a", lambda x: calls.append(x) or 2, "a") == 1  # kept, not recomputed
    app_logic.remember(store, "b", lambda: 3)
    app_logic.forget_others(store, ["b"])
    assert store == {"b": 3} and calls == ["a"]


def test_each_session_keeps_its_own_results(app, sample, tiny_run, duality_root, monkeypatch):
    """Two sessions upload the same image: the second runs the model itself (nothing is served
    from the first session's results), and a session keeps only its current upload's results."""
    calls = []
    original = app_logic.segment
    monkeypatch.setattr(app_logic, "segment", lambda *a: calls.append(1) or original(*a))
    upload(app, (sample.image.name, sample.image.read_bytes()))
    app.slider(key="opacity").set_value(0.3).run()  # kept per session: no second model run
    assert len(calls) == 1
    other = AppTest.from_file(str(APP), default_timeout=180)
    other.run()
    assert not other.subheader and not other.get("download_button")  # nothing of the first session's
    upload(other, (sample.image.name, sample.image.read_bytes()))
    assert len(calls) == 2 and [h.value for h in other.subheader] == [sample.image.name]
    second = sorted((duality_root / "val" / "Color_Images").iterdir())[1]
    app.file_uploader(key="images").set_value([(second.name, second.read_bytes(), "image/png")]).run()
    assert [h.value for h in app.subheader] == [second.name]
    assert len(app.session_state["results"]) == 2  # the new image and its segmentation, nothing older


def test_app_command_passes_models_dir_and_upload_cap(tmp_path, monkeypatch):
    import os

    from typer.testing import CliRunner

    from desertseg.cli import app as cli

    launched = {}

    def execve(exe, cmd, env):  # stands in for becoming the Streamlit server
        launched.update(cmd=cmd, env=env)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setenv(app_models.MODELS_DIR_ENV, str(tmp_path))  # a stale setting must not leak in
    result = CliRunner().invoke(cli, ["app", "--port", "1"])
    assert result.exit_code == 0, result.output
    assert app_models.MODELS_DIR_ENV not in launched["env"]
    cmd = launched["cmd"]
    assert cmd[cmd.index("--server.maxUploadSize") + 1] == "50"  # the default
    result = CliRunner().invoke(cli, ["app", "--port", "1", "--models-dir", str(tmp_path), "--max-upload-mb", "12"])
    assert result.exit_code == 0, result.output
    assert launched["env"][app_models.MODELS_DIR_ENV] == str(tmp_path.resolve())
    cmd = launched["cmd"]
    assert cmd[cmd.index("--server.maxUploadSize") + 1] == "12"
    result = CliRunner().invoke(cli, ["app", "--port", "1", "--models-dir", str(tmp_path / "none")])
    assert result.exit_code == 2 and "none: models folder not found" in result.output
