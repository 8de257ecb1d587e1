"""Runs any SAMPLER on the lab MODEL through ComfyUI's own sampling path (CFGGuider.sample, as
SamplerCustomAdvanced does) and scores it against the exact ODE (samplers/accuracy.py).

Shared by the accuracy node, the benchmark scripts and the tests (import it as
`<pack>.bridge.lab_runner`). Model calls are counted by a
model_function_wrapper on a clone of the ModelPatcher, so every sampler (core or pack) is counted
the same way, and the user's model is left untouched."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import comfy.sample
import comfy.samplers

from ..samplers.accuracy import AccuracyResult, CallLog, check_sigmas, score_run
from .lab_model import LabModel, empty_conditioning

PROBE_SHAPE = (1, 4, 4, 4)  # tiny latent for finding how many model calls a sampler makes


def lab_denoiser(model):
    """The exact denoiser behind a lab MODEL; a clear error for any other model."""
    inner = getattr(model, "model", None)
    if not isinstance(inner, LabModel):
        raise ValueError(
            "model must be the FewStep exact-denoiser lab MODEL (node 'Exact Denoiser Lab Model (FewStep)'), "
            f"got {type(inner if inner is not None else model).__name__}: ground truth needs a model whose "
            "denoiser is known in closed form")
    return inner.diffusion_model.denoiser


@dataclass
class Run:
    output: torch.Tensor   # what the sampler returned (CPU)
    x_start: torch.Tensor  # the latent it started from at sigmas[0], float64 (CPU)
    log: CallLog


def _counting_clone(model, log: CallLog, batch: int):
    patched = model.clone()
    previous = patched.model_options.get("model_function_wrapper")

    def count_calls(apply_model, args):
        out = previous(apply_model, args) if previous is not None else \
            apply_model(args["input"], args["timestep"], **args["c"])
        x, chunks = args["input"], args["cond_or_uncond"]
        n = x.shape[0] // max(len(chunks), 1)
        if n != batch:
            raise RuntimeError(f"ComfyUI split the lab batch ({n} of {batch} rows): NFE cannot be counted")
        k = chunks.index(0) if 0 in chunks else 0  # the positive cond's rows
        log.record(x[k * n:(k + 1) * n], args["timestep"][k * n:(k + 1) * n], out[k * n:(k + 1) * n])
        return out

    patched.set_model_unet_function_wrapper(count_calls)
    return patched


def start_latent(model, sigmas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The latent a ComfyUI sampler starts from: model_sampling.noise_scaling with the same
    full-denoise rule as comfy.samplers.Sampler.max_denoise, on an empty latent."""
    ms = model.get_model_object("model_sampling")
    s0 = float(sigmas[0])
    max_sigma = float(ms.sigma_max)
    max_denoise = math.isclose(max_sigma, s0, rel_tol=1e-5) or s0 > max_sigma
    noise64 = noise.to("cpu", torch.float64)
    return ms.noise_scaling(torch.tensor(s0, dtype=torch.float64), noise64, torch.zeros_like(noise64), max_denoise)


def run_sampler(model, sampler, sigmas, noise: torch.Tensor, seed: int, keep_calls: bool = True) -> Run:
    """One SamplerCustomAdvanced-equivalent run at cfg 1 (conditioning is ignored by the lab)."""
    log = CallLog(keep=keep_calls)
    patched = _counting_clone(model, log, noise.shape[0])
    guider = comfy.samplers.CFGGuider(patched)
    cond = empty_conditioning()
    guider.set_conds(cond, cond)
    guider.set_cfg(1.0)
    latent = torch.zeros_like(noise)
    # A copy: some samplers edit sigmas in place (ComfyUI's UniPC sets the final 0 to 0.001).
    out = guider.sample(noise, latent, sampler, sigmas.clone(), denoise_mask=None, callback=None, disable_pbar=True,
                        seed=seed)
    return Run(out.detach().cpu(), start_latent(model, sigmas, noise), log)


def schedule_sigmas(model, scheduler: str, steps: int, discard_penultimate: bool = False) -> torch.Tensor:
    """BasicScheduler's sigmas; discard_penultimate reproduces KSampler for dpm_2/uni_pc-style samplers."""
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if scheduler not in comfy.samplers.SCHEDULER_HANDLERS:
        raise ValueError(f"scheduler {scheduler!r} is not registered with ComfyUI")
    n = int(steps) + (1 if discard_penultimate else 0)
    sig = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, n).cpu()
    if discard_penultimate:
        sig = torch.cat([sig[:-2], sig[-1:]])
    return sig


def make_noise(seed: int, batch: int, size: int, channels: int = 4) -> torch.Tensor:
    """ComfyUI's seeded latent noise (comfy.sample.prepare_noise), as RandomNoise makes it."""
    latent = torch.zeros((batch, channels, size, size))
    return comfy.sample.prepare_noise(latent, seed)


def count_nfe(model, sampler, sigmas, seed: int = 0) -> int:
    """Model calls the sampler makes for these sigmas (on a tiny latent)."""
    noise = make_noise(seed, PROBE_SHAPE[0], PROBE_SHAPE[2], PROBE_SHAPE[1])
    return run_sampler(model, sampler, sigmas, noise, seed, keep_calls=False).log.nfe


