"""`desertseg benchmark` on real 960x540 images, and clear errors when choosing a backend."""

import json
import os
import subprocess
import sys

import pytest

from desertseg.inference.benchmark import FIELDS
from desertseg.inference.predict import Predictor


def run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "desertseg.cli", *args], capture_output=True, text=True, env=env, timeout=600)


def test_benchmark_on_two_images_emits_json_with_every_field(tiny_run, unseen_dir, tmp_path):
    files = sorted((unseen_dir / "Color_Images").iterdir())[:2]
    out = tmp_path / "bench.json"
    r = run(
        "benchmark",
        "--checkpoint",
        str(tiny_run / "best.safetensors"),
        "--backend",
        "torch",
        "--batch",
        "1,2",
        "--images",
        "2",
        "--threads",
        "1",
        "--data",
        str(files[0]),
        "--data",
        str(files[1]),
        "--json",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "| backend | batch |" in r.stdout and "p50" in r.stdout
    report = json.loads(out.read_text())
    assert json.loads(r.stdout[r.stdout.index("{") :]) == report  # the printed JSON is the written one
    for key in ("checkpoint", "model", "device", "threads", "cpu", "versions", "image_size", "image_files", "data", "results"):
        assert key in report, key
    assert report["threads"] == 1 and report["image_size"] == [540, 960] and report["image_files"] == 2
    assert report["device"].startswith("cpu") and report["model"] == "unet_mobilenet_v2"
    assert [(x["backend"], x["batch"]) for x in report["results"]] == [("torch", 1), ("torch", 2)]
    for res in report["results"]:
        assert set(FIELDS) <= set(res)
        assert res["images"] == 2 and res["input_size"] == [72, 128]
        lat = res["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"]
        assert res["images_per_s"] > 0
        stages = res["stage_ms_per_image"]
        assert set(stages) == {"decode", "preprocess", "model", "postprocess"}
        assert stages["model"] > 0 and stages["decode"] > 0
        assert sum(stages.values()) <= lat["mean"] * 1.01 + 0.1  # the stages are parts of the whole
        assert res["peak_rss_mb"] is None or res["peak_rss_mb"] > 0
        assert res["cuda_peak_mb"] is None


def test_benchmark_size_option_changes_the_model_input(tiny_run, unseen_dir, tmp_path):
    files = sorted((unseen_dir / "Color_Images").iterdir())[:1]
    out = tmp_path / "bench.json"
    r = run("benchmark", "--checkpoint", str(tiny_run / "best.safetensors"), "--backend", "torch", "--size", "96x54", "--images", "1", "--data", str(files[0]), "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["results"][0]["input_size"] == [54, 96]


def test_unknown_backend_is_a_clear_error(tiny_run, tmp_path):
    r = run("benchmark", "--checkpoint", str(tiny_run / "best.safetensors"), "--backend", "tensorrt", "--data", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown backend 'tensorrt'; choose one of: auto, torch, onnx" in r.stderr
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        Predictor.from_checkpoint(tiny_run / "best.safetensors", backend="tensorrt")


def test_benchmark_without_images_says_what_to_pass(tiny_run, tmp_path):
    r = run("benchmark", "--checkpoint", str(tiny_run / "best.safetensors"), "--data", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nowhere" in r.stderr


def test_missing_onnxruntime_names_the_extra(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    with pytest.raises(RuntimeError, match=r"pip install desertseg\[onnx\]"):
        Predictor.from_checkpoint(tiny_run / "best.safetensors", device="cpu", backend="onnx")
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not needed: onnxruntime is checked first")
    with pytest.raises(RuntimeError, match=r"pip install desertseg\[onnx\]"):
        Predictor.from_checkpoint(onnx_file, device="cpu")
    # auto quietly stays with PyTorch when onnxruntime is missing
    assert Predictor.from_checkpoint(tiny_run / "best.safetensors", device="cpu").backend == "torch"


def test_published_path_ratio_and_unseen_miou_in_one_run(tiny_run, unseen_dir, tmp_path):
    from conftest import link_subset

    from desertseg.inference.benchmark import run_benchmark

    split = link_subset(unseen_dir.parent, tmp_path / "data", {unseen_dir.name: 2}) / unseen_dir.name
    from desertseg.data.samples import list_samples

    samples, _ = list_samples(split)
    images = sorted((split / "Color_Images").iterdir())
    report = run_benchmark(tiny_run / "best.safetensors", images, ["torch"], [1], images=2, threads=1, device="cpu", published=True, miou_samples=samples)
    ours, published = report["results"]
    assert published["backend"] == "published" and published["input_size"] == [256, 256]
    assert published["unseen_miou"] is None  # untrained published weights: timed, never scored
    assert ours["speedup_vs_published"] == round(published["latency_ms"]["p50"] / ours["latency_ms"]["p50"], 2)
    assert ours["unseen_miou"]["images"] == 2 and 0 <= ours["unseen_miou"]["miou_all"] <= ours["unseen_miou"]["miou_present"] <= 1
    assert set(published["stage_ms_per_image"]) == {"decode", "preprocess", "model", "postprocess"}
