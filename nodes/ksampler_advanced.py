"""A drop-in KSamplerAdvanced: the core node's inputs and output, plus optional SAMPLER / SIGMAS
inputs that override the sampler_name / (steps, scheduler) dropdowns. Without overrides it gives
the core node's latent: same noise, same schedule, same cut at start/end_at_step, same sampling
call; the overrides go through exactly the same path."""
import torch

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview



def cut_schedule(sigmas, start_at_step, end_at_step, force_full_denoise):
    """KSampler.sample's slicing, on a copy: keep sigmas[:end+1] (its last set to 0 when
    force_full_denoise), then drop the first start_at_step. None when nothing is left to do."""
    sigmas = sigmas.clone()
    if end_at_step < len(sigmas) - 1:
        sigmas = sigmas[:end_at_step + 1]
        if force_full_denoise:
            sigmas[-1] = 0
    if start_at_step >= len(sigmas) - 1:
        return None
    return sigmas[start_at_step:]


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
        force_full_denoise = return_with_leftover_noise != "enable"

        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        if add_noise == "disable":
            noise = torch.zeros(latent.size(), dtype=latent.dtype, layout=latent.layout, device="cpu")
        else:
            noise = comfy.sample.prepare_noise(latent, noise_seed, latent_image.get("batch_index"))

        if sigmas is None:
            # The core KSampler computes the schedule (denoise, discard-penultimate samplers included);
            # with a SAMPLER override no dropdown sampler's rule applies.
            core = comfy.samplers.KSampler(model, steps=steps, device=model.load_device,
                                           sampler=sampler_name if sampler is None else None, scheduler=scheduler,
                                           denoise=denoise, model_options=model.model_options)
            sigmas = core.sigmas
        sigmas = cut_schedule(sigmas.to(model.load_device), start_at_step, end_at_step, force_full_denoise)
        out = latent_image.copy()
        if sigmas is None:
            out["samples"] = latent
            return (out,)
        if sampler is None:
            sampler = comfy.samplers.sampler_object(sampler_name)
        callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
        out["samples"] = comfy.sample.sample_custom(
            model, noise, cfg, sampler, sigmas, positive, negative, latent, noise_mask=latent_image.get("noise_mask"),
            callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=noise_seed)
        return (out,)


NODE_CLASS_MAPPINGS = {"FewStepKSamplerAdvanced": FewStepKSamplerAdvanced}
NODE_DISPLAY_NAME_MAPPINGS = {"FewStepKSamplerAdvanced": "KSampler Advanced + SAMPLER/SIGMAS (FewStep)"}