def steps_for_nfe(model, sampler, nfe: int, sigmas_for_steps, max_steps: int | None = None, cache: dict | None = None):
    """The step count at which `sampler` makes exactly `nfe` model calls, or None when none does.
    sigmas_for_steps(steps) -> sigmas. Calls grow affinely with steps for every solver we know
    (a*steps + b); that guess is tried first, then its neighbours, each checked by counting.
    `cache` (steps -> calls) may be shared between calls for the same sampler and schedule."""
    if int(nfe) < 1:
        raise ValueError(f"model calls must be >= 1, got {nfe}")
    max_steps = max_steps or int(nfe)
    cache = {} if cache is None else cache

    def calls(steps):
        if steps not in cache:
            try:
                cache[steps] = count_nfe(model, sampler, sigmas_for_steps(steps))
            except Exception:  # a schedule or sampler that cannot run at this step count: not a match
                cache[steps] = -1
        return cache[steps]

    n3, n4 = calls(3), calls(4)
    a, b = n4 - n3, n3 - 3 * (n4 - n3)
    guesses = []
    if a > 0:
        guess = round((nfe - b) / a)
        guesses = [guess, guess - 1, guess + 1]
    guesses += [s for s in (1, 2) if s not in guesses]
    for s in guesses:
        if 1 <= s <= max_steps and calls(s) == nfe:
            return s
    return None


def score(model, sampler, sigmas, seed: int = 0, batch: int = 16, size: int = 16) -> tuple[AccuracyResult, Run]:
    """Runs the sampler from seeded noise and scores it against the exact ODE of the lab model."""
    denoiser = lab_denoiser(model)
    if int(batch) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch}")
    if int(size) < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    sig = torch.tensor(check_sigmas(sigmas), dtype=torch.float32)
    noise = make_noise(int(seed), int(batch), int(size))
    run = run_sampler(model, sampler, sig, noise, int(seed))
    if not torch.isfinite(run.output).all():
        raise ValueError("the sampler returned non-finite values")
    first = run.log.calls[0] if run.log.calls else None
    if first is not None and torch.allclose(first.sigma, torch.tensor(float(sig[0]), dtype=torch.float64), rtol=1e-5):
        # Self-check: our x_T must be the latent the sampler actually evaluated first.
        gap = float((first.x - run.x_start).abs().max())
        if gap > 1e-4 * (1 + float(run.x_start.abs().max())):
            raise RuntimeError(f"could not reproduce the sampler's starting latent (max gap {gap:.3g}); "
                               "this ComfyUI scales the initial noise differently")
    ms = model.get_model_object("model_sampling")
    result = score_run(denoiser, run.x_start, sig.double(), run.output, run.log, float(ms.sigma_min))
    return result, run


def accuracy_plot(result, title: str):
    """Left: error of the sampler's state at each model call vs sigma, and the final error.
    Right: the schedule."""
    from ..samplers.plotting import Series, hstack, line_plot  # Pillow is loaded at run time, not at pack import
    traj = [(s, e) for s, e in result.trajectory if e > 0]
    final = result.mean()
    series = [Series("state at each model call", [s for s, _ in traj], [e for _, e in traj])]
    lo = min([s for s, _ in traj] + [s for s in result.sigmas if s > 0])
    hi = max(s for s in result.sigmas)
    series.append(Series(f"final sample: {final:.3g}", [lo, hi], [final, final], color="#d62728", dash=True, marker=""))
    left = line_plot(series, title=title, xlabel="sigma at the model call", ylabel="RMSE vs exact ODE (mean over batch)",
                     xlog=True, ylog=True, size=(640, 400), note=f"NFE {result.nfe}; {result.convention}")
    steps = list(range(len(result.sigmas)))
    right = line_plot([Series("sigmas", [i for i in steps if result.sigmas[i] > 0],
                              [s for s in result.sigmas if s > 0], color="#1f77b4")],
                      title=f"schedule: {len(steps) - 1} steps", xlabel="step", ylabel="sigma", ylog=True,
                      legend=False, size=(360, 400))
    return hstack([left, right])


def pil_to_image(img) -> torch.Tensor:
    import numpy as np
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]


@dataclass
class Measurement:
    """What the accuracy node outputs: the figures, a report, a plot IMAGE and both latents."""
    mean: float
    median: float
    nfe: int
    report: str
    plot: torch.Tensor
    samples: torch.Tensor
    exact: torch.Tensor
    summary: dict


def measure(model, sampler, sigmas, scheduler: str, steps: int, by_model_calls: bool, target: str, seed: int,
            batch: int, size: int) -> Measurement:
    """Scores `sampler` on the lab model: on `sigmas`, or on the scheduler's schedule for `steps`
    steps (or for exactly `steps` model calls when by_model_calls)."""
    if sigmas is None:
        if by_model_calls:
            found = steps_for_nfe(model, sampler, steps, lambda n: schedule_sigmas(model, scheduler, n))
            if found is None:
                raise ValueError(f"this sampler cannot make exactly {steps} model calls with scheduler "
                                 f"{scheduler!r}; try a neighbouring count")
            steps = found
        sigmas = schedule_sigmas(model, scheduler, steps)
    result, run = score(model, sampler, sigmas, seed, batch, size)
    mean, median = result.mean(target), result.median(target)
    report = f"target: {target}\n" + result.report()
    plot = pil_to_image(accuracy_plot(result, f"error along the trajectory (final RMSE {mean:.3g}, {target})"))
    summary = {"target": target, "rmse_mean_target": mean, "rmse_median_target": median, **result.as_dict()}
    return Measurement(mean, median, result.nfe, report, plot, run.output.float(),
                       result.target_latent(target).float(), summary)
