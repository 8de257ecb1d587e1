"""Phase 2's trajectory target inside ComfyUI (maths: samplers/finetune_trajectory.py): the
untuned model's fine solves on a schedule, through the training sampler's model wrapper, and the
(state, level, target) pairs a fine-tune draws its batches from."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..samplers.finetune_trajectory import run_student, run_teacher, step_targets, student_targets, teacher_sigmas
from .lab_runner import start_latent


@dataclass(frozen=True)
class TeacherPairs:
    """The trajectory target of one schedule: teacher states at its levels (N + 1, T, ...) and the
    targets D* (N, T, ...), on the CPU; step weights (N,) with mean 1; the teacher's samples (T, ...).
    make_student_pairs gives the same at the student's own states (same noises, same samples)."""
    sigmas: torch.Tensor
    states: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    seconds: float
    samples: torch.Tensor

    def draw(self, rows, pool, estimator, generator):
        """(inputs, sigmas, targets, loss weights) of `rows` (trajectory in `pool`, step) pairs."""
        j = pool[torch.randint(0, pool.numel(), (rows,), generator=generator)]
        n = self.weights.numel()
        if estimator == "importance":
            i = torch.multinomial(self.weights / self.weights.sum(), rows, replacement=True, generator=generator)
            w = torch.ones(rows, dtype=torch.float64)
        else:
            i = torch.randint(0, n, (rows,), generator=generator)
            w = self.weights[i]
        return self.states[i, j], self.sigmas[i], self.targets[i, j], w


def _denoiser(model_wrap, extra_args, dtype):
    def denoise(xt, sigma):
        with torch.autocast(xt.device.type, dtype=dtype, enabled=dtype != torch.float32):
            return model_wrap(xt, sigma.to(xt.device, torch.float32), **extra_args).float()
    return denoise


def make_teacher_pairs(model, model_wrap, sigmas, like, settings, extra_args, dtype, generator, check) -> TeacherPairs:
    """`settings.trajectories` solves of the current model (the caller makes it the untuned one) from
    noise on the schedule's fine grid, in chunks of settings.batch_size, each started where a ComfyUI
    sampler starts (lab_runner.start_latent). `model` is the patcher `model_wrap` wraps."""
    t0 = time.perf_counter()
    sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
    fine, keep = teacher_sigmas(sig, settings.teacher_steps, float(model_wrap.inner_model.model_sampling.sigma_min))
    denoise = _denoiser(model_wrap, extra_args, dtype)
    states = []
    for a in range(0, int(settings.trajectories), int(settings.batch_size)):
        check()
        rows = min(int(settings.batch_size), int(settings.trajectories) - a)
        eps = torch.randn((rows,) + tuple(like.shape[1:]), generator=generator)
        x = start_latent(model, sig, eps).to(like.device, torch.float32)
        states.append(run_teacher(denoise, x, fine, keep).cpu())
    states = torch.cat(states, 1)
    targets, weights = step_targets(states, sig, settings.solver)
    return TeacherPairs(sig[:-1].clone(), states[:-1].contiguous(), targets, weights, time.perf_counter() - t0,
                        states[-1].clone())


def make_student_pairs(teacher: TeacherPairs, schedule, model_wrap, settings, extra_args, dtype, device,
                       check) -> TeacherPairs:
    """The trajectory target at the current model's own states (samplers/finetune_trajectory.py,
    student_targets): its few-step solve (no gradients) from each teacher solve's first state, in
    chunks of settings.batch_size."""
    t0 = time.perf_counter()
    sig = torch.as_tensor(schedule, dtype=torch.float64).flatten().cpu()
    denoise = _denoiser(model_wrap, extra_args, dtype)
    states, targets = [], []
    for a in range(0, teacher.samples.shape[0], int(settings.batch_size)):
        check()
        part = slice(a, a + int(settings.batch_size))
        with torch.no_grad():
            own, outputs = run_student(denoise, teacher.states[0, part].to(device), sig, settings.solver)
        full = torch.cat([teacher.states[:, part], teacher.samples[None, part]])
        states.append(own.cpu())
        targets.append(student_targets(own.cpu(), outputs.cpu(), full, sig, settings.solver))
    return TeacherPairs(teacher.sigmas, torch.cat(states, 1), torch.cat(targets, 1), teacher.weights,
                        time.perf_counter() - t0, teacher.samples)
