"""The candidate grid and the teacher pass: a fine DPM-Solver++(2M) solve from M start noises that
stores the state and the denoiser output at every grid level (everything the costs need)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..validation import check_sigma_range, check_steps
from .rules import JUMP_RULES, apply_rule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_MERGE_TOL = 1e-6  # in log sigma: closer levels are one level (multistep coefficients blow up otherwise)


def log_grid(sigma_max: float, sigma_min: float, size: int = 120, include: Sequence[float] = ()) -> torch.Tensor:
    """`size` levels uniform in log sigma from sigma_max to sigma_min (both exact), float64,
    decreasing; `include` adds levels (e.g. a baseline schedule's points) inside the range."""
    sigma_min, sigma_max = check_sigma_range(sigma_min, sigma_max)
    size = check_steps(size, "grid size", 2)
    grid = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), size, dtype=torch.float64))
    grid[0], grid[-1] = sigma_max, sigma_min
    lo, hi = math.log(sigma_min) + _MERGE_TOL, math.log(sigma_max) - _MERGE_TOL
    extra = [float(s) for s in include if float(s) > 0 and lo < math.log(float(s)) < hi]
    if not extra:
        return grid
    grid = torch.unique(torch.cat([grid, torch.tensor(extra, dtype=torch.float64)])).flip(0)
    keep = torch.ones(grid.numel(), dtype=torch.bool)
    last = float(grid[0])
    for i in range(1, grid.numel()):
        if math.log(last / float(grid[i])) < _MERGE_TOL:
            keep[i] = False
        else:
            last = float(grid[i])
    return grid[keep]


def check_grid(sigmas: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError(f"the candidate grid must be a 1-D tensor of >= 2 levels, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all() or (s <= 0).any():
        raise ValueError("the candidate grid must hold finite levels > 0 (the final 0 is implicit)")
    if not (s[1:] < s[:-1]).all():
        raise ValueError("the candidate grid must be strictly decreasing")
    return s


@dataclass
class Teacher:
    """Fine-grid solution from M start noises: states[j] = x(s_j), denoised[j] = D(x(s_j); s_j),
    final = the teacher's output (its last step s_{G-1} -> 0 returns denoised[-1])."""
    sigmas: torch.Tensor          # (G,) float64, CPU
    states: torch.Tensor          # (G, M, *shape)
    denoised: torch.Tensor        # (G, M, *shape)
    calls: int = 0                # model evaluations (batched over the M samples)

    @property
    def final(self) -> torch.Tensor:
        return self.denoised[-1]

    def subset(self, idx) -> "Teacher":
        """The same teacher restricted to some samples (e.g. training vs held-out)."""
        return Teacher(self.sigmas, self.states[:, idx], self.denoised[:, idx], self.calls)


def teacher_calls(grid_size: int, substeps: int = 1) -> int:
    """Model calls of teacher_pass on a grid of `grid_size` levels (each batched over the noises)."""
    return (int(grid_size) - 1) * int(substeps) + 1


def _sub_levels(grid: torch.Tensor, j: int, substeps: int) -> list:
    """The levels of interval j -> j+1 where the teacher calls the model, then the landing level."""
    if j == grid.numel() - 1:
        return [float(grid[j])]
    hi, lo = math.log(float(grid[j])), math.log(float(grid[j + 1]))
    return [math.exp(hi + (lo - hi) * i / substeps) for i in range(substeps)] + [float(grid[j + 1])]


@torch.no_grad()
def teacher_pass(denoiser: Denoiser, x_start: torch.Tensor, grid: torch.Tensor, substeps: int = 1,
                 progress: Optional[Callable[[int, int], None]] = None,
                 check_cancel: Optional[Callable[[], None]] = None,
                 store_device=None, store_dtype=None) -> Teacher:
    """DPM-Solver++(2M) from x_start (already at noise level grid[0]) down the grid, `substeps`
    log-uniform sub-steps per interval (one model call each), storing the state and denoiser
    output at every grid level. Model calls: teacher_calls(G, substeps).

    progress(done, total) is called after every model call; check_cancel() before every call
    (it raises to stop; nothing is kept)."""
    grid = check_grid(grid)
    substeps = check_steps(substeps, "substeps")
    if not torch.is_tensor(x_start) or x_start.ndim < 2:
        raise ValueError("x_start must be a batched tensor (M, ...)")
    G = grid.numel()
    store_device = x_start.device if store_device is None else store_device
    store_dtype = x_start.dtype if store_dtype is None else store_dtype
    states = torch.empty((G,) + tuple(x_start.shape), device=store_device, dtype=store_dtype)
    denoised = torch.empty_like(states)
    rule, total, done = JUMP_RULES["dpmpp_2m"], teacher_calls(G, substeps), 0
    s_in = x_start.new_ones([x_start.shape[0]])
    x, d_prev, s_prev = x_start, None, None
    for j in range(G):
        levels = _sub_levels(grid, j, substeps)
        for i, s in enumerate(levels[:substeps] if j < G - 1 else levels):
            if check_cancel is not None:
                check_cancel()
            d = denoiser(x, s * s_in)
            if not torch.isfinite(d).all():
                raise FloatingPointError(f"the denoiser returned non-finite values at sigma={s:.6g}")
            done += 1
            if progress is not None:
                progress(done, total)
            if i == 0:
                states[j], denoised[j] = x.to(store_device, store_dtype), d.to(store_device, store_dtype)
            if j < G - 1:
                x = apply_rule(rule, x, d, d_prev, s_prev, s, levels[i + 1])
                d_prev, s_prev = d, s
    return Teacher(grid.clone(), states, denoised, done)
