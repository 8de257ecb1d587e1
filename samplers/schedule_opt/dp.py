"""Exact dynamic programming over the candidate grid: the minimum-cost path with N steps for EVERY
N up to max_steps in one run. O(N G^2) for pair costs, O(N G^3) for triple costs (the state is then
the last two levels). gamma multiplies the cost-to-go like GITS's `coeff` (gamma = 1: plain sum)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..validation import check_positive, check_steps
from .costs import JumpCosts


@dataclass
class DPResult:
    """Optimal paths for every step count 1..max_steps: paths[N] lists the N grid indices of the
    positive sigmas (index 0 = sigma_max), values[N] the total cost (inf where impossible)."""
    sigmas: torch.Tensor
    values: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)

    @property
    def max_steps(self) -> int:
        return max(self.paths) if self.paths else 0

    def schedule(self, steps: int) -> torch.Tensor:
        if steps not in self.paths:
            raise ValueError(f"steps={steps} is outside the optimised range 1..{self.max_steps}")
        return torch.cat([self.sigmas[self.paths[steps]], torch.zeros(1, dtype=torch.float64)])


def path_cost(costs: JumpCosts, path: Sequence[int], gamma: float = 1.0) -> float:
    """Total cost of a path of grid indices (starting at 0), including the final jump to 0; the
    i-th jump is weighted gamma**i (what the DP's cost-to-go weighting amounts to)."""
    path = [int(i) for i in path]
    if not path or path[0] != 0 or any(b <= a for a, b in zip(path, path[1:])):
        raise ValueError(f"a path starts at index 0 and strictly increases, got {path}")
    total, w = 0.0, 1.0
    for i, (j, k) in enumerate(zip(path, path[1:])):
        memory = costs.triple is not None and i > 0
        total += w * float(costs.triple[path[i - 1], j, k] if memory else costs.pair[j, k])
        w *= gamma
    return total + w * float(costs.terminal[path[-1]])


def _pair_paths(costs: JumpCosts, max_steps: int, gamma: float, res: DPResult) -> None:
    # V_1(j) = terminal[j]; V_n(j) = min_k pair[j, k] + gamma V_{n-1}(k).
    V, arg = costs.terminal.clone(), [None]
    res.values[1], res.paths[1] = float(V[0]), [0]
    for n in range(2, max_steps + 1):
        V, a = (costs.pair + gamma * V[None, :]).min(dim=1)
        arg.append(a)
        res.values[n] = float(V[0])
        path = [0]
        for m in range(n, 1, -1):
            path.append(int(arg[m - 1][path[-1]]))
        res.paths[n] = path if math.isfinite(res.values[n]) else None


def _triple_paths(costs: JumpCosts, max_steps: int, gamma: float, res: DPResult) -> None:
    # State (p, j): the last two levels. W_1(p, j) = terminal[j];
    # W_n(p, j) = min_k triple[p, j, k] + gamma W_{n-1}(j, k); the first jump from 0 has no history.
    G = costs.sigmas.numel()
    W, args = costs.terminal[None, :].expand(G, G).clone(), [None]
    res.values[1], res.paths[1] = float(costs.terminal[0]), [0]
    for n in range(2, max_steps + 1):
        v, k1 = (costs.pair[0] + gamma * W[0]).min(dim=0)
        res.values[n] = float(v)
        path = [0, int(k1)]
        for m in range(n - 1, 1, -1):
            path.append(int(args[m - 1][path[-2], path[-1]]))
        res.paths[n] = path if math.isfinite(res.values[n]) else None
        if n < max_steps:
            W, a = (costs.triple + gamma * W[None, :, :]).min(dim=2)
            args.append(a)


def optimal_paths(costs: JumpCosts, max_steps: int, gamma: float = 1.0) -> DPResult:
    """Exact minimum of path_cost over all paths with N steps, for every N in 1..max_steps."""
    G = costs.sigmas.numel()
    max_steps = check_steps(max_steps)
    if max_steps > G:
        raise ValueError(f"steps={max_steps} is larger than the candidate grid ({G} levels): "
                         f"use a finer grid or fewer steps")
    gamma = check_positive(gamma, "gamma")
    res = DPResult(costs.sigmas.clone())
    (_pair_paths if costs.triple is None else _triple_paths)(costs, max_steps, gamma, res)
    res.paths = {n: p for n, p in res.paths.items() if p is not None}
    return res


def first_order_weights(sigmas: torch.Tensor, upto: Optional[int] = None):
    """(w0, w) such that an Euler solve on `sigmas` reaches x_n = w0*x_0 + sum_i w[i]*D(x_i; s_i)
    at n = upto (default: the end). For s_n > 0: w0 = s_n/s_0 and w_i = s_n (1/s_{i+1} - 1/s_i),
    all >= 0 and summing with w0 to 1; if s_n = 0 the step to 0 returns D exactly (w = e_{n-1})."""
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    n = s.numel() - 1 if upto is None else int(upto)
    if not (1 <= n <= s.numel() - 1):
        raise ValueError(f"upto must be in 1..{s.numel() - 1}, got {upto}")
    if float(s[n]) == 0.0:
        w = torch.zeros(n, dtype=torch.float64)
        w[-1] = 1.0
        return torch.tensor(0.0, dtype=torch.float64), w
    return s[n] / s[0], s[n] * (1 / s[1:n + 1] - 1 / s[:n])
