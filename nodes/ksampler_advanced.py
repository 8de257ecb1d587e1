"""A drop-in KSamplerAdvanced: the core node's inputs and output, plus optional SAMPLER / SIGMAS
inputs that override the sampler_name / (steps, scheduler) dropdowns. Without overrides it gives
the core node's latent: same noise, same schedule, same cut at start/end_at_step, same sampling
call; the overrides go through exactly the same path (bridge/ksampler.py)."""
import comfy.samplers
from comfy_api.latest import io

from ..bridge.ksampler import sample_advanced


class FewStepKSamplerAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepKSamplerAdvanced", display_name="KSampler Advanced + SAMPLER/SIGMAS (FewStep)",
            category="FewStep/sampling",
            description=("KSampler (Advanced) with optional SAMPLER and SIGMAS inputs. Without them it is the core "
                         "node (same latent). A connected SAMPLER replaces sampler_name; connected SIGMAS replace "
                         "steps and scheduler (start_at_step / end_at_step then index into those sigmas). Works with "
                         "every sampler and scheduler in the dropdowns, FewStep's included."),
            inputs=[
                io.Model.Input("model", tooltip="The model used for denoising."),
                io.Combo.Input("add_noise", options=["enable", "disable"], tooltip=(
                    "disable: the latent already carries its noise (a second stage after return_with_leftover_noise).")),
                io.Int.Input("noise_seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the initial noise (and of stochastic samplers)."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Steps of the whole schedule."),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS,
                               tooltip="Sampler, unless a SAMPLER is connected."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                               tooltip="Schedule, unless SIGMAS are connected."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                io.Latent.Input("latent_image", tooltip="Latent to denoise (its noise_mask is honoured)."),
                io.Int.Input("start_at_step", default=0, min=0, max=10000, tooltip="First step to run."),
                io.Int.Input("end_at_step", default=10000, min=0, max=10000, tooltip="Step to stop at."),
                io.Combo.Input("return_with_leftover_noise", options=["disable", "enable"], tooltip=(
                    "enable: stop at the noise level of end_at_step (for a second stage); disable: denoise fully "
                    "at the cut.")),
                io.Sampler.Input("sampler", optional=True, tooltip="Overrides sampler_name (e.g. a FewStep SAMPLER node)."),
                io.Sigmas.Input("sigmas", optional=True, tooltip="Overrides steps and scheduler (e.g. a FewStep SIGMAS node)."),
            ],
            outputs=[io.Latent.Output()])

    @classmethod
    def execute(cls, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                latent_image, start_at_step, end_at_step, return_with_leftover_noise, sampler=None, sigmas=None,
                denoise=1.0) -> io.NodeOutput:
        from ..samplers.validation import check_non_negative, check_sigmas, check_steps
        steps = check_steps(steps)
        start_at_step = int(check_non_negative(start_at_step, "start_at_step"))
        end_at_step = int(check_non_negative(end_at_step, "end_at_step"))
        if sigmas is not None:
            check_sigmas(sigmas, "sigmas")
        if sampler is not None and not hasattr(sampler, "sample"):
            raise ValueError(f"sampler must be a ComfyUI SAMPLER, got {type(sampler).__name__}")
        return io.NodeOutput(sample_advanced(model, add_noise != "disable", noise_seed, steps, cfg, sampler_name,
                                             scheduler, positive, negative, latent_image, start_at_step, end_at_step,
                                             return_with_leftover_noise != "enable", sampler, sigmas, denoise))


NODE_CLASS_MAPPINGS = {"FewStepKSamplerAdvanced": FewStepKSamplerAdvanced}
