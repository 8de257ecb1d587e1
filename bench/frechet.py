"""Fréchet distance of samples to a Gaussian known by its moments (the ground-truth studies' score),
and the same distance extrapolated to infinitely many samples.

The distance from n samples is biased upwards by about b / n: the sample covariance is noisy and the
matrix square root turns its noise into a positive offset (the "floor" that exact samples of the
target itself score). The offset is nearly the same for every method scored on the same n, so it
pulls every ratio between methods towards 1. `frechet_infinite` removes it: it scores random
subsets of m = n/4 … n samples, fits FD(m) = FD_inf + b / m by least squares and returns FD_inf,
the estimate of the distance itself (Chong & Forsyth, "Effectively unbiased FID and Inception Score
and where to find them", CVPR 2020, do the same for FID)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GaussianTarget:
    """The target's mean, the square root of its covariance and that covariance's trace (float64)."""
    mean: torch.Tensor
    cov_root: torch.Tensor
    cov_trace: float

    @classmethod
    def of(cls, mean: torch.Tensor, cov: torch.Tensor) -> "GaussianTarget":
        if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
            raise ValueError(f"cov: expected ({mean.shape[0]}, {mean.shape[0]}) for a mean of {tuple(mean.shape)}, "
                             f"got {tuple(cov.shape)}")
        ev, evec = torch.linalg.eigh(cov.double())
        root = evec @ torch.diag(ev.clamp(min=0).sqrt()) @ evec.T
        return cls(mean.double(), root, float(torch.trace(cov.double())))


def frechet(x: torch.Tensor, target: GaussianTarget) -> float:
    """Fréchet distance between the Gaussian fit of samples x (n, d) and the target."""
    x = x.double()
    return frechet_of_moments(x.mean(0), torch.cov(x.T), target)


def frechet_of_moments(mean: torch.Tensor, cov: torch.Tensor, target: GaussianTarget) -> float:
    """Fréchet distance between the Gaussian with this mean and covariance and the target."""
    mean, cov = mean.double(), cov.double()
    inner = torch.linalg.eigvalsh(target.cov_root @ cov @ target.cov_root).clamp(min=0).sqrt().sum()
    return float((mean - target.mean).pow(2).sum() + torch.trace(cov) + target.cov_trace - 2 * inner)


def mixture_moments(means: torch.Tensor, weights: torch.Tensor, spread: float) -> tuple:
    """(mean, covariance) of the mixture sum_k w_k N(mu_k, spread^2 I), float64."""
    means, weights = means.double(), weights.double()
    mean = weights @ means
    dev = means - mean
    return mean, spread ** 2 * torch.eye(means.shape[1], dtype=torch.float64) + dev.T @ (weights[:, None] * dev)


FRACTIONS = (1 / 4, 1 / 3, 1 / 2, 2 / 3, 1.0)


def frechet_infinite(x: torch.Tensor, target: GaussianTarget, fractions=FRACTIONS, repeats: int = 4,
                     seed: int = 0) -> float:
    """FD_inf: the intercept of FD(m) against 1/m over subsets of m = fraction · n samples (each
    fraction below 1 averaged over `repeats` random subsets; the whole set once)."""
    n = x.shape[0]
    sizes = sorted({max(2, round(f * n)) for f in fractions})
    if len(sizes) < 2:
        raise ValueError(f"fractions: need two distinct subset sizes of {n} samples, got {fractions}")
    gen = torch.Generator().manual_seed(seed)
    inv, fd = [], []
    for m in sizes:
        for _ in range(1 if m == n else repeats):
            idx = torch.randperm(n, generator=gen)[:m]
            inv.append(1.0 / m)
            fd.append(frechet(x[idx], target))
    a = torch.tensor([[1.0, v] for v in inv], dtype=torch.float64)
    coef = torch.linalg.lstsq(a, torch.tensor(fd, dtype=torch.float64).unsqueeze(1)).solution
    return float(coef[0, 0])


def fold_ratios(reference: torch.Tensor, x: torch.Tensor, target: GaussianTarget, folds: int = 4) -> list:
    """FD_inf(x) / FD_inf(reference) on each of `folds` disjoint blocks of rows, the same rows of both:
    row i of x and of reference must come from the same noise (two samplers, one seed). The blocks are
    independent sample sets of n / folds, so their spread is the paired ratio's own, from one run;
    the whole set's ratio has a standard error of about their standard deviation / sqrt(folds)."""
    if reference.shape != x.shape:
        raise ValueError(f"x: expected the reference's shape {tuple(reference.shape)} (paired rows), got {tuple(x.shape)}")
    size = x.shape[0] // int(folds)
    if folds < 2 or size < 8:
        raise ValueError(f"folds: need at least 2 blocks of 8 rows from {x.shape[0]} rows, got {folds}")
    blocks = [slice(i * size, (i + 1) * size) for i in range(int(folds))]
    return [frechet_infinite(x[b], target) / frechet_infinite(reference[b], target) for b in blocks]
