"""Domain generalisation during training: style randomisation that needs no target data.

A desert the model never saw differs from the training ones mostly in *style* (light,
colour, texture statistics), not in layout. These methods randomise style while keeping the
labels, so the network cannot lean on one environment's look for a class. They are chosen
by the preset's ``[domain]`` table and measured by ``benchmarks/generalisation.py``
(leave-one-environment-out). All of them act during training only: the model file and
inference are unchanged.

Image-level (a batch of images in [0, 1], in :meth:`DomainRandomizer.images`):

- ``fourier_mix``: swap part of the Fourier amplitude spectrum (the "style") with another
  image of the batch, keeping the phase (the "content"), as in FACT (Xu et al., CVPR 2021).
  Most partners come from another environment, so the network sees cc's plants in mt1's light.
- ``pasta``: multiply the amplitude spectrum by noise that grows with spatial frequency,
  as in PASTA (Chattopadhyay et al., ICCV 2023): synthetic textures are too clean.
- ``randconv``: pass the image through a random shallow convolution and blend it with the
  original, as in RandConv (Xu et al., ICLR 2021): random local texture and colour mixing.

Feature-level:

- ``mixstyle``: mix the channel mean and standard deviation of shallow encoder features
  between images of the batch (MixStyle, Zhou et al., ICLR 2021).

Every random draw comes from torch's global RNG, which training seeds, so runs repeat.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Keys a [domain] table may hold, with what they mean.
DOMAIN_KEYS = {
    "fourier_mix": "probability that an image takes part of another batch image's amplitude spectrum",
    "fourier_mix_strength": "largest share of the partner's amplitude (mixing weight drawn from 0..this; default 1.0)",
    "pasta": "probability of amplitude-spectrum perturbation (PASTA)",
    "pasta_alpha": "PASTA's frequency-proportional strength (default 3.0)",
    "pasta_beta": "PASTA's constant strength (default 0.25)",
    "pasta_k": "PASTA's exponent of the frequency radius (default 2)",
    "randconv": "probability of a random shallow convolution blended with the image",
    "mixstyle": "probability that a shallow encoder stage mixes feature statistics in a batch",
    "mixstyle_alpha": "Beta(alpha, alpha) of the MixStyle mixing weight (default 0.1)",
    "mixstyle_stages": "how many shallow encoder stages (after the stem) get MixStyle (default 2)",
}


def _per_image(p: float, n: int, device) -> torch.Tensor:
    """``(n, 1, 1, 1)`` bool: which images of the batch a transform with probability p touches."""
    return (torch.rand(n, device=device) < p).view(n, 1, 1, 1)


def _partners(n: int, device) -> torch.Tensor:
    """For each image another image of the batch (a random cyclic shift, never itself)."""
    return (torch.arange(n, device=device) + int(torch.randint(1, n, ()))) % n


def fourier_mix(x: torch.Tensor, p: float, strength: float = 1.0) -> torch.Tensor:
    """Mix each chosen image's amplitude spectrum with a random partner's, keep its phase.

    Shape: ``x`` ``(N, 3, H, W)`` float in [0, 1] -> same.
    """
    n = x.shape[0]
    if n < 2 or p <= 0:
        return x
    spec = torch.fft.rfft2(x.float())
    amp, phase = spec.abs(), spec.angle()
    partner = _partners(n, x.device)
    lam = torch.rand(n, 1, 1, 1, device=x.device) * strength
    mixed = torch.fft.irfft2(torch.polar((1 - lam) * amp + lam * amp[partner], phase), s=x.shape[-2:])
    return torch.where(_per_image(p, n, x.device), mixed.clamp(0, 1).to(x.dtype), x)


def pasta(x: torch.Tensor, p: float, alpha: float = 3.0, beta: float = 0.25, k: float = 2.0) -> torch.Tensor:
    """Perturb the amplitude spectrum with noise whose std grows with spatial frequency:
    ``A' = A * e``, ``e ~ N(1, (2 * alpha * r**k + beta)**2)``, ``r`` the normalised radius.

    Shape: ``x`` ``(N, 3, H, W)`` float in [0, 1] -> same.
    """
    n, _, h, w = x.shape
    if p <= 0:
        return x
    spec = torch.fft.rfft2(x.float())
    fy = torch.fft.fftfreq(h, device=x.device).view(-1, 1)
    fx = torch.fft.rfftfreq(w, device=x.device).view(1, -1)
    sigma = 2 * alpha * torch.sqrt(fy**2 + fx**2) ** k + beta
    noise = 1 + torch.randn_like(spec.real) * sigma
    out = torch.fft.irfft2(torch.polar(spec.abs() * noise, spec.angle()), s=(h, w))
    return torch.where(_per_image(p, n, x.device), out.clamp(0, 1).to(x.dtype), x)


def randconv(x: torch.Tensor, p: float, kernel_sizes: tuple[int, ...] = (1, 3, 5, 7)) -> torch.Tensor:
    """Blend each chosen image with a random convolution of itself (one kernel per batch),
    the result rescaled to the image's own mean and std so brightness stays plausible.

    Shape: ``x`` ``(N, 3, H, W)`` float in [0, 1] -> same.
    """
    n = x.shape[0]
    if p <= 0:
        return x
    k = kernel_sizes[int(torch.randint(len(kernel_sizes), ()))]
    weight = torch.randn(3, 3, k, k, device=x.device) / math.sqrt(3 * k * k)
    y = nn.functional.conv2d(nn.functional.pad(x.float(), [k // 2] * 4, mode="reflect"), weight)
    mu, sd = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True)
    y = (y - y.mean((2, 3), keepdim=True)) / (y.std((2, 3), keepdim=True) + 1e-6) * sd + mu
    a = torch.rand(n, 1, 1, 1, device=x.device)
    out = (a * x + (1 - a) * y).clamp(0, 1).to(x.dtype)
    return torch.where(_per_image(p, n, x.device), out, x)


class MixStyle(nn.Module):
    """Mixes per-channel feature mean and std between images of a batch, in training only.

    Shape: ``(N, C, H, W)`` -> same.
    """

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6):
        super().__init__()
        self.p, self.eps = p, eps
        self.beta = torch.distributions.Beta(alpha, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] < 2 or torch.rand(()) >= self.p:
            return x
        n = x.shape[0]
        mu = x.mean((2, 3), keepdim=True).detach()
        sig = (x.var((2, 3), keepdim=True) + self.eps).sqrt().detach()
        lam = self.beta.sample((n, 1, 1, 1)).to(x)
        perm = _partners(n, x.device)
        return (x - mu) / sig * (lam * sig + (1 - lam) * sig[perm]) + lam * mu + (1 - lam) * mu[perm]


def add_mixstyle(model: nn.Module, p: float, alpha: float = 0.1, stages: int = 2) -> list:
    """Put :class:`MixStyle` after the first ``stages`` encoder stages past the stem, as
    forward hooks (the state dict, and so the model file, stays the same). Returns the hook
    handles. Supports encoders that list their stage outputs (smp's MobileNetV2)."""
    from .models import core_model

    encoder = getattr(core_model(model), "encoder", None)
    indexes = getattr(encoder, "_out_indexes", None)
    if encoder is None or indexes is None or not hasattr(encoder, "features"):
        raise ValueError(f"mixstyle is supported for MobileNetV2 encoders only, not {type(model).__name__}")
    mix = MixStyle(p, alpha)
    model.add_module("mixstyle", mix)  # follows train()/eval(); holds no tensors
    hook = lambda module, args, out: mix(out)  # noqa: E731
    return [encoder.features[i].register_forward_hook(hook) for i in indexes[1 : 1 + stages]]


class DomainRandomizer:
    """The image-level methods of a ``[domain]`` table, applied to a training batch."""

    def __init__(self, domain: dict | None):
        self.cfg = dict(domain or {})
        unknown = set(self.cfg) - set(DOMAIN_KEYS)
        if unknown:
            raise ValueError(f"unknown domain keys {sorted(unknown)}; known: {', '.join(DOMAIN_KEYS)}")

    @property
    def active(self) -> bool:
        return any(self.cfg.get(k) for k in ("fourier_mix", "pasta", "randconv"))

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: ``(N, 3, H, W)`` float in [0, 1] -> same."""
        c = self.cfg
        if c.get("fourier_mix"):
            x = fourier_mix(x, c["fourier_mix"], c.get("fourier_mix_strength", 1.0))
        if c.get("pasta"):
            x = pasta(x, c["pasta"], c.get("pasta_alpha", 3.0), c.get("pasta_beta", 0.25), c.get("pasta_k", 2.0))
        if c.get("randconv"):
            x = randconv(x, c["randconv"])
        return x
