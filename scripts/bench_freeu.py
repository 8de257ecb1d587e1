"""What FreeU costs per UNet call: no patch vs ComfyUI's FreeU / FreeU_V2 vs FewStep's FreeU.

    python scripts/bench_freeu.py                 # CUDA: SDXL UNet, 1024² (128x128 latents), fp16
    python scripts/bench_freeu.py --tiny          # any device: tiny SD1.5-layout UNet (a quick check)

Needs ComfyUI importable: $COMFYUI_PATH (or --comfyui) pointing at its checkout. The UNet is built
through ComfyUI's own classes (supported_models.SDXL -> model_base.SDXL -> UNetModel) with random
weights, on comfy.model_management's torch device. Each sample times one UNet call (CUDA events
on CUDA), variants interleaved in a rotating order, medians over the repeats; the overhead column is
median(variant) / median(no patch) - 1. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def comfy_node_patch(node_cls, model, b1, b2, s1, s2):
    """The output_block_patch function ComfyUI's own FreeU node installs (V1 or V3 node class)."""
    node = node_cls()
    out = (getattr(node, "patch", None) or node.execute)(model, b1, b2, s1, s2)  # V1 method / V3 classmethod
    patched = out[0] if isinstance(out, tuple) else getattr(out, "result", None) or out.args
    patched = patched[0] if isinstance(patched, tuple) else patched
    return patched.model_options["transformer_options"]["patches"]["output_block_patch"][-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny SD1.5-layout UNet and 16x16 latents (a check that runs anywhere)")
    ap.add_argument("--comfyui", help="ComfyUI checkout (default $COMFYUI_PATH)")
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], help="default fp16 (fp32 with --tiny)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=None, help="timed samples per variant (default 40, 5 with --tiny)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--size", type=int, default=None, help="latent side (default 128 = 1024 px; 16 with --tiny)")
    args = ap.parse_args()

    import torch
    sys.path.insert(0, str(REPO / "scripts"))
    from gpu_env import setup_comfy, time_ms
    setup_comfy(cpu=not torch.cuda.is_available(), root=args.comfyui)
    import comfy.model_management as mm
    from comfy_extras.nodes_freelunch import FreeU, FreeU_V2
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "scripts"))
    import random_unet
    from freeu.patch import FreeUPatch
    from freeu.window import window_from_sigma

    device = mm.get_torch_device()
    dtype = getattr(torch, args.dtype or ("float32" if args.tiny else "float16"))
    size = args.size or (16 if args.tiny else 128)
    repeats = args.repeats or (5 if args.tiny else 40)
    if args.tiny:
        config, family, context_dim, adm = random_unet.TINY_SD15_UNET, "sd15", 16, None
    else:
        config, family, context_dim, adm = random_unet.SDXL_UNET, "sdxl", 2048, 2816
    t0 = time.perf_counter()
    patcher = random_unet.build(config, dtype=dtype, device=device, seed=0, family=family)
    unet = patcher.model.diffusion_model
    mc = patcher.model.model_config.unet_config["model_channels"]
    build_s = time.perf_counter() - t0

    b1, b2, s1, s2 = 1.3, 1.4, 0.9, 0.2  # FreeU_V2 defaults = SDXL preset
    variants = {
        "no patch": [],
        "ComfyUI FreeU (v1)": [comfy_node_patch(FreeU, patcher, b1, b2, s1, s2)],
        "ComfyUI FreeU_V2": [comfy_node_patch(FreeU_V2, patcher, b1, b2, s1, s2)],
        "FewStep v1, window open": [FreeUPatch(mc, b1, b2, s1, s2, version="v1")],
        "FewStep v2, window open": [FreeUPatch(mc, b1, b2, s1, s2, version="v2")],
        # The filter through an fp32 copy of the skip features (what "auto" falls back to where a
        # matmul cannot return fp32 from fp16/bf16 input); same result, more memory traffic.
        "FewStep v2, window open, fp32-copy filter": [FreeUPatch(mc, b1, b2, s1, s2, version="v2",
                                                                 filter_method="dense")],
        # A bounded window that contains the σ: the per-call σ read (one device->host copy) is paid.
        "FewStep v2, σ-gated, on": [FreeUPatch(mc, b1, b2, s1, s2, version="v2",
                                               window=window_from_sigma(100.0, 0.0))],
        "FewStep v2, σ-gated, off": [FreeUPatch(mc, b1, b2, s1, s2, version="v2",
                                                window=window_from_sigma(0.5, 0.0))],
    }
    names = list(variants)


    name = (torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU")
    comfy_version = "?"
    try:
        import comfyui_version
        comfy_version = comfyui_version.__version__
    except Exception:
        pass
    print(f"FreeU cost per UNet call: {'tiny SD1.5-layout' if args.tiny else 'SDXL'} UNet "
          f"(model_channels {mc}, random weights, built in {build_s:.1f} s), latents {size}x{size}, {dtype}, "
          f"device {device} ({name}), torch {torch.__version__}, ComfyUI {comfy_version}; "
          f"b1/b2/s1/s2 {b1}/{b2}/{s1}/{s2}; {repeats} interleaved samples per variant, medians.\n")
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    for batch in args.batches:
        x = torch.randn(batch, 4, size, size, generator=gen, device=device).to(dtype)
        ctx = torch.randn(batch, 77, context_dim, generator=gen, device=device).to(dtype)
        y = torch.randn(batch, adm, generator=gen, device=device).to(dtype) if adm else None
        ts = torch.full((batch,), 700.0, device=device)
        sigma = torch.full((batch,), 1.0, device=device)  # what ComfyUI's sampler puts in "sigmas"

        def call(patches):
            to = {"patches": {"output_block_patch": patches} if patches else {}, "sigmas": sigma}
            return unet(x, ts, context=ctx, y=y, transformer_options=to)

        with torch.inference_mode():
            ref = {n: call(p).float() for n, p in variants.items() if n in ("no patch", "ComfyUI FreeU_V2",
                                                                             "FewStep v2, window open",
                                                                             "FewStep v2, σ-gated, off")}
            check = (ref["FewStep v2, window open"] - ref["ComfyUI FreeU_V2"]).abs().max().item()
            closed_same = torch.equal(ref["FewStep v2, σ-gated, off"], ref["no patch"])
            finite = bool(torch.isfinite(ref["no patch"]).all())
            del ref
            for _ in range(args.warmup):
                for p in variants.values():
                    call(p)
            samples = {n: [] for n in names}
            for r in range(repeats):
                for n in names[r % len(names):] + names[: r % len(names)]:
                    samples[n].append(time_ms(lambda: call(variants[n]), device))
        med = {n: statistics.median(v) for n, v in samples.items()}
        for n in names:
            rows.append((batch, n, med[n], 100 * (med[n] / med["no patch"] - 1)))
        import freeu.filter
        print(f"batch {batch}: output finite {finite}; FewStep v2 vs ComfyUI FreeU_V2 max |diff| {check:.3e}; "
              f"σ-gated off == no patch (bit-identical): {closed_same}; mixed-precision filter route in use: "
              f"{freeu.filter._mixed_ok or 'n/a (fp32)'}", file=sys.stderr)
        del x, ctx, y
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print("| batch | variant | median ms / UNet call | overhead vs no patch |")
    print("|---|---|---|---|")
    for batch, n, ms, over in rows:
        print(f"| {batch} | {n} | {ms:.2f} | {'—' if n == 'no patch' else f'{over:+.2f} %'} |")


if __name__ == "__main__":
    main()
