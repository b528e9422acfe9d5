import json
import os
import subprocess
import sys


def run(*args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
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


def test_pickled_model_file_is_refused_with_a_hint(tmp_path):
    import torch

    bad = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(1)}, bad)
    r = run("info", str(bad))
    assert r.returncode == 2 and "import-model" in r.stderr
