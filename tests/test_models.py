import pytest
import torch

from desertseg.models import MODELS, PretrainedUnavailable, build_model

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


def test_image_standardisation_ignores_global_light_and_travels_in_the_model_file(unseen_dir, tmp_path):
    """input_norm = "image": a darker, flatter copy of a real frame (dusk) gives the same
    logits; the choice is stored in the model file, loaded back and kept by the ONNX export."""
    from desertseg.checkpoint import load_model, make_metadata, save_model
    from desertseg.data import list_samples, read_image, resize_image
    from desertseg.transforms import normalize

    samples, _ = list_samples(unseen_dir)
    image = read_image(samples[0].image)
    x = torch.from_numpy(resize_image(image, (72, 128)).copy()).permute(2, 0, 1)[None].float() / 255
    dusk = x * 0.35 + 0.02
    torch.manual_seed(0)
    model = build_model("unet_mobilenet_v2", 10, pretrained=False, input_norm="image").eval()
    fixed = build_model("unet_mobilenet_v2", 10, pretrained=False).eval()
    with torch.no_grad():
        assert torch.allclose(model(normalize(x)), model(normalize(dusk)), atol=1e-2)
        assert not torch.allclose(fixed(normalize(x)), fixed(normalize(dusk)), atol=1e-2)
    path = save_model(tmp_path / "m.safetensors", model, make_metadata("unet_mobilenet_v2", (72, 128), input_norm="image"))
    loaded, meta = load_model(path)
    assert meta["input_norm"] == "image" and type(loaded).__name__ == "StandardizeInput"
    with torch.no_grad():
        assert torch.equal(loaded(normalize(x)), model(normalize(x)))
    pytest.importorskip("onnxruntime")
    from desertseg.export import export_onnx

    _, parity, _ = export_onnx(path, tmp_path / "m.onnx", check_images=[image])
    assert parity.ok and parity.argmax_agreement >= 0.999
    with pytest.raises(ValueError, match="input_norm"):
        build_model("unet_mobilenet_v2", 10, pretrained=False, input_norm="per_pixel")
