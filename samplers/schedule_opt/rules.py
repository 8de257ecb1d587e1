"""One sampler step written as x_k = a x_j + b D_j + c D_p, and which such rule models a solver.

The cost model is keyed by solver properties (`SolverTraits`), never by dropdown names: the
ComfyUI-facing side (bridge/solver_traits.py) says what each named sampler is."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass(frozen=True)
class JumpRule:
    """x_k = a*x_j + b*D_j + c*D_p (memory 1: D_p is the output at the previous schedule level) or
    x_k = a*x_j + b*D_j (memory 0). A memory-1 rule's first step (no history) is the Euler step."""
    name: str
    memory: int
    coefficients: Callable  # (s_p or None, s_j, s_k) -> (a, b, c), float64 tensors broadcasting

    def first(self, s_j, s_k):
        return euler_coefficients(None, s_j, s_k)


def euler_coefficients(s_p, s_j, s_k):
    a = s_k / s_j
    return a, 1 - a, torch.zeros_like(a)


def dpmpp_2m_coefficients(s_p, s_j, s_k):
    # DPM-Solver++(2M) in sigma space (lambda = -log sigma): the data-prediction exponential
    # integrator with a linear extrapolation of D through the two last levels.
    h = torch.log(s_j / s_k)
    r = torch.log(s_p / s_j) / h
    a = s_k / s_j
    e = 1 - a  # = -expm1(-h)
    return a, e * (1 + 1 / (2 * r)), -e / (2 * r)


JUMP_RULES = {
    "euler": JumpRule("euler", 0, euler_coefficients),
    "dpmpp_2m": JumpRule("dpmpp_2m", 1, dpmpp_2m_coefficients),
}


@dataclass(frozen=True)
class SolverTraits:
    """What the cost model needs to know about a sampler.

    order:        nominal ODE order (1: Euler = DDIM = DPM-Solver++ 1S in sigma space); None when the
                  order depends on the step count.
    multistep:    the step reuses model outputs of earlier levels.
    dpm_2m_form:  the step is exactly DPM-Solver++(2M)'s data-prediction update."""
    order: Optional[int] = 1
    multistep: bool = False
    dpm_2m_form: bool = False

    def __post_init__(self):
        if self.order is not None and (isinstance(self.order, bool) or int(self.order) < 1):
            raise ValueError(f"order must be an integer >= 1 or None, got {self.order!r}")

    @property
    def rule(self) -> str:
        """The cost rule: multistep methods of order >= 2 take the 2M rule, everything else Euler's."""
        return "dpmpp_2m" if self.multistep and (self.order is None or self.order >= 2) else "euler"

    @property
    def exact(self) -> bool:
        """True when the rule is the sampler's own update (otherwise it is a proxy, and candidate
        schedules are compared by running the actual sampler)."""
        return self.order == 1 and not self.multistep if self.rule == "euler" else self.dpm_2m_form


EULER = SolverTraits(1, False)
DPMPP_2M = SolverTraits(2, True, True)


def traits_of(spec) -> SolverTraits:
    """Traits from anything with `order` and `multistep` attributes (samplers.catalog.SolverSpec)."""
    return SolverTraits(getattr(spec, "order", None), bool(getattr(spec, "multistep", False)),
                        bool(getattr(spec, "dpm_2m_form", False)))


def as_traits(sampler) -> SolverTraits:
    """SolverTraits as given, or a cost-rule name ("euler", "dpmpp_2m") taken as the exact solver."""
    if isinstance(sampler, SolverTraits):
        return sampler
    named = {"euler": EULER, "dpmpp_2m": DPMPP_2M}
    if isinstance(sampler, str) and sampler in named:
        return named[sampler]
    raise ValueError(f"sampler must be SolverTraits or one of {list(named)} (map other names to traits on the "
                     f"ComfyUI side), got {sampler!r}")


def rule_for(sampler) -> JumpRule:
    return JUMP_RULES[as_traits(sampler).rule]


def apply_rule(rule: JumpRule, x_j, d_j, d_p, s_p, s_j, s_k):
    """One step of `rule` (used by the teacher and by tests; the cost code uses the Gram form)."""
    s_j_t = torch.as_tensor(s_j, dtype=torch.float64)
    s_k_t = torch.as_tensor(s_k, dtype=torch.float64)
    if float(s_k_t) == 0.0:
        return d_j  # every ComfyUI sampler's last step: the denoised output
    if rule.memory == 0 or d_p is None:
        a, b, _ = rule.first(s_j_t, s_k_t)
        return float(a) * x_j + float(b) * d_j
    a, b, c = rule.coefficients(torch.as_tensor(s_p, dtype=torch.float64), s_j_t, s_k_t)
    return float(a) * x_j + float(b) * d_j + float(c) * d_p
