"""DPM-Solver++ (Lu et al. 2022), data-prediction form, in sigma space.

With lambda = -log sigma the probability-flow ODE dx/dsigma = (x - D)/sigma reads dx/dlambda = D - x,
whose exact solution over a step of size h = lambda_next - lambda is
    x_next = e^{-h} x + int_0^h e^{-(h - tau)} D(lambda + tau) dtau
           = e^{-h} x + h phi_1(-h) D + h^2 phi_2(-h) D' + h^3 phi_3(-h) D'' + ...
(phi_k the exponential-integrator functions, derivatives in lambda). The solvers truncate this series
and estimate the derivatives from extra evaluations (2S) or previous steps (2M, 3M).

A step that ends at sigma = 0 (lambda = inf) is always first order and returns the denoised estimate;
a schedule may instead end at a sigma > 0 (F-scheduler), where every step is an ordinary move.
"""
from __future__ import annotations

import math

from .common import Stepper, guided_point, solver_entry, step_order, steps
from .validation import check_multistep_length, check_range, check_sigmas


def _first_order(x, denoised, sigma, sigma_next):
    """x_next = e^{-h} x + (1 - e^{-h}) D, with e^{-h} = sigma_next / sigma (exact for D constant)."""
    ratio = sigma_next / sigma
    return ratio * x + (1 - ratio) * denoised


@solver_entry
def sample_dpmpp_1s(model, x, sigmas, extra_args=None, callback=None, disable=None, cfg_pp=None):
    """DPM-Solver++ first order (= DDIM; algebraically an Euler step in sigma space). 1 NFE/step.
    cfg_pp: see common.guided_point (CFG++ DDIM: x_next = D_cfg + sigma_next * eps_u)."""
    check_sigmas(sigmas)
    run = Stepper(model, x, sigmas, extra_args, callback)
    s = run.s
    for i in steps(len(s) - 1, disable):
        denoised = run.denoise(x, sigmas[i])
        run.report(i, x, denoised)
        x, _ = guided_point(x, denoised, cfg_pp)
        x = denoised if s[i + 1] == 0 else _first_order(x, denoised, s[i], s[i + 1])
    return x


@solver_entry
def sample_dpmpp_2s(model, x, sigmas, extra_args=None, callback=None, disable=None, r=0.5):
    """DPM-Solver++(2S), single-step second order with intermediate point lambda + r h
    (0 < r <= 1; r = 1/2 is the midpoint in lambda). 2 NFE per step, 1 on a step to sigma = 0."""
    check_sigmas(sigmas)
    r = check_range(r, "r", 0.0, 1.0, low_open=True)
    run = Stepper(model, x, sigmas, extra_args, callback)
    s = run.s
    for i in steps(len(s) - 1, disable):
        denoised = run.denoise(x, sigmas[i])
        run.report(i, x, denoised)
        if s[i + 1] == 0:
            x = denoised
            continue
        h = math.log(s[i] / s[i + 1])
        sigma_mid = s[i] * math.exp(-r * h)
        u = _first_order(x, denoised, s[i], sigma_mid)
        denoised_mid = run.denoise(u, sigma_mid)
        mixed = (1 - 1 / (2 * r)) * denoised + (1 / (2 * r)) * denoised_mid
        x = _first_order(x, mixed, s[i], s[i + 1])
    return x


