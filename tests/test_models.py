import numpy as np
import pytest
import torch

from desertseg.models import MODELS, build_model
from desertseg.pretrained import PretrainedUnavailable

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


def test_ibn_keeps_the_batch_norm_half_and_normalises_each_image_in_the_other(unseen_dir, tmp_path):
    from desertseg.checkpoint import load_model, make_metadata, save_model
    from desertseg.data import read_image, resize_image
    from desertseg.models import IBN, add_ibn

    images = [resize_image(read_image(p), (144, 256)) for p in sorted((unseen_dir / "Color_Images").iterdir())[:2]]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    torch.manual_seed(0)
    plain = build_model("unet_mobilenet_v2", 10, pretrained=False).eval()
    for m in plain.modules():  # batch statistics that differ from the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    bn = plain.model.encoder.features[2].conv[0][1]
    feats = plain.model.encoder.features[:2](x)
    pre = plain.model.encoder.features[2].conv[0][0](feats)
    ibn = IBN(bn).eval()
    out, ref = ibn(pre), bn(pre)
    half = ibn.split
    assert half == bn.num_features // 2
    torch.testing.assert_close(out[:, half:], ref[:, half:])
    # The instance half: each image and channel at mean = BN bias, whatever its own brightness.
    torch.testing.assert_close(out[:, :half].mean((2, 3)), bn.bias[:half].expand(2, -1).detach(), atol=1e-4, rtol=0)
    assert not torch.allclose(out[:, :half], ref[:, :half], atol=1e-2)

    model = add_ibn(plain, 3)
    assert sum(isinstance(m, IBN) for m in model.modules()) == 6  # blocks 1-6: strides 2, 4, 8
    with pytest.raises(ValueError, match="ibn_stages must lie in"):
        add_ibn(build_model("unet_mobilenet_v2", 10, pretrained=False), 5)
    with pytest.raises(ValueError, match="MobileNetV2"):
        build_model("deeplabv3_resnet50", 10, pretrained=False, ibn_stages=2)
    # A model file records it, and loads back into the same architecture, strictly.
    path = save_model(tmp_path / "ibn.safetensors", model, make_metadata("unet_mobilenet_v2", (144, 256), {"ibn_stages": 3}))
    loaded, _ = load_model(path)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x))
