"""Checks the GPU machine can import ComfyUI from the bundle and times one SDXL UNet call."""
import argparse
import platform
import time

import torch

from gpu_env import setup_comfy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    setup_comfy(cpu=not torch.cuda.is_available())
    import comfy.model_management as mm
    import comfyui_version
    from unet_factory import build_unet_patcher, random_conditioning
    print("python", platform.python_version(), "torch", torch.__version__, "ComfyUI", comfyui_version.__version__,
          "device", mm.get_torch_device(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
    for mod in ("comfy.samplers", "comfy.k_diffusion.sampling", "comfy_extras.nodes_freelunch",
                "comfy_extras.nodes_custom_sampler", "comfy_extras.nodes_model_advanced", "nodes"):
        try:
            __import__(mod)
            print("import ok", mod)
        except Exception as e:  # report every missing piece in one run
            print("IMPORT FAILED", mod, repr(e))
    patcher = build_unet_patcher("sdxl", tiny=args.tiny)
    mm.load_models_gpu([patcher])
    dev = mm.get_torch_device()
    side = 16 if args.tiny else 128
    for batch in (1, 2):
        x = torch.randn(batch, 4, side, side, device=dev, dtype=torch.float16)
        cond = random_conditioning("sdxl", batch, tiny=args.tiny)[0]
        ctx = cond[0].to(dev, torch.float16)
        y = torch.randn(batch, 2816, device=dev, dtype=torch.float16)
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
        print(f"SDXL UNet batch {batch}: {(time.perf_counter() - t0) / 10 * 1000:.1f} ms/call")


if __name__ == "__main__":
    main()
