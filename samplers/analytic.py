"""Analytic test problem for solver accuracy: data x0 ~ N(0, c^2 I).

Its exact denoiser is D(x; sigma) = c^2 x / (c^2 + sigma^2) and the probability-flow ODE
dx/dsigma = (x - D)/sigma = sigma x / (c^2 + sigma^2) has the exact solution
x(sigma) = x(sigma_T) * sqrt((c^2 + sigma^2) / (c^2 + sigma_T^2)),
so the error of a solver is known exactly, with no reference run."""
from __future__ import annotations

import math

import torch


class GaussianDenoiser:
    """D(x; sigma) for N(0, c^2 I) data; counts its calls."""

    def __init__(self, c: float = 0.5):
        self.c = float(c)
        self.calls = 0

    def __call__(self, x, sigma, **_):
        self.calls += 1
        sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))
        return x * (self.c ** 2 / (self.c ** 2 + sig ** 2))

    def exact(self, x_start, sigma_start: float, sigma_end: float):
        c2 = self.c ** 2
        return x_start * math.sqrt((c2 + sigma_end ** 2) / (c2 + sigma_start ** 2))


def fit_order(steps, errors) -> float:
    """Least-squares slope of -log(error) against log(steps): the observed convergence order."""
    xs = [math.log(n) for n in steps]
    ys = [-math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
