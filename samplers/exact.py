"""Exact denoisers: closed-form posterior means E[x0 | x0 + sigma * eps = x] for known data sets.

Both lab data sets are isotropic Gaussian mixtures  p(x0) = 1/K sum_k N(mu_k, s^2 I):
  * "gmm":    K random means drawn from N(0, I) in latent space;
  * "shapes": K procedurally drawn images (gradient background plus discs and boxes) in [-1, 1],
              so samples can be looked at.
For x = x0 + sigma * eps the posterior mean is
  D(x; sigma) = s^2/(s^2+sigma^2) x + sigma^2/(s^2+sigma^2) sum_k w_k(x) mu_k,
  w_k = softmax_k( -|x - mu_k|^2 / (2 (s^2 + sigma^2)) ).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

DATASETS = ("gmm", "shapes")


@dataclass(frozen=True)
class MixtureSpec:
    dataset: str = "shapes"
    components: int = 16
    spread: float = 0.05
    seed: int = 0

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if int(self.components) < 1:
            raise ValueError(f"components must be >= 1, got {self.components}")
        if not (math.isfinite(self.spread) and self.spread > 0):
            raise ValueError(f"spread must be a finite number > 0, got {self.spread}")


def _shape_images(k: int, channels: int, height: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """K images of gradients, discs and boxes, values in [-1, 1]; channel 3+ hold luminance."""
    yy = torch.linspace(-1, 1, height, dtype=torch.float64).view(height, 1).expand(height, width)
    xx = torch.linspace(-1, 1, width, dtype=torch.float64).view(1, width).expand(height, width)
    out = torch.empty(k, max(channels, 3), height, width, dtype=torch.float64)

    def rnd(*shape):
        return torch.rand(shape, generator=gen, dtype=torch.float64)

    for i in range(k):
        angle = rnd(1).item() * 2 * math.pi
        ramp = ((math.cos(angle) * xx + math.sin(angle) * yy) * 0.5 + 0.5).clamp(0, 1)
        c0, c1 = rnd(3) * 2 - 1, rnd(3) * 2 - 1
        img = c0.view(3, 1, 1) * (1 - ramp) + c1.view(3, 1, 1) * ramp
        for _ in range(1 + int(rnd(1).item() * 3)):
            colour = (rnd(3) * 2 - 1).view(3, 1, 1)
            cx, cy = rnd(2) * 1.4 - 0.7
            size = 0.15 + 0.35 * rnd(1).item()
            if rnd(1).item() < 0.5:
                mask = ((xx - cx) ** 2 + (yy - cy) ** 2) <= size ** 2
            else:
                mask = ((xx - cx).abs() <= size) & ((yy - cy).abs() <= size * (0.5 + rnd(1).item()))
            img = torch.where(mask, colour.expand_as(img), img)
        out[i, :3] = img
        if channels > 3:
            out[i, 3:] = img.mean(0, keepdim=True)
    return out[:, :channels]


def mixture_means(spec: MixtureSpec, shape: tuple[int, int, int]) -> torch.Tensor:
    """Means (K, C, H, W) in float64 on the CPU, reproducible from the spec and latent shape."""
    c, h, w = (int(v) for v in shape)
    gen = torch.Generator().manual_seed(int(spec.seed))
    if spec.dataset == "gmm":
        return torch.randn((spec.components, c, h, w), generator=gen, dtype=torch.float64)
    return _shape_images(spec.components, c, h, w, gen)


@dataclass
class ExactDenoiser:
    """D(x; sigma) for a MixtureSpec, any latent shape (means are built per shape and cached)."""

    spec: MixtureSpec
    _cache: dict = field(default_factory=dict, repr=False)

    def means(self, shape, device, dtype=torch.float64) -> torch.Tensor:
        key = (tuple(shape), str(device), dtype)
        if key not in self._cache:
            self._cache[key] = mixture_means(self.spec, tuple(shape)).to(device=device, dtype=dtype)
        return self._cache[key]

    def posterior_weights(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Responsibilities w (B, K), computed in float64."""
        xd = x.to(torch.float64)
        mu = self.means(x.shape[1:], x.device).flatten(1)
        var = self.spec.spread ** 2 + _per_sample(sigma, x).to(torch.float64) ** 2
        flat = xd.flatten(1)
        d2 = (flat * flat).sum(1, keepdim=True) - 2 * flat @ mu.T + (mu * mu).sum(1)[None]
        return torch.softmax(-d2 / (2 * var.view(-1, 1)), dim=1)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sig = _per_sample(sigma, x).to(torch.float64)
        if not torch.isfinite(sig).all() or (sig < 0).any():
            raise ValueError(f"sigma must be finite and >= 0, got {sig.tolist()}")
        w = self.posterior_weights(x, sig)
        mu = self.means(x.shape[1:], x.device).flatten(1)
        s2 = self.spec.spread ** 2
        var = (s2 + sig ** 2).view(-1, 1)
        mean = (s2 / var) * x.to(torch.float64).flatten(1) + (sig.view(-1, 1) ** 2 / var) * (w @ mu)
        return mean.view(x.shape).to(x.dtype)


def _per_sample(sigma, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(sigma):
        sigma = torch.tensor(sigma, dtype=torch.float64)  # python floats keep full precision
    sig = sigma.to(x.device)
    if sig.ndim == 0:
        sig = sig.expand(x.shape[0])
    return sig.reshape(x.shape[0])
