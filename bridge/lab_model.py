"""Exact-denoiser lab: a real ComfyUI MODEL whose denoiser is a closed-form posterior mean, plus the
empty conditioning and latent-to-image conversion that let KSampler run it without CLIP or a VAE
(the nodes are in nodes/lab.py)."""
import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.supported_models_base

from ..samplers.exact import ExactDenoiser, MixtureSpec

SCHEDULES = ("sd_discrete", "edm")


class LabLatentFormat(comfy.latent_formats.LatentFormat):
    """Lab latents are the data itself: channels 0-2 are RGB in [-1, 1], channel 3 luminance."""
    scale_factor = 1.0
    latent_channels = 4

    def __init__(self):
        self.latent_rgb_factors = [[0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0, 0, 0]]
        self.latent_rgb_factors_bias = [0.5, 0.5, 0.5]


class LabConfig(comfy.supported_models_base.BASE):
    unet_extra_config = {}
    latent_format = LabLatentFormat
    memory_usage_factor = 0.01
    supported_inference_dtypes = [torch.float32]


class ExactDenoiserNet(torch.nn.Module):
    """Stands where the UNet stands: gets ComfyUI's scaled input and returns the output in the
    model's own parametrisation (eps, v, EDM ...), so every ComfyUI code path around it is real."""

    def __init__(self, lab_spec=None, device=None, operations=None, **_):
        super().__init__()
        self.denoiser = ExactDenoiser(lab_spec)
        self.dtype = torch.float32
        self._owner = []  # [LabModel], held in a list so it is not registered as a submodule
        self.calls = 0     # model evaluations, for NFE accounting in the lab

    def forward(self, xc, t, context=None, control=None, transformer_options={}, **kwargs):
        # ComfyUI's own layers check for a cancel at every op (comfy.ops); the lab has none, and 0.33
        # passes progress callbacks, where the other check sits, at most every 100 ms.
        comfy.model_management.throw_exception_if_processing_interrupted()
        ms = self._owner[0].model_sampling  # read per call: a ModelPatcher may have replaced it
        sigma = transformer_options.get("sigmas")
        if sigma is not None and xc.shape[0] % sigma.numel() == 0:
            sigma = sigma.to(xc.device, torch.float32).reshape(-1).repeat(xc.shape[0] // sigma.numel())
        else:
            sigma = ms.sigma(t).to(torch.float32)
        ones = torch.ones((xc.shape[0],) + (1,) * (xc.ndim - 1), device=xc.device, dtype=torch.float32)
        x = xc.float() / ms.calculate_input(sigma, ones)
        if isinstance(ms, comfy.model_sampling.CONST):
            # Flow models (x = (1 - s) x0 + s eps) are the VE form rescaled: x/(1-s) = x0 + s/(1-s) eps.
            s = sigma.to(torch.float64).clamp(max=1 - 1e-6).view(-1, *([1] * (x.ndim - 1)))
            denoised = self.denoiser(x.to(torch.float64) / (1 - s), (s / (1 - s)).reshape(-1)).to(x.dtype)
        else:
            denoised = self.denoiser(x, sigma)
        self.calls += 1
        # calculate_denoised is affine in the model output: denoised = c0(x) + c1 * output.
        c0 = ms.calculate_denoised(sigma, torch.zeros_like(x), x)
        c1 = ms.calculate_denoised(sigma, ones, torch.zeros_like(ones))
        return ((denoised - c0) / c1).to(xc.dtype)


class LabModel(comfy.model_base.BaseModel):
    def __init__(self, model_config, model_type, device=None):
        super().__init__(model_config, model_type, device=device, unet_model=ExactDenoiserNet)
        self.diffusion_model._owner.append(self)

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        # The net needs the exact sigma; ComfyUI's samplers pass it, direct callers may not.
        if transformer_options.get("sigmas") is None:
            transformer_options = {**transformer_options, "sigmas": t}
        return super().apply_model(x, t, c_concat=c_concat, c_crossattn=c_crossattn, control=control,
                                   transformer_options=transformer_options, **kwargs)

    def extra_conds(self, **kwargs):
        return {}  # conditioning is accepted and ignored

    @property
    def spec(self) -> MixtureSpec:
        return self.diffusion_model.denoiser.spec


def build_lab_model(dataset="shapes", components=16, spread=0.05, seed=0, schedule="sd_discrete"):
    """A ModelPatcher around a LabModel, on the device ComfyUI chooses."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    spec = MixtureSpec(dataset=dataset, components=int(components), spread=float(spread), seed=int(seed))
    config = LabConfig({"lab_spec": spec})
    if schedule == "edm":
        config.sampling_settings = {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5}
        model_type = comfy.model_base.ModelType.EDM
    else:
        config.sampling_settings = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012}
        model_type = comfy.model_base.ModelType.EPS
    offload = comfy.model_management.unet_offload_device()
    model = LabModel(config, model_type, device=offload)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=offload)


def empty_conditioning():
    """CONDITIONING the lab model accepts and ignores."""
    return [[torch.zeros((1, 1, 8)), {}]]


def lab_latent_to_image(samples: torch.Tensor, scale: int = 8) -> torch.Tensor:
    """[B, C, h, w] lab latent -> [B, h*scale, w*scale, 3] IMAGE in [0, 1] (no VAE needed)."""
    rgb = samples[:, :3].float()
    if rgb.shape[1] < 3:
        rgb = rgb[:, :1].expand(-1, 3, -1, -1)
    img = ((rgb + 1) * 0.5).clamp(0, 1)
    img = torch.nn.functional.interpolate(img, scale_factor=scale, mode="nearest")
    return img.permute(0, 2, 3, 1).cpu()
