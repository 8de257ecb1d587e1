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


ORDER_STEPS = (16, 32, 64, 128, 256)


def _karras_no_zero(n, sigma_min, sigma_max, rho):
    from .schedules import karras_sigmas
    return karras_sigmas(n, sigma_min, sigma_max, rho=rho, append_zero=False, dtype=torch.float64)


def gaussian_order(solver, steps=ORDER_STEPS, c=0.5, sigma_max=14.6146, sigma_min=0.0292, rho=7.0, seed=0):
    """Observed order of `solver` (k-diffusion signature) on N(0, c^2) data over Karras grids of
    `steps` moves from sigma_max to sigma_min (no trailing 0), against the exact ODE solution.
    Returns (order, errors) with errors = max abs error per step count, in float64."""
    den = GaussianDenoiser(c)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * sigma_max
    exact = den.exact(x, sigma_max, sigma_min)
    errors = []
    for n in steps:
        out = solver(den, x, _karras_no_zero(n, sigma_min, sigma_max, rho), disable=True)
        errors.append((out - exact).abs().max().item())
    return fit_order(steps, errors), errors


def mixture_order(solver, steps=(16, 32, 64, 128), sigma_max=14.6146, sigma_min=0.0292, rho=7.0,
                  reference_steps=1024, seed=0):
    """Observed order on a nonlinear problem: the lab's exact denoiser of a 4-component Gaussian
    mixture (spread 0.5) in 16 dimensions; reference = RK4 with `reference_steps` moves."""
    from .deis import sample_deis_rhork
    from .exact import ExactDenoiser, MixtureSpec
    den = ExactDenoiser(MixtureSpec("gmm", components=4, spread=0.5, seed=1))
    x = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * sigma_max
    reference = sample_deis_rhork(den, x, _karras_no_zero(reference_steps, sigma_min, sigma_max, rho),
                                  disable=True, method="rk4")
    errors = []
    for n in steps:
        out = solver(den, x, _karras_no_zero(n, sigma_min, sigma_max, rho), disable=True)
        errors.append((out - reference).abs().max().item())
    return fit_order(steps, errors), errors
