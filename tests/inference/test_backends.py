"""Which backend and file a model file runs with (``backend="auto"`` and explicit choices), on
the bundled model's real files."""

import pytest
import torch

from desertseg.inference import pt2e
from desertseg.inference.backends import resolve_backend
from desertseg.models.checkpoint import default_model_path

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_on_a_cpu_takes_pt2e_only_once_compiled_and_timed_faster_here(tmp_path, monkeypatch):
    pytest.importorskip("torchao", reason="the pt2e extra is not installed")
    monkeypatch.setenv(pt2e.CACHE_ENV, str(tmp_path))
    model = default_model_path()
    calibration, int8 = model.with_name("default.pt2e"), model.with_name("default.int8.onnx")
    assert resolve_backend(model, "auto", CPU) == ("int8", int8)
    package = pt2e.compiled_path(calibration)
    assert package.parent.parent == tmp_path and f"t{torch.get_num_threads()}" in package.name
    package.parent.mkdir(parents=True)
    package.write_bytes(b"")  # as if `desertseg compile` had compiled it on this machine...
    assert resolve_backend(model, "auto", CPU) == ("int8", int8)  # ...but not timed it yet
    pt2e.write_speed(calibration, {"pt2e_ms": 50.7, "int8_ms": 39.6})  # the FPN model here: onnxruntime wins
    assert resolve_backend(model, "auto", CPU) == ("int8", int8)
    pt2e.write_speed(calibration, {"pt2e_ms": 32.3, "int8_ms": 43.8})  # the UNet model here: PT2E wins
    assert resolve_backend(model, "auto", CPU) == ("pt2e", calibration)
    assert resolve_backend(model, "auto", CPU, pt2e_ok=False)[0] == "int8"  # scales, or a folder pipeline
    assert resolve_backend(model, "auto", CUDA) == ("torch", model)
    pt2e.speed_path(calibration).write_text("{not json")  # a damaged record: measure again, meanwhile onnxruntime
    assert resolve_backend(model, "auto", CPU) == ("int8", int8)


def test_explicit_choices_and_an_onnx_file():
    model = default_model_path()
    assert resolve_backend(model, "torch", CPU) == ("torch", model)
    assert resolve_backend(model, "int8", CPU) == ("int8", model.with_name("default.int8.onnx"))
    onnx = model.with_name("default.int8.onnx")
    assert resolve_backend(onnx, "auto", CPU) == ("onnx", onnx)
    with pytest.raises(ValueError, match="runs only with backend 'onnx'"):
        resolve_backend(onnx, "pt2e", CPU)
