"""What FewStep costs and saves on SDXL at 1024² (issue 10), measured in one run.

    python -m bench.bench_gpu_sdxl            # CUDA: SDXL UNet (random fp16 weights), 1024²
    python -m bench.bench_gpu_sdxl --tiny     # anywhere: tiny SD1.5-layout UNet, 16x16 latents

Needs $COMFYUI_PATH (the host's tree, or .gpu/ComfyUI made by scripts/gpu_bundle.sh). The pack is
loaded into ComfyUI by ComfyUI's own loader. Sections:
  1. per-step solver maths of every pack sampler vs ComfyUI's dpmpp_2m on a stand-in model (no
     UNet), with a check that no host-device synchronisation happens inside the step loop;
  2. full sampling runs through ComfyUI's paths (KSampler for dropdown entries, sample_custom for
     the recipe's SAMPLER/SIGMAS) with CFG, interleaved repeats, medians, speed-up vs dpmpp_2m 20;
  3. peak GPU memory with and without the pack's FreeU patch;
  4. torch.compile through ComfyUI's TorchCompileModel node with the gated FreeU patch.
Prints markdown tables."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.gpu_env import setup_comfy, time_ms
from tests.support import random_unet
from tests.support.comfy_inprocess import load_inprocess

CFG = 5.5


def interleaved(variants: dict, repeats: int, warmup: int = 1):
    """Runs each variant `repeats` times in rotating order; returns {name: median ms}."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in variants}
    names = list(variants)
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            samples[k].append(variants[k]())
    return {k: statistics.median(v) for k, v in samples.items()}


def unet_call_ms(patcher, cond_pos, device, dtype, side, repeats):
    """One UNet call at batch 2 (the CFG pair) and batch 1."""
    unet = patcher.model.diffusion_model
    out = {}
    for batch in (1, 2):
        x = torch.randn(batch, 4, side, side, device=device, dtype=dtype)
        ctx = cond_pos[0][0].to(device, dtype).repeat(batch, 1, 1)
        y = cond_pos[0][1].get("pooled_output")
        kw = {}
        if patcher.model.adm_channels:
            kw["y"] = torch.randn(batch, patcher.model.adm_channels, device=device, dtype=dtype)
        t = torch.full((batch,), 500.0, device=device)

        def call():
            return time_ms(lambda: unet(x, t, context=ctx, **kw), device)
        out[batch] = interleaved({"unet": call}, repeats, warmup=3)["unet"]
        del y
    return out


def solver_maths(pack_samplers, k_sampling, device, side, steps, repeats):
    """Per-step cost of each sampler on a stand-in model (a cheap elementwise denoiser)."""
    sigmas = k_sampling.get_sigmas_karras(steps, 0.0292, 14.6146, device=device)
    x0 = torch.randn(2, 4, side, side, device=device) * 14.6146
    calls = {"n": 0}
    strict = {"on": False}

    def standin(x, sigma, **kw):
        if strict["on"] and device.type == "cuda" and calls["n"] == 0:
            torch.cuda.set_sync_debug_mode("error")  # from the first model call on: the step loop
        calls["n"] += 1
        return x * (1.0 / (1.0 + sigma.view(-1, 1, 1, 1) ** 2))

    def run(fn):
        calls["n"] = 0
        ms = time_ms(lambda: fn(standin, x0.clone(), sigmas, extra_args={"seed": 0}, disable=True), device)
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        return ms, calls["n"]

    rows = []
    model_only = interleaved({"m": lambda: _time_standin(standin, x0, sigmas, device)}, repeats)["m"]
    entries = {"comfy dpmpp_2m": k_sampling.sample_dpmpp_2m, **pack_samplers}
    for name, fn in entries.items():
        ms = interleaved({name: lambda fn=fn: run(fn)[0]}, repeats)[name]
        nfe = run(fn)[1]
        syncs = "n/a (CPU)"
        if device.type == "cuda":
            strict["on"] = True
            try:
                run(fn)
                syncs = "none"
            except RuntimeError as e:
                syncs = "yes: " + str(e).split("\n")[0][:60]
            finally:
                strict["on"] = False
                torch.cuda.set_sync_debug_mode("default")
        per_step = max(ms - model_only * nfe / steps, 0.0) / steps
        rows.append((name, nfe, per_step, syncs))
    return rows, model_only / steps


