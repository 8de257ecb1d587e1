"""Adds FewStep entries to ComfyUI's KSampler / KSamplerAdvanced dropdowns.

ComfyUI's node classes hold references to the module-level lists (KSampler.SAMPLERS is
SAMPLER_NAMES, KSampler.SCHEDULERS is SCHEDULER_NAMES), so entries are appended in place, never
rebound; every call is idempotent so a re-import adds nothing twice."""
import comfy.k_diffusion.sampling as k_sampling
import comfy.samplers

PREFIX = "fewstep_"


def _append_once(names, name):
    if name not in names:
        names.append(name)


def add_sampler(name: str, function, discard_penultimate_sigma: bool = False):
    """Registers `function` (k-diffusion signature) as KSampler sampler `name`."""
    if not name.startswith(PREFIX):
        raise ValueError(f"FewStep dropdown names start with {PREFIX!r}: {name!r}")
    setattr(k_sampling, f"sample_{name}", function)  # comfy.samplers.ksampler looks it up here
    _append_once(comfy.samplers.KSAMPLER_NAMES, name)
    _append_once(comfy.samplers.SAMPLER_NAMES, name)
    if comfy.samplers.KSampler.SAMPLERS is not comfy.samplers.SAMPLER_NAMES:
        _append_once(comfy.samplers.KSampler.SAMPLERS, name)  # a host that copied the list
    if discard_penultimate_sigma:
        comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS.add(name)


def add_scheduler(name: str, handler, use_ms: bool = True):
    """Registers a scheduler: handler(model_sampling, steps) when use_ms, else
    handler(n=steps, sigma_min=..., sigma_max=...); returns a 1-D sigma tensor."""
    if not name.startswith(PREFIX):
        raise ValueError(f"FewStep dropdown names start with {PREFIX!r}: {name!r}")
    comfy.samplers.SCHEDULER_HANDLERS[name] = comfy.samplers.SchedulerHandler(handler, use_ms=use_ms)
    _append_once(comfy.samplers.SCHEDULER_NAMES, name)
    if comfy.samplers.KSampler.SCHEDULERS is not comfy.samplers.SCHEDULER_NAMES:
        _append_once(comfy.samplers.KSampler.SCHEDULERS, name)
