"""Schedules optimised for the user's own model (maths: samplers/schedule_opt.py; cache and model
identity: nodes/_schedule_cache.py).

* FewStepOptimizeSchedule: teacher pass, cost matrices and exact DP run through ComfyUI's own
  CFGGuider (the same conditioning processing, CFG, LoRAs, model patches and wrappers as a real
  sampling run: the work happens inside a KSAMPLER passed to guider.sample, the documented
  extension point SamplerCustomAdvanced uses); progress bar; cancel stops at the next model call.
* FewStepLoadOptimizedSchedule: a cached schedule for the connected model, by file or the latest.
* dropdown scheduler `fewstep_optimized`: the schedule of the current model (see the cache module
  for how a handler that only gets model_sampling finds it)."""
import copy
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

from ..bridge.solver_traits import traits_for
from ..samplers import schedule_opt as so
from ..samplers.schedules import karras_sigmas
from . import _schedule_cache as cache
from ._model_time import describe, sigma_range
from ._registry import add_scheduler
from .preview_sigmas import sigma_ui

CATEGORY = "FewStep/schedules"
SCHEDULER_NAME = "fewstep_optimized"
LATEST = "latest for this model"
# Samplers whose output is not a deterministic ODE solve from the start noise, or that ignore the
# schedule: comparing them with the ODE teacher means nothing.
_NOT_ODE = ("ancestral", "sde", "lcm", "ddpm", "cfg_pp", "stochastic", "dpm_fast", "dpm_adaptive",
            "restart", "seeds_", "heunpp")
_ALGO = "teacher-dpmpp2m/propagated-costs/dp/guarded-select-v2"


def ode_samplers():
    names = [n for n in comfy.samplers.KSampler.SAMPLERS if not any(t in n for t in _NOT_ODE)]
    return names or ["euler"]


def _user_dir() -> str:
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


def _out(sigmas, model, report):
    """Node result plus the UI message the editor's sigma graph draws after the run."""
    return {"ui": sigma_ui(sigmas), "result": (sigmas, model, report)}


def _finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


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


def attach(model, record, path):
    """A clone of MODEL whose model_sampling (an object-patched copy) carries the schedule, for the
    dropdown entry; also registers the schedule for the original model_sampling object."""
    ms = model.get_model_object("model_sampling")
    cache.register(ms, record, path)
    m = model.clone()
    carrier = copy.deepcopy(ms)
    setattr(carrier, cache.ATTR, (record, path))
    m.add_object_patch("model_sampling", carrier)
    return m


def _report(record, steps, path, how, seconds=None):
    lines = [f"FewStep optimised schedule, {steps} steps ({how}), sampler {record['key']['sampler']} "
             f"(cost rule {record.get('cost_rule')}{'' if record.get('rule_exact') else ', proxy'})"]
    sig, _ = cache.schedule_from(record, steps)
    lines.append("sigmas: " + ", ".join(f"{v:.4f}" for v in sig))
    sel = record.get("selected", {}).get(str(steps))
    if sel:
        for name, e in sel.get("train_errors", {}).items():
            h = sel.get("holdout_errors", {}).get(name)
            lines.append(f"  {name:>8}: train error {e:.4g}" + (f", held-out {h:.4g}" if h is not None else ""))
        if sel.get("refine_history"):
            hist = sel["refine_history"]
            lines.append((f"  refined from {hist['start']}: " if hist.get("start") else "  refined: ") +
                         f"train {hist['train']}, held-out {hist['holdout']}")
        planned = f", planned at most {sel['planned_calls']}" if sel.get("planned_calls") else ""
        lines.append(f"model calls {sel.get('calls')}{planned} (batched over {record['key']['mc_samples'] + record['key']['holdout']} "
                     f"samples), {sel.get('seconds', 0):.1f} s")
    if seconds is not None:
        lines.append(f"returned in {seconds:.2f} s")
    lines.append(f"cache: {path}")
    return "\n".join(lines)


