"""A class-conditional exact-denoiser lab for classifier-free guidance.

Data: an isotropic Gaussian mixture p(x0) = 1/K sum_k N(mu_k, s^2 I) (samplers/exact.py's means).
The condition c selects a subset S of the components: p(x0 | c) = 1/|S| sum_{k in S} N(mu_k, s^2 I).
Both posterior means are exact for x = x0 + sigma * eps:
    D(x; sigma) = s^2/(s^2+sigma^2) x + sigma^2/(s^2+sigma^2) sum_k w_k(x) mu_k,
    w = softmax over the allowed components of -|x - mu_k|^2 / (2 (s^2 + sigma^2)),
so D_cond uses k in S and D_uncond all k. Guidance combines them as ComfyUI does,
D_cfg = D_u + w (D_c - D_u), only for sigma inside the window (else D_c, and no D_u is computed).

Measures of a batch of samples (each counted against the nearest mixture mean):
  on_modes  share of samples whose nearest mean is in S and that lie within `radius` of it;
  evenness  normalised entropy of the on-mode samples' counts over S (1 = all S modes equally hit);
  distance  RMS distance per dimension to a reference end point (the exact guided ODE's)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from freeu.window import SigmaWindow
from samplers.exact import MixtureSpec, mixture_means

ALWAYS = SigmaWindow(high=math.inf, low=0.0)


@dataclass(frozen=True)
class ClassLab:
    """A mixture spec, the conditional subset size and the latent shape."""
    spec: MixtureSpec
    subset: int = 4
    shape: tuple = (4, 4, 4)

    def __post_init__(self):
        if not 1 <= int(self.subset) < self.spec.components:
            raise ValueError(f"subset must be in [1, components), got {self.subset}")

    def means(self) -> torch.Tensor:
        return mixture_means(self.spec, self.shape).flatten(1)  # (K, D) float64

    def subset_mask(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(int(self.spec.seed) + 7919)
        idx = torch.randperm(self.spec.components, generator=gen)[: self.subset]
        mask = torch.zeros(self.spec.components, dtype=torch.bool)
        mask[idx] = True
        return mask


def mixture_denoiser(means, spread, x, sigma, allowed=None):
    """Exact posterior mean (float64) of x = x0 + sigma eps for the mixture restricted to `allowed`."""
    flat = x.to(torch.float64).flatten(1)
    sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
    if sig.numel() == 1:
        sig = sig.expand(flat.shape[0])
    var = spread ** 2 + sig ** 2
    d2 = (flat * flat).sum(1, keepdim=True) - 2 * flat @ means.T + (means * means).sum(1)[None]
    logits = -d2 / (2 * var.view(-1, 1))
    if allowed is not None:
        logits = logits.masked_fill(~allowed.view(1, -1), -math.inf)
    w = torch.softmax(logits, dim=1)
    out = (spread ** 2 / var).view(-1, 1) * flat + (sig ** 2 / var).view(-1, 1) * (w @ means)
    return out.view(x.shape).to(x.dtype)


class GuidedLabModel:
    """k-diffusion model D(x, sigma) with CFG at `scale` inside `window` and the conditional
    prediction outside it. Counts evaluated rows per sample (1 or 2 per call) and keeps the latest
    unconditional estimate for CFG++ (the conditional one outside the window)."""

    def __init__(self, lab: ClassLab, scale: float, window: SigmaWindow = ALWAYS):
        self.means = lab.means()
        self.spread = lab.spec.spread
        self.mask = lab.subset_mask()
        self.scale = float(scale)
        self.window = window
        self.rows = 0
        self.calls = 0
        self.uncond = None

    def __call__(self, x, sigma, **_):
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        cond = mixture_denoiser(self.means, self.spread, x, sigma, self.mask)
        self.calls += 1
        if self.scale == 1.0 or not self.window.contains(s):
            self.rows += 1
            self.uncond = cond
            return cond
        self.rows += 2
        uncond = mixture_denoiser(self.means, self.spread, x, sigma)
        self.uncond = uncond
        return uncond + (cond - uncond) * self.scale

    def latest_uncond(self):
        return self.uncond


def nearest(means, x):
    flat = x.to(torch.float64).flatten(1)
    d2 = (flat * flat).sum(1, keepdim=True) - 2 * flat @ means.T + (means * means).sum(1)[None]
    dist, idx = d2.clamp_min(0).min(dim=1)
    return idx, dist.sqrt()


def measures(lab: ClassLab, x, reference=None, radius_factor=3.0) -> dict:
    """on_modes, evenness and (with a reference) distance; radius = spread * (sqrt(D) + factor)."""
    means, mask = lab.means(), lab.subset_mask()
    dim = means.shape[1]
    idx, dist = nearest(means, x)
    radius = lab.spec.spread * (math.sqrt(dim) + radius_factor)
    on = mask[idx] & (dist <= radius)
    counts = torch.bincount(idx[on], minlength=means.shape[0])[mask].to(torch.float64)
    total = float(counts.sum())
    if total > 0 and mask.sum() > 1:
        p = counts / total
        ent = -(p[p > 0] * p[p > 0].log()).sum()
        evenness = float(ent / math.log(int(mask.sum())))
    else:
        evenness = 0.0
    out = {"on_modes": float(on.to(torch.float64).mean()), "evenness": evenness}
    if reference is not None:
        diff = (x.to(torch.float64) - reference.to(torch.float64)).flatten(1)
        out["distance"] = float((diff.pow(2).mean(1)).sqrt().median())
    return out
