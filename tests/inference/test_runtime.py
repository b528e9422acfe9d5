import pytest
import torch

from desertseg.inference.runtime import fuse_conv_bn
from desertseg.models.registry import MODELS, build_model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_folding_batch_norm_keeps_every_model_the_same_function(name):
    torch.manual_seed(0)
    model = build_model(name, 10, pretrained=False).eval()
    # Non-trivial statistics, as a trained model has them.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref, fused = model(x), fuse_conv_bn(model)(x)
    assert torch.allclose(ref, fused, atol=1e-3, rtol=1e-3), (ref - fused).abs().max()