def _record(key, result, model, seconds, lo, hi, old=None):
    dp = {name: {"paths": {str(n): p for n, p in res.paths.items()},
                 "values": {str(n): _finite(v) for n, v in res.values.items()}}
          for name, res in result.dp.items()}
    sel = {
        "sigmas": [float(v) for v in result.sigmas.tolist()],
        "chosen": result.chosen,
        "train_errors": {k: _finite(v) for k, v in result.train_errors.items()},
        "holdout_errors": {k: _finite(v) for k, v in result.holdout_errors.items()},
        "calls": result.calls, "planned_calls": result.planned.total, "seconds": round(seconds, 3),
    }
    if result.refinement is not None:
        sel["refine_history"] = {"train": [round(v, 6) for v in result.refinement.train_error],
                                 "holdout": [round(v, 6) for v in result.refinement.holdout_error],
                                 "start": result.refined_from}
    record = old if old is not None else {
        "format": cache.FORMAT, "version": cache.VERSION, "key": key, "key_hash": cache.key_hash(key),
        "model_label": type(model.model).__name__,
        "model_sampling": {"type": describe(model.get_model_object("model_sampling")), "sigma_max": hi, "sigma_min": lo},
        "grid": [float(v) for v in result.grid.tolist()], "cost_rule": result.rule,
        "rule_exact": result.rule_exact, "dp": dp,
        "default_variant": result.chosen if result.chosen in dp else next(iter(dp)), "selected": {},
    }
    record["selected"][str(result.steps)] = sel
    record["created"] = cache.now()
    return record


