"""The whole optimiser: teacher pass -> costs -> DP paths -> selection with the actual sampler
(guarded against a baseline) -> optional refinement; and the model calls it will make."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ..validation import check_choice, check_non_negative, check_sigma_range, check_steps
from .costs import COSTS, PROPAGATIONS, gram_matrices, jump_costs
from .dp import optimal_paths
from .rules import SolverTraits, as_traits
from .select import (GUARD_Z, OBJECTIVES, SEARCHES, Refinement, best_of, per_sample_errors, refine_calls,
                     refine_schedule, score, significant_win)
from .teacher import Denoiser, Teacher, log_grid, teacher_calls, teacher_pass

# DP cost variants whose optimal paths become candidates: (cost, power, propagation). All price a
# jump by the error it adds to the final sample (costs.py); power 2 weighs rare large misses more.
# Chosen on the lab's two data sets only (docs/optimiser_validation.md).
DEFAULT_VARIANTS = (("jump", 1.0, "local"), ("jump", 2.0, "local"),
                    ("jump", 1.0, "gaussian"), ("jump", 2.0, "gaussian"))
_SUFFIX = {"none": "", "gaussian": "w", "local": "p"}


def _propagation_name(propagation) -> str:
    if propagation is True:
        return "gaussian"
    if propagation is False or propagation is None:
        return "none"
    return check_choice(propagation, PROPAGATIONS, "propagation")


def variant_name(kind: str, power: float, propagation="none") -> str:
    """jump1 (unpropagated), jump1w (gaussian), jump1p (local) ..."""
    return f"{kind}{power:g}{_SUFFIX[_propagation_name(propagation)]}"


def normalise_variants(variants: Sequence) -> list:
    if not variants:
        raise ValueError("variants: at least one cost variant is needed")
    out = []
    for v in variants:
        kind, power, prop = (tuple(v) + ("none",))[:3]
        check_choice(kind, COSTS, "cost")
        out.append((kind, float(power), _propagation_name(prop)))
    return out


@dataclass(frozen=True)
class PlannedCalls:
    """Model calls the optimiser will make (each batched over the noises in use); refinement is an
    upper bound (early stopping may end it sooner)."""
    teacher: int
    selection: int
    refinement: int

    @property
    def total(self) -> int:
        return self.teacher + self.selection + self.refinement

    def describe(self) -> str:
        ref = f" + refinement <= {self.refinement}" if self.refinement else ""
        return f"{self.total} model calls at most: teacher {self.teacher} + selection {self.selection}{ref}"


def planned_calls(steps: int, grid_size: int = 120, substeps: int = 1, candidates: int = len(DEFAULT_VARIANTS) + 1,
                  holdout: int = 0, refine_sweeps: int = 0, refine_candidates: int = 8, refine_search: str = "grid",
                  refine_line_iters: int = 4, refine_starts: int = 1, runs_sampler: bool = True) -> PlannedCalls:
    """The model calls of optimise_schedule with these settings, before it runs. Selection runs
    every candidate once on the fitting noises and once on the held-out ones (if any); each of the
    `refine_starts` refinements makes at most refine_calls(...) and is run once more on the held-out
    noises for the test against the baseline (at most: a refinement equal to the baseline is not run)."""
    steps = check_steps(steps)
    sel = steps * int(candidates) * (2 if int(holdout) else 1) if runs_sampler else 0
    ref = 0
    if int(refine_sweeps) > 0 and steps > 1 and runs_sampler:
        starts = max(1, int(refine_starts))
        ref = starts * refine_calls(steps, refine_sweeps, refine_candidates, refine_search, refine_line_iters,
                                    holdout=int(holdout) > 0)
        ref += starts * steps  # each start's refinement against the baseline, on the held-out noises
    return PlannedCalls(teacher_calls(grid_size, substeps), sel, ref)


@dataclass
class OptimisationResult:
    grid: torch.Tensor
    sampler: SolverTraits
    rule: str
    dp: dict                      # variant name -> DPResult (every N up to max_steps)
    steps: int                    # the N that was selected / refined
    chosen: str                   # winning candidate for `steps`
    sigmas: torch.Tensor          # final schedule for `steps` (float64, ends with 0)
    selected: Optional[torch.Tensor] = None         # the selection's winner, before any refinement
    train_errors: dict = field(default_factory=dict)    # candidate -> training error (mean)
    holdout_errors: dict = field(default_factory=dict)  # candidate -> held-out error (if any)
    guard: dict = field(default_factory=dict)           # the test against the baseline (see select.py)
    refinement: Optional[Refinement] = None
    refined_from: Optional[str] = None              # the candidate the kept refinement started from
    teacher_calls: int = 0
    sampler_calls: int = 0
    planned: Optional[PlannedCalls] = None
    train_reference: Optional[torch.Tensor] = None    # the teacher's outputs (fitting noises)
    holdout_reference: Optional[torch.Tensor] = None  # ... and held-out noises

    @property
    def calls(self) -> int:
        """Model evaluations (each batched over all Monte-Carlo samples in use)."""
        return self.teacher_calls + self.sampler_calls

    @property
    def rule_exact(self) -> bool:
        return self.sampler.exact


def _check_args(x_start, sigma_max, sigma_min, steps, grid_size, holdout, run_sampler, refine_sweeps,
                refine_objective, refine_search):
    check_sigma_range(sigma_min, sigma_max)
    steps = check_steps(steps)
    grid_size = check_steps(grid_size, "grid size", 2)
    if steps > grid_size:
        raise ValueError(f"steps={steps} is larger than the candidate grid ({grid_size} levels): use a "
                         f"larger grid or fewer steps")
    holdout = int(check_non_negative(holdout, "holdout"))
    if int(x_start.shape[0]) - holdout < 1:
        raise ValueError(f"need at least one training sample: {x_start.shape[0]} samples, holdout={holdout}")
    if int(refine_sweeps) > 0:
        if run_sampler is None or holdout < 1:
            raise ValueError("refinement needs the actual sampler and at least one held-out sample")
        check_choice(refine_objective, OBJECTIVES, "refine_objective")
        check_choice(refine_search, SEARCHES, "refine_search")
    return steps, grid_size, holdout


def _dp_results(train: Teacher, traits, variants, grid, max_steps, steps, gram_device, check_cancel, dp):
    names = [variant_name(*v) for v in variants]
    if dp is not None:
        if list(dp) != names or any(not torch.equal(r.sigmas, grid) or steps not in r.paths for r in dp.values()):
            raise ValueError(f"the given dp results are for other variants, another grid or fewer steps "
                             f"(need {names} with a path for steps={steps})")
        return dp
    dp, gram = {}, gram_matrices(train, gram_device)
    for (kind, power, prop), name in zip(variants, names):
        if check_cancel is not None:
            check_cancel()
        dp[name] = optimal_paths(jump_costs(train, traits, kind, power, prop, gram=gram), max_steps)
    return dp


def guard_split(fitting: int, holdout: int, guarded: bool) -> int:
    """How many of the `fitting` noises are kept out of the DP and the ranking and used only for the
    test against the guard baseline. With >= 2 held-out noises the test uses those (0 here). Without
    them a test on noises the DP and the choice were fitted on passes paths that only fit those
    noises (issue 18: 1.68x Karras out of sample), so half the fitting noises (at least 2) are set
    aside, in the same batch (no extra model calls); with fewer than 4 noises there is nothing to
    split and the test falls back to the fitting noises (stated in OptimisationResult.guard)."""
    if not guarded or int(holdout) >= 2 or int(fitting) < 4:
        return 0
    return max(2, int(fitting) // 2)


def _guarded_choice(result, cands, train_err, hold_err, guard_err, guard, guard_z):
    """The fitting winner, unless `guard` (a baseline) is among the candidates and the winner does
    not beat it significantly on noises the choice did not see: the held-out ones, else the guard
    split of the fitting noises (guard_split), else - fewer than 4 noises - the fitting ones (an
    optimistic test, so named in result.guard["on"])."""
    best = best_of(train_err)
    if guard is None or guard not in cands or best == guard:
        return best
    if hold_err and len(hold_err[guard]) >= 2:
        on, errs = "held-out", hold_err
    elif guard_err:
        on, errs = "guard split", guard_err
    else:
        on, errs = "fitting", train_err
    wins, mean, se = significant_win(errs[best], errs[guard], guard_z)
    result.guard = {"against": guard, "candidate": best, "on": on, "mean_log_ratio": mean, "se": se, "kept": wins}
    return best if wins else guard


def _refine(result, cands, counted, x_train, x_hold, train_ref, hold_ref, grid, steps, opts, prog, used):
    """(start name, Refinement) for each of the `starts` best distinct candidates: the coordinate
    search ends in a local minimum that depends on where it starts."""
    order = sorted(cands, key=lambda k: (not math.isfinite(result.train_errors[k]), result.train_errors[k]))
    starts = []
    for name in order:
        if not any(torch.equal(cands[name], cands[o]) for o in starts):
            starts.append(name)
    refs = []
    for name in starts[:max(1, int(opts.pop("starts")))]:
        base = used[0]
        ref = refine_schedule(cands[name], counted.raw, x_train, train_ref, x_hold, hold_ref,
                              sigma_floor=float(grid[-1]), progress=lambda d, t, base=base: prog(base + d * steps),
                              **opts)
        used[0] = base + ref.calls
        refs.append((name, ref))
    return refs


def _keep_refinement(result, refs, cands, counted, x_hold, hold_final, hold_err, guard, guard_z):
    """The refinement to keep, or None. Without a guard: the lowest held-out error. With one: each
    start's refinement is tested against the guard on the held-out noises and the lowest held-out
    error among those that pass is kept; none passing keeps the selection. (Picking the lowest
    held-out mean first and testing only that one can throw the refinement away: a lower mean made
    by a few noises that change mode fails the sign test while another start passes.)"""
    by_error = sorted(refs, key=lambda nr: min(nr[1].holdout_error))
    if guard is None or guard not in cands:
        result.refined_from = by_error[0][0]
        return by_error[0][1]
    tests = []
    for name, ref in by_error:
        if torch.equal(ref.sigmas, cands[guard]):
            continue
        errs = per_sample_errors({"refined": ref.sigmas}, counted, x_hold, hold_final)["refined"]
        wins, mean, se = significant_win(errs, hold_err[guard], guard_z)
        tests.append({"start": name, "mean_log_ratio": mean, "se": se, "kept": wins})
        if wins:
            result.refined_from = name
            result.guard["refined"] = {**tests[-1], "tested": tests}
            return ref
    result.refined_from = by_error[0][0]
    result.guard["refined"] = {"kept": False, "tested": tests}
    return None


class _Counted:
    """run_sampler with a model-call counter and progress."""

    def __init__(self, run_sampler, steps, used, prog):
        self.raw, self.steps, self.used, self.prog = run_sampler, steps, used, prog

    def __call__(self, x, sig):
        out = self.raw(x, sig)
        self.used[0] += self.steps
        self.prog(self.used[0])
        return out


@torch.no_grad()
def optimise_schedule(denoiser: Denoiser, x_start: torch.Tensor, sigma_max: float, sigma_min: float,
                      steps: int, sampler="euler",
                      run_sampler: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
                      holdout: int = 0, grid_size: int = 120, substeps: int = 1,
                      variants: Sequence = DEFAULT_VARIANTS, baselines: Optional[dict] = None,
                      max_steps: Optional[int] = None, refine_sweeps: int = 0, refine_candidates: int = 8,
                      refine_objective: str = "geomean", refine_search: str = "grid", refine_line_iters: int = 4,
                      refine_patience: int = 2, refine_starts: int = 1, guard: Optional[str] = "karras",
                      guard_z: float = GUARD_Z,
                      progress: Optional[Callable[[int, int], None]] = None,
                      check_cancel: Optional[Callable[[], None]] = None,
                      store_device=None, gram_device=None, teacher: Optional[Teacher] = None,
                      dp: Optional[dict] = None) -> OptimisationResult:
    """Teacher pass on log_grid(sigma_max, sigma_min, grid_size) from every start noise in x_start
    (already at sigma_max; the last `holdout` are held out) -> each variant's cost matrices on the
    fitting noises and the exact DP (paths for every N up to max_steps, default min(grid, 50)) ->
    the candidates (each variant's N-step path plus `baselines`: name -> sigmas) run through the
    ACTUAL sampler `run_sampler(x, sigmas)`; the lowest mean fitting error wins, but the baseline
    named `guard` (default "karras", when given) is kept unless the winner beats it by the paired
    test of select.significant_win (held-out noises when >= 2) -> optional multi-start refinement
    (refine_* settings, early-stopped on the held-out noises), kept only if it passes the same test.
    `sampler`: SolverTraits (or the rule names "euler", "dpmpp_2m"). Model calls: planned_calls().
    A `teacher` (teacher_pass on x_start over the same grid) or `dp` (the .dp of an earlier result
    for the same teacher, holdout, variants and rule) is reused instead of recomputed."""
    steps, grid_size, holdout = _check_args(x_start, sigma_max, sigma_min, steps, grid_size, holdout, run_sampler,
                                            refine_sweeps, refine_objective, refine_search)
    traits, variants = as_traits(sampler), normalise_variants(variants)
    grid = log_grid(sigma_max, sigma_min, grid_size)
    max_steps = max(min(grid.numel(), 50) if max_steps is None else int(max_steps), steps)
    planned = planned_calls(steps, grid.numel(), substeps, len(variants) + len(baselines or {}), holdout,
                            refine_sweeps, refine_candidates, refine_search, refine_line_iters, refine_starts,
                            run_sampler is not None)

    def prog(done, _t=None):
        if progress is not None:
            progress(min(done, planned.total), planned.total)

    if teacher is None:
        teacher = teacher_pass(denoiser, x_start, grid, substeps, progress=lambda d, t: prog(d),
                               check_cancel=check_cancel, store_device=store_device)
    elif teacher.states.shape[1] != x_start.shape[0] or not torch.equal(teacher.sigmas, grid):
        raise ValueError("the given teacher was computed for other start noises or another grid")
    M = int(x_start.shape[0]) - holdout
    guarded = run_sampler is not None and guard is not None and guard in (baselines or {})
    split = M - guard_split(M, holdout, guarded)  # noises [split, M) only test the guard
    train, hold = teacher.subset(slice(0, split)), (teacher.subset(slice(M, None)) if holdout else None)
    dp = _dp_results(train, traits, variants, grid, max_steps, steps, gram_device, check_cancel, dp)
    cands = {name: res.schedule(steps) for name, res in dp.items()}
    cands.update({name: torch.as_tensor(sig, dtype=torch.float64) for name, sig in (baselines or {}).items()})
    first = next(iter(dp))
    result = OptimisationResult(grid, traits, traits.rule, dp, steps, first, cands[first], selected=cands[first],
                                teacher_calls=teacher.calls, planned=planned, train_reference=train.final,
                                holdout_reference=hold.final if holdout else None)
    if run_sampler is not None:
        _select_and_refine(result, cands, run_sampler, x_start[:M], x_start[M:] if holdout else None,
                           teacher.subset(slice(0, M)).final, split, hold, grid, steps, prog, check_cancel, guard,
                           guard_z,
                           dict(sweeps=refine_sweeps, candidates=refine_candidates, objective=refine_objective,
                                search=refine_search, line_iters=refine_line_iters, patience=refine_patience,
                                starts=refine_starts, check_cancel=check_cancel))
    prog(planned.total)
    return result


def _select_and_refine(result, cands, run_sampler, x_fit, x_hold, fit_final, split, hold, grid, steps, prog,
                       check_cancel, guard, guard_z, refine_opts):
    # x_fit / fit_final: all fitting noises and their teacher outputs, run as one batch; the first
    # `split` rank the candidates, the rest (guard_split) only test the guard.
    used = [result.teacher_calls]
    counted = _Counted(run_sampler, steps, used, prog)
    fit_err = per_sample_errors(cands, counted, x_fit, fit_final, check_cancel)
    train_err = {k: e[:split] for k, e in fit_err.items()}
    guard_err = {k: e[split:] for k, e in fit_err.items()} if split < x_fit.shape[0] else {}
    hold_err = per_sample_errors(cands, counted, x_hold, hold.final, check_cancel) if hold is not None else {}
    result.train_errors = {k: score(e, "mean") for k, e in train_err.items()}
    result.holdout_errors = {k: score(e, "mean") for k, e in hold_err.items()}
    result.chosen = _guarded_choice(result, cands, train_err, hold_err, guard_err, guard, guard_z)
    result.sigmas = result.selected = cands[result.chosen]
    x_train = x_fit[:split]
    if int(refine_opts["sweeps"]) > 0 and steps > 1:
        refs = _refine(result, cands, counted, x_train, x_hold, fit_final[:split], hold.final, grid, steps,
                       dict(refine_opts), prog, used)
        kept = _keep_refinement(result, refs, cands, counted, x_hold, hold.final, hold_err, guard, guard_z)
        result.refinement = kept if kept is not None else dict(refs)[result.refined_from]
        result.sigmas = kept.sigmas if kept is not None else result.selected
    result.sampler_calls = used[0] - result.teacher_calls
