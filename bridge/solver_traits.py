"""Sampler names of the dropdowns (ComfyUI's and the pack's) -> the solver properties the schedule
optimiser's cost model is keyed by (samplers/schedule_opt/rules.py: SolverTraits). The maths never
sees a dropdown name; this table is the one place that knows them."""
from __future__ import annotations

from ..samplers.catalog import solver
from ..samplers.schedule_opt import SolverTraits, traits_of

PACK_PREFIX = "fewstep_"
# The pack's dropdown entries whose catalog key differs from the name without the prefix.
_PACK_ALIASES = {"deis_rhork3": "deis_rhork_kutta", "deis_rhork4": "deis_rhork_rk4", "edm_midpoint": "edm_alpha_0.5"}
# ComfyUI built-ins whose update the cost rules model exactly (Euler = DDIM = DPM-Solver++ 1S in sigma
# space; DPM++ 2M) or whose order is known; other names fall back on the multistep hints below.
COMFY_TRAITS = {
    "euler": SolverTraits(1, False), "ddim": SolverTraits(1, False),
    "dpmpp_2m": SolverTraits(2, True, True),
    "heun": SolverTraits(2, False), "dpm_2": SolverTraits(2, False), "dpmpp_2s": SolverTraits(2, False),
}
# Substrings of multistep sampler names (they reuse earlier model outputs).
MULTISTEP_HINTS = ("2m", "3m", "deis", "ipndm", "lms", "multistep", "uni_pc", "unipc", "tab", "rhoab")


def _pack_traits(key: str):
    try:
        spec = solver(_PACK_ALIASES.get(key, key))
    except KeyError:
        return None
    traits = traits_of(spec)
    return SolverTraits(traits.order, traits.multistep, key == "dpmpp_2m")  # the pack's 2M is DPM-Solver++(2M)


def traits_for(sampler: str) -> SolverTraits:
    """The properties of a sampler named in a dropdown; unknown names are taken as multistep of
    unknown order when a hint matches, else as single-step of unknown order (a proxy either way)."""
    if not isinstance(sampler, str) or not sampler:
        raise ValueError(f"sampler must be a sampler name, got {sampler!r}")
    if sampler in COMFY_TRAITS:
        return COMFY_TRAITS[sampler]
    if sampler.startswith(PACK_PREFIX):
        found = _pack_traits(sampler[len(PACK_PREFIX):])
        if found is not None:
            return found
    return SolverTraits(None, any(h in sampler for h in MULTISTEP_HINTS))
