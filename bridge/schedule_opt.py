"""Optimised schedules as ComfyUI runs them (maths: samplers/schedule_opt.py; files, records and model
identity: bridge/schedule_cache.py).

* optimise(): teacher pass, cost matrices and exact DP run through ComfyUI's own CFGGuider (the same
  conditioning processing, CFG, LoRAs, model patches and wrappers as a real sampling run: the work
  happens inside a KSAMPLER passed to guider.sample, the documented extension point
  SamplerCustomAdvanced uses); progress bar; cancel stops at the next model call.
* load(): a cached schedule for the connected model, by file or the latest.
* optimized_scheduler(): the dropdown scheduler `fewstep_optimized`, the schedule of the current model
  (see the cache module for how a handler that only gets model_sampling finds it)."""
import logging
import math
import os
import time

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths

from ..samplers import schedule_opt as so
from .solver_traits import traits_for
from ..samplers.schedules import karras_sigmas
from . import schedule_cache as cache
from .model_time import sigma_range

SCHEDULER_NAME = "fewstep_optimized"
LATEST = "latest for this model"
# Samplers whose output is not a deterministic ODE solve from the start noise, or that ignore the
# schedule: comparing them with the ODE teacher means nothing.
_NOT_ODE = ("ancestral", "sde", "lcm", "ddpm", "cfg_pp", "stochastic", "dpm_fast", "dpm_adaptive",
            "restart", "seeds_", "heunpp")
_ALGO = "teacher-dpmpp2m/propagated-costs/dp/guarded-select-v3"


def ode_samplers():
    names = [n for n in comfy.samplers.KSampler.SAMPLERS if not any(t in n for t in _NOT_ODE)]
    return names or ["euler"]


def user_dir() -> str:
    return folder_paths.get_user_directory()


class _Guarded:
    """The sampler-side model with a cancel check and a call counter in front; other attributes
    (inner_model ... used by some samplers) pass through."""

    def __init__(self, inner, check):
        self._inner, self._check = inner, check

    def __call__(self, *args, **kwargs):
        self._check()
        return self._inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _check_conditioning(positive, negative, cfg):
    if not positive:
        raise ValueError("positive: the conditioning is empty; connect a text encoder output (for the lab "
                         "model: 'Lab Empty Conditioning (FewStep)')")
    if not math.isclose(float(cfg), 1.0) and not negative:
        raise ValueError(f"negative: the conditioning is empty but cfg={cfg} needs it (CFG mixes positive and "
                         f"negative); connect a negative prompt or set cfg to 1")


def _sigma_bounds(model, sigma_max, sigma_min):
    ms_lo, ms_hi = sigma_range(model.get_model_object("model_sampling"))
    hi = ms_hi if not sigma_max else float(sigma_max)
    lo = ms_lo if not sigma_min else float(sigma_min)
    tol = 1e-4
    if hi > ms_hi * (1 + tol) or hi < ms_lo * (1 - tol):
        raise ValueError(f"sigma_max={hi:g} is outside the model's sigma range [{ms_lo:.6g}, {ms_hi:.6g}]; "
                         f"use 0 for the model's own sigma_max")
    if lo < ms_lo * (1 - tol) or lo > ms_hi * (1 + tol):
        raise ValueError(f"sigma_min={lo:g} is outside the model's sigma range [{ms_lo:.6g}, {ms_hi:.6g}]; "
                         f"use 0 for the model's own sigma_min")
    if lo >= hi:
        raise ValueError(f"sigma_min ({lo:g}) must be smaller than sigma_max ({hi:g})")
    return min(hi, ms_hi), max(lo, ms_lo)


