"""Trained timesteps of published few-step SD1.5 / SDXL models, and the rule for other step counts.

Each preset gives the discrete training timesteps t (0..999 of the 1000-step scaled-linear DDPM
table that SD1.5 and SDXL share) at which the model is sampled; the bridge maps them to σ through
the model's own model_sampling. Sources (read 2026-12, model cards and the schedulers they name):

* SDXL-Lightning (ByteDance, arXiv 2402.13929): HF card ByteDance/SDXL-Lightning — separate 1/2/4/8-step
  checkpoints, "Ensure sampler uses 'trailing' timesteps" (diffusers EulerDiscreteScheduler,
  timestep_spacing="trailing"): 4 steps = 999, 749, 499, 249.
* DMD2 (Yin et al., arXiv 2405.14867): HF card tianweiy/DMD2 — 4-step generator sampled with
  timesteps=[999, 749, 499, 249] ("LCMScheduler's default timesteps are different from the one we used
  for training"); the 1-step generator with timesteps=[399].
* Hyper-SD (ByteDance, arXiv 2404.13686): HF card ByteDance/Hyper-SD — N-step LoRAs (1/2/4/8, CFG
  LoRAs 8/12) with DDIMScheduler timestep_spacing="trailing"; the SDXL 1-step UNet with timestep 800
  (the card's ComfyUI node HyperSDXL1StepUnetScheduler).
* LCM / LCM-LoRA (arXiv 2310.04378, 2311.05556) and TCD (arXiv 2402.19159, h1t/TCD-*-LoRA): diffusers
  LCMScheduler / TCDScheduler, original_inference_steps = 50: the distillation grid is
  t = 20 k - 1 (k = 1..50) and N steps take indices floor(linspace(0, 50, N, endpoint=False)) of it
  from the top: 4 steps = 999, 759, 499, 259. (Older diffusers LCMScheduler releases took every
  (50 // N)-th grid point: 999, 759, 519, 279 at 4 steps.)
* SDXL-Turbo (ADD, arXiv 2311.17042): the card recommends 1 step (t = 999); the N-step list here is
  ComfyUI core's SDTurboScheduler (999, 899, ... stride 100, at most 10 steps). The set of timesteps
  ADD trained the student on could NOT be confirmed from the sources read: warnings for Turbo are
  against that stride-100 list.

Other step counts (the documented rule): presets defined by trailing spacing use it at any N
(t_k = round(1000 - k * 1000 / N) - 1); LCM/TCD use the 50-point grid rule up to N = 50; Turbo uses
stride 100 up to 10 steps and trailing spacing above.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .validation import check_steps

TRAIN_STEPS = 1000
LCM_GRID = 50


def trailing(steps: int) -> list[int]:
    """diffusers' timestep_spacing='trailing': round(arange(1000, 0, -1000/N)) - 1."""
    ratio = TRAIN_STEPS / steps
    return [int(round(TRAIN_STEPS - k * ratio)) - 1 for k in range(steps)]


def lcm_grid() -> list[int]:
    k = TRAIN_STEPS // LCM_GRID
    return [k * i - 1 for i in range(LCM_GRID, 0, -1)]  # 999, 979, ..., 19


def lcm_steps(steps: int) -> list[int]:
    grid = lcm_grid()
    if steps > len(grid):
        raise ValueError(f"steps must be <= {len(grid)} for an LCM/TCD preset (its {len(grid)}-point "
                         f"distillation grid), got {steps}")
    return [grid[int(math.floor(i * len(grid) / steps))] for i in range(steps)]


def turbo_steps(steps: int) -> list[int]:
    if steps <= 10:
        return [999 - 100 * i for i in range(steps)]
    return trailing(steps)


