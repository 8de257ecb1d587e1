"""FewStep entries in the KSampler / KSamplerAdvanced sampler and scheduler dropdowns (fixed, sensible
parameters; the parameterised versions are the SAMPLER and SIGMAS nodes). Names are stable: saved
workflows and API prompts refer to them. The list is in README ("Samplers and schedules")."""
import functools

from .model_time import VP, time_table
from .registry import add_sampler, add_scheduler

# dropdown name -> catalogue entry
DROPDOWN_SAMPLERS = {
    "fewstep_dpmpp_1s": "dpmpp_1s",
    "fewstep_dpmpp_2s": "dpmpp_2s",
    "fewstep_dpmpp_2m": "dpmpp_2m",
    "fewstep_dpmpp_3m": "dpmpp_3m",
    "fewstep_deis_tab2": "deis_tab2",
    "fewstep_deis_tab3": "deis_tab3",
    "fewstep_deis_rhoab2": "deis_rhoab2",
    "fewstep_deis_rhoab3": "deis_rhoab3",
    "fewstep_deis_rhork3": "deis_rhork_kutta",
    "fewstep_deis_rhork4": "deis_rhork_rk4",
    "fewstep_edm_heun": "edm_heun",
    "fewstep_edm_stochastic": "edm_stochastic",
    "fewstep_edm_midpoint": "edm_alpha_0.5",
    "fewstep_dpmpp_3s": "dpmpp_3s",
}


def solver_options(spec) -> dict:
    """A catalogue solver's options as the pack hands it to ComfyUI: multistep solvers accept short
    schedules (KSamplerAdvanced splits and small step counts are routine: run short chunks at lower order)."""
    options = dict(spec.options)
    if spec.multistep:
        options["allow_short_schedule"] = True
    return options


def _dropdown_sampler(name, key):
    """The solver behind a dropdown entry; its module loads on first use, not at ComfyUI start-up."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
        from ..samplers.catalog import SOLVERS
        spec = SOLVERS[key]
        return spec.fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                       **{**solver_options(spec), **kwargs})

    sample.__name__ = f"sample_{name}"
    sample.__qualname__ = sample.__name__
    return sample


def fscheduler_for_steps(resolution: int, steps: int) -> dict:
    """Published F-scheduler settings extended to any step count by the recipe's grid rule
    (samplers/recipe.grid_preset): 512px uses K(8, 5)[6] up to 6 steps and K(12, 7)[9] above;
    1024px uses K(12, 12)[9] up to 5 steps and K(12, 12)[10] above (p1 = 1.2)."""
    from ..samplers.recipe import grid_preset
    from ..samplers.schedules import FSCHEDULER_PRESETS
    name, _ = grid_preset(str(resolution), steps)
    return {k: v for k, v in FSCHEDULER_PRESETS[name].items() if k != "steps"}


def timestep_power_scheduler(model_sampling, steps):
    from ..samplers.schedules import timestep_power_sigmas
    table, _ = time_table(model_sampling, "fewstep_timestep_power")
    return timestep_power_sigmas(steps, table, rho_t=1.2)


def _fscheduler(resolution, model_sampling, steps):
    from ..samplers.schedules import fscheduler_sigmas
    table, kind = time_table(model_sampling, f"fewstep_fscheduler_{resolution}")
    return fscheduler_sigmas(steps, table, interpolation="alphas_cumprod" if kind == VP else "log_sigma",
                             **fscheduler_for_steps(resolution, steps))


DROPDOWN_SCHEDULERS = {
    "fewstep_timestep_power": timestep_power_scheduler,
    "fewstep_fscheduler_512": functools.partial(_fscheduler, 512),
    "fewstep_fscheduler_1024": functools.partial(_fscheduler, 1024),
}


def register():
    """Adds every FewStep entry to ComfyUI's sampler and scheduler dropdowns (idempotent)."""
    from .schedule_opt import SCHEDULER_NAME, optimized_scheduler
    from .unipc import sample_fewstep_unipc_fs, sample_fewstep_unipc_fs_afs
    for name, key in DROPDOWN_SAMPLERS.items():
        add_sampler(name, _dropdown_sampler(name, key))
    add_sampler("fewstep_unipc_fs", sample_fewstep_unipc_fs)
    add_sampler("fewstep_unipc_fs_afs", sample_fewstep_unipc_fs_afs)
    from .guidance import cfg_pp_samplers
    for name, function in cfg_pp_samplers().items():
        add_sampler(name, function)
    for name, handler in DROPDOWN_SCHEDULERS.items():
        add_scheduler(name, handler, use_ms=True)
    add_scheduler(SCHEDULER_NAME, optimized_scheduler, use_ms=True)
