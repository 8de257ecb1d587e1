"""Per-jump costs from the teacher's stored tensors, in one unit: the error each jump adds to the
FINAL sample, relative to that sample's norm.

* terminal[j]: the last jump s_j -> 0 returns D(x_j; s_j), so its cost is |D_j - final| (already an
  error of the final sample);
* pair[j, k] / triple[p, j, k]: ONE step of the sampler's rule started on the teacher trajectory
  (teacher forcing) lands off the teacher's state x_k by a residual r. That is a STATE error at
  noise level s_k, and what reaches the final sample is (flow Jacobian from s_k to the end) r,
  not r. Priced unpropagated ("none"), errors made far from the data (s_k large) are over-counted
  by about s_k / (local data scale) against the terminal cost, and the DP buys many small steps at
  high noise and one long final jump (issue #18: 14.61, 11.86, 9.13, 7.41, 5.71, 0). The residual
  is therefore multiplied by a propagation factor p(s_k):
    "local":    per sample and level, from the teacher itself (`local_propagation`): the flow of
                locally Gaussian data N(mu, a I) contracts a state error from s_k to the output by
                a / sqrt((a + s_min^2)(a + s_k^2)), and a is read off the teacher's own |final - D_k|
                against |x_k - D_k|. Sharp mixtures (small a after the mode is decided) get strong
                contraction, broad ones weak;
    "gaussian": one global scale c (the data's RMS): c / sqrt(c^2 + s_k^2) — the local model with
                a = c^2 everywhere, right for a single broad Gaussian, too weak a contraction for
                sharp modes;
    "none":     no propagation (the cost before the fix; kept for comparisons).
  What neither model sees: while the mode is still being chosen, errors across the boundary
  between modes GROW; a long first jump is under-priced there (measured in bench/repro_final_jump.py
  --diagnose). Candidates are therefore always compared by running the actual sampler.
* kind "bound": the per-interval term of the first-order discretisation-error bound (research notes
  schedule_opt.md eq. 3), sigma_k * sum_m (1/s_{m+1} - 1/s_m) |D_m - D_j|, a state error at s_k
  propagated the same way (it has no multistep form).
Costs are per-sample relative errors raised to `power`, averaged over samples, computed from float64
Gram matrices of the stored tensors so no residual tensor is materialised (relative residuals resolve
down to ~1e-7)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..validation import check_choice, check_positive
from .rules import as_traits, JUMP_RULES
from .teacher import Teacher

COSTS = ("jump", "bound")
PROPAGATIONS = ("local", "gaussian", "none")


@dataclass
class JumpCosts:
    """pair[j, k]: cost of the history-free jump s_j -> s_k (inf unless k > j); triple[p, j, k]: of a
    memory-1 jump s_j -> s_k after s_p (None for first-order rules); terminal[j]: of s_j -> 0."""
    sigmas: torch.Tensor
    pair: torch.Tensor
    terminal: torch.Tensor
    triple: Optional[torch.Tensor] = None
    rule: str = "euler"
    kind: str = "jump"
    power: float = 1.0


def _diag(m: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(m, dim1=1, dim2=2)


@torch.no_grad()
def gram_matrices(teacher: Teacher, device=None, chunk: int = 1) -> tuple:
    """Per-sample float64 inner products between all stored vectors: xx, xd, dd (M, G, G) with
    xd[b, j, k] = <x_j, D_k>."""
    G, M = teacher.states.shape[:2]
    device = teacher.states.device if device is None else device
    out = {k: torch.empty((M, G, G), dtype=torch.float64) for k in ("xx", "xd", "dd")}
    for b0 in range(0, M, chunk):
        sl = slice(b0, min(M, b0 + chunk))
        X = teacher.states[:, sl].to(device, torch.float64).flatten(2).transpose(0, 1)   # (m, G, d)
        D = teacher.denoised[:, sl].to(device, torch.float64).flatten(2).transpose(0, 1)
        out["xx"][sl] = (X @ X.transpose(1, 2)).cpu()
        out["xd"][sl] = (X @ D.transpose(1, 2)).cpu()
        out["dd"][sl] = (D @ D.transpose(1, 2)).cpu()
        del X, D
    return out["xx"], out["xd"], out["dd"]


def data_scale(teacher: Teacher) -> float:
    """RMS per element of the teacher's outputs: the c of the "gaussian" propagation."""
    return float(teacher.final.to(torch.float64).pow(2).mean().sqrt())


