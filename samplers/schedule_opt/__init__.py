"""Sampling schedules optimised for one denoiser D(x; sigma) -> x0 (research notes: schedule_opt.md).

Pure torch, model-agnostic (D is any callable); the sampler is described by its properties
(`SolverTraits`: order, multistep, ...), never by a dropdown name — the ComfyUI side maps names.
  teacher.py   candidate grid (`log_grid`) and the fine DPM-Solver++(2M) `teacher_pass` that stores
               states and denoiser outputs at every level;
  costs.py     `jump_costs`: the error each jump adds to the final sample (teacher-forced residuals
               propagated to the end), from float64 Gram matrices of the stored tensors;
  dp.py        `optimal_paths`: exact DP, the best N-step path for every N at once;
  select.py    candidates compared by running the actual sampler, the guard that keeps Karras unless
               beaten significantly on noises the choice did not see, and the coordinate refinement;
  pipeline.py  `optimise_schedule` (all of it) and `planned_calls` (its model calls, beforehand).
"""
from .costs import (COSTS, PROPAGATIONS, JumpCosts, data_scale, gram_matrices, jump_costs, local_propagation,
                    propagation_weight)
from .dp import DPResult, first_order_weights, optimal_paths, path_cost
from .pipeline import (DEFAULT_VARIANTS, OptimisationResult, PlannedCalls, guard_split, normalise_variants,
                       optimise_schedule,
                       planned_calls, variant_name)
from .rules import (DPMPP_2M, EULER, JUMP_RULES, JumpRule, SolverTraits, apply_rule, as_traits, rule_for,
                    traits_of)
from .select import (GUARD_SIGN_P, GUARD_Z, OBJECTIVES, SEARCHES, Refinement, best_of, per_sample_errors, refine_calls,
                     refine_schedule, relative_error, score, select_schedule, sign_test_p,
                     significant_win)
from .teacher import Denoiser, Teacher, check_grid, log_grid, teacher_calls, teacher_pass

__all__ = [
    "COSTS", "PROPAGATIONS", "JumpCosts", "data_scale", "gram_matrices", "jump_costs", "local_propagation",
    "propagation_weight", "DPResult", "first_order_weights", "optimal_paths", "path_cost", "DEFAULT_VARIANTS",
    "OptimisationResult", "PlannedCalls", "guard_split", "normalise_variants", "optimise_schedule", "planned_calls",
    "variant_name", "DPMPP_2M", "EULER", "JUMP_RULES", "JumpRule", "SolverTraits", "apply_rule", "as_traits",
    "rule_for", "traits_of", "GUARD_SIGN_P", "GUARD_Z", "OBJECTIVES", "SEARCHES", "Refinement", "best_of", "per_sample_errors",
    "refine_calls", "refine_schedule", "relative_error", "score", "select_schedule", "sign_test_p", "significant_win",
    "Denoiser", "Teacher", "check_grid", "log_grid", "teacher_calls", "teacher_pass",
]
