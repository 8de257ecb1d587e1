"""Distilled-model presets (samplers/distilled.py) mapped through the model's own model_sampling."""
from __future__ import annotations

import logging

import torch

from ..samplers.distilled import far_steps, preset
from .guidance import is_flow
from .sigma_graph import sigma_ui

log = logging.getLogger("FewStep")

TRAINED_KEY = "fewstep_trained_sigmas"  # read by web/sigma_graph.js
FAR_KEY = "fewstep_far_steps"


def _discrete_table(model_sampling):
    table = getattr(model_sampling, "sigmas", None)
    if is_flow(model_sampling) or table is None or table.numel() != 1000:
        raise ValueError(
            f"model: the distilled-model presets are trained timesteps of SD1.5/SDXL eps/v models "
            f"(1000-step discrete table); this model's sampling is {type(model_sampling).__name__}"
            f"{' (flow matching)' if is_flow(model_sampling) else ''}, where they mean nothing")
    return table


def preset_sigmas(model_sampling, name: str, steps: int) -> torch.Tensor:
    """σ of the preset's (whole) timesteps: the entries of the model's own σ(t) table, exactly as
    trained (model_sampling.sigma(t) interpolates in log σ and would round them), then 0."""
    table = _discrete_table(model_sampling)
    ts = preset(name).timesteps(steps)
    sig = table.detach().float().cpu()[torch.tensor(ts, dtype=torch.long)]
    return torch.cat([sig, sig.new_zeros([1])])


def visited_timesteps(model_sampling, sigmas) -> list[float]:
    """The model's timestep of every σ > 0 a schedule evaluates (its last point is not evaluated)."""
    _discrete_table(model_sampling)
    values = sigmas.detach().float().cpu().reshape(-1)[:-1]
    values = values[values > 0]
    return [float(t) for t in model_sampling.timestep(values).reshape(-1)]


def trained_sigmas(model_sampling, name: str, trained_steps: int) -> list[float]:
    """σ of the timesteps the checkpoint was trained at, through the model's own model_sampling."""
    _discrete_table(model_sampling)
    ts = torch.tensor(preset(name).trained(trained_steps), dtype=torch.float32)
    return [float(s) for s in model_sampling.sigma(ts).reshape(-1).cpu()]


def check_far(model_sampling, sigmas, name: str, trained_steps: int):
    """The steps evaluated far from every trained timestep, and a call that logs them (None when
    none is far): one rule for the log line and the σ graph's marks."""
    p = preset(name)
    trained = p.trained(trained_steps)
    far = far_steps(visited_timesteps(model_sampling, sigmas), trained)
    if not far:
        return far, None
    where = ", ".join(f"step {i}: t={t:.0f} (nearest trained {n})" for i, t, n in far)

    def report():
        log.warning("FewStep distilled timesteps: %d of %d steps are far from every timestep %s was "
                    "trained at %s: %s", len(far), len(sigmas) - 1, p.label, trained if len(trained) <= 12
                    else "(its 50-point grid)", where)
    return far, report


def warn_far(model_sampling, sigmas, name: str, trained_steps: int) -> list:
    """Log one line when the schedule evaluates the model far from every trained timestep."""
    far, report = check_far(model_sampling, sigmas, name, trained_steps)
    if report:
        report()
    return far


def distilled_ui(model_sampling, sigmas, name: str, trained_steps: int, far) -> dict:
    """sigma_ui plus the trained σ levels and the far step indices, for the graph's trained marks."""
    ui = sigma_ui(sigmas)
    ui[TRAINED_KEY] = trained_sigmas(model_sampling, name, trained_steps)
    ui[FAR_KEY] = [i for i, _, _ in far]
    return ui