def _latent_shape(model, width, height, latent):
    if latent is not None:
        samples = latent["samples"] if isinstance(latent, dict) else latent
        if not torch.is_tensor(samples) or samples.ndim < 3:
            raise ValueError("latent: expected a LATENT with a 'samples' tensor")
        return tuple(int(v) for v in samples.shape[1:])
    fmt = model.get_model_object("latent_format")
    ratio = int(getattr(fmt, "spacial_downscale_ratio", 8))
    if width < ratio or height < ratio:
        raise ValueError(f"width/height must be at least {ratio} pixels")
    return (int(getattr(fmt, "latent_channels", 4)), int(height) // ratio, int(width) // ratio)


def optimise(model, positive, negative, cfg, width, height, steps, sampler, mc_samples, seed, latent, grid,
             holdout, refine_sweeps, refine_candidates, teacher_substeps, sigma_max, sigma_min, compare_karras,
             use_cache, refine_search, refine_objective, refine_starts):
    """(sigmas, MODEL carrying the schedule, report): from the cache when this key was run for these
    steps, else optimised (and written when use_cache). Parameters are checked by the node."""
    t0 = time.perf_counter()
    _check_conditioning(positive, negative, cfg)
    hi, lo = _sigma_bounds(model, sigma_max, sigma_min)
    shape = _latent_shape(model, width, height, latent)
    key = {
        "algo": _ALGO, "model": cache.model_fingerprint(model),
        "positive": cache.conditioning_fingerprint(positive),
        "negative": None if math.isclose(float(cfg), 1.0) else cache.conditioning_fingerprint(negative),
        "latent": list(shape), "cfg": round(float(cfg), 6), "sampler": sampler,
        "mc_samples": mc_samples, "holdout": holdout, "seed": int(seed), "grid": grid,
        "teacher_substeps": int(teacher_substeps), "sigma_range": [round(hi, 9), round(lo, 9)],
        "refine": ([int(refine_sweeps), int(refine_candidates)] + ([] if (refine_search, refine_objective) == ("grid", "geomean")
                                                                  else [refine_search, refine_objective])
                   # starts = 1 keeps the key of files made before multi-start existed
                   + ([int(refine_starts)] if int(refine_starts) != 1 else [])
                   if int(refine_sweeps) else None),
        "compare_karras": bool(compare_karras),
    }
    path = os.path.join(cache.cache_dir(user_dir()), cache.file_name(type(model.model).__name__, key))
    old = None
    if use_cache and os.path.exists(path):
        old = cache.read(path)  # raises a clear error for a damaged file
        if old["key"] != key:
            raise cache.ScheduleCacheError(f"optimised schedule file {path} holds another key (hash collision "
                                           f"or edited file); delete it to recompute")
        if str(steps) in old.get("selected", {}):
            out = cache.attach(model, old, path)
            sig, how = cache.schedule_from(old, steps)
            return (torch.tensor(sig, dtype=torch.float32), out,
                    cache.report(old, steps, path, f"cached, {how}", time.perf_counter() - t0))

    planned = so.planned_calls(steps, grid, int(teacher_substeps), len(so.DEFAULT_VARIANTS) + bool(compare_karras),
                               holdout, int(refine_sweeps), int(refine_candidates), refine_search,
                               refine_starts=int(refine_starts))
    logging.info("FewStep Optimise Schedule (%d steps, %s, %d + %d noises): %s", steps, sampler, mc_samples,
                 holdout, planned.describe())
    result = _run(model, positive, negative, cfg, shape, steps, sampler, mc_samples, holdout, int(seed),
                  grid, int(teacher_substeps), hi, lo, int(refine_sweeps), int(refine_candidates),
                  bool(compare_karras), refine_search, refine_objective, int(refine_starts))
    record = cache.make_record(key, result, model, time.perf_counter() - t0, lo, hi, old)
    if use_cache:
        cache.write(path, record)
    out = cache.attach(model, record, path)
    sig, how = cache.schedule_from(record, steps)
    return torch.tensor(sig, dtype=torch.float32), out, cache.report(record, steps, path if use_cache else "(off)", how)


# The optimiser's noises go through the model in batches of at most this many (twice that with
# CFG > 1): its memory does not grow with mc_samples + holdout, and a sample's result does not
# depend on how many noises are used.
MODEL_BATCH = 8


def _run(model, positive, negative, cfg, shape, steps, sampler, mc, holdout, seed, grid, substeps, hi, lo,
         refine_sweeps, refine_candidates, compare_karras, refine_search="golden", refine_objective="mean",
         refine_starts=1):
    check = comfy.model_management.throw_exception_if_processing_interrupted
    pbar = comfy.utils.ProgressBar(1)
    ksampler = comfy.samplers.sampler_object(sampler)
    baselines = {"karras": karras_sigmas(steps, lo, hi, dtype=torch.float64)} if compare_karras else None
    found = {}

    def work(model_k, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        extra_args = extra_args or {}
        guarded = _Guarded(model_k, check)

        def denoiser(xx, s):
            s = s.to(xx.dtype)
            per_sample = s.ndim > 0 and s.shape[0] == xx.shape[0]
            return torch.cat([guarded(xx[i:i + MODEL_BATCH], s[i:i + MODEL_BATCH] if per_sample else s, **extra_args)
                              for i in range(0, xx.shape[0], MODEL_BATCH)])

        def run_sampler(x0, sig):
            sig = sig.to(x0.device, x0.dtype)
            return torch.cat([ksampler.sampler_function(guarded, x0[i:i + MODEL_BATCH].clone(), sig,
                                                        extra_args=extra_args, callback=None, disable=True,
                                                        **ksampler.extra_options)
                              for i in range(0, x0.shape[0], MODEL_BATCH)])

        gram_device = x.device if x.device.type == "cuda" else "cpu"  # float64 matmuls
        found["result"] = so.optimise_schedule(
            denoiser, x, hi, lo, steps, traits_for(sampler), run_sampler=run_sampler, holdout=holdout, grid_size=grid,
            substeps=substeps, baselines=baselines, refine_sweeps=refine_sweeps,
            refine_candidates=refine_candidates, refine_search=refine_search,
            refine_objective=refine_objective, refine_starts=refine_starts, progress=lambda d, t: pbar.update_absolute(d, t),
            check_cancel=check, store_device=x.device, gram_device=gram_device)
        return x

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    latent = torch.zeros((mc + holdout,) + tuple(shape))
    noise = comfy.sample.prepare_noise(latent, seed)
    sigmas = torch.cat([so.log_grid(hi, lo, grid), torch.zeros(1, dtype=torch.float64)]).float()
    guider.sample(noise, latent, comfy.samplers.KSAMPLER(work), sigmas, denoise_mask=None, callback=None,
                  disable_pbar=True, seed=seed)
    return found["result"]


def schedule_files():
    try:
        return cache.list_files(user_dir())
    except Exception:
        return []


def cache_mtime(schedule):
    """Changes when the picked file (or, for the latest, the cache folder) changes."""
    d = cache.cache_dir(user_dir())
    target = d if schedule == LATEST else os.path.join(d, os.path.basename(str(schedule)))
    try:
        return os.stat(target).st_mtime_ns
    except OSError:
        return None


def load(model, schedule, steps):
    """(sigmas, MODEL carrying the schedule, report) of a cached schedule for this model."""
    fp = cache.model_fingerprint(model)
    if schedule == LATEST:
        path, record = cache.latest_for_model(user_dir(), fp)
        if record is None:
            raise ValueError(f"no optimised schedule for this model (with its current LoRAs/patches) in "
                             f"{cache.cache_dir(user_dir())}; run 'Optimise Schedule (FewStep)' first")
    else:
        path = cache.resolve(user_dir(), schedule)
        record = cache.read(path)
        if record["key"].get("model") != fp:
            raise cache.ScheduleCacheError(
                f"{os.path.basename(path)} was optimised for another model (or other LoRAs/patches); pick "
                f"'{LATEST}' or run 'Optimise Schedule (FewStep)' for this model")
    sig, how = cache.schedule_from(record, steps)
    return torch.tensor(sig, dtype=torch.float32), cache.attach(model, record, path), cache.report(record, int(steps), path, how)


def optimized_scheduler(model_sampling, steps):
    """KSampler scheduler entry: the optimised schedule known for this model (see the cache module)."""
    found = cache.lookup(model_sampling)
    if found is None:
        raise ValueError(
            f"scheduler '{SCHEDULER_NAME}': no optimised schedule is known for this model in this session. "
            f"Run 'Optimise Schedule (FewStep)' on it (instant when cached), or pass the MODEL through "
            f"'Load Optimised Schedule (FewStep)' and use that node's MODEL output.")
    record, path = found
    sig, how = cache.schedule_from(record, steps)
    logging.info("FewStep %s: %d steps, %s from %s", SCHEDULER_NAME, int(steps), how, path)
    return torch.tensor(sig, dtype=torch.float32)
