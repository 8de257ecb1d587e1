"""Choosing among candidate schedules by running the ACTUAL sampler, the guard that keeps a
baseline (Karras) unless a candidate beats it significantly on noises it was not chosen on, and the
optional coordinate refinement (AYS-style) early-stopped on held-out noises."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..validation import check_choice, check_non_negative

OBJECTIVES = ("mean", "geomean")
SEARCHES = ("grid", "golden")
_INV_PHI = (math.sqrt(5) - 1) / 2  # golden ratio conjugate
GUARD_Z = 2.0  # one-sided z of the paired test a candidate must pass to replace the baseline
# ... and the one-sided level of the sign test beside it (the conventional 5 %, fixed a priori): with
# heavy-tailed errors (a few noises change mode) a handful of noises can show a tight, large mean gain
# that the data as a whole does not have (issue 18: 4 noises, mean log ratio 0.48 +- 0.02, then 1.7x
# worse on 48 others). The sign test cannot pass on fewer than 5 noises, and needs 7 of 8, 12 of 16.
GUARD_SIGN_P = 0.05


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample |x - ref| / |ref| in float64."""
    d = (x.to(torch.float64) - ref.to(torch.float64)).flatten(1).norm(dim=1)
    return d / ref.to(torch.float64).flatten(1).norm(dim=1).clamp_min(1e-300)


def score(errors: torch.Tensor, objective: str = "geomean") -> float:
    """Summary of per-sample errors used to compare schedules on the fitting noises.
    "mean" is what the benchmark reports; "geomean" (exp of the mean log error) is less swayed by a
    rare sample that lands on another mode (error ~1 instead of ~0.01) when there are few noises."""
    check_choice(objective, OBJECTIVES, "objective")
    e = errors.to(torch.float64)
    if objective == "mean":
        return float(e.mean())
    return float(e.clamp_min(1e-300).log().mean().exp())


def per_sample_errors(candidates: dict, run_sampler, x, ref, check_cancel=None) -> dict:
    """name -> per-sample relative errors of the actual sampler on that schedule."""
    out = {}
    for name, sig in candidates.items():
        if check_cancel is not None:
            check_cancel()
        out[name] = relative_error(run_sampler(x, sig), ref)
    return out


def best_of(errors: dict, objective: str = "mean") -> str:
    """The name with the lowest score (non-finite last; ties keep the first name)."""
    scores = {k: score(e, objective) for k, e in errors.items()}
    return min(scores, key=lambda k: (not math.isfinite(scores[k]), scores[k]))


@torch.no_grad()
def select_schedule(candidates: dict, run_sampler, x: torch.Tensor, ref: torch.Tensor,
                    check_cancel: Optional[Callable[[], None]] = None, objective: str = "mean"):
    """Runs the actual sampler on every candidate (name -> sigmas) from the same start noises and
    returns (best name, {name: score})."""
    if not candidates:
        raise ValueError("no candidate schedules to select from")
    errors = per_sample_errors(candidates, run_sampler, x, ref, check_cancel)
    return best_of(errors, objective), {k: score(e, objective) for k, e in errors.items()}


