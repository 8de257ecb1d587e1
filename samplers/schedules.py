"""Sigma schedules: pure functions returning 1-D float tensors, largest sigma first.

* karras_sigmas         - Karras et al. (2022) power law in sigma, trailing 0.
* timestep_power_sigmas - the power law applied to the discrete training timestep t instead of sigma
                          (Li & Zhang 2025, "an improved Karras time schedule"), mapped through the
                          model's sigma(t) table.
* fscheduler_sigmas     - the F-scheduler (Li & Bai, arXiv 2510.02390): a stop sigma picked on an
                          auxiliary Karras grid, then N steps spaced by a power law in timestep space
                          from t_max down to t(sigma_stop); no trailing 0, the latent at sigma_stop is
                          what the VAE decodes.

Timestep <-> sigma over a discrete table (ascending, table[t] = sigma at training step t):
  sigma(t) interpolates log sigma linearly between neighbouring integer steps, exactly like ComfyUI's
  ModelSamplingDiscrete.sigma; the paper's own code interpolates alphas_cumprod = 1/(1+sigma^2)
  instead (`interpolation="alphas_cumprod"`), which is what its published sigma lists use.
  t(sigma) is the continuous inverse of the log-sigma interpolation (k-diffusion's sigma_to_t);
  ComfyUI's ModelSamplingDiscrete.timestep rounds to the nearest step, which would move sigma_stop.
"""
from __future__ import annotations

import math

import torch

from .constants import FSCHEDULER_PRESETS, INTERPOLATIONS  # noqa: F401  (re-exported)
from .validation import (check_choice, check_positive, check_range, check_sigma_range, check_steps)


def _finish(values: torch.Tensor, append_zero: bool, dtype) -> torch.Tensor:
    if append_zero:
        values = torch.cat([values, values.new_zeros(1)])
    return values.to(dtype)


def karras_sigmas(steps, sigma_min, sigma_max, rho=7.0, append_zero=True, dtype=torch.float32):
    """sigma_i = (sigma_max^(1/rho) + i/(steps-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    i = 0..steps-1, then 0 (unless append_zero=False). steps = model moves with the trailing 0."""
    steps = check_steps(steps)
    lo, hi = check_sigma_range(sigma_min, sigma_max)
    rho = check_positive(rho, "rho")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_max, inv_min = hi ** (1 / rho), lo ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return _finish(sigmas, append_zero, dtype)


def sd_discrete_sigmas(beta_start=0.00085, beta_end=0.012, timesteps=1000, dtype=torch.float32):
    """Training sigmas of SD1.5 / SDXL ("scaled linear" betas: linear in sqrt(beta) from beta_start
    to beta_end, 1000 steps), ascending like ComfyUI's model_sampling.sigmas:
    sigma_t = sqrt((1 - abar_t) / abar_t), abar_t = prod_{s<=t} (1 - beta_s).
    sigma_0 = 0.0291675, sigma_999 = 14.6146."""
    timesteps = check_steps(timesteps, "timesteps", minimum=2)
    b0 = check_positive(beta_start, "beta_start")
    b1 = check_range(beta_end, "beta_end", b0, 1.0, low_open=True, high_open=True)
    betas = torch.linspace(b0 ** 0.5, b1 ** 0.5, timesteps, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, dim=0)
    return (((1 - abar) / abar) ** 0.5).to(dtype)


def _table(model_sigmas, name="model_sigmas") -> torch.Tensor:
    if not torch.is_tensor(model_sigmas) or model_sigmas.ndim != 1 or model_sigmas.numel() < 2:
        raise ValueError(f"{name} must be a 1-D tensor of at least 2 training sigmas (ascending)")
    table = model_sigmas.detach().to("cpu", torch.float64)
    if not torch.isfinite(table).all() or (table <= 0).any():
        raise ValueError(f"{name} must hold finite sigmas > 0")
    if (table[1:] <= table[:-1]).any():
        raise ValueError(f"{name} must be strictly increasing (ComfyUI's model_sampling.sigmas order)")
    return table


def table_sigma(t, model_sigmas, interpolation="log_sigma") -> torch.Tensor:
    """sigma(t) for real t in [0, len-1] (float64), interpolating between integer steps."""
    check_choice(interpolation, INTERPOLATIONS, "interpolation")
    table = _table(model_sigmas)
    t = torch.as_tensor(t, dtype=torch.float64)
    last = table.numel() - 1
    if ((t < 0) | (t > last)).any() or not torch.isfinite(t).all():
        raise ValueError(f"timestep must be in [0, {last}], got {t.tolist()}")
    lo = t.floor().long().clamp(max=last)
    hi = (lo + 1).clamp(max=last)
    w = t - lo
    if interpolation == "log_sigma":
        logs = table.log()
        return ((1 - w) * logs[lo] + w * logs[hi]).exp()
    abar = 1 / (1 + table ** 2)
    a = (1 - w) * abar[lo] + w * abar[hi]
    return ((1 - a) / a).sqrt()


def table_timestep(sigma, model_sigmas) -> torch.Tensor:
    """Real t with sigma(t) = sigma under log-sigma interpolation (float64); sigma must lie in the
    table's range."""
    table = _table(model_sigmas)
    s = torch.as_tensor(sigma, dtype=torch.float64)
    lo_s, hi_s = table[0].item(), table[-1].item()
    if not torch.isfinite(s).all() or ((s < lo_s * (1 - 1e-12)) | (s > hi_s * (1 + 1e-12))).any():
        raise ValueError(f"sigma must lie in the model's range [{lo_s:.6g}, {hi_s:.6g}], got {s.tolist()}")
    logs = table.log()
    ls = s.clamp(lo_s, hi_s).log()
    idx = torch.searchsorted(logs, ls.reshape(-1)).clamp(1, table.numel() - 1).reshape(ls.shape)
    w = (ls - logs[idx - 1]) / (logs[idx] - logs[idx - 1])
    return (idx - 1).to(torch.float64) + w