class FewStepOptimizeSchedule:
    DESCRIPTION = ("Finds the N-step sigma schedule with the smallest discretisation error for YOUR model, "
                   "conditioning, CFG and sampler: one fine teacher pass from a few noises (through ComfyUI's own "
                   "guider, so LoRAs and patches count), a cost for every jump between candidate sigmas, an exact "
                   "dynamic program that gives the best path for every step count, then the candidates (and "
                   "Karras) are run with your sampler and the best is kept, Karras unless a candidate beats it significantly "
                   "(paired test on the held-out noises, on the fitting ones when holdout < 2); the model calls it will "
                   "make are logged before the teacher pass and shown in the report; an optional refinement (refine_sweeps, off by default: "
                   "it costs several times the teacher pass) moves each sigma against your sampler, early-stopped on "
                   "held-out noises. Results are cached as JSON in the "
                   "user directory: the same inputs return at once. The MODEL output makes KSampler's "
                   "'fewstep_optimized' scheduler use this schedule.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SIGMAS", "MODEL", "STRING")
    RETURN_NAMES = ("sigmas", "model", "report")
    FUNCTION = "optimise"
    SIGMA_GRAPH = {}  # needs model calls: drawn after the run from the UI message (nodes/sigma_graph.py)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model to optimise for (with its LoRAs and patches applied)."}),
            "positive": ("CONDITIONING", {"tooltip": "Positive conditioning, as you will sample with it."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative conditioning (needed when cfg is not 1)."}),
            "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "CFG scale you will sample with; the schedule is optimised for it."}),
            "width": ("INT", {"default": 1024, "min": 16, "max": 16384, "step": 8, "tooltip": "Image width in pixels (ignored when a LATENT is connected)."}),
            "height": ("INT", {"default": 1024, "min": 16, "max": 16384, "step": 8, "tooltip": "Image height in pixels (ignored when a LATENT is connected)."}),
            "steps": ("INT", {"default": 8, "min": 1, "max": 200, "tooltip": "Number of sampling steps N (model moves) to optimise for."}),
            "sampler": (ode_samplers(), {"default": "dpmpp_2m", "tooltip": "The sampler you will use. Euler-type and DPM++ 2M have exact cost models; others use the nearest one as a proxy and are compared by running them."}),
            "mc_samples": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Monte-Carlo start noises for the teacher pass (batched; more = steadier, slower)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": "fixed", "tooltip": "Seed of the Monte-Carlo noises."}),
        }, "optional": {
            "latent": ("LATENT", {"tooltip": "Optional: take the latent size from this LATENT (only its shape is used)."}),
            "grid": ("INT", {"default": 120, "min": 8, "max": 400, "tooltip": "Candidate sigmas (log-uniform between sigma_max and sigma_min); one teacher model call each."}),
            "holdout": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "Extra noises not used to fit, only to report/early-stop (needed by refine)."}),
            "refine_sweeps": ("INT", {"default": 0, "min": 0, "max": 10, "tooltip": "Coordinate-search sweeps with the actual sampler after the DP, early-stopped on the held-out noises. Costly: each sweep makes (N-1)*(candidates + 4 for golden)*N model calls per refined start (refine_starts), batched over mc_samples (N=8, golden, 8 candidates: 672 calls per sweep and start, about 5-6x the teacher pass of grid 120; with the default 3 starts about 2000 per sweep). 0 = off (the default: the teacher + DP + selection is about grid + 6N calls)."}),
            "refine_candidates": ("INT", {"default": 8, "min": 1, "max": 32, "tooltip": "Trial values per sigma in each refinement sweep (the coarse grid that golden search then narrows)."}),
            "refine_search": (list(so.SEARCHES[::-1]), {"default": "golden", "tooltip": "golden: the coarse trial grid, then 4 golden-section steps around its best value (measured on the lab: lower test error than grid at about 1.5-2x its calls, see BENCHMARKS.md 'Refinement variants'); grid: the coarse trial grid only."}),
            "refine_objective": (list(so.OBJECTIVES), {"default": "mean", "tooltip": "What the refinement minimises over the fitting noises: mean relative error (what the benchmarks report; measured best on the lab) or its geometric mean (less swayed by rare samples that land on another mode when there are very few noises)."}),
            "teacher_substeps": ("INT", {"default": 1, "min": 1, "max": 8, "tooltip": "DPM++ 2M sub-steps per grid interval in the teacher pass (accuracy vs time)."}),
            "sigma_max": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 5000.0, "step": 0.01, "round": False, "tooltip": "Largest sigma; 0 = the model's."}),
            "sigma_min": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 5000.0, "step": 0.001, "round": False, "tooltip": "Smallest non-zero sigma; 0 = the model's."}),
            "compare_karras": ("BOOLEAN", {"default": True, "tooltip": "Also run Karras (rho 7) as a candidate; it is kept unless another candidate beats it significantly (held-out noises when holdout >= 2)."}),
            "use_cache": ("BOOLEAN", {"default": True, "tooltip": "Read and write the JSON cache in the ComfyUI user directory (fewstep/schedules)."}),
            "refine_starts": ("INT", {"default": 3, "min": 1, "max": 8, "tooltip": "How many of the best distinct candidates (DP paths, Karras) are each refined; the one with the lowest held-out error is kept. Each start costs a full refinement (see refine_sweeps). 3 generalised best on the lab's validation noises (BENCHMARKS.md 'Refinement variants'); 1 = refine the selected schedule only."}),
        }}

    def optimise(self, model, positive, negative, cfg, width, height, steps, sampler, mc_samples, seed,
                 latent=None, grid=120, holdout=0, refine_sweeps=0, refine_candidates=8, teacher_substeps=1,
                 sigma_max=0.0, sigma_min=0.0, compare_karras=True, use_cache=True, refine_search="golden",
                 refine_objective="mean", refine_starts=3):
        t0 = time.perf_counter()
        steps, grid, mc_samples, holdout = int(steps), int(grid), int(mc_samples), int(holdout)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if grid < 2:
            raise ValueError(f"grid must be >= 2, got {grid}")
        if steps > grid:
            raise ValueError(f"steps={steps} is larger than the candidate grid ({grid} sigmas): raise 'grid' or lower 'steps'")
        if mc_samples < 1 or holdout < 0:
            raise ValueError("mc_samples must be >= 1 and holdout >= 0")
        if int(refine_sweeps) > 0 and holdout < 1:
            raise ValueError("refine_sweeps > 0 needs holdout >= 1 (held-out noises stop the refinement)")
        if refine_search not in so.SEARCHES:
            raise ValueError(f"refine_search must be one of {so.SEARCHES}, got {refine_search!r}")
        if refine_objective not in so.OBJECTIVES:
            raise ValueError(f"refine_objective must be one of {so.OBJECTIVES}, got {refine_objective!r}")
        if int(refine_starts) < 1:
            raise ValueError(f"refine_starts must be >= 1, got {refine_starts}")
        names = ode_samplers()
        if sampler not in names:
            raise ValueError(f"sampler: {sampler!r} is not a deterministic ODE sampler known to ComfyUI; one of {names}")
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
        path = os.path.join(cache.cache_dir(_user_dir()), cache.file_name(type(model.model).__name__, key))
        old = None
        if use_cache and os.path.exists(path):
            old = cache.read(path)  # raises a clear error for a damaged file
            if old["key"] != key:
                raise cache.ScheduleCacheError(f"optimised schedule file {path} holds another key (hash collision "
                                               f"or edited file); delete it to recompute")
            if str(steps) in old.get("selected", {}):
                out = attach(model, old, path)
                sig, how = cache.schedule_from(old, steps)
                return _out(torch.tensor(sig, dtype=torch.float32), out,
                            _report(old, steps, path, f"cached, {how}", time.perf_counter() - t0))

        planned = so.planned_calls(steps, grid, int(teacher_substeps), len(so.DEFAULT_VARIANTS) + bool(compare_karras),
                                   holdout, int(refine_sweeps), int(refine_candidates), refine_search,
                                   refine_starts=int(refine_starts))
        logging.info("FewStep Optimise Schedule (%d steps, %s, %d + %d noises): %s", steps, sampler, mc_samples,
                     holdout, planned.describe())
        result = self._run(model, positive, negative, cfg, shape, steps, sampler, mc_samples, holdout, int(seed),
                           grid, int(teacher_substeps), hi, lo, int(refine_sweeps), int(refine_candidates),
                           bool(compare_karras), refine_search, refine_objective, int(refine_starts))
        record = _record(key, result, model, time.perf_counter() - t0, lo, hi, old)
        if use_cache:
            cache.write(path, record)
        out = attach(model, record, path)
        sig, how = cache.schedule_from(record, steps)
        return _out(torch.tensor(sig, dtype=torch.float32), out, _report(record, steps, path if use_cache else "(off)", how))

    @staticmethod
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
                return guarded(xx, s.to(xx.dtype), **extra_args)

            def run_sampler(x0, sig):
                return ksampler.sampler_function(guarded, x0.clone(), sig.to(x0.device, x0.dtype),
                                                 extra_args=extra_args, callback=None, disable=True,
                                                 **ksampler.extra_options)

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


