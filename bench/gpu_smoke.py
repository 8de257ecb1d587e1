"""Checks the GPU machine can import ComfyUI from the bundle and times one SDXL UNet call.

    python -m bench.gpu_smoke [--tiny]
"""
import argparse
import platform
import time

import torch

from bench.gpu_env import setup_comfy
from tests.support import random_unet


def random_conditioning_tensor(config, batch, dev):
    return random_unet.random_conditioning(config, batch)[0][0].to(dev, torch.float16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    setup_comfy(cpu=not torch.cuda.is_available())
    import comfy.model_management as mm
    import comfyui_version
    print("python", platform.python_version(), "torch", torch.__version__, "ComfyUI", comfyui_version.__version__,
          "device", mm.get_torch_device(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
    for mod in ("comfy.samplers", "comfy.k_diffusion.sampling", "comfy_extras.nodes_freelunch",
                "comfy_extras.nodes_custom_sampler", "comfy_extras.nodes_model_advanced", "nodes"):
        try:
            __import__(mod)
            print("import ok", mod)
        except Exception as e:  # report every missing piece in one run
            print("IMPORT FAILED", mod, repr(e))
    config = random_unet.TINY_SD15_UNET if args.tiny else random_unet.SDXL_UNET
    patcher = random_unet.build(config, dtype=torch.float16, family="sd15" if args.tiny else "sdxl")
    mm.load_models_gpu([patcher])
    dev = mm.get_torch_device()
    side = 16 if args.tiny else 128
    for batch in (1, 2):
        x = torch.randn(batch, 4, side, side, device=dev, dtype=torch.float16)
        ctx = random_conditioning_tensor(config, batch, dev)
        y = torch.randn(batch, config["adm_in_channels"], device=dev, dtype=torch.float16) if config.get("adm_in_channels") else None
        t = torch.full((batch,), 500.0, device=dev)
        with torch.no_grad():
            for _ in range(3):
                patcher.model.diffusion_model(x, t, context=ctx, y=y)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                patcher.model.diffusion_model(x, t, context=ctx, y=y)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        unet = "tiny SD1.5" if args.tiny else "SDXL"
        print(f"{unet} UNet batch {batch}: {(time.perf_counter() - t0) / 10 * 1000:.1f} ms/call")


if __name__ == "__main__":
    main()
