"""The default recipe's training pieces: cosine warm-up, the encoder learning-rate multiplier,
the optimiser and scheduler registries, class weights and the augmentation's fill of ignored
pixels, each on a real model, real masks or a real image."""

import math

import numpy as np
import pytest
import torch

from desertseg.classes import IGNORE_INDEX, NUM_CLASSES, raw_to_index
from desertseg.data.decoding import SegmentationDataset, read_image, read_mask
from desertseg.data.samples import find_samples
from desertseg.data.transforms import TrainTransform
from desertseg.models.registry import build_model, encoder_parameters
from desertseg.training.config import load_config
from desertseg.training.fit import pixel_counts
from desertseg.training.lightning_module import OPTIMIZERS, SCHEDULERS, SegmentationModule, cosine_factor, parameter_groups
from desertseg.training.losses import class_weights


def test_cosine_warms_up_linearly_then_decays_to_zero():
    warmup, total = 10, 100
    assert [cosine_factor(s, warmup, total) for s in range(warmup)] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert cosine_factor(warmup, warmup, total) == pytest.approx(1.0)
    after = [cosine_factor(s, warmup, total) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(after, after[1:])) and after[-1] == pytest.approx(0.0, abs=1e-12)
    assert cosine_factor(55, warmup, total) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_default_schedule_on_a_real_optimiser_reaches_the_peak_after_one_epoch():
    config = load_config("default", {"epochs": 4, "warmup_epochs": 1})
    model = build_model(config.model, NUM_CLASSES, pretrained=False)
    opt = OPTIMIZERS[config.optimizer](parameter_groups(model, config.encoder_lr_mult, config.lr), config)
    sched = SCHEDULERS["cosine"](opt, config, total_steps=40)["scheduler"]
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(config.lr / 10) and max(lrs) == pytest.approx(config.lr) and lrs.index(max(lrs)) == 9
    assert isinstance(opt, torch.optim.AdamW)


def test_encoder_learning_rate_multiplier_and_freezing():
    model = build_model("unet_mobilenet_v2", NUM_CLASSES, pretrained=False)
    enc = {id(p) for p in encoder_parameters(model)}
    decoder_group, encoder_group = parameter_groups(model, 0.1, 1e-3)
    assert {id(p) for p in encoder_group["params"]} == enc and encoder_group["lr"] == pytest.approx(1e-4)
    assert not enc & {id(p) for p in decoder_group["params"]} and "lr" not in decoder_group
    (only,) = parameter_groups(model, 0.0, 1e-3)
    assert all(not p.requires_grad for p in encoder_parameters(model)) and not enc & {id(p) for p in only["params"]}


def test_unknown_optimizer_or_scheduler_is_refused_before_training():
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        SegmentationModule(vars(load_config("default", {"optimizer": "lamb", "pretrained": False})))
    with pytest.raises(ValueError, match="unknown scheduler 'poly'"):
        SegmentationModule(vars(load_config("default", {"scheduler": "poly", "pretrained": False})))


def test_class_weights_from_real_masks(duality_root):
    samples, _ = find_samples(duality_root, "train")
    counts = pixel_counts(SegmentationDataset(samples[:16], (54, 96)))
    w = class_weights(counts, "inverse_sqrt").numpy()
    assert w.mean() == pytest.approx(1.0)
    present = counts > 0
    order = np.argsort(counts[present])  # rarer present classes weigh more
    assert np.all(np.diff(w[present][order]) <= 1e-6)
    assert np.allclose(w[~present], w[present].max())  # absent classes: the largest weight seen
    inverse = class_weights(counts, "inverse").numpy()
    assert inverse[present].max() / inverse[present].min() > w[present].max() / w[present].min()  # inverse is harsher


def test_zoomed_out_augmentation_pads_the_target_with_ignore_index(duality_root):
    (sample, *_), _ = find_samples(duality_root, "train")
    image = torch.from_numpy(read_image(sample.image)).permute(2, 0, 1).contiguous()
    target = torch.from_numpy(raw_to_index(read_mask(sample.mask))).long()
    assert (target != IGNORE_INDEX).all()  # a real mask labels every pixel
    torch.manual_seed(0)
    x, y = TrainTransform({"scale": [0.5, 0.6]})(image, target)
    padded = y == IGNORE_INDEX
    assert 0.5 < padded.float().mean() < 0.8  # zooming out to 50-60% leaves 64-75% of pixels outside the image
    assert y[~padded].unique().tolist() == sorted(set(y[~padded].unique().tolist()) & set(range(NUM_CLASSES)))
    assert x.shape == (3, *target.shape)
