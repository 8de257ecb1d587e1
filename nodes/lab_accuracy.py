"""Accuracy node: runs any SAMPLER on the lab MODEL and measures its error against the exact
probability-flow ODE solution from the same noise (ground truth, not a reference sampler)."""
import json

import comfy.samplers

from ..bridge import lab_runner
from ..samplers.accuracy import TARGETS
from .lab import CATEGORY

COUNT_MODES = ("steps", "model calls")


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
        lab_runner.lab_denoiser(model)  # refuse a non-lab model before any work
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if count not in COUNT_MODES:
            raise ValueError(f"count must be one of {COUNT_MODES}, got {count!r}")
        m = lab_runner.measure(model, sampler, sigmas, scheduler, steps, count == "model calls", target, seed,
                               batch_size, size)
        return {"ui": {"text": [m.report], "fewstep_accuracy": [json.loads(json.dumps(m.summary))]},
                "result": (m.mean, m.median, m.nfe, m.report, m.plot, {"samples": m.samples}, {"samples": m.exact})}


NODE_CLASS_MAPPINGS = {"FewStepLabAccuracy": FewStepLabAccuracy}
NODE_DISPLAY_NAME_MAPPINGS = {"FewStepLabAccuracy": "Lab Sampler Accuracy (FewStep)"}
