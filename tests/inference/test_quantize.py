"""int8 export with its parity guard, on the tiny trained model and real Duality images."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from desertseg.data.decoding import read_image
from desertseg.data.samples import list_samples
from desertseg.inference import parity
from desertseg.inference.export import ExportError
from desertseg.inference.predict import Predictor
from desertseg.inference.runtime import find_export
from desertseg.io import file_sha256
from desertseg.models.checkpoint import load_model, save_model

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
quantize = pytest.importorskip("desertseg.inference.quantize")


@pytest.fixture(scope="module")
def calibration(duality_root):
    samples, _ = list_samples(duality_root / "train")
    return [read_image(s.image) for s in samples[:4]]


@pytest.fixture(scope="module")
def check_sets(unseen_dir, duality_root, tmp_path_factory):
    from conftest import link_subset

    data = link_subset(unseen_dir.parent, tmp_path_factory.mktemp("check"), {unseen_dir.name: 3})
    sets, errors = parity.read_check_sets([data / unseen_dir.name, duality_root / "val"])
    assert not errors and [len(s.pairs) for s in sets] == [3, 24]
    sets[1].pairs = sets[1].pairs[:3]
    return sets


@pytest.fixture
def model(tiny_run, tmp_path):
    return Path(shutil.copy(tiny_run / "best.safetensors", tmp_path / "tiny.safetensors"))


def test_int8_file_that_passes_the_guard_is_the_default_cpu_path(model, calibration, check_sets, monkeypatch):

    monkeypatch.setattr(parity, "MIN_AGREEMENT", 0.5)  # the tiny model's own figures are what they are; the
    monkeypatch.setattr(parity, "MAX_MIOU_DROP", 1.0)  # plumbing is what is tested here (the bundled model: below)
    out = model.with_name("tiny.int8.onnx")
    path, q = quantize.export_int8(model, out, calibration, check_sets, progress=False, log=lambda m: None)
    assert path == out and out.is_file()
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["desertseg"])
    assert meta["precision"] == "int8" and meta["source_sha256"] == file_sha256(model)
    sets = meta["quantization"]["guard"]["sets"]
    assert set(sets) == {s.name for s in check_sets} and meta["quantization"]["guard"]["passed"]
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)

    auto = Predictor.from_checkpoint(model, device="cpu")
    torch_p = Predictor.from_checkpoint(model, device="cpu", backend="torch")
    assert auto.backend == "int8" and "int8" in auto.describe_device() and find_export(model, "int8") == out
    images = [image for image, _ in check_sets[0].pairs]
    agree = np.mean([(a.mask == b.mask).mean() for a, b in zip(auto.predict_batch(images), torch_p.predict_batch(images))])
    assert abs(agree - sets[check_sets[0].name]["agreement"]) < 0.01  # the recorded figure is what the file does

    # The export belongs to exactly this model file: other bytes, no int8 path.
    weights, m = load_model(model)
    save_model(model, weights, {**m, "note": "changed"})
    assert find_export(model, "int8") is None and Predictor.from_checkpoint(model, device="cpu").backend == "torch"
    with pytest.raises(Exception, match="no int8 export of this file beside it; write one with `desertseg export --precision int8"):
        Predictor.from_checkpoint(model, device="cpu", backend="int8")


def test_failing_the_guard_writes_nothing_and_says_by_how_much(model, calibration, check_sets, monkeypatch):
    monkeypatch.setattr(parity, "MIN_AGREEMENT", 1.01)  # unreachable
    monkeypatch.setattr(quantize, "TRIES", (0,))
    out = model.with_name("tiny.int8.onnx")
    with pytest.raises(ExportError, match=r"no int8 graph passes the parity guard; the best try \(0 blocks float\) reached argmax agreement .*% \(needs >= 101%\)"):
        quantize.export_int8(model, out, calibration, check_sets, progress=False, log=lambda m: None)
    assert not out.exists()


def test_blocks_follow_the_model_and_sensitivity_is_measured(model, calibration, tmp_path):
    weights, meta = load_model(model)
    float_path = quantize.prepare_graph(weights, meta, tmp_path / "float.onnx")
    parts = quantize.blocks(float_path)
    names = [name for name, _ in parts]
    assert names[:2] == ["encoder.features.0", "encoder.features.1"] and names[-1] == "segmentation_head.0"
    assert "decoder.blocks.4" in names and len(names) == len(set(names))
    all_nodes = [n.name for n in onnx.load(str(float_path)).graph.node]
    assert sorted(n for _, nodes in parts for n in nodes) == sorted(all_nodes)  # every node in exactly one block

    images = [quantize.resize_image(im, tuple(meta["input_size"])) for im in calibration[:2]]
    chosen = [parts[0], parts[names.index("decoder.blocks.4")], parts[-1]]
    ranking = quantize.sensitivity(float_path, images, tmp_path / "cache.json", tmp_path, progress=False, parts=chosen)
    assert sorted(name for name, _ in ranking) == sorted(name for name, _ in chosen)
    scores = [db for _, db in ranking]
    assert scores == sorted(scores) and all(np.isfinite(scores)) and scores[0] > 0  # int8 adds some noise, never none
