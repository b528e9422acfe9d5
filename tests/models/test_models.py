import pytest
import torch

from desertseg.models.pretrained import PretrainedUnavailable
from desertseg.models.registry import MODELS, build_model

FAST = ["unet_mobilenet_v2", "fpn_mobilenet_v2", "deeplabv3plus_mobilenet_v2", "unet_efficientnet_lite0", "segformer_b0", "deeplabv3_resnet50"]


@pytest.mark.parametrize("name", FAST)
def test_models_return_logits_in_train_and_eval(name):
    model = build_model(name, 10, pretrained=False)
    x = torch.randn(2, 3, 72, 128)  # 16:9 and not a multiple of 32
    for mode in (model.train, model.eval):
        mode()
        with torch.no_grad():
            out = model(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 10, 72, 128)


def test_registry_is_a_plain_dict_and_unknown_names_are_clear():
    assert "deeplabv3_resnet50" in MODELS and "segformer_b0" in MODELS
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        build_model("nope", 10)


def test_pretrained_true_fails_with_how_to_and_auto_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty weight cache
    import urllib.request

    def offline(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(PretrainedUnavailable, match="desertseg weights fetch"):
        build_model("unet_mobilenet_v2", 10, pretrained=True)
    with pytest.warns(UserWarning, match="random initialisation"):
        build_model("unet_mobilenet_v2", 10, pretrained="auto")
