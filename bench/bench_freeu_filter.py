"""Microbenchmark of exact ways to compute FreeU's low-frequency filter (threshold 1).

    python -m bench.bench_freeu_filter [--device cpu|cuda] [--repeats 15] [--dtype float32] [--threads 1]

Variants, all the same maths (max abs error against a float64 FFT reference is printed too):
  comfy       ComfyUI's Fourier_filter (fftn, fftshift, full-size mask, ifftshift, ifftn); only
              when ComfyUI is importable ($COMFYUI_PATH)
  fft         fft2, scale the 4 box modes in place, ifft2, real part
  rfft        rfft2 times a cached symmetrised half-spectrum mask, irfft2
  proj-dense  projection on the 9-function real basis: coef = x Bk, y = x + coef R (FewStep default)
  proj-sep    projection with per-axis bases (the large-threshold path)
  proj-mixed  fp16/bf16 input read directly by a matmul with fp32 output (the "auto" choice where
              available: CUDA with a recent PyTorch)
Skip-feature sizes are SDXL's at 1024² (batch 2 = one CFG call). Interleaved repeats, medians.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

from bench.gpu_env import time_ms
from freeu.filter import fourier_filter, fourier_filter_fft, fourier_filter_rfft
from tests.support.comfy_server import put_comfy_on_path

# (skip shape, how many output blocks filter a skip of that shape in one SDXL UNet call at 1024²)
SDXL_SKIPS = [((2, 1280, 32, 32), 2), ((2, 640, 32, 32), 1), ((2, 640, 64, 64), 2), ((2, 320, 64, 64), 1),
              ((2, 320, 128, 128), 1)]
TINY_SKIPS = [((2, 64, 9, 9), 1), ((2, 32, 16, 16), 1)]


def comfy_filter():
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        return None
    try:
        put_comfy_on_path(path)
        from comfy_extras.nodes_freelunch import Fourier_filter
    except Exception as exc:  # an incomplete ComfyUI tree: benchmark the rest
        print(f"(ComfyUI's filter not importable: {exc})", file=sys.stderr)
        return None
    return lambda x, t, s: Fourier_filter(x, threshold=t, scale=s)


def reference(x, threshold, scale):
    """Float64 FFT of the definition: shifted spectrum, centred box times scale, real part."""
    spec = torch.fft.fftshift(torch.fft.fftn(x.double().cpu(), dim=(-2, -1)), dim=(-2, -1))
    h, w = spec.shape[-2:]
    mask = torch.ones(h, w, dtype=torch.float64)
    mask[h // 2 - threshold: h // 2 + threshold, w // 2 - threshold: w // 2 + threshold] = scale
    return torch.fft.ifftn(torch.fft.ifftshift(spec * mask, dim=(-2, -1)), dim=(-2, -1)).real


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--tiny", action="store_true", help="small shapes (a quick check)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a shared machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    threshold, scale = 1, 0.2
    variants = {"fft": fourier_filter_fft, "rfft": fourier_filter_rfft,
                "proj-dense": lambda x, t, s: fourier_filter(x, t, s, method="dense"),
                "proj-sep": lambda x, t, s: fourier_filter(x, t, s, method="separable")}
    if dtype != torch.float32:
        try:  # reads fp16/bf16 directly; needs torch.mm(..., out_dtype=float32) (CUDA, recent torch)
            fourier_filter(torch.zeros(1, 1, 4, 4, device=device, dtype=dtype) + 1, 1, 0.5, method="mixed")
            variants["proj-mixed"] = lambda x, t, s: fourier_filter(x, t, s, method="mixed")
        except (RuntimeError, TypeError, NotImplementedError) as exc:
            print(f"(proj-mixed unavailable here: {str(exc).splitlines()[0][:80]})", file=sys.stderr)
    comfy = comfy_filter()
    if comfy is not None:
        variants = {"comfy": comfy, **variants}
    run = lambda fn: time_ms(fn, device)  # noqa: E731
    shapes = TINY_SKIPS if args.tiny else SDXL_SKIPS
    gen = torch.Generator().manual_seed(0)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, input {args.dtype}, "
          f"threshold {threshold}, scale {scale}, {args.repeats} interleaved repeats, medians\n")
    names = list(variants)
    print("| skip shape | " + " | ".join(f"{n} ms" for n in names) + " | " +
          " | ".join(f"{n} max err" for n in names) + " |")
    print("|---" * (1 + 2 * len(names)) + "|")
    totals = {n: 0.0 for n in names}
    for shape, count in shapes:
        x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
        want = reference(x, threshold, scale)
        errs = {n: (fn(x, threshold, scale).double().cpu() - want).abs().max().item() for n, fn in variants.items()}
        times = {n: [] for n in names}
        for _ in range(2):  # warm-up (caches, allocator, kernels)
            for fn in variants.values():
                fn(x, threshold, scale)
        for _ in range(args.repeats):
            for n, fn in variants.items():
                times[n].append(run(lambda: fn(x, threshold, scale)))
        med = {n: statistics.median(v) for n, v in times.items()}
        for n in names:
            totals[n] += count * med[n]
        print(f"| {tuple(shape)} x{count} | " + " | ".join(f"{med[n]:.3f}" for n in names) + " | " +
              " | ".join(f"{errs[n]:.1e}" for n in names) + " |")
    print("| **one UNet call (sum x count)** | " + " | ".join(f"**{totals[n]:.3f}**" for n in names) +
          " |" + " |" * len(names))


if __name__ == "__main__":
    main()
