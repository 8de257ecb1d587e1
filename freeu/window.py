"""The σ window in which FreeU is on, and its three ways of being given (σ, percent, step).

FreeU is on for a model evaluation at σ when  low <= σ <= high  (both ends inclusive, with a
relative slack of 1e-5 so a σ that went through float32 still counts as the grid point it is).
Samplers walk σ downwards, so `high` is where FreeU starts and `low` where it stops.

This is the one FreeU-window type of the pack: the FreeU node builds it from its widgets, the
F-scheduler recipe from the paper's start index on its solver grid (window_from_start_index), and
the σ graphs draw the model calls it covers (bridge/sigma_graph.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

SLACK = 1e-5
UNBOUNDED = 1e8  # ComfyUI's percent_to_sigma(0) is 999999999.9: "above every σ"


@dataclass(frozen=True)
class SigmaWindow:
    high: float
    low: float

    def contains(self, sigma: float) -> bool:
        return self.low * (1 - SLACK) <= sigma <= self.high * (1 + SLACK)

    @property
    def covers_everything(self) -> bool:
        return self.low <= 0.0 and self.high >= UNBOUNDED

    def calls_inside(self, call_sigmas: Sequence[float]) -> list:
        """Positions in `call_sigmas` (the σ of each model call, in order) that get FreeU."""
        return [i for i, sigma in enumerate(call_sigmas) if self.contains(float(sigma))]


def check_sigma_batch(batch: int, n_sigmas: int) -> None:
    """ComfyUI concatenates cond and uncond chunks, each carrying the same σ per sample, so the
    UNet batch must be a whole multiple of the σ values it was given."""
    if n_sigmas == 0 or batch % n_sigmas != 0:
        raise RuntimeError(f"FewStep FreeU: batch {batch} is not a multiple of the "
                           f"{n_sigmas} σ values ComfyUI passed")


def _number(name, value):
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} is NaN")
    return value


def window_from_sigma(start_sigma: float, end_sigma: float) -> SigmaWindow:
    """On from σ = start_sigma down to σ = end_sigma."""
    start, end = _number("start_sigma", start_sigma), _number("end_sigma", end_sigma)
    if end < 0:
        raise ValueError(f"end_sigma must be >= 0, got {end}")
    if start < end:
        raise ValueError(f"start_sigma ({start}) must be >= end_sigma ({end}): σ decreases while "
                         "sampling, so FreeU starts at the larger σ")
    return SigmaWindow(high=start, low=end)


def window_from_percent(start_percent: float, end_percent: float,
                        percent_to_sigma: Callable[[float], float]) -> SigmaWindow:
    """On from start_percent to end_percent of the model's schedule (0 = pure noise, 1 = clean),
    converted with the model's own model_sampling.percent_to_sigma."""
    start, end = _number("start_percent", start_percent), _number("end_percent", end_percent)
    for name, value in (("start_percent", start), ("end_percent", end)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if start > end:
        raise ValueError(f"start_percent ({start}) must be <= end_percent ({end})")
    return SigmaWindow(high=float(percent_to_sigma(start)), low=float(percent_to_sigma(end)))


def window_from_steps(sigmas: Sequence[float], start_step: float, end_step: float) -> SigmaWindow:
    """On from grid point sigmas[start_step] down to sigmas[end_step] (inclusive; end_step -1 is
    the last point). Every evaluation at a σ in that range counts, so a 2nd-order sampler's
    extra evaluation at sigmas[start_step] (the end of the step before) is on as well."""
    values = [float(s) for s in sigmas]
    n = len(values)
    if n == 0:
        raise ValueError("sigmas is empty")
    if any(math.isnan(v) for v in values):
        raise ValueError("sigmas contains NaN")
    if any(v < 0 for v in values):
        raise ValueError("sigmas contains a negative value")
    if any(b > a for a, b in zip(values, values[1:])):
        raise ValueError("sigmas must be non-increasing (a sampling schedule runs from high to low σ)")
    steps = []
    for name, value in (("start_step", start_step), ("end_step", end_step)):
        value = _number(name, value)
        if value != int(value):
            raise ValueError(f"{name} must be a whole step index, got {value}")
        index = int(value)
        if not -n <= index < n:
            raise ValueError(f"{name} {index} is outside the schedule (sigmas has {n} points, "
                             f"indices 0..{n - 1} or -1 for the last)")
        steps.append(index % n)
    start, end = steps
    if start > end:
        raise ValueError(f"start_step ({start}) must be <= end_step ({end})")
    return SigmaWindow(high=values[start], low=values[end])


def window_from_start_index(grid: Sequence[float], start_index: int | None, first_call: int = 0) -> SigmaWindow | None:
    """On for every model call at grid index >= start_index of a solver grid whose calls are at points
    first_call .. len(grid) - 2 (the last point has none; an analytic first step makes point 0
    call-free: first_call 1). The gate sits at the geometric middle of the gap between the last call
    without FreeU and the first with it (every call is exactly at a grid σ), or above every σ when
    the first call is on. None when no index is given or no call is that late: FreeU off."""
    if start_index is None:
        return None
    index = _number("freeu_start", start_index)
    if index != int(index) or index < 0:
        raise ValueError(f"freeu_start must be a whole grid index >= 0, got {start_index}")
    values = [float(s) for s in grid]
    calls = range(int(first_call), len(values) - 1)
    on = [i for i in calls if i >= index]
    if not on:
        return None
    first = on[0]
    high = math.inf if first == calls[0] else math.sqrt(values[first - 1] * values[first])
    return SigmaWindow(high=high, low=0.0)
