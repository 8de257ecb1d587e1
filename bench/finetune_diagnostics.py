"""Where a Phase 2 trajectory LoRA stands against its teacher (issue 21's study, bench/study_finetune_gmm.py).

Three measurements on fresh teacher solves (new noise, never trained on), each through ComfyUI's
sampling path of the model being measured:

  teacher     the teacher's own endpoints, scored like any sampler's output: the best the
              trajectory target can give at this schedule (the untuned model's fine solve)
  step_loss   per step i, the training loss's term at the teacher's states (teacher-forced):
              w_i * mean (D(x_i; s_i) - D*_i)^2, untuned and tuned; what the fine-tune minimises
  gap_rms     RMS distance from the model's own N-step solve, started at the teacher's first state,
              to the teacher's endpoint (free-running): what sampling sees

A tuned step loss far below the untuned one with a gap that stays large means the student's own
states drift from the teacher's (errors compound along the solve); a step loss that stays high
means the LoRA did not fit the targets (capacity, steps, learning rate, anchor)."""
from __future__ import annotations

import importlib


def inside_sampling(model, cond, shape, sigmas, fn):
    """fn(model_fn, extra_args) -> value, called where a ComfyUI sampler runs (CFGGuider.sample on
    `model`, CFG 1): model_fn(x, sigma_batch, **extra_args) is the denoiser every sampler calls."""
    import torch
    import comfy.sample
    import comfy.samplers
    box = {}

    def sampler_function(model_fn, x, sigmas_in, extra_args=None, callback=None, disable=None, **options):
        box["value"] = fn(model_fn, extra_args or {})
        return x

    like = torch.zeros((1,) + tuple(shape))
    comfy.sample.sample_custom(model, like, 1.0, comfy.samplers.KSAMPLER(sampler_function), sigmas.float(), cond, cond,
                               like, disable_pbar=True, seed=0)
    return box["value"]


def trajectory_diagnostics(pack: str, base, tuned, sigmas, cond, shape, count: int, teacher_steps: int,
                           solver: str, seed: int, score):
    """The measurements above for `tuned` (the fine-tuned MODEL) and `base` (the untuned one, the
    teacher) on schedule `sigmas` ending at 0; `score(samples) -> dict` scores the teacher's endpoints."""
    import torch
    import comfy.k_diffusion.sampling as k_sampling
    import comfy.model_management
    traj = importlib.import_module(pack + ".samplers.finetune_trajectory")
    lab = importlib.import_module(pack + ".bridge.lab_runner")
    sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
    if float(sig[-1]) != 0:
        raise ValueError(f"sigmas: the diagnostics need a schedule that ends at 0, got {sig.tolist()}")
    device = comfy.model_management.get_torch_device()
    sigma_min = float(base.get_model_object("model_sampling").sigma_min)
    fine, keep = traj.teacher_sigmas(sig, teacher_steps, sigma_min)
    eps = torch.randn((count,) + tuple(shape), generator=torch.Generator().manual_seed(seed))
    start = lab.start_latent(base, sig, eps).to(device, torch.float32)

    def solve_fine(model_fn, extra):
        with torch.no_grad():
            return traj.run_teacher(lambda xt, s: model_fn(xt, s.to(xt.device, torch.float32), **extra), start, fine, keep)

    states = inside_sampling(base, cond, shape, sig, solve_fine)
    targets, weights = traj.step_targets(states, sig, solver)
    ones = torch.ones(count, device=device)
    solve = getattr(k_sampling, "sample_" + solver)

    def measure(model_fn, extra):
        with torch.no_grad():
            loss = [float(weights[i]) * float((model_fn(states[i], ones * float(sig[i]), **extra).double()
                                               - targets[i].double()).pow(2).mean()) for i in range(sig.numel() - 1)]
            end = solve(model_fn, states[0].clone(), sig.float().to(device), extra_args=extra, disable=True)
        return loss, float((end.double() - states[-1].double()).pow(2).mean().sqrt())

    out = {"count": count, "weights": weights.tolist(), "teacher": score(states[-1])}
    for label, model in (("untuned", base), ("tuned", tuned)):
        loss, gap = inside_sampling(model, cond, shape, sig, measure)
        out.setdefault("step_loss", {})[label] = loss
        out.setdefault("gap_rms", {})[label] = gap
    return out


def summary(diag: dict) -> str:
    """One line: teacher FD_inf, mean step loss untuned -> tuned, the worst-fitted step, the gap."""
    u, t = diag["step_loss"]["untuned"], diag["step_loss"]["tuned"]
    ratios = [b / a if a > 0 else float("nan") for a, b in zip(u, t)]
    worst = max(range(len(ratios)), key=lambda i: ratios[i])
    return (f"teacher FD_inf {diag['teacher']['fd_inf']:.4f}; step loss {sum(u) / len(u):.3g} → {sum(t) / len(t):.3g} "
            f"(worst step {worst}: ×{ratios[worst]:.2f}); free-running gap to the teacher {diag['gap_rms']['untuned']:.4f} → "
            f"{diag['gap_rms']['tuned']:.4f}")
