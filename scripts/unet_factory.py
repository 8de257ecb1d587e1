"""Randomly initialised SDXL / SD1.5 UNets built through ComfyUI's own model classes, for the GPU
benchmarks and for tests that need real UNet blocks (no weights to download).

Requires ComfyUI importable (COMFYUI_PATH on sys.path)."""
from __future__ import annotations

import torch

# Full UNet configs as ComfyUI's model detection derives them from the official checkpoints.
SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
    "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
    "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
    "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}


def unet_config(arch: str, tiny: bool = False) -> dict:
    cfg = dict(SDXL_UNET if arch == "sdxl" else SD15_UNET)
    if tiny:  # same block structure, small widths: fast on a CPU
        cfg["model_channels"] = 32
        cfg["context_dim"] = 64
        if arch == "sdxl":
            cfg.update(transformer_depth=[0, 0, 1, 1, 1, 1], transformer_depth_middle=1,
                       transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1], num_head_channels=16)
        else:
            cfg.update(num_res_blocks=[1, 1, 1], channel_mult=[1, 2, 4], num_heads=2,
                       transformer_depth=[1, 1, 1], transformer_depth_output=[1, 1, 1, 1, 1, 1])
    return cfg


def build_unet_patcher(arch: str = "sdxl", tiny: bool = False, dtype=torch.float16, seed: int = 0):
    """A ModelPatcher around a random-weight UNet on ComfyUI's chosen device."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cfg = unet_config(arch, tiny)
    cfg["dtype"] = dtype
    # The model class is chosen by name: tiny configs would not pass ComfyUI's detection match.
    model_config = (comfy.supported_models.SDXL if arch == "sdxl" else comfy.supported_models.SD15)(cfg)
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=mm.unet_offload_device())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.copy_((torch.randn(p.shape, generator=gen) * 0.02).to(p.dtype))
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def random_conditioning(arch: str, batch: int = 1, tiny: bool = False, tokens: int = 77, seed: int = 0):
    """CONDITIONING in ComfyUI's format: [[cross_attn, {"pooled_output": ...}]]."""
    cfg = unet_config(arch, tiny)
    gen = torch.Generator().manual_seed(seed)
    cross = torch.randn((batch, tokens, cfg["context_dim"]), generator=gen)
    extra = {}
    if arch == "sdxl":
        extra["pooled_output"] = torch.randn((batch, 1280), generator=gen)
    return [[cross, extra]]
