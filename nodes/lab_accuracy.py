"""Accuracy node: runs any SAMPLER on the lab MODEL and measures its error against the exact
probability-flow ODE solution from the same noise (ground truth, not a reference sampler)."""
import json

import numpy as np
import torch

import comfy.samplers

from ..samplers.accuracy import TARGETS
from . import _lab_runner as runner
from .lab import CATEGORY

COUNT_MODES = ("steps", "model calls")


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
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]


class FewStepLabAccuracy:
    DESCRIPTION = ("Ground-truth accuracy of a sampler: runs the SAMPLER on the exact-denoiser lab MODEL through "
                   "ComfyUI's sampling path and compares it with the exact probability-flow ODE solution from the same "
                   "noise (float64, adaptive, convergence-checked). Outputs the per-sample RMSE (mean, median), the "
                   "number of model calls, a report and a plot.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("FLOAT", "FLOAT", "INT", "STRING", "IMAGE", "LATENT", "LATENT")
    RETURN_NAMES = ("rmse_mean", "rmse_median", "nfe", "report", "plot", "samples", "exact")
    OUTPUT_TOOLTIPS = ("Mean over the batch of each sample's RMSE to its exact target.",
                       "Median over the batch of each sample's RMSE.",
                       "Model calls the sampler made (counted by wrapping the model).",
                       "Both error figures, the end convention, and the sigmas.",
                       "Error along the trajectory and the schedule.",
                       "The sampler's output latents (decode with Lab Latent to Image).",
                       "The exact target latents the error is measured against (same noise).")
    OUTPUT_NODE = True
    FUNCTION = "measure"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The lab MODEL (Exact Denoiser Lab Model node); other models are refused."}),
                "sampler": ("SAMPLER", {"tooltip": "Any SAMPLER (KSamplerSelect, a FewStep sampler node, ...)."}),
                "scheduler": (comfy.samplers.SCHEDULER_NAMES, {"default": "karras", "tooltip": "Scheduler for the sigmas (ignored when sigmas are connected)."}),
                "steps": ("INT", {"default": 8, "min": 1, "max": 1000, "tooltip": "Steps, or model calls when count is 'model calls' (ignored when sigmas are connected)."}),
                "count": (list(COUNT_MODES), {"default": "steps", "tooltip": "'model calls': find the step count at which the sampler makes exactly this many model calls (equal-cost comparison)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Seed of the initial noise (and of a stochastic sampler's noise)."}),
                "batch_size": ("INT", {"default": 16, "min": 1, "max": 1024, "tooltip": "Number of samples the error is averaged over."}),
                "size": ("INT", {"default": 16, "min": 2, "max": 128, "tooltip": "Latent height and width in cells (image size / 8)."}),
                "target": (list(TARGETS), {"default": TARGETS[0], "tooltip": "'model sample': the exact ODE sample of this model (ODE to sigma_min, then the final denoise), common to every schedule, use it to rank. 'schedule endpoint': the exact ODE state where this schedule ends, reached the way this sampler ends (discretisation error only)."}),
            },
            "optional": {
                "sigmas": ("SIGMAS", {"tooltip": "A schedule to use instead of steps + scheduler."}),
            },
        }

    def measure(self, model, sampler, scheduler, steps, count, seed, batch_size, size, target, sigmas=None):
        runner.lab_denoiser(model)  # refuse a non-lab model before any work
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if count not in COUNT_MODES:
            raise ValueError(f"count must be one of {COUNT_MODES}, got {count!r}")
        if sigmas is None:
            if count == "model calls":
                found = runner.steps_for_nfe(model, sampler, steps, lambda n: runner.schedule_sigmas(model, scheduler, n))
                if found is None:
                    raise ValueError(f"this sampler cannot make exactly {steps} model calls with scheduler "
                                     f"{scheduler!r}; try a neighbouring count")
                steps = found
            sigmas = runner.schedule_sigmas(model, scheduler, steps)
        result, run = runner.score(model, sampler, sigmas, seed, batch_size, size)
        mean, median = result.mean(target), result.median(target)
        report = f"target: {target}\n" + result.report()
        plot = pil_to_image(accuracy_plot(result, f"error along the trajectory (final RMSE {mean:.3g}, {target})"))
        summary = {"target": target, "rmse_mean_target": mean, "rmse_median_target": median, **result.as_dict()}
        return {"ui": {"text": [report], "fewstep_accuracy": [json.loads(json.dumps(summary))]},
                "result": (mean, median, result.nfe, report, plot, {"samples": run.output.float()},
                           {"samples": result.target_latent(target).float()})}


NODE_CLASS_MAPPINGS = {"FewStepLabAccuracy": FewStepLabAccuracy}
NODE_DISPLAY_NAME_MAPPINGS = {"FewStepLabAccuracy": "Lab Sampler Accuracy (FewStep)"}