def power_timesteps(count, t_max, t_min, rho):
    """count values from t_max down to t_min, spaced by t_i = (t_max^(1/rho) + i/(count-1)
    (t_min^(1/rho) - t_max^(1/rho)))^rho (float64); count = 1 gives [t_max]."""
    count = check_steps(count, "count")
    rho = check_positive(rho, "rho_t")
    t_max = check_range(t_max, "t_max", 0.0, math.inf)
    t_min = check_range(t_min, "t_min", 0.0, t_max, high_open=True)
    ramp = torch.linspace(0, 1, count, dtype=torch.float64)
    hi, lo = t_max ** (1 / rho), t_min ** (1 / rho)
    ts = (hi + ramp * (lo - hi)) ** rho
    ts[0] = t_max  # exact ends: x^(1/rho)^rho may round past the table
    if count > 1:
        ts[-1] = t_min
    return ts


def timestep_power_sigmas(steps, model_sigmas, rho_t=1.2, t_max=None, t_min=None, append_zero=True,
                          interpolation="log_sigma", dtype=torch.float32):
    """Power law in timestep space mapped through sigma(t) of the discrete table `model_sigmas`.

    t runs from t_max (default: the last training step, 999) down to t_min (default 0, i.e. the
    model's sigma_min). `steps` is always the number of model moves: with append_zero, `steps`
    points t_max..t_min and a trailing 0; without it, steps+1 points t_max..t_min ending at
    sigma(t_min) > 0."""
    steps = check_steps(steps)
    table = _table(model_sigmas)
    last = table.numel() - 1
    t_max = float(last) if t_max is None else check_range(t_max, "t_max", 0.0, float(last))
    t_min = 0.0 if t_min is None else check_range(t_min, "t_min", 0.0, float(last))
    if t_min >= t_max:
        raise ValueError(f"t_min must be smaller than t_max, got t_min={t_min}, t_max={t_max}")
    ts = power_timesteps(steps if append_zero else steps + 1, t_max, t_min, rho_t)
    return _finish(table_sigma(ts, table, interpolation), append_zero, dtype)


def fscheduler_stop_sigma(sigma_min, sigma_max, p2=5.0, grid_points=8, stop_index=6) -> float:
    """sigma_stop = point `stop_index` of a Karras grid of `grid_points` points (exponent p2)."""
    grid_points = check_steps(grid_points, "grid_points", minimum=2)
    stop_index = check_steps(stop_index, "stop_index", minimum=1)
    if stop_index > grid_points - 1:
        raise ValueError(f"stop_index must be <= grid_points - 1 = {grid_points - 1}, got {stop_index}")
    grid = karras_sigmas(grid_points, sigma_min, sigma_max, rho=check_positive(p2, "p2"),
                         append_zero=False, dtype=torch.float64)
    return grid[stop_index].item()


def fscheduler_timesteps(steps, model_sigmas, p1=1.2, p2=5.0, grid_points=8, stop_index=6, t_max=None):
    """The F-scheduler's N+1 timesteps t_0 = t_max > ... > t_N = t(sigma_stop) (float64)."""
    steps = check_steps(steps)
    table = _table(model_sigmas)
    last = table.numel() - 1
    t_max = float(last) if t_max is None else check_range(t_max, "t_max", 0.0, float(last), low_open=True)
    sigma_stop = fscheduler_stop_sigma(table[0].item(), table[-1].item(), p2, grid_points, stop_index)
    t_stop = table_timestep(sigma_stop, table).item()
    if t_stop >= t_max:
        raise ValueError(f"stop_index gives sigma_stop={sigma_stop:.6g} at t={t_stop:.4g}, not below "
                         f"t_max={t_max:.4g}; use a larger stop_index or t_max")
    return power_timesteps(steps + 1, t_max, t_stop, check_positive(p1, "p1"))


def fscheduler_sigmas(steps, model_sigmas, p1=1.2, p2=5.0, grid_points=8, stop_index=6, t_max=None,
                      interpolation="alphas_cumprod", dtype=torch.float32):
    """F-scheduler sigmas: N+1 values from sigma(t_max) down to about sigma_stop, no trailing 0.

    (a) sigma_stop = Karras(grid_points points, p2, model sigma range)[stop_index];
    (b) t_i = (t_max^(1/p1) + i/N (t(sigma_stop)^(1/p1) - t_max^(1/p1)))^p1, i = 0..N;
    (c) sigma_i = sigma(t_i). Defaults are the 512x6 preset; see FSCHEDULER_PRESETS.
    With interpolation="alphas_cumprod" (the paper's code) sigma_N differs from sigma_stop by < 0.3%."""
    ts = fscheduler_timesteps(steps, model_sigmas, p1, p2, grid_points, stop_index, t_max)
    return table_sigma(ts, model_sigmas, interpolation).to(dtype)


def fscheduler_preset(name: str) -> dict:
    check_choice(name, FSCHEDULER_PRESETS, "preset")
    return dict(FSCHEDULER_PRESETS[name])


def denoise_tail(make, steps, denoise):
    """ComfyUI's denoise convention (KSampler.set_steps): build int(steps/denoise) steps with
    `make(total_steps)` and keep the last steps+1 sigmas; denoise >= 0.9999 keeps the whole schedule."""
    steps = check_steps(steps)
    denoise = check_range(denoise, "denoise", 0.0, 1.0, low_open=True)
    if denoise > 0.9999:
        return make(steps)
    return make(int(steps / denoise))[-(steps + 1):]
