"""KSampler (Advanced) with a SAMPLER / SIGMAS override: the core node's noise, schedule, cut at
start/end_at_step and sampling call, with the overrides going through exactly the same path."""
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


def sample_advanced(model, add_noise: bool, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                    latent_image, start_at_step, end_at_step, force_full_denoise: bool, sampler=None, sigmas=None,
                    denoise=1.0) -> dict:
    """The LATENT KSamplerAdvanced returns; `sampler` replaces sampler_name, `sigmas` (steps, scheduler)."""
    latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
    if not add_noise:
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
        return out
    if sampler is None:
        sampler = comfy.samplers.sampler_object(sampler_name)
    callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
    out["samples"] = comfy.sample.sample_custom(
        model, noise, cfg, sampler, sigmas, positive, negative, latent, noise_mask=latent_image.get("noise_mask"),
        callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=noise_seed)
    return out
