"""ONNX export and the inference backends, on real Duality images and the tiny trained model."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from desertseg.classes import class_table
from desertseg.data.decoding import read_image, resize_image
from desertseg.data.samples import list_samples
from desertseg.data.transforms import normalize
from desertseg.inference.predict import Predictor
from desertseg.models.checkpoint import META_KEY, CheckpointError

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def images(unseen_dir):
    samples, _ = list_samples(unseen_dir)
    return [read_image(s.image) for s in samples[:3]]


@pytest.fixture(scope="module")
def exported(tiny_run, unseen_dir, tmp_path_factory):
    """The tiny model exported by the CLI beside a link to its .safetensors file."""
    folder = tmp_path_factory.mktemp("export")
    model = folder / "tiny.safetensors"
    model.symlink_to(tiny_run / "best.safetensors")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "desertseg.cli", "export", "--checkpoint", str(model), "--format", "onnx", "--out", str(folder / "tiny.onnx"), "--check-images", str(unseen_dir / "Color_Images")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    return folder / "tiny.onnx", r.stdout


def test_export_reports_parity_on_real_images(exported):
    path, stdout = exported
    m = re.search(r"max \|logit difference\| ([0-9.e+-]+), argmax agreement ([0-9.]+)%", stdout)
    assert m, stdout
    assert float(m.group(1)) < 1e-3 and float(m.group(2)) >= 99.9


def test_onnx_file_carries_metadata_and_dynamic_axes(exported, tiny_run):
    model = onnx.load(str(exported[0]))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = json.loads({p.key: p.value for p in model.metadata_props}[META_KEY])
    assert meta["classes"] == class_table() and meta["model"] == "unet_mobilenet_v2"
    assert meta["input_size"] == [72, 128] and "source_sha256" in meta
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # N, 3, H, W


def test_onnx_matches_pytorch_at_two_sizes_and_batch_two(exported, tiny_run, images):
    from desertseg.inference.runtime import onnx_session
    from desertseg.models.checkpoint import load_model

    session = onnx_session(exported[0])
    model, _ = load_model(tiny_run / "best.safetensors")
    for size in [(72, 128), (135, 240)]:  # 240x135 is not a multiple of 32: pad and crop inside the graph
        x = torch.from_numpy(np.stack([resize_image(im, size) for im in images[:2]])).permute(0, 3, 1, 2).float() / 255
        out = session.run(None, {"image": x.numpy()})[0]
        with torch.inference_mode():
            ref = model(normalize(x)).numpy()
        assert out.shape == ref.shape == (2, 10, *size)
        assert np.abs(out - ref).max() < 1e-3
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.999


def test_predictor_onnx_backend_equals_torch_on_real_images(exported, tiny_run, images):
    onnx_p = Predictor.from_checkpoint(exported[0], device="cpu")
    torch_p = Predictor.from_checkpoint(tiny_run / "best.safetensors", device="cpu", backend="torch")
    assert onnx_p.backend == "onnx" and torch_p.backend == "torch"
    assert onnx_p.metadata["classes"] == class_table() and onnx_p.input_size == torch_p.input_size
    for a, b in zip(onnx_p.predict_batch(images), torch_p.predict_batch(images)):
        assert a.mask.shape == b.mask.shape == (540, 960)
        assert (a.mask == b.mask).mean() >= 0.999
    p = onnx_p.predict(images[0], return_probs=True)
    assert p.probs.shape == (10, 540, 960) and (p.probs.argmax(0) == p.mask).all()
    assert "onnxruntime" in onnx_p.describe_device()


def test_backend_choice_and_reuse_of_an_export_of_the_same_file(exported, tiny_run, tmp_path):
    beside = exported[0].with_suffix(".safetensors")
    assert Predictor.from_checkpoint(beside, device="cpu").backend == "torch"  # auto: measured faster on CPU
    assert Predictor.from_checkpoint(exported[0], device="cpu").backend == "onnx"  # an .onnx file
    reused = Predictor.from_checkpoint(beside, device="cpu", backend="onnx")
    assert reused.backend == "onnx" and reused.metadata["path"] == str(exported[0])
    # The same ONNX file beside a different model file is not used.
    from desertseg.models.checkpoint import load_model, save_model

    model, meta = load_model(tiny_run / "best.safetensors")
    other = save_model(tmp_path / "other.safetensors", model, {**meta, "note": "a copy"})  # same weights, other bytes
    shutil.copy(exported[0], tmp_path / "other.onnx")
    # ... and the Predictor never exports behind the caller's back: it says how to.
    with pytest.raises(CheckpointError, match=r"no onnx export of this file beside it; write one with `desertseg export --checkpoint"):
        Predictor.from_checkpoint(other, device="cpu", backend="onnx")
    model, meta = load_model(other)
    with pytest.raises(ValueError, match="export it with `desertseg export`"):
        Predictor(model, meta, backend="onnx")


def test_onnx_file_with_torch_backend_is_refused(exported):
    with pytest.raises(ValueError, match="only with backend 'onnx'"):
        Predictor.from_checkpoint(exported[0], backend="torch")


def test_failed_parity_fails_loudly_and_writes_nothing(tiny_run, images, tmp_path, monkeypatch):
    import desertseg.inference.export as export

    monkeypatch.setattr(export, "parity_check", lambda *a, **k: export.Parity(len(images), [[72, 128]], 3.5, 0.95, False))
    out = tmp_path / "bad.onnx"
    with pytest.raises(RuntimeError, match="disagrees with PyTorch"):
        export.export_onnx(tiny_run / "best.safetensors", out, images)
    assert not out.exists()


def test_parity_check_detects_a_different_model(exported, images):
    from desertseg.inference.export import parity_check
    from desertseg.inference.runtime import onnx_session
    from desertseg.models.registry import build_model

    torch.manual_seed(0)
    other = build_model("unet_mobilenet_v2", 10, pretrained=False)
    parity = parity_check(other, onnx_session(exported[0]), images[:2], [(72, 128)])
    assert not parity.ok and parity.argmax_agreement < 0.999
