"""Which backend and file a model file runs with (``backend="auto"`` and explicit choices), on
the bundled model's real files."""

import pytest
import torch

from desertseg.inference import pt2e
from desertseg.inference.backends import resolve_backend
from desertseg.models.checkpoint import default_model_path

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_on_a_cpu_takes_the_int8_file_until_pt2e_is_compiled_here(tmp_path, monkeypatch):
    pytest.importorskip("torchao", reason="the pt2e extra is not installed")
    monkeypatch.setenv(pt2e.CACHE_ENV, str(tmp_path))
    model = default_model_path()
    assert resolve_backend(model, "auto", CPU) == ("int8", model.with_name("default.int8.onnx"))
    package = pt2e.compiled_path(model.with_name("default.pt2e"))
    assert package.parent.parent == tmp_path and f"t{torch.get_num_threads()}" in package.name
    package.parent.mkdir(parents=True)
    package.write_bytes(b"")  # as if `desertseg compile` had run on this machine
    assert resolve_backend(model, "auto", CPU) == ("pt2e", model.with_name("default.pt2e"))
    assert resolve_backend(model, "auto", CPU, pt2e_ok=False)[0] == "int8"  # scales, or a folder pipeline
    assert resolve_backend(model, "auto", CUDA) == ("torch", model)


def test_explicit_choices_and_an_onnx_file():
    model = default_model_path()
    assert resolve_backend(model, "torch", CPU) == ("torch", model)
    assert resolve_backend(model, "int8", CPU) == ("int8", model.with_name("default.int8.onnx"))
    onnx = model.with_name("default.int8.onnx")
    assert resolve_backend(onnx, "auto", CPU) == ("onnx", onnx)
    with pytest.raises(ValueError, match="runs only with backend 'onnx'"):
        resolve_backend(onnx, "pt2e", CPU)
