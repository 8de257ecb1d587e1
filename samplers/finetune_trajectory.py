"""Phase 2's trajectory target: the denoiser outputs that make a few-step solve land where the
model's own fine solve lands (pure torch; derivation in docs/finetune.md, "Trajectory target").

The paper's data target (samplers/finetune_loss.py) pulls D_theta(x; s_i) towards E[x0 | x] at the
selected levels, which a well-trained model already is: it cannot remove the few-step solver's
own error. The trajectory target asks instead for the value that removes it. A teacher (the model
before fine-tuning) solves the ODE on a fine grid that contains every step of the schedule
(`teacher_sigmas`, `run_teacher`); its states x_0 .. x_N at the schedule's levels s_0 .. s_N fix,
step by step, the denoiser output D*_i the few-step solver needs to go from x_i to x_{i+1}
(`step_targets`). A student trained on (x_i, s_i) -> D*_i then reproduces the fine solve with N calls
of its solver. Only the solvers whose update is linear in the model's outputs have such a target;
those are listed in TARGET_SOLVERS, with their update written exactly as ComfyUI's sampler does it.

  euler, and every first step or final jump to 0 of dpmpp_2m:
      x_{i+1} = r_i x_i + (1 - r_i) D_i,   r_i = s_{i+1} / s_i
      =>  D*_i = (x_{i+1} - r_i x_i) / (1 - r_i)                                   (E_i)
  dpmpp_2m otherwise (c_i = h_i / (2 h_{i-1}), h_i = log(s_i / s_{i+1})):
      x_{i+1} = r_i x_i + (1 - r_i) ((1 + c_i) D_i - c_i D_{i-1})
      =>  D*_i = (E_i + c_i D*_{i-1}) / (1 + c_i)     (D_{i-1} = D*_{i-1}: the student's previous output)

An error d in D_i moves x_{i+1} by (1 - r_i) g_i d (g_i = 1 + c_i, or 1): the step weights
((1 - r_i) g_i)^2, normalised to mean 1, make the loss the squared error of the states.

Trained only at the teacher's states, the student meets at sampling time states its own earlier
steps moved (exposure bias). `student_targets` gives the targets at the student's own states y_i
(its solve from the same noise, `run_student`, outputs B_i): the output that takes y_i to the
teacher's next state, with the student's own previous output in the 2M update,
      D^_i = (E'_i + c_i B_{i-1}) / (1 + c_i),   E'_i = (x_{i+1} - r_i y_i) / (1 - r_i),
which equals D*_i where the student follows the teacher (y = x, B = D*)."""
from __future__ import annotations

import math

import torch

from .dpmpp import sample_dpmpp_2m

TARGET_SOLVERS = ("dpmpp_2m", "euler")
FLOAT32_EPS = 2.0 ** -20  # a few float32 roundings, relative


def _schedule(sigmas) -> torch.Tensor:
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if s.numel() < 2:
        raise ValueError(f"sigmas: a schedule needs at least 2 values (1 step), got {s.numel()}")
    if not torch.isfinite(s).all() or float(s[:-1].min()) <= 0 or float(s[-1]) < 0:
        raise ValueError("sigmas: values must be finite, the called ones > 0")
    if not (s[1:] < s[:-1]).all():
        raise ValueError(f"sigmas: the schedule must be strictly decreasing, got {s.tolist()}")
    return s


def _check_solver(solver):
    if solver not in TARGET_SOLVERS:
        raise ValueError(f"solver: the trajectory target exists for {TARGET_SOLVERS} (updates linear in the model's "
                         f"outputs), got {solver!r}")


def teacher_sigmas(sigmas, sub_steps: int, sigma_min: float) -> tuple:
    """(fine schedule, index of each of `sigmas`' values in it): every interval of the schedule cut
    into `sub_steps` steps even in log sigma. A final jump to 0 is refined down to `sigma_min` (the
    model's lowest level) first, then jumps; its index is the fine schedule's last. A last level
    within float32 rounding of sigma_min counts as sigma_min."""
    s = _schedule(sigmas)
    sub_steps = int(sub_steps)
    if sub_steps < 1:
        raise ValueError(f"teacher_steps must be >= 1, got {sub_steps}")
    if not (math.isfinite(sigma_min) and sigma_min > 0):
        raise ValueError(f"sigma_min must be a finite number > 0, got {sigma_min}")
    fine, keep = [float(s[0])], [0]
    for a, b in zip(s[:-1].tolist(), s[1:].tolist()):
        end = b if b > 0 else min(sigma_min, a)
        # a last level that is sigma_min stored in float32 (every ComfyUI schedule's) is not refined
        # to the float64 sigma_min a few 1e-8 below it: steps of log-size 1e-7 are calls wasted
        if end < a * (1 - FLOAT32_EPS):
            fine += torch.logspace(math.log10(a), math.log10(end), sub_steps + 1, dtype=torch.float64)[1:].tolist()
        if b == 0:
            fine.append(0.0)
        keep.append(len(fine) - 1)
    return torch.tensor(fine, dtype=torch.float64), keep


