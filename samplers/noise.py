"""Seeded noise for stochastic samplers, in ComfyUI's noise-sampler convention: a callable
(sigma, sigma_next) -> N(0, I) tensor shaped like x, seeded from extra_args["seed"], replaceable
through the solver's `noise_sampler` option.

Unlike ComfyUI's default_noise_sampler (one generator for the whole batch), every batch member
gets its own CPU generator seeded from (seed, member index): a member's noise, and so its image,
does not change with the batch size, and CPU and GPU runs draw the same numbers."""
from __future__ import annotations

import torch

_MASK = (1 << 64) - 1


def member_seed(seed: int, member: int) -> int:
    """A 64-bit seed for batch member `member` (splitmix64 of the pair)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + (int(member) + 1) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def default_noise_sampler(x: torch.Tensor, seed=None):
    """Per-member seeded N(0, I) draws shaped like x (drawn in float32 on the CPU, then moved to
    x's device and dtype). seed=None means seed 0: FewStep never draws unseeded noise."""
    seed = 0 if seed is None else int(seed)
    generators = [torch.Generator(device="cpu").manual_seed(member_seed(seed, k)) for k in range(x.shape[0])]
    shape = tuple(x.shape[1:])

    def sample(sigma=None, sigma_next=None):
        draws = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
        return torch.stack(draws).to(device=x.device, dtype=x.dtype)

    return sample
