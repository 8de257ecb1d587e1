"""The guidance window and CFG++ inside ComfyUI's sampling path (comfy/samplers.py).

How ComfyUI evaluates a guided step: sampling_function(x, σ) builds conds = [cond, uncond]
(uncond = None when cfg == 1 and the cfg-1 optimisation is on), calc_cond_batch evaluates them in one
concatenated batch, then cfg_function combines them (sampler_cfg_function or
uncond + (cond - uncond) * cfg) and runs every sampler_post_cfg_function once.

The window hooks calc_cond_batch through ComfyUI's CALC_COND_BATCH wrapper chain (a chain, so it
composes with EasyCache, SLG's calc function and other wrappers). For a σ inside the window the call
passes through unchanged: plain CFG, bit for bit, with ComfyUI's own cfg-function and post-cfg
patches. For a σ outside it the unconditional entry is dropped before the batch is built (the UNet
really runs on the conditional rows only) and the conditional prediction is returned in both slots:
cfg_function then yields cond + (cond - cond) * cfg = cond exactly, and post-cfg patches see no
guidance signal (uncond_denoised = cond_denoised). Samplers keep their state (multistep history)
across the switch: only the model output changes.

The decision is taken per model call from the σ ComfyUI passes (one small device-to-host read per
call, as FewStep FreeU's torch route), never by counting calls, so 2nd-order samplers, restarts and
split schedules gate correctly."""
from __future__ import annotations

import torch

import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import comfy.samplers

from ..freeu.window import SigmaWindow, window_from_percent, window_from_sigma, window_from_steps

WINDOW_MODES = ("sigma", "percent", "step")
WRAPPER_KEY = "fewstep_guidance_window"
NODE = "Guidance Window (FewStep)"

# Default: guidance for σ >= 1 (start 10000 = every σ above). Chosen on the exact-denoiser lab's tuning
# mixtures (bench/study_guidance_window.py: at most 0.75x plain CFG's rows at 8 steps, mode share and
# evenness not below full CFG's, closest to the exact guided ODE end point) and checked unchanged on
# held-out mixtures; the guidance-interval paper's SDXL window [0.28, 5.42] failed that check.
DEFAULT_MODE, DEFAULT_START, DEFAULT_END = "sigma", 10000.0, 1.0


def is_flow(model_sampling) -> bool:
    """Flow-matching models (SD3, Flux, Wan, ...): x = (1 - σ) x0 + σ ε, σ in [0, 1]."""
    return isinstance(model_sampling, comfy.model_sampling.CONST)


def resolve_window(model, window: str, start, end, sigmas=None) -> SigmaWindow:
    """The node inputs as FewStep FreeU's SigmaWindow, or a ValueError naming the input."""
    if window not in WINDOW_MODES:
        raise ValueError(f"window must be one of {WINDOW_MODES}, got {window!r}")
    if window != "step" and sigmas is not None:
        raise ValueError(f"sigmas is connected but window is {window!r}: set window to 'step' to "
                         "count start/end in steps of that schedule, or disconnect it")
    model_sampling = model.get_model_object("model_sampling")
    try:
        if window == "step":
            if sigmas is None:
                raise ValueError("window 'step' needs the sampler's schedule on the sigmas input")
            return window_from_steps(sigmas.detach().float().cpu().reshape(-1).tolist(), start, end)
        if window == "sigma":
            if is_flow(model_sampling):
                raise ValueError(
                    "window 'sigma' is refused on a flow-matching model "
                    f"({type(model_sampling).__name__}, σ in [0, 1]): σ bounds are eps/v-model σ "
                    "(x = x0 + σ·ε, SD1.5/SDXL range 0.03-14.6) and mean something else there. "
                    "Use window 'percent' or 'step', which follow the model's own schedule.")
            return window_from_sigma(start, end)
        return window_from_percent(start, end, model_sampling.percent_to_sigma)
    except ValueError as err:
        if str(err).startswith("window"):
            raise
        raise ValueError(f"start/end (window {window!r}): {err}") from None