@dataclass(frozen=True)
class DistilledPreset:
    name: str
    label: str
    source: str
    rule: str                      # "trailing", "lcm" or "turbo"
    checkpoints: tuple = ()        # published step counts (one checkpoint / LoRA each)
    fixed: dict = field(default_factory=dict)  # step count -> timesteps that differ from the rule
    grid_trained: bool = False     # trained on the whole grid (LCM/TCD), not per checkpoint
    confirmed: bool = True

    def timesteps(self, steps) -> list[int]:
        steps = check_steps(steps, "steps", 1)
        if steps in self.fixed:
            return list(self.fixed[steps])
        if steps > TRAIN_STEPS:
            raise ValueError(f"steps must be <= {TRAIN_STEPS}, got {steps}")
        return {"trailing": trailing, "lcm": lcm_steps, "turbo": turbo_steps}[self.rule](steps)

    def trained(self, trained_steps) -> list[int]:
        """The timesteps the loaded checkpoint was trained at: the whole grid for LCM/TCD, else the
        list of the checkpoint with `trained_steps` steps."""
        if self.grid_trained:
            return lcm_grid()
        if self.rule == "turbo":
            return turbo_steps(10)
        if len(self.checkpoints) == 1:  # one published checkpoint: trained_steps does not apply
            return self.timesteps(self.checkpoints[0])
        trained_steps = check_steps(trained_steps, "trained_steps", 1)
        if self.checkpoints and trained_steps not in self.checkpoints:
            raise ValueError(f"trained_steps must be one of {list(self.checkpoints)} for {self.label} "
                             f"(its published checkpoints), got {trained_steps}")
        return self.timesteps(trained_steps)


PRESETS = {p.name: p for p in (
    DistilledPreset("sdxl_lightning", "SDXL-Lightning",
                    "HF card ByteDance/SDXL-Lightning: Euler, timestep_spacing='trailing'", "trailing",
                    checkpoints=(1, 2, 4, 8)),
    DistilledPreset("dmd2", "DMD2 (SDXL)",
                    "HF card tianweiy/DMD2: timesteps=[999, 749, 499, 249] (4-step), [399] (1-step)",
                    "trailing", checkpoints=(1, 4), fixed={1: (399,)}),
    DistilledPreset("hyper_sd", "Hyper-SD N-step LoRA (SDXL / SD1.5)",
                    "HF card ByteDance/Hyper-SD: DDIM, timestep_spacing='trailing'", "trailing",
                    checkpoints=(1, 2, 4, 8, 12)),
    DistilledPreset("hyper_sdxl_1step_unet", "Hyper-SDXL 1-step UNet",
                    "HF card ByteDance/Hyper-SD, ComfyUI node HyperSDXL1StepUnetScheduler: timestep 800",
                    "trailing", checkpoints=(1,), fixed={1: (800,)}),
    DistilledPreset("lcm", "LCM / LCM-LoRA (SDXL / SD1.5)",
                    "diffusers LCMScheduler, original_inference_steps=50", "lcm", grid_trained=True),
    DistilledPreset("tcd", "TCD LoRA (SDXL / SD1.5)",
                    "diffusers TCDScheduler, original_inference_steps=50 (h1t/TCD-*-LoRA cards)", "lcm",
                    grid_trained=True),
    DistilledPreset("sdxl_turbo", "SDXL-Turbo / SD-Turbo",
                    "ComfyUI core SDTurboScheduler (stride 100 from 999); ADD's trained set unconfirmed",
                    "turbo", confirmed=False),
)}


def preset(name: str) -> DistilledPreset:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]


def far_steps(visited, trained, tolerance=None) -> list[tuple[int, float, int]]:
    """(index, timestep, nearest trained timestep) for every visited timestep farther than
    `tolerance` from all trained ones; tolerance defaults to a quarter of the trained set's
    smallest spacing (5 on the 20-step LCM grid, 62.5 for a 4-step trailing list), at least 1."""
    trained = sorted(set(int(t) for t in trained))
    if tolerance is None:
        gaps = [b - a for a, b in zip(trained, trained[1:])]
        tolerance = max(1.0, (min(gaps) if gaps else TRAIN_STEPS) / 4)
    out = []
    for i, t in enumerate(visited):
        nearest = min(trained, key=lambda s: abs(s - t))
        if abs(nearest - t) > tolerance:
            out.append((i, float(t), nearest))
    return out
