"""UniPC in the form the F-scheduler paper uses: noise prediction, B(h) = h ("bh1"), a multistep
predictor (UniP) and a corrector (UniC) on every move except the last, and an optional analytic
first step (AFS).

Derivation (written for this pack from the maths of Zhao et al. 2023, "UniPC"):
  VP form x_t = a_t x0 + s_t eps, lambda = log(a_t / s_t). The exact ODE solution in noise form is
      x_t = (a_t/a_s) x_s - a_t * int_{lambda_s}^{lambda_t} e^{-lambda} eps(lambda) dlambda
          = (a_t/a_s) x_s - s_t (e^h - 1) eps_s - s_t sum_{k>=1} h^{k+1} phi_{k+1}(h) eps^(k)_s,
  h = lambda_t - lambda_s, phi_k(h) = sum_j h^j / (j+k)!.  UniPC replaces the k >= 1 terms by
      s_t B(h) sum_m a_m D_m / r_m,   D_m = eps(lambda_s + r_m h) - eps_s,
  and matching Taylor terms gives  sum_m a_m r_m^{k-1} = k! h phi_{k+1}(h) / B(h)  (k = 1..#terms).
  With a single difference the paper's solver (and UniPC) fixes a_1 = 1/2, the h -> 0 limit of
  phi_2, which keeps the order; with two or more the system is solved exactly.
  In k-diffusion scaling (x = x0 + sigma eps, sigma = s_t/a_t, lambda = -log sigma) dividing by
  a_t removes every alpha:
      x_t = x_s - (sigma_s - sigma_t) eps_s - sigma_t h sum_m a_m D_m / r_m,  h = log(sigma_s/sigma_t),
  so the order-1 predictor is exactly DDIM = Euler in sigma, and the update needs only sigmas.
  This assumes x = x0 + sigma * eps (eps / v / EDM models such as SD1.5 and SDXL), not flow models.

Multistep bookkeeping: the model is evaluated once per grid point except the last; the evaluation
at the predicted x_{i+1} feeds the corrector of move i and is reused, unchanged, as the history
value at the corrected x_{i+1}. So NFE = number of moves, whatever the order.

Analytic first step (AFS, GENIE-style, as in the F-scheduler code): a grid point sigma_mid is
inserted after sigma_0 and the move sigma_0 -> sigma_mid uses the latent itself as the noise
prediction, in VP scaling: eps_hat = x_VP = a_0 x = x / sqrt(1 + sigma_0^2) (a = 1/sqrt(1+sigma^2)
for sigma = s/a with a^2 + s^2 = 1). Equivalently denoised_hat = x - sigma_0 eps_hat
= x (1 - sigma_0 / sqrt(1 + sigma_0^2)), about 0.0023 x at sigma_0 = 14.6146. That move costs no
model call, so N published sigmas still take N model calls with AFS (N + 1 moves).
"""
from __future__ import annotations

import math

import torch

from . import validation
from .common import solver_entry, steps
from .schedules import table_sigma, table_timestep

ORDERS = (1, 2, 3)


def phi(k: int, h: float) -> float:
    """phi_k(h) = sum_{j>=0} h^j / (j+k)!  (phi_1 = (e^h - 1)/h), stable for small h."""
    if k < 1:
        raise ValueError(f"phi index k must be >= 1, got {k}")
    if abs(h) < 1.0:
        term, total = 1.0 / math.factorial(k), 0.0
        for j in range(60):
            total += term
            term *= h / (j + k + 1)
            if abs(term) < 1e-18 * abs(total):
                break
        return total
    value = math.expm1(h) / h
    for m in range(1, k):
        value = (value - 1.0 / math.factorial(m)) / h
    return value


