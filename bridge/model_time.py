"""Timestep space of a ComfyUI model, for the schedules defined in timestep space (timestep-power,
F-scheduler).

Those schedules need a training-time axis t with a table sigma(t). What each model_sampling offers:
* discrete VP models (ModelSamplingDiscrete: SD1.5, SDXL, SD2 eps/v, zsnr): the 1000-entry training
  sigma table, t = 0..999, sigma(t) by log-sigma interpolation (ComfyUI's own sigma(t)). This is the
  paper's setting and reproduces its lists.
* flow / CONST models (ModelSamplingDiscreteFlow: SD3, AuraFlow...; ModelSamplingFlux): their
  `sigmas` table is sigma(t) on the model's uniform training-time grid (shift applied), the table
  ComfyUI's "simple" scheduler walks; t = position in that table. A power law there is the natural
  analogue (an extension of the paper, which only covers VP models).
* continuous EDM-type models (ModelSamplingContinuousEDM / ContinuousV / DiscreteEDM) and anything
  else: refused. Their "timestep" is c_noise = ln(sigma)/4 (negative below sigma = 1) or an angle,
  and their table is log-uniform in sigma, so "a power law in training time" has no meaning; use the
  Karras schedule, which is defined in sigma.
"""
import torch

import comfy.model_sampling as ms_mod

VP = "discrete_vp"
FLOW = "flow"


def _classes(*names):
    return tuple(c for c in (getattr(ms_mod, n, None) for n in names) if isinstance(c, type))


def describe(model_sampling) -> str:
    """ComfyUI builds model_sampling as class ModelSampling(<sampling>, <prediction>); name both."""
    cls = type(model_sampling)
    if cls.__name__ == "ModelSampling" and cls.__bases__:
        return " + ".join(b.__name__ for b in cls.__bases__)
    return cls.__name__


def time_table(model_sampling, what: str = "this schedule"):
    """(ascending sigma table on the CPU in float64, kind) or a ValueError naming the model type."""
    name = describe(model_sampling)
    discrete = _classes("ModelSamplingDiscrete")
    refused = _classes("ModelSamplingContinuousEDM", "ModelSamplingDiscreteEDM")
    flow = _classes("ModelSamplingDiscreteFlow", "ModelSamplingFlux")
    table = getattr(model_sampling, "sigmas", None)
    if refused and isinstance(model_sampling, refused):
        raise ValueError(
            f"model: {what} is defined in the model's training-timestep space, but this model's "
            f"sampling ({name}) is continuous EDM-style: its timestep is ln(sigma)/4, negative below "
            f"sigma = 1, so a power law in timestep is undefined. Use FewStep Karras Sigmas (sigma space).")
    kind = None
    if discrete and isinstance(model_sampling, discrete) and type(model_sampling).sigma is discrete[0].sigma:
        kind = VP
    elif flow and isinstance(model_sampling, flow):
        kind = FLOW
    if kind is None or not torch.is_tensor(table) or table.ndim != 1 or table.numel() < 2:
        raise ValueError(
            f"model: {what} needs a model with a discrete training-timestep table (SD1.5/SDXL-style "
            f"discrete models or flow models); {name} has none. Use FewStep Karras Sigmas instead.")
    table = table.detach().to("cpu", torch.float64)
    if (table <= 0).any() or (table[1:] <= table[:-1]).any():
        raise ValueError(f"model: the sigma table of {name} is not strictly increasing and positive; "
                         f"{what} cannot be built from it")
    return table, kind


def sigma_range(model_sampling):
    return float(model_sampling.sigma_min), float(model_sampling.sigma_max)