@solver_entry
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None,
                    lower_order_final=False, allow_short_schedule=False, cfg_pp=None):
    """DPM-Solver++(2M), multistep second order (the paper's Algorithm 2, as in k-diffusion):
    D_eff = (1 + 1/(2 r)) D_i - 1/(2 r) D_{i-1}, r = h_{i-1} / h_i. The first step and a step to
    sigma = 0 are first order; with lower_order_final so is the last step when it ends at sigma > 0.
    With the defaults this is ComfyUI's dpmpp_2m on any schedule. 1 NFE/step.
    cfg_pp (common.guided_point): D_{i-1} is the previous *unconditional* estimate; with the
    defaults this is ComfyUI's dpmpp_2m_cfg_pp."""
    check_sigmas(sigmas)
    check_multistep_length(sigmas, 2, allow_short_schedule, solver="DPM++ 2M")
    run = Stepper(model, x, sigmas, extra_args, callback)
    s = run.s
    n = len(s) - 1
    old = None
    for i in steps(n, disable):
        denoised = run.denoise(x, sigmas[i])
        run.report(i, x, denoised)
        x, uncond = guided_point(x, denoised, cfg_pp)
        if s[i + 1] == 0:
            x = denoised
        elif old is None or step_order(2, i, n, lower_order_final) == 1:
            x = _first_order(x, denoised, s[i], s[i + 1])
        else:
            h = math.log(s[i] / s[i + 1])
            r = math.log(s[i - 1] / s[i]) / h
            x = _first_order(x, (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old, s[i], s[i + 1])
        old = uncond
    return x


def _taylor_step(x, derivs, sigma, sigma_next):
    """Exponential-integrator step from the Taylor terms [D, D', D''] (lambda derivatives)."""
    h = math.log(sigma / sigma_next)
    em = -math.expm1(-h)                  # 1 - e^{-h} = h phi_1(-h)
    coeffs = [em, h - em, h * h / 2 - h + em]  # h phi_1, h^2 phi_2, h^3 phi_3 at -h
    out = (sigma_next / sigma) * x
    for c, d in zip(coeffs, derivs):
        out = out + c * d
    return out


@solver_entry
def sample_dpmpp_3m(model, x, sigmas, extra_args=None, callback=None, disable=None,
                    lower_order_final=False, allow_short_schedule=False, cfg_pp=None):
    """DPM-Solver++(3M), multistep third order: D' and D'' (in lambda) come from the quadratic
    through the last three denoised estimates and enter with the exact phi_2, phi_3 weights.
    Warm-up: order 1, then 2; with lower_order_final the last two steps use orders 2 and 1.
    1 NFE/step. cfg_pp (common.guided_point): the two earlier estimates are unconditional."""
    check_sigmas(sigmas)
    check_multistep_length(sigmas, 3, allow_short_schedule, solver="DPM++ 3M")
    run = Stepper(model, x, sigmas, extra_args, callback)
    s = run.s
    n = len(s) - 1
    history = []  # (lambda, denoised), newest last
    for i in steps(n, disable):
        denoised = run.denoise(x, sigmas[i])
        run.report(i, x, denoised)
        x, uncond = guided_point(x, denoised, cfg_pp)
        lam = -math.log(s[i])
        history = (history + [(lam, denoised)])[-3:]
        if s[i + 1] == 0:
            x = denoised
        else:
            order = min(step_order(3, i, n, lower_order_final), len(history))
            x = _step_3m(x, history, order, s[i], s[i + 1])
        history[-1] = (lam, uncond)
    return x


def _step_3m(x, history, order, sigma, sigma_next):
    denoised = history[-1][1]
    if order == 1:
        return _first_order(x, denoised, sigma, sigma_next)
    (l0, d0), (l1, d1) = history[-1], history[-2]
    h0 = l0 - l1
    slope = (d0 - d1) / h0
    if order == 2:
        return _taylor_step(x, [denoised, slope], sigma, sigma_next)
    l2, d2 = history[-3]
    h1 = l1 - l2
    curv = (slope - (d1 - d2) / h1) / (h0 + h1)  # second divided difference
    return _taylor_step(x, [denoised, slope + h0 * curv, 2 * curv], sigma, sigma_next)


def _psi2(z):
    """int_0^z e^{tau - z} tau dtau = z - 1 + e^{-z} (= z^2 phi_2(-z)), cancellation-free."""
    return z + math.expm1(-z)


@solver_entry
def sample_dpmpp_3s(model, x, sigmas, extra_args=None, callback=None, disable=None, r1=1 / 3, r2=2 / 3,
                    last_order=3):
    """DPM-Solver++(3S) (Lu et al. 2022b, data prediction), single-step third order. Each step
    s -> t (h = lambda_t - lambda_s) evaluates D at s, at lambda_s + r1 h and at lambda_s + r2 h:
        u1 = e^{-r1 h} x + (1 - e^{-r1 h}) D_s
        u2 = e^{-r2 h} x + (1 - e^{-r2 h}) D_s + psi2(r2 h) / (r1 h) (D(u1) - D_s)
        x_t = e^{-h} x + (1 - e^{-h}) D_s + psi2(h) / (r2 h) (D(u2) - D_s),   psi2(z) = z - 1 + e^{-z},
    i.e. D is integrated exactly against e^{tau - h} with a linear model whose slope comes from the
    intermediate points; r2 = 2/3 cancels the h^3 term left by the missing curvature (third order).
    last_order (1, 2 or 3): the order of the last step that ends at sigma > 0 before a final 0
    (2 = DPM-Solver++(2S) with r = 1/2, 1 = DDIM), as DPM-Solver's "fast" order pattern 3, .., 3, 2,
    1 does. 3 NFE per step, 1 on a step to sigma = 0 (the denoised estimate)."""
    check_sigmas(sigmas)
    r1 = check_range(r1, "r1", 0.0, 1.0, low_open=True, high_open=True)
    r2 = check_range(r2, "r2", 0.0, 1.0, low_open=True)
    if not r1 < r2:
        raise ValueError(f"r1 ({r1}) must be smaller than r2 ({r2})")
    if last_order not in (1, 2, 3):
        raise ValueError(f"last_order must be 1, 2 or 3, got {last_order!r}")
    run = Stepper(model, x, sigmas, extra_args, callback)
    s = run.s
    n = len(s) - 1
    last = n - 2 if s[-1] == 0 else n - 1  # the last step that ends at sigma > 0
    for i in steps(n, disable):
        denoised = run.denoise(x, sigmas[i])
        run.report(i, x, denoised)
        if s[i + 1] == 0:
            x = denoised
            continue
        order = last_order if i == last else 3
        if order == 1:
            x = _first_order(x, denoised, s[i], s[i + 1])
            continue
        h = math.log(s[i] / s[i + 1])
        if order == 2:
            sigma_mid = s[i] * math.exp(-h / 2)
            d_mid = run.denoise(_first_order(x, denoised, s[i], sigma_mid), sigma_mid)
            x = _first_order(x, d_mid, s[i], s[i + 1])  # (1 - 1/(2r)) D_s + 1/(2r) D_mid at r = 1/2
            continue
        sigma1, sigma2 = s[i] * math.exp(-r1 * h), s[i] * math.exp(-r2 * h)
        d1 = run.denoise(_first_order(x, denoised, s[i], sigma1), sigma1)
        u2 = _first_order(x, denoised, s[i], sigma2) + (_psi2(r2 * h) / (r1 * h)) * (d1 - denoised)
        d2 = run.denoise(u2, sigma2)
        x = _first_order(x, denoised, s[i], s[i + 1]) + (_psi2(h) / (r2 * h)) * (d2 - denoised)
    return x
