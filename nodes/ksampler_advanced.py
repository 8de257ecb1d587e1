"""A drop-in KSamplerAdvanced: the core node's inputs and output, plus optional SAMPLER / SIGMAS
inputs that override the sampler_name / (steps, scheduler) dropdowns. Without overrides it gives
the core node's latent: same noise, same schedule, same cut at start/end_at_step, same sampling
call; the overrides go through exactly the same path."""
import comfy.samplers

from ..bridge.ksampler import sample_advanced


class FewStepKSamplerAdvanced:
    DESCRIPTION = ("KSampler (Advanced) with optional SAMPLER and SIGMAS inputs. Without them it is the core node "
                   "(same latent). A connected SAMPLER replaces sampler_name; connected SIGMAS replace steps and "
                   "scheduler (start_at_step / end_at_step then index into those sigmas). Works with every sampler "
                   "and scheduler in the dropdowns, FewStep's included.")
    CATEGORY = "FewStep/sampling"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model used for denoising."}),
            "add_noise": (["enable", "disable"], {"tooltip": "disable: the latent already carries its noise (a "
                                                              "second stage after return_with_leftover_noise)."}),
            "noise_seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                                   "tooltip": "Seed of the initial noise (and of stochastic samplers)."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "Steps of the whole schedule."}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance scale."}),
            "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"tooltip": "Sampler, unless a SAMPLER is connected."}),
            "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"tooltip": "Schedule, unless SIGMAS are connected."}),
            "positive": ("CONDITIONING", {"tooltip": "Positive conditioning."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative conditioning."}),
            "latent_image": ("LATENT", {"tooltip": "Latent to denoise (its noise_mask is honoured)."}),
            "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000, "tooltip": "First step to run."}),
            "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000, "tooltip": "Step to stop at."}),
            "return_with_leftover_noise": (["disable", "enable"], {"tooltip": "enable: stop at the noise level of "
                                           "end_at_step (for a second stage); disable: denoise fully at the cut."}),
        }, "optional": {
            "sampler": ("SAMPLER", {"tooltip": "Overrides sampler_name (e.g. a FewStep SAMPLER node)."}),
            "sigmas": ("SIGMAS", {"tooltip": "Overrides steps and scheduler (e.g. a FewStep SIGMAS node)."}),
        }}

    def sample(self, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
               latent_image, start_at_step, end_at_step, return_with_leftover_noise, sampler=None, sigmas=None,
               denoise=1.0):
        from ..samplers.validation import check_non_negative, check_sigmas, check_steps
        steps = check_steps(steps)
        start_at_step = int(check_non_negative(start_at_step, "start_at_step"))
        end_at_step = int(check_non_negative(end_at_step, "end_at_step"))
        if sigmas is not None:
            check_sigmas(sigmas, "sigmas")
        if sampler is not None and not hasattr(sampler, "sample"):
            raise ValueError(f"sampler must be a ComfyUI SAMPLER, got {type(sampler).__name__}")
        return (sample_advanced(model, add_noise != "disable", noise_seed, steps, cfg, sampler_name, scheduler, positive,
                                negative, latent_image, start_at_step, end_at_step,
                                return_with_leftover_noise != "enable", sampler, sigmas, denoise),)


NODE_CLASS_MAPPINGS = {"FewStepKSamplerAdvanced": FewStepKSamplerAdvanced}
NODE_DISPLAY_NAME_MAPPINGS = {"FewStepKSamplerAdvanced": "KSampler Advanced + SAMPLER/SIGMAS (FewStep)"}
