"""DEIS (Zhang & Chen 2022, "Fast sampling of diffusion models with exponential integrator").

In k-diffusion variables (x = x0 + sigma * eps, rho = sigma) the probability-flow ODE is
dx/dsigma = eps(x, sigma) with eps = (x - D)/sigma, so an exponential integrator is exactly
x_next = x + int_{sigma_i}^{sigma_next} eps dsigma, and the DEIS variants differ in how they
approximate eps over the step:

* tAB (orders 1-3): eps is extrapolated by the Lagrange polynomial through the last k evaluations
  *in the time t of the continuous VP-SDE* with linear beta(t) = beta_min + beta_d t
  (beta_min = 0.1, beta_d = 19.9, the VP constants of score-SDE / EDM / ComfyUI's deis), i.e.
  sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1); the weights int l_j(t(sigma)) dsigma are
  integrated numerically (Gauss-Legendre in sigma, where the integrand is smooth down to sigma = 0).
* rhoAB (orders 1-3): the same with the polynomial in rho = sigma itself: variable-step
  Adams-Bashforth on dx/dsigma (the weights are those of k-diffusion's LMS).
* rhoRK: classical explicit Runge-Kutta on dx/dsigma: euler, heun (2), kutta (3), rk4 (4). A step
  that ends at sigma = 0 is an Euler step (the slope is undefined at sigma = 0).

Order 1 of either AB variant is DDIM = Euler in sigma space. Multistep orders warm up from 1; with
lower_order_final the last steps drop to orders 2, 1 (dpm-solver convention). As in every FewStep
solver, a move to sigma = 0 is first order and returns the denoised estimate; a schedule that ends
at sigma > 0 (F-scheduler) keeps the full order on its last move.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from .constants import AB_ORDERS, RK_METHODS  # noqa: F401  (re-exported)
from .common import Stepper, guided_point, solver_entry, step_order, steps, to_d
from .validation import (check_choice, check_multistep_length, check_order, check_positive,
                         check_sigmas)

_QUAD_POINTS = 24

# Butcher tableaux (c, a, b) for dx/dsigma.
_TABLEAUX = {
    "euler": ((0.0,), ((),), (1.0,)),
    "heun": ((0.0, 1.0), ((), (1.0,)), (0.5, 0.5)),
    "kutta": ((0.0, 0.5, 1.0), ((), (0.5,), (-1.0, 2.0)), (1 / 6, 2 / 3, 1 / 6)),
    "rk4": ((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}


@lru_cache(maxsize=4)
def _gauss_legendre(n: int):
    """Nodes and weights on [-1, 1] (Golub-Welsch), float64 lists."""
    k = torch.arange(1, n, dtype=torch.float64)
    off = k / torch.sqrt(4 * k * k - 1)
    jac = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vecs = torch.linalg.eigh(jac)
    weights = 2 * vecs[0] ** 2
    return nodes.tolist(), weights.tolist()


def vp_time(sigma: float, beta_min: float = 0.1, beta_d: float = 19.9) -> float:
    """t of the linear VP-SDE with sigma(t)^2 = exp(beta_d t^2/2 + beta_min t) - 1 (t(0) = 0)."""
    log_term = math.log1p(sigma * sigma)
    return 2 * log_term / (beta_min + math.sqrt(beta_min * beta_min + 2 * beta_d * log_term))


def lagrange_weights(nodes, sigma_from: float, sigma_to: float, time_fn=None):
    """w_j = int_{sigma_from}^{sigma_to} l_j(tau(sigma)) dsigma for the Lagrange basis l_j over
    `nodes` (given in the tau variable; tau = time_fn(sigma), identity when None)."""
    xs, ws = _gauss_legendre(_QUAD_POINTS)
    half, mid = (sigma_to - sigma_from) / 2, (sigma_to + sigma_from) / 2
    out = [0.0] * len(nodes)
    for xq, wq in zip(xs, ws):
        sig = mid + half * xq
        tau = sig if time_fn is None else time_fn(sig)
        for j, tj in enumerate(nodes):
            basis = 1.0
            for m, tm in enumerate(nodes):
                if m != j:
                    basis *= (tau - tm) / (tj - tm)
            out[j] += wq * half * basis
    return out


def _sample_ab(model, x, sigmas, extra_args, callback, disable, order, lower_order_final,
               allow_short_schedule, time_fn, name, cfg_pp=None):
    check_sigmas(sigmas)
    order = check_order(order, AB_ORDERS, family=name)
    check_multistep_length(sigmas, order, allow_short_schedule, solver=name)
    run = Stepper(model, x, sigmas, extra_args, callback)
    s = run.s
    n = len(s) - 1
    history = []  # (tau, eps), newest last
    for i in steps(n, disable):
        denoised = run.denoise(x, sigmas[i])
        run.report(i, x, denoised)
        x, _ = guided_point(x, denoised, cfg_pp)  # CFG++: eps below is the unconditional noise
        eps = to_d(x, s[i], denoised)
        tau = s[i] if time_fn is None else time_fn(s[i])
        history = (history + [(tau, eps)])[-order:]
        if s[i + 1] == 0:  # the move to 0 is first order: it lands on the denoised estimate
            x = denoised
            continue
        k = min(step_order(order, i, n, lower_order_final), len(history))
        used = history[-k:]
        weights = lagrange_weights([t for t, _ in used], s[i], s[i + 1], time_fn)
        for w, (_, e) in zip(weights, used):
            x = x + w * e
    return x


@solver_entry
def sample_deis_tab(model, x, sigmas, extra_args=None, callback=None, disable=None, order=3,
                    lower_order_final=False, allow_short_schedule=False, beta_min=0.1, beta_d=19.9,
                    cfg_pp=None):
    """DEIS tAB: eps extrapolated by a polynomial in VP-SDE time t (see module docstring),
    integrated exactly in sigma. Order 1 = DDIM = Euler. 1 NFE/step. cfg_pp (common.guided_point):
    every eps in the extrapolation is unconditional, the step starts from x~."""
    beta_min = check_positive(beta_min, "beta_min")
    beta_d = check_positive(beta_d, "beta_d")

    def time_fn(sig):
        return vp_time(sig, beta_min, beta_d)

    return _sample_ab(model, x, sigmas, extra_args, callback, disable, order, lower_order_final,
                      allow_short_schedule, time_fn, "DEIS tAB", cfg_pp)


@solver_entry
def sample_deis_rhoab(model, x, sigmas, extra_args=None, callback=None, disable=None, order=3,
                      lower_order_final=False, allow_short_schedule=False, cfg_pp=None):
    """DEIS rhoAB: variable-step Adams-Bashforth in rho = sigma on dx/dsigma = eps. Order 1 = Euler.
    1 NFE/step."""
    return _sample_ab(model, x, sigmas, extra_args, callback, disable, order, lower_order_final,
                      allow_short_schedule, None, "DEIS rhoAB", cfg_pp)


@solver_entry
def sample_deis_rhork(model, x, sigmas, extra_args=None, callback=None, disable=None, method="kutta"):
    """DEIS rhoRK: explicit Runge-Kutta in sigma (euler 1, heun 2, kutta 3, rk4 4 NFE/step; the step
    to sigma = 0 is an Euler step). rhoRK-heun is Heun's method (EDM Algorithm 1)."""
    check_sigmas(sigmas)
    method = check_choice(method, RK_METHODS, "method")
    c, a, b = _TABLEAUX[method]
    run = Stepper(model, x, sigmas, extra_args, callback)
    s = run.s
    for i in steps(len(s) - 1, disable):
        denoised = run.denoise(x, sigmas[i])
        run.report(i, x, denoised)
        h = s[i + 1] - s[i]
        k = [to_d(x, s[i], denoised)]
        if s[i + 1] == 0:
            x = x + h * k[0]
            continue
        for stage in range(1, len(c)):
            xs = x
            for coef, ks in zip(a[stage], k):
                if coef:
                    xs = xs + (h * coef) * ks
            sig = s[i] + c[stage] * h
            k.append(to_d(xs, sig, run.denoise(xs, sig)))
        for coef, ks in zip(b, k):
            x = x + (h * coef) * ks
    return x
