"""The Predictor (PyTorch backend) on real Duality images and the tiny trained model:
probabilities, test-time augmentation, sliding windows, preprocessing, upsampling, bf16."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from desertseg.data.decoding import read_image, resize_image
from desertseg.data.samples import list_samples
from desertseg.data.transforms import normalize
from desertseg.inference.predict import Predictor
from desertseg.inference.runtime import upsample_argmax


@pytest.fixture(scope="module")
def images(unseen_dir):
    samples, _ = list_samples(unseen_dir)
    return [read_image(s.image) for s in samples[:3]]


def test_predictor_probabilities_and_tta(tiny_run, duality_root):
    samples, _ = list_samples(duality_root / "val")
    image = read_image(samples[0].image)
    plain = Predictor.from_checkpoint(tiny_run / "best.safetensors", device="cpu")
    p = plain.predict(image, return_probs=True)
    assert p.probs.shape == (10, 540, 960)
    assert np.allclose(p.probs.sum(0), 1, atol=1e-4)
    assert (p.probs.argmax(0) == p.mask).all()
    tta = Predictor.from_checkpoint(tiny_run / "best.safetensors", device="cpu", flip=True, scales=(0.75, 1.0))
    a, b = tta.predict(image).mask, tta.predict(image).mask
    assert a.shape == (540, 960) and (a == b).all()  # deterministic
    window = Predictor.from_checkpoint(tiny_run / "best.safetensors", device="cpu", sliding_window=True)
    crop = image[:150, :260]  # larger than the 128x72 input: several overlapping windows
    assert window.predict(crop).mask.shape == (150, 260)


def test_preprocessing_is_the_training_resize(images):
    p = Predictor.__new__(Predictor)  # _batch needs no model
    for size in [(270, 480), (72, 128)]:
        x = Predictor._batch(p, images[:2], size)
        ref = np.stack([resize_image(im, size) for im in images[:2]])
        assert np.array_equal(np.rint(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), ref)


def test_boundary_only_upsampling_equals_full_bilinear_argmax(tiny_run, images):
    from desertseg.models.checkpoint import load_model

    model, _ = load_model(tiny_run / "best.safetensors")
    for im in images:
        x = torch.from_numpy(np.array(resize_image(im, (72, 128)))).permute(2, 0, 1)[None].float() / 255
        with torch.inference_mode():
            logits = model(normalize(x))[0]
        for size in [(540, 960), (100, 77)]:
            ref = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0).numpy()
            assert (upsample_argmax(logits, size) == ref).mean() >= 0.9999


def test_bf16_is_kept_only_where_it_agrees(tiny_run, images):
    fp32 = Predictor.from_checkpoint(tiny_run / "best.safetensors", device="cpu", backend="torch")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bf16 = Predictor.from_checkpoint(tiny_run / "best.safetensors", device="cpu", backend="torch", bf16=True)
        masks = [p.mask for p in bf16.predict_batch(images)]
    if not bf16.runner.bf16:
        assert any("bf16 autocast disabled" in str(w.message) for w in caught)
    for a, b in zip(masks, fp32.predict_batch(images)):
        assert (a == b.mask).mean() >= 0.999