def unipc_coefficients(rs, h: float) -> list[float]:
    """a_m for  sum_m a_m D_m / r_m  with B(h) = h: solves sum_m a_m r_m^{k-1} = k! phi_{k+1}(h)."""
    rs = [float(r) for r in rs]
    if not rs:
        return []
    if len(rs) == 1:
        return [0.5]
    n = len(rs)
    mat = torch.tensor([[r ** k for r in rs] for k in range(n)], dtype=torch.float64)
    rhs = torch.tensor([math.factorial(k) * phi(k + 1, h) for k in range(1, n + 1)], dtype=torch.float64)
    return torch.linalg.solve(mat, rhs).tolist()


def check_sigmas(sigmas, name: str = "sigmas") -> list[float]:
    """Python floats of a 1-D, finite, strictly decreasing schedule of at least one step whose only
    zero may be the last (the pack's shared checks plus the length)."""
    tensor = sigmas if torch.is_tensor(sigmas) else torch.tensor([float(v) for v in sigmas], dtype=torch.float64)
    validation.check_sigmas(tensor, name)
    if tensor.numel() < 2:
        raise ValueError(f"{name} needs at least 2 values (one step), got {tensor.numel()}")
    return [float(v) for v in tensor.detach().to("cpu", torch.float64)]


def afs_eps(x: torch.Tensor, sigma0: float, scale: float = 1.0) -> torch.Tensor:
    """The AFS noise prediction eps_hat = scale * x_VP = scale * x / sqrt(1 + sigma0^2)."""
    return x * (scale / math.sqrt(1.0 + sigma0 * sigma0))


def log_midpoint(sigma0: float, sigma1: float) -> float:
    """Midpoint in lambda = -log sigma; the fallback AFS point when no t-space midpoint is given."""
    return math.sqrt(sigma0 * sigma1)


def timestep_midpoint(sigma0: float, sigma1: float, model_sigmas, interpolation="alphas_cumprod") -> float:
    """The paper's AFS point: sigma at the midpoint of t(sigma0) and t(sigma1) on the model's training
    table (t = 999 and t_1 for SD/SDXL: t 901.6 at 6 steps, 925.7 at 8), mapped back with the same
    interpolation as the F-scheduler sigmas. Sigmas outside the table are clamped to its ends."""
    table = torch.as_tensor(model_sigmas, dtype=torch.float64)
    lo, hi = float(table[0]), float(table[-1])
    pair = torch.tensor([min(max(sigma0, lo), hi), min(max(sigma1, lo), hi)], dtype=torch.float64)
    return float(table_sigma(table_timestep(pair, table).mean(), table, interpolation))


def auto_order(model_calls: int) -> int:
    """The paper's rule: order 1 up to 6 model calls, order 2 from 7 (its 8-step setting)."""
    return 1 if model_calls <= 6 else 2


def afs_grid(sigmas, afs_sigma=None) -> list[float]:
    """The solver's grid: sigmas with the AFS point inserted after sigma_0."""
    values = check_sigmas(sigmas)
    if values[1] <= 0:
        raise ValueError("afs needs sigmas[1] > 0: the analytic first step moves to a point between "
                         f"sigmas[0] and sigmas[1], got {values[:2]}")
    mid = log_midpoint(values[0], values[1]) if afs_sigma is None else float(afs_sigma)
    if not (values[1] < mid < values[0]):
        raise ValueError(f"afs_sigma must lie strictly between sigmas[1]={values[1]} and "
                         f"sigmas[0]={values[0]}, got {mid}")
    return [values[0], mid] + values[1:]


def _unconditional(denoised, cfg_pp):
    uncond = None if cfg_pp is None else cfg_pp()
    return denoised if uncond is None else uncond


def _shifted(x, denoised, uncond, cfg_pp):
    """CFG++'s x~ = x + (D_cfg - D_u); the plain solver's x untouched."""
    return x if cfg_pp is None else x + (denoised - uncond)