def significant_win(candidate: torch.Tensor, baseline: torch.Tensor, z: float = GUARD_Z) -> tuple:
    """Paired one-sided test on per-sample log error ratios log(baseline / candidate): the candidate
    wins when their mean exceeds z standard errors (and is positive) and the sign test beside it
    passes at GUARD_SIGN_P (most noises gain, not a mean carried by a few). Log ratios weigh a sample that
    changes mode (x50 error) by log 50, not by 50: one such sample cannot decide alone.
    Returns (wins, mean log ratio, standard error)."""
    d = baseline.to(torch.float64).clamp_min(1e-300).log() - candidate.to(torch.float64).clamp_min(1e-300).log()
    n = d.numel()
    mean = float(d.mean())
    se = float(d.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.inf
    return (n > 1 and mean > 0 and mean > z * se and sign_test_p(d) <= GUARD_SIGN_P), mean, se


def sign_test_p(d: torch.Tensor) -> float:
    """One-sided sign test: P(at least this many of the n paired differences are > 0) when each is
    positive with probability 1/2 (ties count against the candidate)."""
    n, k = d.numel(), int((d > 0).sum())
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2.0 ** n


@dataclass
class Refinement:
    sigmas: torch.Tensor
    train_error: list
    holdout_error: list
    calls: int


def refine_calls(steps: int, sweeps: int, candidates: int, search: str = "grid", line_iters: int = 4,
                 holdout: bool = True) -> int:
    """Upper bound of refine_schedule's model calls (early stopping may end sooner)."""
    steps, sweeps = int(steps), int(sweeps)
    per_sigma = int(candidates) + (int(line_iters) if search == "golden" else 0)
    runs = 1 + sweeps * max(steps - 1, 0) * per_sigma + (1 + sweeps if holdout else 0)
    return runs * steps


def _check_refine_args(sig, sweeps, candidates, search, line_iters, objective, sigma_floor):
    if sig.ndim != 1 or sig.numel() < 2 or float(sig[-1]) != 0.0 or not (sig[1:] < sig[:-1]).all():
        raise ValueError("sigmas must be strictly decreasing and end with 0")
    if int(sweeps) < 0 or int(candidates) < 1:
        raise ValueError("sweeps must be >= 0 and candidates >= 1")
    check_choice(search, SEARCHES, "search")
    if int(line_iters) < 0 or int(line_iters) == 1:
        raise ValueError(f"line_iters must be 0 or >= 2 (golden-section evaluations), got {line_iters}")
    check_choice(objective, OBJECTIVES, "objective")
    floor = float(sig[-2]) / 2 if sigma_floor is None else check_non_negative(sigma_floor, "sigma_floor")
    if not floor > 0:
        raise ValueError(f"sigma_floor must be > 0, got {sigma_floor}")
    return floor


def _golden(at, a, b, iters):
    """Golden-section steps on [a, b] (u positions), evaluating through `at`."""
    c1, c2 = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    f1, f2 = at(c1), at(c2)
    for _ in range(iters - 2):
        if f1 <= f2:
            b, c2, f2 = c2, c1, f1
            c1 = b - _INV_PHI * (b - a)
            f1 = at(c1)
        else:
            a, c1, f1 = c1, c2, f2
            c2 = a + _INV_PHI * (b - a)
            f2 = at(c2)


class _LineSearch:
    """Moves one sigma between its neighbours (in log sigma) to the value of lowest training error."""

    def __init__(self, err, candidates, iters, tick):
        self.err, self.candidates, self.iters, self.tick = err, int(candidates), int(iters), tick

    def move(self, sig, i, cur, floor):
        hi = math.log(float(sig[i - 1]))
        lo = math.log(float(sig[i + 1]) if float(sig[i + 1]) > 0 else min(floor, float(sig[i])))
        tried = {}  # u in (0, 1) between hi (0) and lo (1) -> (training error, sigma)

        def at(u):
            self.tick()
            val = math.exp(hi + (lo - hi) * u)
            if not (float(sig[i + 1]) < val < float(sig[i - 1])):
                return math.inf
            if val == float(sig[i]):
                return cur
            trial = sig.clone()
            trial[i] = val
            tried[u] = (self.err(trial), val)
            return tried[u][0]

        spacing = 1.0 / (self.candidates + 1)
        coarse = [(at(c * spacing), c * spacing) for c in range(1, self.candidates + 1)]
        if self.iters:
            # The coarse grid brackets the best value (a guard against the many local minima of a
            # few-sample objective); golden-section steps narrow it.
            u_best = min(coarse)[1]
            _golden(at, max(0.0, u_best - spacing), min(1.0, u_best + spacing), self.iters)
        if tried:
            e, val = min(tried.values())
            if e < cur:
                sig = sig.clone()
                sig[i] = val
                return sig, e
        return sig, cur


@torch.no_grad()
def refine_schedule(sigmas: torch.Tensor, run_sampler: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    x_train: torch.Tensor, ref_train: torch.Tensor,
                    x_hold: Optional[torch.Tensor] = None, ref_hold: Optional[torch.Tensor] = None,
                    sweeps: int = 2, candidates: int = 8, sigma_floor: Optional[float] = None,
                    progress: Optional[Callable[[int, int], None]] = None,
                    check_cancel: Optional[Callable[[], None]] = None, objective: str = "geomean",
                    patience: int = 2, search: str = "grid", line_iters: int = 4) -> Refinement:
    """Coordinate search on the schedule against the actual sampler: each interior positive sigma
    in turn moves, in log sigma, strictly between its neighbours to the value with the smallest
    training error (`score` with `objective`); sigma_0 and the final 0 stay fixed, the last positive
    sigma stays >= sigma_floor. search "grid": `candidates` log-uniform trial values; "golden": the
    same grid brackets the best value, then `line_iters` golden-section steps refine it.
    After every sweep the held-out error is measured; the schedule with the best held-out error is
    returned, and the search stops after `patience` + 1 sweeps in a row without a held-out
    improvement, or when a sweep moves nothing. Model calls: at most refine_calls(...)."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64).clone()
    floor = _check_refine_args(sig, sweeps, candidates, search, line_iters, objective, sigma_floor)
    steps, calls, done = sig.numel() - 1, [0], [0]
    iters = int(line_iters) if search == "golden" else 0
    total = max(1, int(sweeps) * (steps - 1) * (int(candidates) + iters))

    def err(s, x, ref):
        if check_cancel is not None:
            check_cancel()
        calls[0] += steps
        return score(relative_error(run_sampler(x, s.to(torch.float64)), ref), objective)

    def tick():
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    have_hold = x_hold is not None and ref_hold is not None
    line = _LineSearch(lambda s: err(s, x_train, ref_train), candidates, iters, tick)
    train_hist = [err(sig, x_train, ref_train)]
    hold_hist = [err(sig, x_hold, ref_hold)] if have_hold else []
    best, best_hold, stale = sig.clone(), (hold_hist[0] if have_hold else None), 0
    for _ in range(int(sweeps)):
        cur, before = train_hist[-1], sig.clone()
        for i in range(1, steps):
            sig, cur = line.move(sig, i, cur, floor)
        train_hist.append(cur)
        if torch.equal(sig, before):
            break
        if not have_hold:
            best = sig.clone()
            continue
        hold_hist.append(err(sig, x_hold, ref_hold))
        if hold_hist[-1] < best_hold:
            best, best_hold, stale = sig.clone(), hold_hist[-1], 0
        else:
            stale += 1
            if stale > int(patience):
                break
    return Refinement(best, train_hist, hold_hist, calls[0])
