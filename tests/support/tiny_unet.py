"""A very small ComfyUI UNetModel (SD1.5-type EPS model, no attention) for training tests on CPU."""
from __future__ import annotations

import torch

TINY_UNET = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "model_channels": 32, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
    "transformer_depth": [0, 0], "transformer_depth_middle": 0, "transformer_depth_output": [0, 0, 0, 0],
    "use_spatial_transformer": True, "use_linear_in_transformer": False, "context_dim": 16,
    "num_head_channels": 16, "legacy": False, "adm_in_channels": None,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}


def tiny_unet(seed: int = 0):
    """ModelPatcher on the CPU, random weights; its latents are used unscaled (scale factor 1)."""
    from tests.support import random_unet
    model = random_unet.build(TINY_UNET, dtype=torch.float32, device=torch.device("cpu"), seed=seed, family="sd15")
    model.model.latent_format.scale_factor = 1.0
    return model


def empty_conditioning():
    return [[torch.zeros(1, 1, 16), {}]]