def propagation_weight(sigmas: torch.Tensor, c: float) -> torch.Tensor:
    """c / sqrt(c^2 + sigma^2): the flow's contraction from sigma to the end for Gaussian data of
    per-element scale c (x(0) - m = c/sqrt(c^2+sigma^2) (x(sigma) - m))."""
    return c / torch.sqrt(c * c + sigmas.to(torch.float64) ** 2)


def local_propagation(sigmas: torch.Tensor, xx, xd, dd, iters: int = 60) -> torch.Tensor:
    """p[b, k]: how much of a state error at level k reaches the teacher's output, per sample.
    For locally Gaussian data N(mu, a I), with v = s_k^2, m = s_min^2, the flow to s_min and the final
    denoise give final - D_k = (a/sqrt((a+m)(a+v)) - a/(a+v)) (x_k - mu) and x_k - D_k = v/(a+v) (x_k - mu),
    so r = |final - D_k| / |x_k - D_k| = a (sqrt((a+v)/(a+m)) - 1) / v, increasing in a, fixes a
    (bisection in log a) and p = a / sqrt((a+m)(a+v)). The last level (r = 0 for any a) takes the
    a found one level above."""
    s2 = sigmas.to(torch.float64) ** 2
    v, m = s2[None, :-1], s2[-1]
    d_kk = _diag(dd)
    to_final = (d_kk + d_kk[:, -1:] - 2 * dd[:, :, -1]).clamp_min(0).sqrt()[:, :-1]
    to_state = (_diag(xx) + d_kk - 2 * _diag(xd)).clamp_min(0).sqrt()[:, :-1]
    r = torch.minimum(to_final / to_state.clamp_min(1e-300), (v - m) / (2 * v) * (1 - 1e-9))
    lo, hi = torch.log(v * 1e-12).expand_as(r), torch.log(v * 1e12).expand_as(r)
    for _ in range(int(iters)):
        mid = (lo + hi) / 2
        a = mid.exp()
        above = a * (torch.sqrt((a + v) / (a + m)) - 1) / v > r
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    a = ((lo + hi) / 2).exp()
    a = torch.cat([a, a[:, -1:]], dim=1)
    return (a / torch.sqrt((a + m) * (a + s2[None]))).clamp(0, 1)


def _propagation(propagation, sigmas, gram, teacher, scale) -> torch.Tensor:
    """(M or 1, G) factors for the landing levels."""
    if propagation is True:
        propagation = "gaussian"
    elif propagation is False or propagation is None:
        propagation = "none"
    check_choice(propagation, PROPAGATIONS, "propagation")
    if propagation == "none":
        return torch.ones(1, sigmas.numel(), dtype=torch.float64)
    if propagation == "local":
        return local_propagation(sigmas, *gram)
    c = data_scale(teacher) if scale is None else check_positive(scale, "scale")
    return propagation_weight(sigmas, c)[None]


def _reducer(ref: torch.Tensor, w_land: torch.Tensor, power: float):
    """Per-sample squared residuals (M, ..., K) landing at levels k -> mean of (relative error * p)^power."""
    def reduce(sq, k=None):
        rel = sq.clamp_min(0).sqrt() / ref.view((-1,) + (1,) * (sq.ndim - 1))
        if k is not None:
            rel = rel * w_land[:, k].view((w_land.shape[0],) + (1,) * (sq.ndim - 2) + (-1,))
        return (rel ** power).mean(0)
    return reduce


