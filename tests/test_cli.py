import json
import os
import subprocess
import sys

import pytest

from desertseg.cli.main import _expected
from desertseg.data.decoding import DataError
from desertseg.errors import MissingExtra, UnknownName
from desertseg.models.pretrained import PretrainedUnavailable


def run(*args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DESERTSEG_DEBUG": ""}
    return subprocess.run([sys.executable, "-m", "desertseg.cli", *args], capture_output=True, text=True, env=env, timeout=600, **kw)


def test_help_lists_commands_in_sentences():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("train", "evaluate", "info", "models", "presets"):
        assert cmd in r.stdout


def test_wrong_arguments_give_a_short_error_not_a_traceback(tmp_path):
    r = run("train", "--bogus")
    assert r.returncode == 2 and "No such option" in r.stderr and "Traceback" not in r.stderr
    r = run("evaluate", "--data", str(tmp_path / "missing"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error:") and "dataset folder not found" in r.stderr


def test_evaluate_cli_writes_json(tiny_run, duality_root, tmp_path):
    r = run("evaluate", "--data", str(duality_root), "--split", "val", "--checkpoint", str(tiny_run / "best.safetensors"), "--limit", "2", "--out", str(tmp_path), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["images"] == 2 and "miou_present" in result
    assert "mIoU, all 10 classes" in r.stdout


def test_info_shows_metadata(tiny_run):
    r = run("info", str(tiny_run / "best.safetensors"))
    assert r.returncode == 0
    assert json.loads(r.stdout)["model"] == "unet_mobilenet_v2"
    assert json.loads(r.stdout)["pt2e_calibration"] is None  # none beside a fresh run


def test_info_names_the_bundled_models_pt2e_calibration():
    r = run("info")
    info = json.loads(r.stdout)
    assert r.returncode == 0 and info["pt2e_calibration"].endswith("default.pt2e")
    assert info["pt2e_compiled"] is None and info["default_inference"]["backend"] == "int8"  # not compiled here yet: onnxruntime int8


def test_compile_without_a_calibration_says_how_to_write_one(tiny_run):
    r = run("compile", "--checkpoint", str(tiny_run / "best.safetensors"))
    assert r.returncode == 2 and "no PT2E calibration" in r.stderr and "desertseg export --precision int8 --engine pt2e" in r.stderr


def test_pickled_model_file_is_refused_with_a_hint(tmp_path):
    import torch

    bad = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(1)}, bad)
    r = run("info", str(bad))
    assert r.returncode == 2 and "import-model" in r.stderr


def test_a_user_mistake_is_one_error_line_and_exit_2(tmp_path):
    r = run("evaluate", "--data", str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.splitlines() == [f"error: {tmp_path / 'missing'}: dataset folder not found"], r.stderr


def test_a_device_this_machine_lacks_is_a_user_mistake(tiny_run, unseen_dir, tmp_path):
    image = next((unseen_dir / "Color_Images").iterdir())
    for device, problem in (("gpu0", "unknown device 'gpu0'"), ("cuda:99", "device 'cuda:99' is not available")):
        r = run("predict", str(image), "--out", str(tmp_path / device), "--checkpoint", str(tiny_run / "best.safetensors"), "--device", device)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith(f"error: {problem}"), r.stderr


# A real `desertseg info` run in which one library function has a bug (a ZeroDivisionError),
# as a bug would look: across a subprocess there is no monkeypatch, so the patch is in the -c code.
BUGGY = "import desertseg.models.checkpoint as c; c.read_metadata = lambda path: 1 / 0; from desertseg.cli import main; main()"


def run_buggy(*args, env=None):
    return subprocess.run([sys.executable, "-c", BUGGY, *args], capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_a_bug_is_an_internal_error_with_a_hint_and_exit_1(tmp_path):
    r = run_buggy("info", str(tmp_path / "model.safetensors"), env={"DESERTSEG_DEBUG": ""})
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0] == "internal error: ZeroDivisionError: division by zero", r.stderr
    assert "bug" in lines[1] and "--debug" in lines[1] and "DESERTSEG_DEBUG=1" in lines[1] and len(lines) == 2


@pytest.mark.parametrize("how", ["--debug", "DESERTSEG_DEBUG=1"])
def test_debug_shows_the_traceback(how, tmp_path):
    model = str(tmp_path / "model.safetensors")
    r = run_buggy("--debug", "info", model) if how == "--debug" else run_buggy("info", model, env={"DESERTSEG_DEBUG": "1"})
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("Traceback (most recent call last):") and "in <lambda>" in r.stderr and "ZeroDivisionError: division by zero" in r.stderr
    assert "internal error: ZeroDivisionError" in r.stderr
    r = run("--debug", "evaluate", "--data", str(tmp_path / "missing"))  # user mistakes too, same exit code
    assert r.returncode == 2 and "Traceback" in r.stderr and r.stderr.splitlines()[-1].startswith("error:")


@pytest.mark.parametrize(
    "error, expected",
    [
        (DataError("x.png", "cannot read"), True),
        (FileNotFoundError("x"), True),
        (PermissionError("x"), True),
        (OSError(28, "No space left on device"), True),
        (ValueError("unknown loss 'x'"), True),
        (UnknownName("unknown model 'x'"), True),
        (MissingExtra("video needs OpenCV"), True),
        (PretrainedUnavailable("offline"), True),
        (KeyError("input_size"), False),
        (RuntimeError("shape mismatch"), False),
        (TypeError("x"), False),
        (AttributeError("x"), False),
        (ZeroDivisionError(), False),
    ],
)
def test_which_errors_count_as_user_mistakes(error, expected):
    assert _expected(error) is expected
