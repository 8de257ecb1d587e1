"""FreeU on a ComfyUI model: the UNet check and the gated output-block patch (maths: freeu/)."""
from ..freeu.patch import FreeUPatch
from ..freeu.window import SigmaWindow


def unet_model_channels(model) -> int:
    """The UNet's base width, or a ValueError naming the model when it has no UNet decoder."""
    base = getattr(model, "model", None)
    config = getattr(base, "model_config", None)
    unet_config = getattr(config, "unet_config", None) or {}
    net = getattr(base, "diffusion_model", None)
    channels = unet_config.get("model_channels")
    if channels is None or not hasattr(net, "output_blocks"):
        raise ValueError(
            f"model: FewStep FreeU needs a UNet with decoder output blocks (SD1.x, SD2.x, SDXL); this "
            f"model is {type(base).__name__} (config {type(config).__name__}, network "
            f"{type(net).__name__}), which has none. FreeU does not apply to DiT/Flux/SD3-style models.")
    mult = unet_config.get("channel_mult")
    if mult is not None and not ({2, 4} & {int(m) for m in mult}):
        raise ValueError(f"model: {type(base).__name__} has channel_mult {list(mult)}: no decoder stage "
                         "with 2x or 4x model_channels for FreeU to act on")
    return int(channels)


def patch_freeu(model, b1, b2, s1, s2, version: str, threshold: int, window: SigmaWindow):
    """A clone of MODEL with FreeU on for every model call whose σ is inside `window`."""
    freeu = FreeUPatch(unet_model_channels(model), b1, b2, s1, s2, threshold=threshold, version=version, window=window)
    patched = model.clone()
    patched.set_model_output_block_patch(freeu)
    return patched