@solver_entry
def sample_unipc_fs(model, x, sigmas, extra_args=None, callback=None, disable=None, order=1,
                    corrector=True, lower_order_final=True, afs=False, afs_sigma=None,
                    afs_eps_scale=1.0, cfg_pp=None, **_ignored):
    """UniPC (noise prediction, B(h) = h) over `sigmas`, which may end at sigma_stop > 0.

    order: 1, 2, 3 or "auto" (1 up to 6 model calls, else 2); the first moves warm up from order 1.
    corrector: UniC after every move but the last (it reuses the next evaluation, no extra call).
    lower_order_final: the last moves use order min(order, moves left), as UniPC does for few steps.
    afs: analytic first step; afs_sigma is the inserted point (default: midpoint in log sigma; the
    FewStep nodes pass the model's timestep-space midpoint, as the paper does); afs_eps_scale 1.0
    is eps_hat = x_VP (the paper's UniPC code), 0.975 its diffusers-style variant.
    cfg_pp: CFG++ (see common.guided_point): every eps is the unconditional noise
    (x - D_u) / sigma and each move starts from x~ = x + (D_cfg - D_u) of its latest evaluation.
    Returns x at sigmas[-1] (not denoised further when that is > 0).
    """
    extra_args = {} if extra_args is None else extra_args
    published = check_sigmas(sigmas)
    if order == "auto":
        order = auto_order(len(published) - 1)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} or 'auto', got {order!r}")
    if not (math.isfinite(float(afs_eps_scale)) and afs_eps_scale > 0):
        raise ValueError(f"afs_eps_scale must be a finite number > 0, got {afs_eps_scale}")
    grid = afs_grid(published, afs_sigma) if afs else published
    moves = len(grid) - 1
    s_in = x.new_ones([x.shape[0]])

    sigma0 = grid[0]
    if afs:
        eps = afs_eps(x, sigma0, float(afs_eps_scale))
        denoised = x - sigma0 * eps
    else:
        denoised = model(x, sigma0 * s_in, **extra_args)
        uncond = _unconditional(denoised, cfg_pp)
        eps = (x - uncond) / sigma0
        x = _shifted(x, denoised, uncond, cfg_pp)
    history = [(-math.log(sigma0), eps)]  # (lambda, eps) at the grid points passed so far

    for i in steps(moves, disable):
        s, t = grid[i], grid[i + 1]
        p = min(order, len(history))
        if lower_order_final:
            p = min(p, moves - i)
        if callback is not None and not (afs and i == 0):
            j = i - 1 if afs else i  # index into the caller's sigmas
            callback({"x": x, "i": j, "sigma": published[j], "sigma_hat": published[j], "denoised": denoised})
        if t == 0:  # a trailing zero: the exact limit of every UniPC update is the data prediction
            x = x - s * eps
            break
        lam_s, lam_t = -math.log(s), -math.log(t)
        h = lam_t - lam_s
        base = x - (s - t) * eps  # order-1 part: DDIM / Euler in sigma
        rs, diffs = [], []
        for lam_m, eps_m in reversed(history[-p:-1]):  # the p-1 previous points, newest first
            rs.append((lam_m - lam_s) / h)
            diffs.append(eps_m - eps)
        x_pred = base
        if rs:
            a = unipc_coefficients(rs, h)
            x_pred = base - (t * h) * sum(a_m / r_m * d_m for a_m, r_m, d_m in zip(a, rs, diffs))
        if i == moves - 1:
            x = x_pred
            break
        denoised = model(x_pred, t * s_in, **extra_args)
        uncond = _unconditional(denoised, cfg_pp)
        eps_t = (x_pred - uncond) / t
        if corrector:
            rs_c, diffs_c = rs + [1.0], diffs + [eps_t - eps]
            a = unipc_coefficients(rs_c, h)
            x = base - (t * h) * sum(a_m / r_m * d_m for a_m, r_m, d_m in zip(a, rs_c, diffs_c))
        else:
            x = x_pred
        x = _shifted(x, denoised, uncond, cfg_pp)
        history.append((lam_t, eps_t))
        eps = eps_t
        if len(history) > 3:
            history.pop(0)
    return x