def _schedule_files():
    try:
        return cache.list_files(_user_dir())
    except Exception:
        return []


class FewStepLoadOptimizedSchedule:
    DESCRIPTION = ("Loads an optimised schedule from the cache for the connected model: the newest one made for "
                   "this model (with these LoRAs/patches), or a file picked by name, which must belong to this "
                   "model. Outputs the SIGMAS for N steps and a MODEL that makes KSampler's 'fewstep_optimized' "
                   "scheduler use it. A damaged file or one made for another model is a clear error.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SIGMAS", "MODEL", "STRING")
    RETURN_NAMES = ("sigmas", "model", "report")
    FUNCTION = "load"
    SIGMA_GRAPH = {}  # drawn after the run from the UI message

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model the schedule was optimised for."}),
            "schedule": ([LATEST] + _schedule_files(), {"default": LATEST, "tooltip": "Cache file (user directory, fewstep/schedules) or the newest one for this model."}),
            "steps": ("INT", {"default": 8, "min": 1, "max": 200, "tooltip": "Number of steps N; other N than the optimised one come from the stored DP paths."}),
        }}

    @classmethod
    def IS_CHANGED(cls, model, schedule, steps):
        d = cache.cache_dir(_user_dir())
        target = d if schedule == LATEST else os.path.join(d, os.path.basename(str(schedule)))
        try:
            return os.stat(target).st_mtime_ns
        except OSError:
            return None

    def load(self, model, schedule, steps):
        fp = cache.model_fingerprint(model)
        if schedule == LATEST:
            path, record = cache.latest_for_model(_user_dir(), fp)
            if record is None:
                raise ValueError(f"no optimised schedule for this model (with its current LoRAs/patches) in "
                                 f"{cache.cache_dir(_user_dir())}; run 'Optimise Schedule (FewStep)' first")
        else:
            path = cache.resolve(_user_dir(), schedule)
            record = cache.read(path)
            if record["key"].get("model") != fp:
                raise cache.ScheduleCacheError(
                    f"{os.path.basename(path)} was optimised for another model (or other LoRAs/patches); pick "
                    f"'{LATEST}' or run 'Optimise Schedule (FewStep)' for this model")
        sig, how = cache.schedule_from(record, steps)
        return _out(torch.tensor(sig, dtype=torch.float32), attach(model, record, path), _report(record, int(steps), path, how))


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


def setup():
    add_scheduler(SCHEDULER_NAME, optimized_scheduler, use_ms=True)


NODE_CLASS_MAPPINGS = {
    "FewStepOptimizeSchedule": FewStepOptimizeSchedule,
    "FewStepLoadOptimizedSchedule": FewStepLoadOptimizedSchedule,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FewStepOptimizeSchedule": "Optimise Schedule (FewStep)",
    "FewStepLoadOptimizedSchedule": "Load Optimised Schedule (FewStep)",
}
