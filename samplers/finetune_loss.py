"""Phase 2 of the few-step optimiser (Huang 2024, arXiv 2412.10786): the denoising loss on the
selected steps, weighted by the schedule. Pure torch; derivation in docs/finetune.md.

Weighting. A ComfyUI schedule s_0 > ... > s_{N-1} > s_N = 0 calls the model at s_0 .. s_{N-1}; the
last step returns D(x_{N-1}; s_{N-1}) and, by the convex-combination form of a first-order solve
(schedule_opt.md §2.2, `first_order_weights`),

    x_{N-1} = (s_{N-1}/s_0) x_0 + sum_{i<N-1} w_i D(x_i; s_i),   w_i = s_{N-1} (1/s_{i+1} - 1/s_i).

A model error d_i = D_theta(x_i; s_i) - D*(x_i; s_i) at step i therefore moves x_{N-1} by w_i d_i
and the output by (about) the same through the last call, which itself adds d_{N-1} with weight 1.
Keeping first order and dropping the propagation through later model calls (as the bound does):

    output error ~= sum_i lam_i d_i,   lam_i = w_i (i < N-1),   lam_{N-1} = 1,

and by Cauchy-Schwarz  E|sum_i lam_i d_i|^2 <= (sum lam) sum_i lam_i E|d_i|^2.  Since the x0-MSE at
level s splits as E|D_theta - x0|^2 = E|D_theta - D*|^2 + (irreducible), minimising

    L(theta) = sum_i lam_i E_{x0, eps} |D_theta(x0 + s_i eps; s_i) - x0|^2

minimises that bound on the few-step output error. `schedule_weights` returns lam normalised to
sum 1. The expectation over steps is estimated either with the weights explicit (steps drawn
uniformly, each term multiplied by N lam_i: "explicit") or by drawing step i with probability lam_i
and weight 1 ("importance", the same expectation with lower variance).

Noise levels "around" the steps: with spread h in [0, 1], log sigma is drawn uniformly in
[log s_i - h a_i, log s_i + h b_i], a_i / b_i being half the log-distance to the next lower / higher
step (h = 0: exactly the selected steps). The first and last called steps use their one inner gap
on both sides, clamped to the model's sigma range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ESTIMATORS = ("importance", "explicit")
ANCHOR_WEIGHTINGS = ("x0", "eps")
LR_SCHEDULES = ("constant", "cosine")


def _called_sigmas(sigmas) -> torch.Tensor:
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if s.numel() < 2:
        raise ValueError(f"sigmas: a schedule needs at least 2 values (1 step), got {s.numel()}")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError("sigmas: values must be finite and >= 0")
    if not (s[1:] < s[:-1]).all():
        raise ValueError(f"sigmas: the schedule must be strictly decreasing, got {s.tolist()}")
    return s[:-1]  # the last value is where the solve ends, not a model call


def schedule_weights(sigmas) -> torch.Tensor:
    """lam_i (float64, sums to 1) for the model calls of `sigmas` (see the module docstring). A
    schedule that does not end at 0 ends at s_N > 0 with no final jump: lam_i = w_i there."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    called = _called_sigmas(s)
    n = called.numel()
    if float(s[-1]) == 0.0:
        lam = torch.ones(n, dtype=torch.float64)
        if n > 1:
            end = called[-1]
            lam[:-1] = end * (1.0 / called[1:] - 1.0 / called[:-1])
    else:
        lam = s[-1] * (1.0 / s[1:] - 1.0 / s[:-1])
    return lam / lam.sum()


