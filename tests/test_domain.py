"""Domain-generalisation methods on real images: what each one keeps and what it changes."""

from __future__ import annotations

import pytest
import torch

from desertseg.data import find_samples, read_image, resize_image
from desertseg.domain import DomainRandomizer, MixStyle, add_mixstyle, fourier_mix, pasta, randconv
from desertseg.models import build_model


@pytest.fixture(scope="module")
def batch(duality_root, unseen_dir) -> torch.Tensor:
    """Two real images of different environments (mt0 daylight, w0), 160x90, in [0, 1]."""
    train, _ = find_samples(duality_root, "train")
    unseen, _ = find_samples(unseen_dir)
    picks = [next(s for s in train if s.name.startswith("mt0")), unseen[0]]
    images = [torch.from_numpy(resize_image(read_image(s.image), (90, 160)).copy()).permute(2, 0, 1).float() / 255 for s in picks]
    return torch.stack(images)


def test_fourier_mix_takes_the_partners_style_and_keeps_the_content(batch):
    torch.manual_seed(0)
    full = fourier_mix(batch, p=1.0, strength=1.0)
    # Only amplitude moves: with the weight drawn from 0..1 each output lies between itself
    # and its partner in mean colour (the DC amplitude), and keeps its own edges (the phase).
    own, other = batch.mean((2, 3)), batch.flip(0).mean((2, 3))
    got = full.mean((2, 3))
    lo, hi = torch.minimum(own, other) - 0.02, torch.maximum(own, other) + 0.02
    assert ((got >= lo) & (got <= hi)).all()
    edges = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean(1)  # noqa: E731
    corr = torch.corrcoef(torch.stack([edges(full)[0].flatten(), edges(batch)[0].flatten()]))[0, 1]
    assert corr > 0.5
    assert torch.equal(fourier_mix(batch, p=0.0), batch)
    assert torch.allclose(fourier_mix(batch, p=1.0, strength=0.0), batch, atol=1e-4)


def test_pasta_perturbs_high_frequencies_more_than_low(batch):
    torch.manual_seed(0)
    assert torch.allclose(pasta(batch, p=1.0, alpha=0.0, beta=0.0), batch, atol=1e-4)
    out = pasta(batch, p=1.0, alpha=3.0, beta=0.0)
    # beta=0: the mean (zero frequency) is untouched, fine texture is not.
    assert torch.allclose(out.mean((2, 3)), batch.mean((2, 3)), atol=0.03)
    assert (out - batch).abs().mean() > 0.01


def test_randconv_keeps_each_images_brightness(batch):
    torch.manual_seed(0)
    out = randconv(batch, p=1.0)
    assert out.shape == batch.shape and 0 <= out.min() and out.max() <= 1
    assert torch.allclose(out.mean((1, 2, 3)), batch.mean((1, 2, 3)), atol=0.05)
    assert torch.equal(randconv(batch, p=0.0), batch)


def test_mixstyle_is_training_only_and_leaves_the_model_file_alone(batch):
    torch.manual_seed(0)
    model = build_model("unet_mobilenet_v2", 10, pretrained=False)
    keys = set(model.state_dict())
    plain = build_model("unet_mobilenet_v2", 10, pretrained=False)
    plain.load_state_dict(model.state_dict())
    add_mixstyle(model, p=1.0, alpha=0.1, stages=2)
    assert set(model.state_dict()) == keys  # the saved file does not change
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), plain(batch))
        model.train(), plain.train()
        assert not torch.allclose(model(batch), plain(batch))
    with pytest.raises(ValueError, match="MobileNetV2"):
        add_mixstyle(build_model("deeplabv3_resnet50", 10, pretrained=False), p=0.5)


def test_mixstyle_moves_feature_statistics_towards_the_partner():
    torch.manual_seed(0)
    x = torch.stack([torch.randn(4, 8, 8), torch.randn(4, 8, 8) * 3 + 5])
    out = MixStyle(p=1.0, alpha=100.0).train()(x)  # Beta(100, 100): weights near 0.5
    assert abs(out[0].mean() - 2.5) < 0.5 and abs(out[1].mean() - 2.5) < 0.5


def test_unknown_domain_keys_are_refused():
    with pytest.raises(ValueError, match="unknown domain keys"):
        DomainRandomizer({"fourier": 0.5})
    assert not DomainRandomizer({}).active and DomainRandomizer({"pasta": 0.5}).active