class GuidanceWindowWrapper:
    """CALC_COND_BATCH wrapper: the unconditional pass only for σ inside `window`."""

    def __init__(self, window: SigmaWindow):
        self.window = window

    def __deepcopy__(self, memo):
        return self  # immutable configuration; ModelPatcher.clone() deep-copies model options

    def __repr__(self):
        return f"GuidanceWindowWrapper({self.window})"

    def guided(self, timestep) -> list[bool]:
        return [self.window.contains(v) for v in timestep.detach().reshape(-1).tolist()]

    @torch.compiler.disable  # a host-side decision
    def __call__(self, executor, model, conds, x_in, timestep, model_options):
        # Only the standard [cond, uncond] pair of sampling_function; other callers (PAG's and SLG's
        # extra passes, DualCFG's three conds) and cfg == 1 (uncond None) pass through.
        if len(conds) != 2 or conds[1] is None or self.window.covers_everything:
            return executor(model, conds, x_in, timestep, model_options)
        flags = self.guided(timestep)
        if all(flags):
            return executor(model, conds, x_in, timestep, model_options)
        if not any(flags):
            cond = executor(model, [conds[0], None], x_in, timestep, model_options)[0]
            return [cond, cond]
        # Samples at different σ in one batch (no ComfyUI sampler does this): both passes, and the
        # conditional prediction in the unconditional slot of the samples outside the window.
        out = executor(model, conds, x_in, timestep, model_options)
        inside = torch.tensor(flags, device=x_in.device).view(-1, *([1] * (x_in.ndim - 1)))
        return [out[0], torch.where(inside, out[1], out[0])]


def with_guidance_window(model, window: SigmaWindow):
    """A clone of the ModelPatcher whose guided steps take the unconditional pass only inside
    `window` (a second window node replaces the first)."""
    patched = model.clone()
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY)
    if not window.covers_everything:
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY,
                                     GuidanceWindowWrapper(window))
    return patched


def window_guider(model, positive, negative, cfg: float, window: SigmaWindow):
    """ComfyUI's CFGGuider on the windowed model (for SamplerCustomAdvanced)."""
    guider = comfy.samplers.CFGGuider(with_guidance_window(model, window))
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider


# --- CFG++ dropdown samplers -------------------------------------------------------------------

# dropdown name -> (catalogue solver, fixed options); CFG++ forms exist for the single-point
# data-prediction and noise-prediction steps (samplers/common.guided_point).
CFG_PP_SAMPLERS = {
    "fewstep_dpmpp_1s_cfg_pp": ("dpmpp_1s", {}),
    "fewstep_dpmpp_2m_cfg_pp": ("dpmpp_2m", {}),
    "fewstep_dpmpp_3m_cfg_pp": ("dpmpp_3m", {}),
    "fewstep_deis_tab2_cfg_pp": ("deis_tab2", {}),
    "fewstep_deis_tab3_cfg_pp": ("deis_tab3", {}),
    "fewstep_unipc_fs_cfg_pp": ("unipc_fs", {}),
}


class UnconditionalReader:
    """A post-cfg function that keeps the latest call's unconditional estimate for the solver.
    Outside a guidance window the window wrapper puts the conditional estimate there, so the CFG++
    step is the plain step and no unconditional pass is made."""

    def __init__(self):
        self.uncond = None

    def __call__(self, args):
        self.uncond = args["uncond_denoised"] if args.get("uncond") is not None else args["denoised"]
        return args["denoised"]

    def latest(self):
        return self.uncond


def _model_sampling_of(model):
    """The k-diffusion model ComfyUI hands a sampler is KSamplerX0Inpaint -> CFGGuider."""
    guider = getattr(model, "inner_model", None)
    patcher = getattr(guider, "model_patcher", None)
    return None if patcher is None else patcher.get_model_object("model_sampling")


def cfg_pp_sampler(name: str, key: str, fixed: dict):
    """A KSampler-signature function running solver `key` in its CFG++ form. As ComfyUI's own
    *_cfg_pp samplers, the cfg value is CFG++'s λ (0..1 in the paper) and the cfg-1 optimisation is
    off, so cfg 1 is λ = 1, a guided step."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
        from ..samplers.catalog import solver
        model_sampling = _model_sampling_of(model)
        if model_sampling is not None and is_flow(model_sampling):
            raise ValueError(f"sampler_name {name}: this CFG++ form is written for x = x0 + σ·ε "
                             f"(eps/v models); {type(model_sampling).__name__} is a flow-matching "
                             "model. Use ComfyUI's euler_cfg_pp there.")
        extra_args = dict(extra_args or {})
        reader = UnconditionalReader()
        options = dict(extra_args.get("model_options", {}))
        extra_args["model_options"] = comfy.model_patcher.set_model_options_post_cfg_function(
            options, reader, disable_cfg1_optimization=True)
        spec = solver(key)
        settings = {**spec.options, **fixed}
        if spec.multistep:
            settings["allow_short_schedule"] = True
        return spec.fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                       **{**settings, **kwargs}, cfg_pp=reader.latest)

    sample.__name__ = f"sample_{name}"
    sample.__qualname__ = sample.__name__
    return sample


def cfg_pp_samplers() -> dict:
    """Dropdown name -> sampler function, for nodes/ to register."""
    return {name: cfg_pp_sampler(name, key, fixed) for name, (key, fixed) in CFG_PP_SAMPLERS.items()}
