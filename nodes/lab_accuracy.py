"""Accuracy node: runs any SAMPLER on the lab MODEL and measures its error against the exact
probability-flow ODE solution from the same noise (ground truth, not a reference sampler)."""
import json

import comfy.samplers
from comfy_api.latest import io

from ..bridge import lab_runner
from ..samplers.accuracy import TARGETS
from .lab import CATEGORY

COUNT_MODES = ("steps", "model calls")


class FewStepLabAccuracy(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepLabAccuracy", display_name="Lab Sampler Accuracy (FewStep)", category=CATEGORY,
            description=("Ground-truth accuracy of a sampler: runs the SAMPLER on the exact-denoiser lab MODEL through "
                         "ComfyUI's sampling path and compares it with the exact probability-flow ODE solution from the "
                         "same noise (float64, adaptive, convergence-checked). Outputs the per-sample RMSE (mean, "
                         "median), the number of model calls, a report and a plot."),
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The lab MODEL (Exact Denoiser Lab Model node); other models are refused."),
                io.Sampler.Input("sampler", tooltip="Any SAMPLER (KSamplerSelect, a FewStep sampler node, ...)."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="karras", tooltip="Scheduler for the sigmas (ignored when sigmas are connected)."),
                io.Int.Input("steps", default=8, min=1, max=1000, tooltip="Steps, or model calls when count is 'model calls' (ignored when sigmas are connected)."),
                io.Combo.Input("count", options=list(COUNT_MODES), default="steps", tooltip="'model calls': find the step count at which the sampler makes exactly this many model calls (equal-cost comparison)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate="fixed",
                             tooltip="Seed of the initial noise (and of a stochastic sampler's noise)."),
                io.Int.Input("batch_size", default=16, min=1, max=1024, tooltip="Number of samples the error is averaged over."),
                io.Int.Input("size", default=16, min=2, max=128, tooltip="Latent height and width in cells (image size / 8)."),
                io.Combo.Input("target", options=list(TARGETS), default=TARGETS[0], tooltip="'model sample': the exact ODE sample of this model (ODE to sigma_min, then the final denoise), common to every schedule, use it to rank. 'schedule endpoint': the exact ODE state where this schedule ends, reached the way this sampler ends (discretisation error only)."),
                io.Sigmas.Input("sigmas", optional=True, tooltip="A schedule to use instead of steps + scheduler."),
            ],
            outputs=[
                io.Float.Output(display_name="rmse_mean", tooltip="Mean over the batch of each sample's RMSE to its exact target."),
                io.Float.Output(display_name="rmse_median", tooltip="Median over the batch of each sample's RMSE."),
                io.Int.Output(display_name="nfe", tooltip="Model calls the sampler made (counted by wrapping the model)."),
                io.String.Output(display_name="report", tooltip="Both error figures, the end convention, and the sigmas."),
                io.Image.Output(display_name="plot", tooltip="Error along the trajectory and the schedule."),
                io.Latent.Output(display_name="samples", tooltip="The sampler's output latents (decode with Lab Latent to Image)."),
                io.Latent.Output(display_name="exact", tooltip="The exact target latents the error is measured against (same noise)."),
            ])

    @classmethod
    def execute(cls, model, sampler, scheduler, steps, count, seed, batch_size, size, target,
                sigmas=None) -> io.NodeOutput:
        lab_runner.lab_denoiser(model)  # refuse a non-lab model before any work
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if count not in COUNT_MODES:
            raise ValueError(f"count must be one of {COUNT_MODES}, got {count!r}")
        m = lab_runner.measure(model, sampler, sigmas, scheduler, steps, count == "model calls", target, seed,
                               batch_size, size)
        return io.NodeOutput(m.mean, m.median, m.nfe, m.report, m.plot, {"samples": m.samples}, {"samples": m.exact},
                             ui={"text": [m.report], "fewstep_accuracy": [json.loads(json.dumps(m.summary))]})


NODE_CLASS_MAPPINGS = {"FewStepLabAccuracy": FewStepLabAccuracy}
