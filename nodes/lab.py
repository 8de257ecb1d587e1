"""Exact-denoiser lab nodes: the MODEL, its empty conditioning and its latent-to-image decode
(the model itself is bridge/lab_model.py)."""
from ..bridge.lab_model import SCHEDULES, build_lab_model, empty_conditioning, lab_latent_to_image
from ..samplers.exact import DATASETS

CATEGORY = "FewStep/lab"


class FewStepLabModel:
    DESCRIPTION = ("A MODEL with an exact denoiser: the closed-form posterior mean of a known Gaussian "
                   "mixture (random latent means, or procedurally drawn shapes you can look at). "
                   "Works with KSampler and every sampler node; ground truth for comparing samplers.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dataset": (list(DATASETS), {"default": "shapes", "tooltip": "shapes: images of discs and boxes on gradients; gmm: random latent-space means."}),
            "components": ("INT", {"default": 16, "min": 1, "max": 4096, "tooltip": "Number of mixture components (data points)."}),
            "spread": ("FLOAT", {"default": 0.05, "min": 0.001, "max": 10.0, "step": 0.001, "tooltip": "Standard deviation of each component."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the data set (not of the sampling noise)."}),
            "schedule": (list(SCHEDULES), {"default": "sd_discrete", "tooltip": "sd_discrete: SD1.5/SDXL eps model, sigma 0.0292-14.61; edm: continuous EDM, sigma 0.002-80."}),
        }}

    def build(self, dataset, components, spread, seed, schedule):
        return (build_lab_model(dataset, components, spread, seed, schedule),)


class FewStepLabConditioning:
    DESCRIPTION = "Empty CONDITIONING for the lab model, so KSampler runs without a CLIP model."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def make(self):
        return (empty_conditioning(),)


class FewStepLabDecode:
    DESCRIPTION = "Turns a lab LATENT into an IMAGE (channels 0-2 as RGB, upscaled like a VAE would)."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "samples": ("LATENT", {"tooltip": "A latent sampled from the lab model."}),
            "scale": ("INT", {"default": 8, "min": 1, "max": 16, "tooltip": "Pixels per latent cell."}),
        }}

    def decode(self, samples, scale):
        return (lab_latent_to_image(samples["samples"], scale),)


NODE_CLASS_MAPPINGS = {
    "FewStepLabModel": FewStepLabModel,
    "FewStepLabConditioning": FewStepLabConditioning,
    "FewStepLabDecode": FewStepLabDecode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FewStepLabModel": "Exact Denoiser Lab Model (FewStep)",
    "FewStepLabConditioning": "Lab Empty Conditioning (FewStep)",
    "FewStepLabDecode": "Lab Latent to Image (FewStep)",
}
