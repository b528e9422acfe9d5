"""The pt2e backend: int8 through PyTorch's PT2E flow, calibrated on real training images, kept
only when it passes the parity guard on real labelled frames, and refused when stale."""

import shutil

import pytest
import torch

pytest.importorskip("torchao", reason="the pt2e extra is not installed")

from desertseg.data.decoding import read_image  # noqa: E402
from desertseg.data.samples import list_samples  # noqa: E402
from desertseg.inference import pt2e, pt2e_export  # noqa: E402
from desertseg.inference.benchmark import time_int8_paths  # noqa: E402
from desertseg.inference.parity import read_check_sets  # noqa: E402
from desertseg.inference.predict import Predictor  # noqa: E402
from desertseg.models.checkpoint import CheckpointError, default_model_path  # noqa: E402
from desertseg.models.registry import build_model  # noqa: E402


def test_shipped_calibration_belongs_to_the_bundled_model():
    found = pt2e.find(default_model_path())
    assert found is not None and found.name == "default.pt2e"
    q = pt2e.read_info(found)["quantization"]
    assert q["guard"]["passed"] and all(s["agreement"] >= 0.99 for s in q["guard"]["sets"].values())


def test_calibrate_guard_write_compile_and_load(tmp_path, duality_root, unseen_dir, monkeypatch):
    for suffix in (".safetensors", ".int8.onnx"):  # the model and the onnxruntime export that ranks its blocks
        (tmp_path / f"default{suffix}").symlink_to(default_model_path().with_name(f"default{suffix}"))
    checkpoint = tmp_path / "default.safetensors"
    calibration = [read_image(s.image) for s in list_samples(duality_root / "train")[0][::25]]
    check_sets, errors = read_check_sets([unseen_dir])
    check_sets[0].pairs = check_sets[0].pairs[:3]
    ranking, first = pt2e_export.onnx_ranking(checkpoint)
    path, q = pt2e_export.export_pt2e(checkpoint, tmp_path / "default.pt2e", calibration, check_sets, ranking, first=first, log=lambda m: None)
    assert not errors and path.is_file() and q["guard"]["passed"] and q["calibration_images"] == 4
    kept = [b["block"] for b in q["float_blocks"]]
    assert kept == first or kept == ranking[: len(kept)]  # the onnxruntime export's blocks, else the most sensitive

    # The export left this machine's compiled package in the cache: loading compiles nothing.
    # `auto` takes it once timed faster than onnxruntime here (as `desertseg compile` does),
    # but not for test-time scales, which change the input size, nor in a folder pipeline.
    assert pt2e.compiled(checkpoint) == path
    monkeypatch.setattr(pt2e, "compile_package", lambda *a: pytest.fail("compiled again"))
    speed = time_int8_paths(checkpoint, rounds=2)
    assert speed["pt2e_ms"] > 0 and speed["int8_ms"] > 0
    pt2e.write_speed(path, speed)
    auto = Predictor.from_checkpoint(checkpoint, device="cpu").backend
    assert auto == ("pt2e" if speed["pt2e_ms"] < speed["int8_ms"] else "int8")
    pt2e.write_speed(path, {**speed, "pt2e_ms": speed["int8_ms"] / 2})
    fast = Predictor.from_checkpoint(checkpoint, device="cpu")
    ref = Predictor.from_checkpoint(checkpoint, device="cpu", backend="torch")
    assert fast.backend == "pt2e" and "PT2E" in fast.describe_device()
    assert Predictor.from_checkpoint(checkpoint, device="cpu", scales=(0.75, 1.0)).backend == "int8"
    assert Predictor.from_checkpoint(checkpoint, device="cpu", pipelined=True).backend == "int8"  # a folder run's threads
    images = [image for image, _ in check_sets[0].pairs[:2]]
    for a, b in zip(fast.predict_batch(images), ref.predict_batch(images)):
        assert a.mask.shape == (540, 960) and (a.mask == b.mask).mean() >= 0.99

    # A damaged package (an interrupted copy, a full disk) is compiled again, not a crash.
    monkeypatch.undo()
    pt2e.compiled_path(path).write_bytes(b"not a package")
    said = []
    again, _ = pt2e.load(checkpoint, path, log=said.append)
    assert len(said) == 1 and "compiling" in said[0] and pt2e.compiled(checkpoint) == path
    x = torch.rand(1, 3, *fast.metadata["input_size"])
    assert torch.equal(again(x), fast.runner(x))
    pt2e.compiled_path(path).unlink()  # another machine, or another thread count: not compiled there
    assert pt2e.compiled(checkpoint) is None and Predictor.from_checkpoint(checkpoint, device="cpu").backend == "int8"
    with pytest.raises(ValueError, match="one input size"):
        Predictor(fast.runner, fast.metadata, backend="pt2e", scales=(0.75, 1.0))


def test_calibration_of_another_file_is_refused(tmp_path, tiny_run):
    shutil.copy(tiny_run / "best.safetensors", tmp_path / "default.safetensors")
    shutil.copy(pt2e.find(default_model_path()), tmp_path / "default.pt2e")  # the bundled model's, not this one's
    assert pt2e.find(tmp_path / "default.safetensors") is None
    with pytest.raises(CheckpointError, match="no PT2E calibration"):
        Predictor.from_checkpoint(tmp_path / "default.safetensors", device="cpu", backend="pt2e")


def test_observers_of_another_graph_are_refused():
    from safetensors.torch import load_file

    other = build_model("unet_mobilenet_v2", 10, pretrained=False)  # the bundled model is an FPN
    prepared = pt2e.prepare(other, pt2e.example_input({"input_size": [72, 128]}))
    with pytest.raises(CheckpointError, match="observers do not match"):
        pt2e.restore(prepared, load_file(str(pt2e.find(default_model_path()))), "default.pt2e")