def _time_standin(standin, x0, sigmas, device):
    x = x0.clone()
    s = sigmas[0] * x.new_ones(x.shape[0])

    def calls():
        for _ in range(len(sigmas) - 1):
            standin(x, s)
    return time_ms(calls, device)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--best", nargs="+", default=["fewstep_dpmpp_2m:fewstep_fscheduler_1024"],
                    help="the pack's best dropdown sampler:scheduler pairs at 8 steps (from the lab benchmark)")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    setup_comfy(cpu=not cuda)
    nodes, pack = load_inprocess(Path(tempfile.mkdtemp(prefix="fewstep-bench-")), cpu=not cuda)
    import comfy.k_diffusion.sampling as k_sampling
    import comfy.model_management as mm
    import comfy.sample
    import comfy.samplers
    import comfyui_version

    device = mm.get_torch_device()
    dtype = torch.float32 if args.tiny else torch.float16
    side = 16 if args.tiny else 128
    repeats = args.repeats or (3 if args.tiny else 7)
    config = random_unet.TINY_SD15_UNET if args.tiny else random_unet.SDXL_UNET
    patcher = random_unet.build(config, dtype=dtype, family="sd15" if args.tiny else "sdxl")
    pos = random_unet.random_conditioning(config, 1, seed=1)
    neg = random_unet.random_conditioning(config, 1, seed=2)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"# FewStep GPU benchmark\n\ndevice: {name}; torch {torch.__version__}; ComfyUI "
          f"{comfyui_version.__version__}; UNet {'tiny SD1.5 layout' if args.tiny else 'SDXL'} "
          f"{str(dtype).replace('torch.', '')}, latent {side}x{side}, CFG {CFG}; medians of {repeats}\n")
    mm.load_models_gpu([patcher])
    unet_ms = unet_call_ms(patcher, pos, device, dtype, side, repeats)
    print(f"UNet call: {unet_ms[1]:.2f} ms at batch 1, {unet_ms[2]:.2f} ms at batch 2 (CFG pair)\n")

    # 1. solver maths
    pack_samplers = {n: getattr(k_sampling, f"sample_{n}") for n in comfy.samplers.SAMPLER_NAMES
                     if n.startswith("fewstep_")}
    rows, standin_ms = solver_maths(pack_samplers, k_sampling, device, side, 8, repeats * 3)
    print("## Solver maths per step (stand-in model, batch 2 latents, 8 steps)\n")
    print("| sampler | NFE | ms/step | % of a batch-2 UNet call | host-device syncs in the step loop |")
    print("|---|---|---|---|---|")
    for n, nfe, ms, syncs in rows:
        print(f"| {n} | {nfe} | {ms:.3f} | {100 * ms / unet_ms[2]:.3f} % | {syncs} |")
    print(f"\n(stand-in model time subtracted: {standin_ms:.3f} ms per call)\n")

    # 2. full runs
    latent = {"samples": torch.zeros(1, 4, side, side)}
    recipe = nodes.NODE_CLASS_MAPPINGS["FewStepFSchedulerRecipe"]

    def ksampler(sampler, scheduler, steps):
        return lambda: time_ms(
            lambda: nodes.common_ksampler(patcher, 0, steps, CFG, sampler, scheduler, pos, neg, latent), device)

    def recipe_run(steps, freeu=True):
        model, sigmas, sampler, _ = recipe.execute(patcher, "1024 (SDXL)", steps, "unipc_fs",
                                                 freeu="auto" if freeu else "off")
        noise = comfy.sample.prepare_noise(latent["samples"], 0)

        return lambda: time_ms(lambda: comfy.sample.sample_custom(
            model, noise, CFG, sampler, sigmas, pos, neg, latent["samples"], disable_pbar=True, seed=0), device)

    variants = {
        "ComfyUI dpmpp_2m + karras, 20 steps": ksampler("dpmpp_2m", "karras", 20),
        "FewStep recipe, 8 steps (UniPC + AFS + FreeU window)": recipe_run(8),
        "FewStep recipe, 6 steps (UniPC + AFS + FreeU window)": recipe_run(6),
        "ComfyUI dpmpp_2m + karras, 8 steps": ksampler("dpmpp_2m", "karras", 8),
    }
    for pair in args.best:
        best_sampler, best_sched = pair.split(":")
        variants[f"FewStep {best_sampler} + {best_sched}, 8 steps"] = ksampler(best_sampler, best_sched, 8)
    times = interleaved(variants, repeats)
    base = times["ComfyUI dpmpp_2m + karras, 20 steps"]
    print("## Full sampling runs (batch 1, CFG, through ComfyUI's sampling code)\n")
    print("| run | model calls | wall ms | speed-up vs dpmpp_2m 20 steps |")
    print("|---|---|---|---|")
    nfe = {"20": 20, "8 s": 8, "6 s": 6}
    for k, ms in times.items():
        calls = next(v for s, v in nfe.items() if s in k)
        print(f"| {k} | {calls} | {ms:.1f} | {base / ms:.2f}x |")

    # 3. peak memory
    if cuda:
        print("\n## Peak GPU memory during sampling\n")
        print("| run | peak allocated MiB |")
        print("|---|---|")
        for k, fn in [("recipe 8 steps, FreeU window (patched)", recipe_run(8, True)),
                      ("recipe 8 steps, FreeU off (no patch)", recipe_run(8, False)),
                      ("ComfyUI dpmpp_2m + karras 8 steps", ksampler("dpmpp_2m", "karras", 8))]:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            fn()
            print(f"| {k} | {torch.cuda.max_memory_allocated() / 2**20:.0f} |")

    # 4. torch.compile
    if not args.no_compile:
        compile_check(nodes, recipe, patcher, pos, neg, latent, device)


def compile_check(nodes, recipe, patcher, pos, neg, latent, device):
    import comfy.sample
    import torch._dynamo.utils as dyn
    from comfy_extras.nodes_torch_compile import TorchCompileModel
    print("\n## torch.compile (ComfyUI's TorchCompileModel, inductor) with the gated FreeU patch\n")
    model, sigmas, sampler, _ = recipe.execute(patcher, "1024 (SDXL)", 8, "unipc_fs")
    out = TorchCompileModel.execute(model, "inductor")
    compiled = out[0] if isinstance(out, tuple) else out.result[0]
    noise = comfy.sample.prepare_noise(latent["samples"], 0)
    results = []
    for run in (1, 2):
        before = dict(dyn.counters["stats"])
        t0 = time.perf_counter()
        comfy.sample.sample_custom(compiled, noise, CFG, sampler, sigmas, pos, neg, latent["samples"],
                                   disable_pbar=True, seed=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        graphs = dyn.counters["stats"].get("unique_graphs", 0) - before.get("unique_graphs", 0)
        results.append((run, time.perf_counter() - t0, graphs))
    print("| run of 8 steps (FreeU off for 5 calls, on for 3) | wall s | new graphs compiled |")
    print("|---|---|---|")
    for run, s, g in results:
        print(f"| {run} | {s:.1f} | {g} |")
    print("\nrecompiles counter:", dict(dyn.counters.get("recompiles", {})) or 0)


if __name__ == "__main__":
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        main()