def _bound_pair(s, dd, w_land, ref, power, later):
    # |D_m - D_j| for all (j, m), then H[j, k] = s_k * sum_{m=j}^{k-1} du_m |D_m - D_j|.
    dist = (_diag(dd)[:, :, None] + _diag(dd)[:, None, :] - 2 * dd).clamp_min(0).sqrt()   # (M, j, m)
    du = torch.cat([1 / s[1:] - 1 / s[:-1], torch.zeros(1, dtype=torch.float64)])
    csum = torch.cumsum(dist * du, dim=2)
    seg = torch.zeros_like(csum)
    seg[:, :, 1:] = csum[:, :, :-1] - torch.diagonal(csum, dim1=1, dim2=2)[:, :, None]
    h = s[None, None, :] * seg * w_land[:, None, :]
    pair = (h / ref.view(-1, 1, 1)).pow(power).mean(0)
    return torch.where(later, pair, torch.full_like(pair, math.inf))


def _first_order_pair(rule, s, xx, xd, dd, reduce, later):
    G = s.numel()
    a, b, _ = rule.first(s.view(G, 1), s.view(1, G))
    dx = xd.transpose(1, 2)                                       # dx[b, j, k] = <D_j, x_k>
    sq = (a ** 2 * _diag(xx)[:, :, None] + b ** 2 * _diag(dd)[:, :, None] + _diag(xx)[:, None, :]
          + 2 * a * b * _diag(xd)[:, :, None] - 2 * a * xx - 2 * b * dx)
    return torch.where(later, reduce(sq, torch.arange(G)), torch.full((G, G), math.inf, dtype=torch.float64))


def _memory_triple(rule, s, xx, xd, dd, reduce):
    G = s.numel()
    dx = xd.transpose(1, 2)
    triple = torch.full((G, G, G), math.inf, dtype=torch.float64)
    for j in range(1, G - 1):
        p, k = torch.arange(j), torch.arange(j + 1, G)            # p < j < k
        A, B, C = rule.coefficients(s[p].view(-1, 1), s[j], s[k].view(1, -1))   # (P, K)
        t = (A ** 2 * xx[:, j, j, None, None] + B ** 2 * dd[:, j, j, None, None]
             + C ** 2 * _diag(dd)[:, p][:, :, None] + _diag(xx)[:, k][:, None, :]
             + 2 * A * B * xd[:, j, j, None, None] + 2 * A * C * xd[:, j, p][:, :, None]
             + 2 * B * C * dd[:, j, p][:, :, None]
             - 2 * A * xx[:, j, k][:, None, :] - 2 * B * dx[:, j, k][:, None, :]
             - 2 * C * dx[:, p][:, :, k])
        triple[p.view(-1, 1), j, k.view(1, -1)] = reduce(t, k)
    return triple


@torch.no_grad()
def jump_costs(teacher: Teacher, sampler="euler", kind: str = "jump", power: float = 1.0,
               propagation="local", scale: Optional[float] = None, gram_device=None,
               gram: Optional[tuple] = None) -> JumpCosts:
    """Cost matrices for a sampler (SolverTraits or a rule name; see the module docstring).
    propagation: "local" (default), "gaussian" (global scale c = `scale` or data_scale(teacher)) or
    "none"; True/False are accepted for "gaussian"/"none". `gram` = gram_matrices(teacher) when
    several costs are built from one teacher."""
    check_choice(kind, COSTS, "cost")
    check_positive(power, "power")
    rule = JUMP_RULES[as_traits(sampler).rule]
    s = teacher.sigmas.to(torch.float64)
    gram = gram_matrices(teacher, gram_device) if gram is None else gram
    xx, xd, dd = gram
    ref2 = _diag(dd)[:, -1]                                       # |final|^2 per sample
    ref = ref2.clamp_min(1e-300).sqrt()
    w_land = _propagation(propagation, s, gram, teacher, scale)
    reduce = _reducer(ref, w_land, power)
    later = torch.triu(torch.ones(s.numel(), s.numel(), dtype=torch.bool), diagonal=1)   # k > j
    terminal = reduce(_diag(dd) + ref2[:, None] - 2 * dd[:, :, -1])
    if kind == "bound":
        return JumpCosts(s, _bound_pair(s, dd, w_land, ref, power, later), terminal, None, rule.name, kind, power)
    pair = _first_order_pair(rule, s, xx, xd, dd, reduce, later)
    triple = _memory_triple(rule, s, xx, xd, dd, reduce) if rule.memory == 1 else None
    return JumpCosts(s, pair, terminal, triple, rule.name, kind, power)