def run_teacher(denoise, x: torch.Tensor, fine: torch.Tensor, keep) -> torch.Tensor:
    """States at the fine schedule's `keep` indices, stacked (len(keep), *x.shape): the pack's
    DPM-Solver++(2M) (ComfyUI's update) on `fine`, `denoise(x, sigma_tensor) -> D` called len(fine) - 1 times."""
    fine = torch.as_tensor(fine, dtype=torch.float64)
    want = {int(k): n for n, k in enumerate(keep)}
    out = [None] * len(want)

    def record(info):  # the state before step i
        if info["i"] in want:
            out[want[info["i"]]] = info["x"]

    last = sample_dpmpp_2m(denoise, x, fine, callback=record, disable=True, allow_short_schedule=True)
    if fine.numel() - 1 in want:
        out[want[fine.numel() - 1]] = last
    return torch.stack(out)


def step_gains(sigmas, solver: str) -> tuple:
    """(r_i, c_i) per model call of `sigmas` for `solver` (c_i = 0 where the update is first order)."""
    _check_solver(solver)
    s = _schedule(sigmas)
    r = s[1:] / s[:-1]
    c = torch.zeros_like(r)
    if solver == "dpmpp_2m":
        for i in range(1, r.numel()):
            if float(s[i + 1]) > 0:
                c[i] = math.log(s[i] / s[i + 1]) / (2 * math.log(s[i - 1] / s[i]))
    return r, c


def _landing_output(x, x_next, r: float, c: float, previous):
    """The output D that takes x to x_next in one step with gains (r, c), `previous` being the output
    the 2M update mixes in (unused where c = 0): (E + c previous) / (1 + c), E = (x_next - r x) / (1 - r)."""
    e = (x_next - r * x) / (1 - r)
    return e if c == 0 else (e + c * previous) / (1 + c)


def step_targets(states: torch.Tensor, sigmas, solver: str) -> tuple:
    """(D* (N, *batch), weights (N,) float64 with mean 1) from teacher states (N + 1, *batch) at the
    levels of `sigmas` (see the module docstring)."""
    r, c = step_gains(sigmas, solver)
    n = r.numel()
    if states.shape[0] != n + 1:
        raise ValueError(f"states: expected {n + 1} states (one per level of the schedule), got {states.shape[0]}")
    targets = []
    for i in range(n):  # teacher-forced: the previous output is the previous target
        targets.append(_landing_output(states[i], states[i + 1], float(r[i]), float(c[i]), targets[-1] if i else None))
    weights = ((1 - r) * (1 + c)).pow(2)
    return torch.stack(targets), weights / weights.mean()


def run_student(denoise, x: torch.Tensor, sigmas, solver: str) -> tuple:
    """(states (N, *x.shape) before each step, outputs (N, *x.shape)): the N-step solve of `solver`
    on `sigmas` from x, with the update written as in the module docstring (ComfyUI's);
    `denoise(x, sigma (batch,) float64) -> D` as for run_teacher."""
    r, c = step_gains(sigmas, solver)
    s = _schedule(sigmas)
    states, outputs = [], []
    for i in range(r.numel()):
        d = denoise(x, s[i].expand(x.shape[0]))
        states.append(x)
        outputs.append(d)
        mixed = d if float(c[i]) == 0 else (1 + float(c[i])) * d - float(c[i]) * outputs[-2]
        x = float(r[i]) * x + (1 - float(r[i])) * mixed
    return torch.stack(states), torch.stack(outputs)


def student_targets(states: torch.Tensor, outputs: torch.Tensor, teacher_states: torch.Tensor, sigmas,
                    solver: str) -> torch.Tensor:
    """D^ (N, *batch): at the student's states (N, *batch) with its outputs there, the outputs that
    land each step on the teacher's next state (teacher_states (N + 1, *batch), same noises)."""
    r, c = step_gains(sigmas, solver)
    n = r.numel()
    if teacher_states.shape[0] != n + 1 or states.shape[0] != n or outputs.shape != states.shape:
        raise ValueError(f"states, outputs: expected {n} of each and {n + 1} teacher states, got {states.shape[0]}, "
                         f"{outputs.shape[0]} and {teacher_states.shape[0]}")
    return torch.stack([_landing_output(states[i], teacher_states[i + 1], float(r[i]), float(c[i]),
                                        outputs[i - 1] if i else None) for i in range(n)])
