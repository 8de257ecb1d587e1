"""Reference solutions of the probability-flow ODE for an exact denoiser, in float64.

The ODE in k-diffusion form is  dx/dsigma = (x - D(x; sigma)) / sigma.  We integrate it in
t = log(sigma), where it reads  dx/dt = x - D(x; e^t):  the right-hand side stays O(1) from
sigma_max down to small sigma instead of blowing up like 1/sigma.

Method: Dormand-Prince 5(4) with adaptive steps and per-sample error control (every sample's
scaled RMS error must pass, so one hard trajectory sets the step for the batch). A reference is
only returned after a convergence check: the same problem is solved again with tolerances
`check_factor` times tighter, and the two answers must agree to `max_discrepancy` (per-sample
RMSE). The reported discrepancy is an error estimate of the looser solve, so the returned
(tighter) solution is at least that accurate.

sigma = 0 is log-sigma = -inf. For a data distribution with a smooth density,
x - D(x; sigma) = -sigma^2 * grad log p_sigma(x), so dx/dt decays like sigma^2 = e^{2t}. We
integrate to `sigma_floor` and add the tail exactly to leading order: integral of f(t') dt' from
-inf to t = f(t)/2; the correction must itself be below the tolerance (checked).

What "the end" means for a sampler (denoise at its last sigma, or integrate to zero) is decided
by the caller, see samplers/accuracy.py; this module only solves the ODE.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Dormand & Prince (1980) RK5(4)7M tableau.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4))


class ReferenceNotConverged(RuntimeError):
    """The reference solver could not certify its answer (tolerances disagree or step budget spent)."""


@dataclass
class SolveStats:
    steps: int = 0
    rejected: int = 0
    evals: int = 0


@dataclass
class Reference:
    """x at each requested sigma (float64), with the convergence evidence."""
    states: dict            # sigma (python float) -> tensor (B, ...) float64
    sigma_start: float
    discrepancy: float      # max over checkpoints and samples of RMSE(loose - tight)
    rtol: float
    stats: SolveStats

    def at(self, sigma: float) -> torch.Tensor:
        return self.states[_key(sigma)]


def _key(sigma) -> float:
    return float(sigma)


def _check_sigmas(sigma_start, checkpoints):
    if not math.isfinite(sigma_start) or sigma_start <= 0:
        raise ValueError(f"sigma_start must be finite and > 0, got {sigma_start}")
    for s in checkpoints:
        if not math.isfinite(s) or s < 0:
            raise ValueError(f"reference sigmas must be finite and >= 0, got {s}")
        if s > sigma_start * (1 + 1e-12):
            raise ValueError(f"reference sigmas must not exceed sigma_start={sigma_start}, got {s}")


def _rhs(denoiser, x, t, stats):
    stats.evals += 1
    sigma = torch.full((x.shape[0],), math.exp(t), dtype=torch.float64, device=x.device)
    return x - denoiser(x, sigma).to(torch.float64)


def _scaled_err(err, x0, x1, rtol, atol):
    scale = atol + rtol * torch.maximum(x0.abs(), x1.abs())
    per_sample = (err / scale).flatten(1).pow(2).mean(1).sqrt()
    return float(per_sample.max())


def solve_pf_ode(denoiser, x, sigma_start: float, checkpoints, *, rtol: float = 1e-8, atol: float | None = None,
                 sigma_floor: float = 1e-7, max_steps: int = 200_000) -> tuple[dict, SolveStats]:
    """Integrates from (x, sigma_start) down through every sigma in `checkpoints` (any order, may
    include 0). Returns ({sigma: x(sigma)}, stats). Adaptive DOPRI5 in log-sigma."""
    sigma_start = float(sigma_start)
    points = sorted({_key(s) for s in checkpoints}, reverse=True)
    _check_sigmas(sigma_start, points)
    atol = rtol * 1e-2 if atol is None else float(atol)
    stats = SolveStats()
    x = x.to(torch.float64).clone()
    out = {}
    t = math.log(sigma_start)
    k1 = _rhs(denoiser, x, t, stats)
    h = -0.02  # first trial step in log-sigma; adapted at once
    for target in points:
        if target >= sigma_start:  # only sigma_start itself passes _check_sigmas
            out[target] = x.clone()
            continue
        t_end = math.log(max(target, sigma_floor)) if target > 0 else math.log(sigma_floor)
        if target > 0 and target < sigma_floor:
            raise ValueError(f"checkpoint sigma {target} is below sigma_floor={sigma_floor}")
        while t > t_end + 1e-14:
            if stats.steps + stats.rejected >= max_steps:
                raise ReferenceNotConverged(f"reference solver exceeded {max_steps} steps at sigma={math.exp(t):.4g}")
            h = max(h, t_end - t)  # h < 0; do not step past the checkpoint
            ks = [k1]
            for i in range(1, 7):
                xi = x + h * sum(a * k for a, k in zip(_A[i], ks))
                ks.append(_rhs(denoiser, xi, t + _C[i] * h, stats))
            x_new = x + h * sum(b * k for b, k in zip(_B5, ks) if b != 0.0)
            err = h * sum(e * k for e, k in zip(_E, ks) if e != 0.0)
            e = _scaled_err(err, x, x_new, rtol, atol)
            if e <= 1.0:
                stats.steps += 1
                t = t + h if t + h > t_end + 1e-14 else t_end
                x, k1 = x_new, ks[6]  # FSAL: the last stage is f at the new point
                grow = 5.0 if e == 0 else min(5.0, max(0.2, 0.9 * e ** -0.2))
                h *= grow
            else:
                if not math.isfinite(e):
                    raise ReferenceNotConverged("reference solver produced non-finite values")
                stats.rejected += 1
                h *= max(0.1, 0.9 * e ** -0.25)
            if abs(h) < 1e-12:
                raise ReferenceNotConverged(f"reference step size underflow at sigma={math.exp(t):.4g}")
        if target == 0:
            # Tail from sigma_floor to 0: integral of f over (-inf, t] = f(t)/2 to leading order.
            tail = 0.5 * k1
            bound = float(tail.flatten(1).pow(2).mean(1).sqrt().max())
            if bound > max(atol, 1e-3 * rtol):
                raise ReferenceNotConverged(f"sigma_floor={sigma_floor} too large: tail to sigma=0 is {bound:.3g}")
            out[target] = x - tail
        else:
            out[target] = x.clone()
    return out, stats


def per_sample_rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.to(torch.float64) - b.to(torch.float64)).flatten(1).pow(2).mean(1).sqrt()


def reference_states(denoiser, x_start, sigma_start: float, checkpoints, *, rtol: float = 1e-7,
                     check_factor: float = 100.0, max_discrepancy: float = 1e-6, **kwargs) -> Reference:
    """solve_pf_ode at rtol and at rtol/check_factor; raises ReferenceNotConverged unless every
    checkpoint agrees to max_discrepancy (per-sample RMSE). Returns the tighter solution."""
    if not (rtol > 0 and check_factor > 1 and max_discrepancy > 0):
        raise ValueError("need rtol > 0, check_factor > 1 and max_discrepancy > 0")
    loose, _ = solve_pf_ode(denoiser, x_start, sigma_start, checkpoints, rtol=rtol, **kwargs)
    tight, stats = solve_pf_ode(denoiser, x_start, sigma_start, checkpoints, rtol=rtol / check_factor, **kwargs)
    gap = max((float(per_sample_rmse(loose[s], tight[s]).max()) for s in tight), default=0.0)
    if not gap <= max_discrepancy:
        raise ReferenceNotConverged(
            f"reference not converged: rtol={rtol:g} and rtol={rtol / check_factor:g} differ by RMSE {gap:.3g} "
            f"> {max_discrepancy:g}")
    return Reference(states=tight, sigma_start=float(sigma_start), discrepancy=gap, rtol=rtol / check_factor,
                     stats=stats)


def solve_fixed_rk4(denoiser, x, sigma_start: float, sigma_end: float, steps: int) -> torch.Tensor:
    """Classical RK4 with `steps` equal steps in log-sigma (sigma_end > 0). An independent,
    deliberately simple cross-check of the adaptive solver."""
    if not sigma_end > 0:
        raise ValueError("solve_fixed_rk4 needs sigma_end > 0")
    stats = SolveStats()
    x = x.to(torch.float64).clone()
    t0, t1 = math.log(sigma_start), math.log(sigma_end)
    h = (t1 - t0) / steps
    for i in range(steps):
        t = t0 + i * h
        k1 = _rhs(denoiser, x, t, stats)
        k2 = _rhs(denoiser, x + 0.5 * h * k1, t + 0.5 * h, stats)
        k3 = _rhs(denoiser, x + 0.5 * h * k2, t + 0.5 * h, stats)
        k4 = _rhs(denoiser, x + h * k3, t + h, stats)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x
