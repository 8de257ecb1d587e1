"""UNets built from ComfyUI's own model classes with random weights, for tests and benchmarks.

Needs ComfyUI importable (its root on sys.path). The architecture hyper-parameters are the public
SD1.5 / SDXL ones; `tiny_sd15` keeps the SD1.5 layout (channel_mult steps 1/2/4, cross-attention)
at a width a 2-core CPU runs in milliseconds."""
from __future__ import annotations

import math

import torch

SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "model_channels": 320, "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_spatial_transformer": True,
    "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}

SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "model_channels": 320, "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_spatial_transformer": True,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8, "legacy": False,
    "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False,
}

# SDXL's block structure (label embedding, linear transformers) at a width a CPU runs in milliseconds.
TINY_SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "model_channels": 32, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
    "transformer_depth": [0, 1], "transformer_depth_middle": 1, "transformer_depth_output": [0, 0, 1, 1],
    "use_spatial_transformer": True, "use_linear_in_transformer": True, "context_dim": 64,
    "num_head_channels": 16, "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}

TINY_SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "model_channels": 32, "num_res_blocks": [1, 1, 1], "channel_mult": [1, 2, 4],
    "transformer_depth": [1, 1, 1], "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1], "use_spatial_transformer": True,
    "use_linear_in_transformer": False, "context_dim": 16, "legacy": False, "adm_in_channels": None,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Fills every parameter in place: N(0, 1/fan_in) for weights, small normal biases/norms.
    ComfyUI's layers skip initialisation (weights load from checkpoints), so this is needed."""
    gens = {}
    with torch.no_grad():
        for name, p in module.named_parameters():
            # Drawn on the parameter's own device (an SDXL UNet has 2.6e9 weights).
            gen = gens.setdefault(p.device, torch.Generator(device=p.device).manual_seed(seed))
            values = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
            if p.ndim >= 2:
                values *= 1.0 / math.sqrt(p[0].numel())
            elif name.endswith("weight"):  # norms
                values = 1.0 + 0.1 * values
            else:
                values *= 0.02
            p.copy_(values.to(p.dtype))


def build(unet_config: dict, dtype=torch.float32, device=None, seed: int = 0, family: str = "sd15"):
    """A comfy ModelPatcher around a BaseModel/SDXL built through ComfyUI's supported_models
    classes, weights random, on `device` (default: ComfyUI's torch device)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    device = device or comfy.model_management.get_torch_device()
    config_cls = {"sd15": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL}[family]
    config = config_cls(dict(unet_config))
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=device)
    randomize_(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def tiny_sd15(dtype=torch.float32, device=None, seed: int = 0):
    return build(TINY_SD15_UNET, dtype=dtype, device=device, seed=seed, family="sd15")


def sd15(dtype=torch.float16, device=None, seed: int = 0):
    return build(SD15_UNET, dtype=dtype, device=device, seed=seed, family="sd15")


def sdxl(dtype=torch.float16, device=None, seed: int = 0):
    return build(SDXL_UNET, dtype=dtype, device=device, seed=seed, family="sdxl")


def random_conditioning(unet_config: dict, batch: int = 1, tokens: int = 77, seed: int = 0):
    """CONDITIONING in ComfyUI's format for a random UNet: [[cross_attn, {"pooled_output": ...}]]."""
    gen = torch.Generator().manual_seed(seed)
    cross = torch.randn((batch, tokens, unet_config["context_dim"]), generator=gen)
    extra = {}
    if unet_config.get("adm_in_channels"):
        extra["pooled_output"] = torch.randn((batch, 1280), generator=gen)
    return [[cross, extra]]