@dataclass(frozen=True)
class SigmaSampler:
    """Draws training noise levels around the steps of a schedule, with loss weights whose
    expectation is sum_i lam_i L(s_i) (see the module docstring)."""
    sigmas: tuple
    spread: float = 0.5
    estimator: str = "importance"
    sigma_min: float = 0.0
    sigma_max: float = math.inf

    def __post_init__(self):
        called = _called_sigmas(self.sigmas)  # validates
        if not (0.0 <= float(self.spread) <= 1.0):
            raise ValueError(f"spread must be in [0, 1], got {self.spread}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if not (0.0 <= self.sigma_min < self.sigma_max):
            raise ValueError(f"sigma_min ({self.sigma_min}) must be >= 0 and below sigma_max ({self.sigma_max})")
        if float(called[-1]) <= 0.0:
            raise ValueError("sigmas: every called level must be > 0")

    @property
    def steps(self) -> torch.Tensor:
        return _called_sigmas(self.sigmas)

    @property
    def weights(self) -> torch.Tensor:
        return schedule_weights(self.sigmas)

    def windows(self) -> tuple:
        """(low, high) log-sigma bounds per called step."""
        log_s = self.steps.log()
        n = log_s.numel()
        if n == 1:
            half = torch.zeros(1, dtype=torch.float64)
            below, above = half, half
        else:
            gaps = 0.5 * (log_s[:-1] - log_s[1:])        # half-gap between step i and i+1
            below = torch.cat([gaps, gaps[-1:]])          # towards lower sigma
            above = torch.cat([gaps[:1], gaps])           # towards higher sigma
        h = float(self.spread)
        lo = log_s - h * below
        hi = log_s + h * above
        if self.sigma_min > 0:
            lo = lo.clamp(min=math.log(self.sigma_min))
        if math.isfinite(self.sigma_max):
            hi = hi.clamp(max=math.log(self.sigma_max))
        return lo, torch.maximum(hi, lo)

    def draw(self, count: int, generator: torch.Generator | None = None):
        """(sigmas, loss weights, step index), each of length `count`, float64 on the CPU. The
        weights average to 1 over draws whichever estimator is used."""
        count = int(count)
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        lam = self.weights
        n = lam.numel()
        if self.estimator == "importance":
            index = torch.multinomial(lam, count, replacement=True, generator=generator)
            weight = torch.ones(count, dtype=torch.float64)
        else:
            index = torch.randint(0, n, (count,), generator=generator)
            weight = n * lam[index]
        lo, hi = self.windows()
        u = torch.rand(count, generator=generator, dtype=torch.float64)
        log_sigma = lo[index] + u * (hi[index] - lo[index])
        return log_sigma.exp(), weight, index


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of weight_b * mean squared error of sample b (the x0-space loss)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    per = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return (per * weight.to(per.device, per.dtype)).mean()


def anchor_weights(sigma: torch.Tensor, levels: torch.Tensor, weighting: str) -> torch.Tensor:
    """Per-row weights of the anchor rows (timestep uniform over the model's `levels`) in the x0 loss.

    "x0": weight 1, Train LoRA's loss |D - x0|^2, which counts an error at level s ~ s^2 times less
    than the eps loss an SD model was pretrained with, so the adapter may trade low-noise precision
    for high-noise fit. "eps": that pretraining loss |D - x0|^2 / s^2, scaled so that its mean weight
    over the levels is 1 (the anchor keeps the same share of the batch as with "x0")."""
    if weighting not in ANCHOR_WEIGHTINGS:
        raise ValueError(f"anchor_weighting must be one of {ANCHOR_WEIGHTINGS}, got {weighting!r}")
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if weighting == "x0":
        return torch.ones_like(sigma)
    levels = torch.as_tensor(levels, dtype=torch.float64)
    return sigma.pow(-2) / levels.pow(-2).mean()


@dataclass(frozen=True)
class UniformLevels:
    """Train LoRA's noise levels: a timestep drawn uniformly over the model's `levels`, with the loss
    weights of `anchor_weights` (the anchor rows, and the studies' uniform-sigma control)."""
    levels: torch.Tensor
    weighting: str = "x0"

    def draw(self, count: int, generator: torch.Generator | None = None):
        """(sigmas, loss weights, timestep index), each of length `count`."""
        t = torch.randint(0, self.levels.numel(), (int(count),), generator=generator)
        return self.levels[t], anchor_weights(self.levels[t], self.levels, self.weighting), t


def lr_factor(step: int, steps: int, schedule: str) -> float:
    """Multiplier of the learning rate at optimiser step `step` (0-based) of a round of `steps`.

    "constant": 1 (Train LoRA's). "cosine": a linear warm-up over the first 5 % of the round, then
    half a cosine down to 0 at the round's end. An adapter trained at a constant rate ends wherever
    the last noisy gradients left it; the pretrained network it sits on ended its own training with a
    decayed rate, and on sharp data the study found the constant-rate end point worse than the start
    (docs/finetune.md). Each round of an alternation decays again."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    steps = int(steps)
    if steps < 1 or not (0 <= int(step) < steps):
        raise ValueError(f"step must be in [0, steps), got {step} of {steps}")
    if schedule == "constant":
        return 1.0
    warm = max(1, steps // 20)
    return min(1.0, (step + 1) / warm) * 0.5 * (1.0 + math.cos(math.pi * step / steps))


def holdout_split(count: int, share: float, seed: int) -> tuple:
    """(training indices, held-out indices) of `count` latents, `share` of them held out (at least
    one each side), chosen by a seeded permutation so that the split depends only on (count, seed)."""
    if not (0.0 < share < 1.0):
        raise ValueError(f"holdout must be in (0, 1), got {share}")
    held = int(round(share * count))
    if held < 1 or count - held < 1:
        raise ValueError(f"holdout: {share:g} of {count} latents leaves {held} held out and {count - held} to "
                         f"train on; both need at least one latent (add latents or change holdout)")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(int(seed) + 0x5EED))
    return order[held:].sort().values, order[:held].sort().values
