"""The σ window in which FreeU is on, and its three ways of being given (σ, percent, step).

FreeU is on for a model evaluation at σ when  low <= σ <= high  (both ends inclusive, with a
relative slack of 1e-5 so a σ that went through float32 still counts as the grid point it is).
Samplers walk σ downwards, so `high` is where FreeU starts and `low` where it stops."""
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
