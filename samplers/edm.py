"""Samplers of Karras et al. 2022 ("Elucidating the design space of diffusion-based generative
models", EDM), in sigma space on dx/dsigma = (x - D)/sigma.

* sample_edm_heun:       Algorithm 1, deterministic Heun; the step to sigma = 0 is an Euler step.
* sample_edm_stochastic: Algorithm 2: before step i the noise level is raised to
                         sigma_hat = sigma_i (1 + gamma_i) by adding fresh noise of std
                         sqrt(sigma_hat^2 - sigma_i^2) * S_noise, where
                         gamma_i = min(S_churn / N, sqrt(2) - 1) if S_tmin <= sigma_i <= S_tmax else 0
                         and N = len(sigmas) - 1 (the steps of this call); then a Heun step from
                         sigma_hat. Noise comes from the seeded noise sampler.
* sample_edm_alpha:      the general second-order Runge-Kutta of EDM Appendix D.2: slope at
                         sigma_i, a trial Euler move of alpha*h, then
                         x += h ((1 - 1/(2 alpha)) d + 1/(2 alpha) d'); alpha = 1 is Heun,
                         alpha = 1/2 the midpoint method.
Every step to sigma = 0 is an Euler step (EDM's convention); a schedule ending at sigma > 0 keeps
the second-order update on its last step.
"""
from __future__ import annotations

import math

from .common import Stepper, solver_entry, steps, to_d
from .validation import check_non_negative, check_range, check_sigmas


@solver_entry
def sample_edm(model, x, sigmas, extra_args=None, callback=None, disable=None, alpha=1.0,
               s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0, noise_sampler=None):
    """EDM sampler with every option: alpha (0 < alpha <= 1) and the churn settings."""
    check_sigmas(sigmas)
    alpha = check_range(alpha, "alpha", 0.0, 1.0, low_open=True)
    s_churn = check_non_negative(s_churn, "s_churn")
    s_noise = check_non_negative(s_noise, "s_noise")
    s_tmin = check_non_negative(s_tmin, "s_tmin")
    s_tmax = float(s_tmax)
    if math.isnan(s_tmax) or s_tmax < s_tmin:
        raise ValueError(f"s_tmax must be >= s_tmin, got s_tmin={s_tmin}, s_tmax={s_tmax}")
    run = Stepper(model, x, sigmas, extra_args, callback)
    s = run.s
    n = len(s) - 1
    noise = run.noise_sampler(x, noise_sampler) if s_churn > 0 else None
    gamma_max = min(s_churn / max(n, 1), math.sqrt(2) - 1)
    for i in steps(n, disable):
        gamma = gamma_max if (s_churn > 0 and s_tmin <= s[i] <= s_tmax) else 0.0
        sigma_hat = s[i] * (1 + gamma)
        if gamma > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * (s_noise * math.sqrt(sigma_hat ** 2 - s[i] ** 2))
            denoised = run.denoise(x, sigma_hat)
            run.report(i, x, denoised, sigma_hat=sigma_hat)
        else:
            denoised = run.denoise(x, sigmas[i])
            run.report(i, x, denoised)
        h = s[i + 1] - sigma_hat
        d = to_d(x, sigma_hat, denoised)
        if s[i + 1] == 0:
            x = x + h * d
            continue
        sigma_trial = sigma_hat + alpha * h
        x_trial = x + (alpha * h) * d
        d_trial = to_d(x_trial, sigma_trial, run.denoise(x_trial, sigma_trial))
        x = x + (h * (1 - 1 / (2 * alpha))) * d + (h / (2 * alpha)) * d_trial
    return x


@solver_entry
def sample_edm_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """EDM Algorithm 1 (deterministic Heun). 2 NFE per step, 1 on the step to sigma = 0."""
    return sample_edm(model, x, sigmas, extra_args, callback, disable)


@solver_entry
def sample_edm_stochastic(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0,
                          s_tmin=0.0, s_tmax=math.inf, s_noise=1.0, noise_sampler=None):
    """EDM Algorithm 2 (stochastic churn + Heun). With s_churn = 0 it is Algorithm 1 exactly."""
    return sample_edm(model, x, sigmas, extra_args, callback, disable, alpha=1.0, s_churn=s_churn,
                      s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, noise_sampler=noise_sampler)


@solver_entry
def sample_edm_alpha(model, x, sigmas, extra_args=None, callback=None, disable=None, alpha=1.0):
    """EDM general second-order method with parameter alpha (Heun at alpha = 1)."""
    return sample_edm(model, x, sigmas, extra_args, callback, disable, alpha=alpha)
