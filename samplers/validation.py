"""Input checks shared by schedules, solvers and nodes.

Every check raises ValueError whose message starts with the parameter's name, so a node error in
ComfyUI says which widget to fix. Checks run before any model call."""
from __future__ import annotations

import math
from typing import Iterable

import torch


def _as_float(value, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def check_steps(steps, name: str = "steps", minimum: int = 1) -> int:
    """An integer >= minimum (bools and fractional values are refused)."""
    if isinstance(steps, bool) or (isinstance(steps, float) and not steps.is_integer()):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {steps!r}")
    try:
        value = int(steps)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {steps!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_positive(value, name: str) -> float:
    """A finite number > 0."""
    out = _as_float(value, name)
    if out <= 0:
        raise ValueError(f"{name} must be > 0, got {out}")
    return out


def check_non_negative(value, name: str) -> float:
    out = _as_float(value, name)
    if out < 0:
        raise ValueError(f"{name} must be >= 0, got {out}")
    return out


def check_range(value, name: str, low: float, high: float, low_open=False, high_open=False) -> float:
    """low <= value <= high (each end optionally open)."""
    out = _as_float(value, name)
    bad_low = out <= low if low_open else out < low
    bad_high = out >= high if high_open else out > high
    if bad_low or bad_high:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {out}")
    return out


def check_sigma_range(sigma_min, sigma_max, min_name: str = "sigma_min", max_name: str = "sigma_max"):
    """0 < sigma_min < sigma_max, both finite; returns the pair as floats."""
    lo = check_positive(sigma_min, min_name)
    hi = check_positive(sigma_max, max_name)
    if lo >= hi:
        raise ValueError(f"{min_name} must be smaller than {max_name}, got {min_name}={lo}, {max_name}={hi}")
    return lo, hi


def check_choice(value, allowed: Iterable, name: str):
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def check_order(order, allowed: Iterable[int], name: str = "order", family: str = "") -> int:
    """An integer order the solver family offers."""
    allowed = tuple(allowed)
    if isinstance(order, bool) or not isinstance(order, (int, float)) or float(order) != int(order):
        raise ValueError(f"{name} must be an integer in {list(allowed)}, got {order!r}")
    value = int(order)
    if value not in allowed:
        who = f"{family} " if family else ""
        raise ValueError(f"{name} must be one of {list(allowed)} for {who}solvers, got {value}")
    return value


def check_sigmas(sigmas, name: str = "sigmas", allow_final_nonzero: bool = True) -> torch.Tensor:
    """A 1-D tensor of finite noise levels, strictly decreasing, all > 0 except possibly the last,
    which may be 0 (ComfyUI's convention) or, where allow_final_nonzero, a positive value
    (schedules such as the F-scheduler stop at a non-zero sigma). Returns the tensor unchanged."""
    if not torch.is_tensor(sigmas):
        raise ValueError(f"{name} must be a 1-D torch tensor, got {type(sigmas).__name__}")
    if sigmas.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(sigmas.shape)}")
    if sigmas.numel() == 0:
        raise ValueError(f"{name} is empty: a schedule needs at least one sigma")
    if sigmas.is_complex() or not sigmas.is_floating_point():
        raise ValueError(f"{name} must be a real floating-point tensor, got dtype {sigmas.dtype}")
    values = sigmas.detach().to("cpu", torch.float64)
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).nonzero()[0])
        raise ValueError(f"{name} must be finite; {name}[{bad}] = {values[bad].item()}")
    if (values < 0).any():
        bad = int((values < 0).nonzero()[0])
        raise ValueError(f"{name} must be >= 0; {name}[{bad}] = {values[bad].item()}")
    if values.numel() > 1:
        steps = values[1:] - values[:-1]
        if (steps >= 0).any():
            bad = int((steps >= 0).nonzero()[0])
            raise ValueError(f"{name} must be strictly decreasing; {name}[{bad}] = {values[bad].item()} "
                             f"is followed by {name}[{bad + 1}] = {values[bad + 1].item()}")
    if values.numel() > 1 and (values[:-1] == 0).any():
        raise ValueError(f"{name}: only the last sigma may be 0")  # unreachable after the decrease test
    if not allow_final_nonzero and values[-1].item() != 0:
        raise ValueError(f"{name} must end at 0 here, got a final sigma of {values[-1].item()}")
    return sigmas


def check_multistep_length(sigmas, order: int, allow_short: bool, name: str = "sigmas", solver: str = "") -> None:
    """A multistep method of order k reaches that order only from its k-th step on; a schedule with
    fewer steps than the order is refused unless the caller allows the lower-order warm-up."""
    steps = int(sigmas.numel()) - 1
    if not allow_short and 0 < steps < order:
        who = f"{solver} " if solver else ""
        raise ValueError(f"{name} has {steps} step(s), too short for the {who}order-{order} multistep method "
                         f"(needs >= {order} steps); give more sigmas, a lower order, or "
                         f"allow_short_schedule=True to accept a lower-order run")
