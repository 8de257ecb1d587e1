"""Named solver configurations with their nominal ODE order, for the dropdown entries, the order
table and the tests. `fn` has the k-diffusion signature; `options` are passed as keywords."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from .deis import sample_deis_rhoab, sample_deis_rhork, sample_deis_tab
from .dpmpp import sample_dpmpp_1s, sample_dpmpp_2m, sample_dpmpp_2s, sample_dpmpp_3m, sample_dpmpp_3s
from .edm import sample_edm_alpha, sample_edm_heun, sample_edm_stochastic
from .unipc import sample_unipc_fs


@dataclass(frozen=True)
class SolverSpec:
    fn: Callable
    options: dict = field(default_factory=dict)
    order: Optional[int] = None   # nominal order of the ODE solver; None for stochastic ones and STEP_DEPENDENT
    nfe_per_step: int = 1         # model calls per step (a step to sigma = 0 may use fewer)
    multistep: bool = False

    def __call__(self, model, x, sigmas, **kwargs):
        return self.fn(model, x, sigmas, **{**self.options, **kwargs})


SOLVERS = {
    "dpmpp_1s": SolverSpec(sample_dpmpp_1s, {}, 1, 1),
    "dpmpp_2s": SolverSpec(sample_dpmpp_2s, {"r": 0.5}, 2, 2),
    "dpmpp_2m": SolverSpec(sample_dpmpp_2m, {}, 2, 1, True),
    "dpmpp_3m": SolverSpec(sample_dpmpp_3m, {}, 3, 1, True),
    "dpmpp_3s": SolverSpec(sample_dpmpp_3s, {}, 3, 3),
    "deis_tab1": SolverSpec(sample_deis_tab, {"order": 1}, 1, 1, True),
    "deis_tab2": SolverSpec(sample_deis_tab, {"order": 2}, 2, 1, True),
    "deis_tab3": SolverSpec(sample_deis_tab, {"order": 3}, 3, 1, True),
    "deis_rhoab1": SolverSpec(sample_deis_rhoab, {"order": 1}, 1, 1, True),
    "deis_rhoab2": SolverSpec(sample_deis_rhoab, {"order": 2}, 2, 1, True),
    "deis_rhoab3": SolverSpec(sample_deis_rhoab, {"order": 3}, 3, 1, True),
    "deis_rhork_euler": SolverSpec(sample_deis_rhork, {"method": "euler"}, 1, 1),
    "deis_rhork_heun": SolverSpec(sample_deis_rhork, {"method": "heun"}, 2, 2),
    "deis_rhork_kutta": SolverSpec(sample_deis_rhork, {"method": "kutta"}, 3, 3),
    "deis_rhork_rk4": SolverSpec(sample_deis_rhork, {"method": "rk4"}, 4, 4),
    "edm_heun": SolverSpec(sample_edm_heun, {}, 2, 2),
    "edm_alpha_0.5": SolverSpec(sample_edm_alpha, {"alpha": 0.5}, 2, 2),
    "edm_alpha_0.75": SolverSpec(sample_edm_alpha, {"alpha": 0.75}, 2, 2),
    "edm_stochastic": SolverSpec(sample_edm_stochastic, {"s_churn": 1.0, "s_tmin": 0.05, "s_tmax": 50.0,
                                                         "s_noise": 1.003}, None, 2),
}

# Solvers whose order depends on the step count (the paper UniPC's "auto": order 1 up to 6 calls, else
# 2), so they have no single nominal order and stay out of SOLVERS; the dropdown entry's settings.
STEP_DEPENDENT = {"unipc_fs": SolverSpec(sample_unipc_fs, {"order": "auto"}, None, 1, True)}


def solver(name: str) -> SolverSpec:
    """A named solver of SOLVERS or STEP_DEPENDENT."""
    return SOLVERS.get(name) or STEP_DEPENDENT[name]
