"""FreeU's backbone scaling of the decoder features h [B, C, H, W] (first C//2 channels).

v1 multiplies them by b. v2 ("structure-aware") multiplies them by 1 + (b - 1) * m, where m is the
channel-mean map of h min-max normalised per sample to [0, 1], so b acts fully where the mean
activation is highest and not at all where it is lowest. Both scale h in place (the UNet drops h
right after) and evaluate in the same order and dtype as the published formula, so results are
bit-identical to it in fp32, fp16 and bf16."""
from __future__ import annotations

import torch

VERSIONS = ("v1", "v2")


def structure_map(h: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max normalised channel mean [B, 1, H, W], in h's dtype. A constant map
    (max == min) gives 0 instead of 0/0, i.e. no scaling rather than NaN."""
    mean = h.mean(1, keepdim=True)
    flat = mean.reshape(mean.shape[0], -1)
    lo, hi = torch.aminmax(flat, dim=-1)
    lo, hi = lo.reshape(-1, 1, 1, 1), hi.reshape(-1, 1, 1, 1)
    span = hi - lo
    span = torch.where(span == 0, torch.ones_like(span), span)
    return (mean - lo) / span


def scale_backbone(h: torch.Tensor, b: float, version: str = "v1") -> torch.Tensor:
    """Scales the first half of h's channels in place and returns h."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    half = h.shape[1] // 2
    if version == "v1":
        h[:, :half].mul_(b)
    else:
        h[:, :half].mul_((b - 1) * structure_map(h) + 1)
    return h
